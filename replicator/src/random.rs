//! A random 64-bit value from the kernel (`getrandom`), for ids and
//! seeds; the clock and pid if the kernel gives none.

pub(crate) fn random_u64() -> u64 {
    let mut x = 0u64;
    // SAFETY: getrandom writes at most 8 bytes into `x`.
    let n = unsafe { libc::getrandom((&mut x as *mut u64).cast(), 8, 0) };
    if n != 8 {
        x = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ ((std::process::id() as u64) << 32);
    }
    x
}
