//! Which boot of the machine this process runs in: a record saved during
//! another boot means the page cache its data was written to was lost
//! since (a power loss or a reboot), so writes not flushed then may be
//! gone from the disk though the record says nothing of it
//! (`MetaRecord::cache_lost`).

/// The kernel's boot id (`/proc/sys/kernel/random/boot_id`, a random UUID
/// per boot) folded into a non-zero number; 0 if it cannot be read (the
/// check is then skipped).
pub fn boot() -> u64 {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map_or(0, |s| fold(&s))
}

/// A UUID's 32 hex digits folded into 64 bits (0 if it has none).
fn fold(uuid: &str) -> u64 {
    let digits: Vec<u64> = uuid.chars().filter_map(|c| c.to_digit(16)).map(u64::from).collect();
    if digits.len() != 32 {
        return 0;
    }
    let half = |d: &[u64]| d.iter().fold(0u64, |acc, x| (acc << 4) | x);
    (half(&digits[..16]) ^ half(&digits[16..])).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_boot_id_folds_to_a_stable_non_zero_number() {
        let a = fold("2f0b5e7a-33c1-4f5e-9a61-0c5d1e2f3a4b\n");
        assert_ne!(a, 0);
        assert_eq!(a, fold("2f0b5e7a-33c1-4f5e-9a61-0c5d1e2f3a4b"));
        assert_ne!(a, fold("2f0b5e7a-33c1-4f5e-9a61-0c5d1e2f3a4c"));
        assert_eq!(fold("not a uuid"), 0);
        // This machine's, read twice: the same boot.
        assert_eq!(boot(), boot());
    }
}
