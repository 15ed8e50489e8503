//! `twinblock serve` driven by real NBD clients (nbdinfo, qemu-nbd, qemu-io,
//! nbdcopy, fio, nbdfuse + ext4), once per store backend.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

macro_rules! flavored {
    ($($test:ident),* $(,)?) => {
        mod uring { $( #[test] fn $test() { super::$test(super::common::URING) } )* }
        mod threads { $( #[test] fn $test() { super::$test(super::common::THREADS) } )* }
        mod uring_direct { $( #[test] fn $test() { super::$test(super::common::URING_DIRECT) } )* }
    };
}

flavored!(
    nbdinfo_json,
    nbdinfo_map,
    qemu_nbd_list,
    qemu_io,
    nbdcopy_roundtrip,
    nbdcopy_of_a_truncated_disk_fails,
    fio_verify,
    mixed_sector_and_block_writes,
    ext4_on_nbdfuse
);

fn read_at(path: &Path, off: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, off).unwrap();
    buf
}

fn nbdinfo_json(fl: Flavor) {
    if !have("nbdinfo") {
        return;
    }
    let s = Serve::start(fl, "64M");
    let out = run_ok(Command::new("nbdinfo").arg("--json").arg(s.uri()));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["protocol"], "newstyle-fixed");
    assert_eq!(v["structured"], true);
    let e = &v["exports"][0];
    assert_eq!(e["export-name"], "twinblock");
    assert_eq!(e["export-size"], 64u64 << 20);
    assert_eq!(e["is_read_only"], false);
    for cap in [
        "can_flush",
        "can_fua",
        "can_trim",
        "can_zero",
        "can_fast_zero",
        "can_df",
        "can_multi_conn",
        "can_cache",
    ] {
        assert_eq!(e[cap], true, "{cap} in {e}");
    }
    assert_eq!(e["block_size_minimum"], 1);
    assert_eq!(e["block_size_preferred"], 4096);
    assert_eq!(e["block_size_maximum"], 32u64 << 20);
    assert!(e["contexts"].as_array().unwrap().iter().any(|c| c == "base:allocation"));
}

fn nbdinfo_map(fl: Flavor) {
    if !(have("nbdinfo") && have("qemu-io")) {
        return;
    }
    let s = Serve::start(fl, "16M");
    run_qemu_io(&s.uri(), &["write -P 0x7 4M 1M"]);
    let out = run_ok(Command::new("nbdinfo").arg("--map").arg("--json").arg(s.uri()));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let extents = v.as_array().unwrap();
    let covered: u64 = extents.iter().map(|e| e["length"].as_u64().unwrap()).sum();
    assert_eq!(covered, 16 << 20, "{out}");
    // The written MiB is data; the untouched start is a hole that reads as zeroes.
    let data = extents.iter().find(|e| e["offset"].as_u64() == Some(4 << 20)).expect(&out);
    assert_eq!(data["type"].as_u64(), Some(0), "{out}");
    assert_eq!(extents[0]["offset"], 0);
    assert_eq!(extents[0]["type"], 3, "{out}");
}

fn qemu_nbd_list(fl: Flavor) {
    if !have("qemu-nbd") {
        return;
    }
    let s = Serve::start(fl, "64M");
    let out = run_ok(Command::new("qemu-nbd").args([
        "--list",
        "-b",
        "127.0.0.1",
        "-p",
        &s.port().to_string(),
    ]));
    assert!(out.contains("export: 'twinblock'"), "{out}");
    assert!(out.contains(&format!("size:  {}", 64u64 << 20)), "{out}");
    assert!(out.contains("base:allocation"), "{out}");
    for flag in ["flush", "fua", "trim", "zeroes", "multi", "cache", "fast-zero"] {
        assert!(out.contains(flag), "{flag} missing from {out}");
    }
}

fn qemu_io(fl: Flavor) {
    if !have("qemu-io") {
        return;
    }
    let mut s = Serve::start(fl, "64M");
    let cmds = [
        "write -P 0xab 0 64k",
        "read -P 0xab 0 64k",
        "write -f -P 0xcd 1M 4k",
        "read -P 0xcd 1M 4k",
        "write -P 0x11 2M 64k",
        "write -z 2M 32k",
        "read -P 0 2M 32k",
        "read -P 0x11 2080k 32k",
        "write -P 0x22 3M 64k",
        "discard 3M 64k",
        "read -P 0 3M 64k",
        "flush",
        "aio_write -P 0x31 4M 64k",
        "aio_write -P 0x32 5M 64k",
        "aio_write -P 0x33 6M 64k",
        "aio_write -P 0x34 7M 64k",
        "aio_flush",
        "read -P 0x31 4M 64k",
        "read -P 0x32 5M 64k",
        "read -P 0x33 6M 64k",
        "read -P 0x34 7M 64k",
        "write -P 0x55 12345 1000",
        "read -P 0x55 12345 1000",
        "write -P 0x66 60M 4M",
        "read -P 0x66 60M 4M",
    ];
    let out = run_qemu_io(&s.uri(), &cmds);
    assert!(!out.to_lowercase().contains("fail"), "{out}");
    assert_eq!(out.matches("wrote ").count(), 11, "{out}");
    assert_eq!(out.matches("read ").count(), 11, "{out}");
    assert!(out.contains("discard 65536/65536"), "{out}");
    // Block n of the device is at byte n*4096 of the disk file.
    assert!(s.stop().success(), "{}", s.log());
    assert!(read_at(&s.disk, 0, 12345).iter().all(|&b| b == 0xab));
    assert!(read_at(&s.disk, 13345, 65536 - 13345).iter().all(|&b| b == 0xab));
    assert!(read_at(&s.disk, 1 << 20, 4096).iter().all(|&b| b == 0xcd));
    assert!(read_at(&s.disk, 2 << 20, 32768).iter().all(|&b| b == 0));
    assert!(read_at(&s.disk, 7 << 20, 65536).iter().all(|&b| b == 0x34));
    assert!(read_at(&s.disk, 12345, 1000).iter().all(|&b| b == 0x55));
}

fn nbdcopy_roundtrip(fl: Flavor) {
    if !have("nbdcopy") {
        return;
    }
    let mut s = Serve::start(fl, "64M");
    let src = s.dir.path().join("src.bin");
    let data = pattern(64 << 20, 42);
    std::fs::write(&src, &data).unwrap();
    run_ok(Command::new("nbdcopy").arg(&src).arg(s.uri()));
    let back = s.dir.path().join("back.bin");
    run_ok(Command::new("nbdcopy").arg(s.uri()).arg(&back));
    assert!(std::fs::read(&back).unwrap() == data, "64 MiB did not round-trip");
    assert!(s.stop().success(), "{}", s.log());
    assert!(std::fs::read(&s.disk).unwrap() == data, "disk file differs from what was written");
}

/// A disk file truncated under the server lost what lay past its new end:
/// reads there fail (EIO), and so must a copy of the device. BLOCK_STATUS
/// said the lost range was a hole that reads as zeroes, so nbdcopy (and
/// `qemu-img convert`) skipped reading it and wrote zeroes: an exit code
/// of 0 and a copy of 8 MiB of zeroes where acknowledged data had been.
fn nbdcopy_of_a_truncated_disk_fails(fl: Flavor) {
    if !(have("nbdcopy") && have("nbdinfo")) {
        return;
    }
    let mut s = Serve::start(fl, "16M");
    let src = s.dir.path().join("src.bin");
    std::fs::write(&src, pattern(16 << 20, 7)).unwrap();
    run_ok(Command::new("nbdcopy").arg(&src).arg(s.uri()));
    std::fs::OpenOptions::new().write(true).open(&s.disk).unwrap().set_len(8 << 20).unwrap();
    let map = Command::new("nbdinfo").arg("--map").arg(s.uri()).output().unwrap();
    let map = String::from_utf8_lossy(&map.stdout);
    assert!(!map.contains("hole"), "the lost range is mapped as a hole:\n{map}");
    let back = s.dir.path().join("back.bin");
    let out = Command::new("nbdcopy").arg(s.uri()).arg(&back).output().unwrap();
    assert!(
        !out.status.success(),
        "a copy of a truncated disk succeeded (its lost half copied as zeroes)"
    );
    assert!(s.stop().success(), "{}", s.log());
}

fn fio_verify(fl: Flavor) {
    if !have("fio") {
        return;
    }
    let s = Serve::start(fl, "128M");
    let out = run_ok(Command::new("fio").args([
        "--name=verify",
        "--ioengine=nbd",
        &format!("--uri={}", s.uri()),
        "--rw=randwrite",
        "--bsrange=4k-128k",
        "--iodepth=32",
        "--size=64M",
        "--fsync=32",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
        "--output-format=json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out[out.find('{').unwrap()..]).unwrap();
    let job = &v["jobs"][0];
    assert_eq!(job["error"], 0, "{out}");
    assert!(job["write"]["io_bytes"].as_u64().unwrap() >= 64 << 20, "{out}");
    assert!(
        job["read"]["io_bytes"].as_u64().unwrap() >= 64 << 20,
        "verify phase read it all back: {out}"
    );
}

/// fio writing (and reading) 512-byte sectors and 4 KiB blocks over the
/// same 64 KiB at once, then qemu-io: every FLUSH after it succeeds and
/// writes land. (Before, with `--direct` the sectors went through the page
/// cache beside the blocks' O_DIRECT writes; the kernel could not
/// invalidate the pages the sectors had dirtied, logged "Page cache
/// invalidation failure on direct I/O", and every FLUSH after it failed
/// with EIO.)
fn mixed_sector_and_block_writes(fl: Flavor) {
    if !(have("fio") && have("qemu-io")) {
        return;
    }
    let mut s = Serve::start(fl, "64M");
    let uri = format!("--uri={}", s.uri());
    let common = ["--ioengine=nbd", &uri, "--size=64k", "--time_based", "--runtime=2"];
    let out = run_ok(Command::new("fio").args(common).args([
        "--name=sectors",
        "--rw=randrw",
        "--bs=512",
        "--iodepth=8",
        "--name=blocks",
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=8",
    ]));
    assert!(out.contains("err= 0") && !out.contains("err= 5"), "{out}");
    let out = run_qemu_io(
        &s.uri(),
        &[
            "flush",
            "write -P 0x5a 512 512",
            "write -P 0x6b 8192 4k",
            "write -f -P 0x7c 13000 100",
            "flush",
            "read -P 0x5a 512 512",
            "read -P 0x6b 8192 4k",
            "read -P 0x7c 13000 100",
        ],
    );
    assert!(!out.to_lowercase().contains("fail"), "{out}");
    assert_eq!(out.matches("wrote ").count(), 3, "{out}");
    assert!(s.stop().success(), "{}", s.log());
    assert!(!s.log().contains("Input/output error"), "{}", s.log());
    assert!(read_at(&s.disk, 512, 512).iter().all(|&b| b == 0x5a));
    assert!(read_at(&s.disk, 8192, 4096).iter().all(|&b| b == 0x6b));
    assert!(read_at(&s.disk, 13000, 100).iter().all(|&b| b == 0x7c));
}

fn ext4_on_nbdfuse(fl: Flavor) {
    if !(root("mount and losetup")
        && have("nbdfuse")
        && have("losetup")
        && have("mkfs.ext4")
        && have("fsck.ext4"))
    {
        return;
    }
    let s = Serve::start(fl, "256M");
    let fuse_dir = s.dir.path().join("fuse");
    let mnt = s.dir.path().join("mnt");
    std::fs::create_dir_all(&fuse_dir).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    let pidfile = s.dir.path().join("nbdfuse.pid");
    let file = fuse_dir.join("disk");
    let mut fuse = Command::new("nbdfuse")
        .arg("-P")
        .arg(&pidfile)
        .arg(&file)
        .arg(s.uri())
        .spawn()
        .expect("start nbdfuse");
    for _ in 0..100 {
        if std::fs::metadata(&pidfile).is_ok_and(|m| m.len() > 0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let cleanup = Cleanup { fuse_dir: fuse_dir.clone(), mnt: mnt.clone(), loopdev: None };
    let mut cleanup = cleanup;
    let loopdev =
        run_ok(Command::new("losetup").args(["-f", "--show"]).arg(&file)).trim().to_string();
    cleanup.loopdev = Some(loopdev.clone());
    run_ok(Command::new("mkfs.ext4").args(["-q", "-F", &loopdev]));
    run_ok(Command::new("mount").arg(&loopdev).arg(&mnt));
    let data = pattern(24 << 20, 7);
    std::fs::write(mnt.join("big.bin"), &data).unwrap();
    for i in 0..200 {
        std::fs::write(mnt.join(format!("small-{i}.txt")), format!("entry {i}\n")).unwrap();
    }
    run_ok(&mut Command::new("sync"));
    assert!(
        retry("umount", Command::new("umount").arg(&mnt)),
        "{} stays busy; held by: {}",
        mnt.display(),
        holders(&mnt)
    );
    // fsck -n exits non-zero on any inconsistency.
    let fsck = run_ok(Command::new("fsck.ext4").args(["-f", "-n", &loopdev]));
    assert!(fsck.contains("Pass 5"), "{fsck}");
    run_ok(Command::new("mount").arg(&loopdev).arg(&mnt));
    assert!(std::fs::read(mnt.join("big.bin")).unwrap() == data, "file read back differs");
    for i in 0..200 {
        assert_eq!(
            std::fs::read_to_string(mnt.join(format!("small-{i}.txt"))).unwrap(),
            format!("entry {i}\n")
        );
    }
    drop(cleanup);
    // nbdfuse exits once its file system is unmounted; one that does not
    // (an unmount that could only be lazy) is killed rather than waited
    // for: a test must end.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fuse.try_wait().ok().flatten().is_none() {
        if std::time::Instant::now() > deadline {
            eprintln!("nbdfuse still running 10 s after its unmount: killed");
            let _ = fuse.kill();
            let _ = fuse.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Unmounts, detaches the loop device and the FUSE file, whatever happened.
struct Cleanup {
    fuse_dir: std::path::PathBuf,
    mnt: std::path::PathBuf,
    loopdev: Option<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // A busy mount (another process's open file or working directory
        // in it) is retried for a while, its holders named, and only then
        // detached lazily; the loop device and the FUSE file likewise.
        // Nothing here may wait for ever.
        if !retry("umount", Command::new("umount").arg(&self.mnt)) {
            eprintln!("{} busy; held by: {}", self.mnt.display(), holders(&self.mnt));
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        if let Some(l) = &self.loopdev {
            let _ = Command::new("losetup").args(["-d", l]).status();
        }
        if !retry("fusermount3", Command::new("fusermount3").arg("-u").arg(&self.fuse_dir)) {
            eprintln!("{} busy; held by: {}", self.fuse_dir.display(), holders(&self.fuse_dir));
            let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(&self.fuse_dir).status();
        }
    }
}

/// Runs `cmd` until it succeeds, for at most about ten seconds.
fn retry(what: &str, cmd: &mut Command) -> bool {
    for attempt in 0..50 {
        match cmd.stderr(std::process::Stdio::piped()).output() {
            Ok(o) if o.status.success() => return true,
            Ok(o) if attempt == 49 => {
                eprintln!("{what}: {}", String::from_utf8_lossy(&o.stderr).trim());
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("{what}: {e}");
                return false;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// The processes with an open file or their working directory under
/// `dir`, as `pid (name)`: what keeps a mount busy.
fn holders(dir: &Path) -> String {
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return "(no /proc)".into() };
    for p in procs.flatten() {
        let pid = p.file_name().to_string_lossy().to_string();
        if !pid.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let base = p.path();
        let mut links: Vec<std::path::PathBuf> =
            vec![base.join("cwd"), base.join("root"), base.join("exe")];
        if let Ok(fds) = std::fs::read_dir(base.join("fd")) {
            links.extend(fds.flatten().map(|f| f.path()));
        }
        if links.iter().any(|l| std::fs::read_link(l).is_ok_and(|t| t.starts_with(dir))) {
            let name = std::fs::read_to_string(base.join("comm")).unwrap_or_default();
            found.push(format!("{pid} ({})", name.trim()));
        }
    }
    if found.is_empty() {
        "no process (a kernel reference)".into()
    } else {
        found.join(", ")
    }
}
