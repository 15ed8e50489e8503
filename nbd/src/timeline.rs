//! EXPERIMENT: per-write timeline (TWINBLOCK_TIMELINE=path).
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

const N: usize = 1 << 22;
static ON: AtomicBool = AtomicBool::new(false);
static BUF: OnceLock<Box<[AtomicU64]>> = OnceLock::new();
static IDX: AtomicUsize = AtomicUsize::new(0);

pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn init(node: &str) {
    let Ok(path) = std::env::var("TWINBLOCK_TIMELINE") else { return };
    let path = format!("{path}.{node}");
    eprintln!("TIMELINE to {path}");
    let v: Vec<AtomicU64> = (0..2 * N).map(|_| AtomicU64::new(0)).collect();
    let _ = BUF.set(v.into_boxed_slice());
    ON.store(true, Ordering::Relaxed);
    std::thread::spawn(move || {
        let mut last = 0;
        let mut same = 0;
        let mut written = 0;
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
            let i = IDX.load(Ordering::Relaxed).min(N);
            if i < last + 100 {
                same += 1;
                last = i;
            } else {
                same = 0;
                last = i;
            }
            if same >= 1 && i > written {
                use std::io::Write;
                let b = BUF.get().unwrap();
                let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
                let mut s = String::new();
                for k in written..i {
                    let a = b[2 * k].load(Ordering::Relaxed);
                    let t = b[2 * k + 1].load(Ordering::Relaxed);
                    s.push_str(&format!("{} {} {}\n", a >> 56, a & ((1 << 56) - 1), t));
                }
                f.write_all(s.as_bytes()).unwrap();
                written = i;
            }
        }
    });
}

#[inline]
pub fn mark(point: u8, key: u64) {
    if !ON.load(Ordering::Relaxed) {
        return;
    }
    let t = now_ns();
    let i = IDX.fetch_add(1, Ordering::Relaxed);
    if i >= N {
        return;
    }
    let b = BUF.get().unwrap();
    b[2 * i].store(((point as u64) << 56) | (key & ((1 << 56) - 1)), Ordering::Relaxed);
    b[2 * i + 1].store(t, Ordering::Relaxed);
}
