//! A local disk that fails under a replicated pair: real `twinblock up`
//! processes, the Primary's disk a file whose writes start failing with
//! EIO on command (nbdkit's error filter through nbdfuse), real NBD
//! clients. Needs root (FUSE); nbdkit, nbdfuse and qemu-io.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::fusedisk::FuseDisk;
use common::nbd::Client;
use common::pair::{tail, Pair};
use common::*;

const BLOCK: u64 = 4096;

/// The writes of `answers` acknowledged (errno 0).
fn acknowledged(answers: &BTreeMap<u64, u32>) -> Vec<u64> {
    answers.iter().filter(|(_, e)| **e == 0).map(|(c, _)| *c).collect()
}

/// A pipelined writer (`qd` in flight) against `p`'s node 0, over the
/// first `blocks` blocks: write `cookie` fills block `cookie`; `fail` runs
/// once `fail_after` writes are answered, and one more write than `qd`
/// may then be in flight (it meets the failure whatever waits). Stops at
/// the first failed reply; every write sent must be answered. Returns
/// each write's errno (0: acknowledged) and the first cookie sent after
/// `fail`.
fn write_through_failure(
    p: &Pair,
    blocks: u64,
    mut qd: usize,
    fail_after: usize,
    fail: impl FnOnce(),
) -> (BTreeMap<u64, u32>, u64) {
    let mut c = Client::go_addr(p.nodes[0].nbd, false);
    let mut rd = c.s.try_clone().unwrap();
    rd.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let answers = Arc::new(Mutex::new(BTreeMap::new()));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (answers, in_flight, failed, done) =
            (answers.clone(), in_flight.clone(), failed.clone(), done.clone());
        std::thread::spawn(move || {
            let mut head = [0u8; 16];
            while rd.read_exact(&mut head).is_ok() {
                let errno = u32::from_be_bytes(head[4..8].try_into().unwrap());
                let cookie = u64::from_be_bytes(head[8..].try_into().unwrap());
                answers.lock().unwrap().insert(cookie, errno);
                if errno != 0 {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
                if in_flight.fetch_sub(1, Ordering::SeqCst) == 1
                    && failed.load(Ordering::SeqCst) > 0
                {
                    break;
                }
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let mut fail = Some(fail);
    let mut cookie = 0u64;
    let mut after = u64::MAX;
    while cookie < blocks && failed.load(Ordering::SeqCst) == 0 && !done.load(Ordering::SeqCst) {
        if in_flight.load(Ordering::SeqCst) >= qd {
            std::thread::sleep(Duration::from_micros(100));
            continue;
        }
        in_flight.fetch_add(1, Ordering::SeqCst);
        c.request(0, 1, cookie, cookie * BLOCK, BLOCK as u32, &cookie_block(cookie));
        cookie += 1;
        if answers.lock().unwrap().len() >= fail_after {
            if let Some(f) = fail.take() {
                f();
                qd += 1;
                after = cookie;
            }
        }
    }
    assert!(fail.is_none(), "the writer finished before the disk failed");
    reader.join().unwrap();
    let unanswered = in_flight.load(Ordering::SeqCst);
    assert_eq!(unanswered, 0, "{unanswered} writes never answered (the reader gave up after 30 s)");
    let answers = answers.lock().unwrap().clone();
    (answers, after)
}

/// A pair in protocol C whose Primary a has a [`FuseDisk::failing`]
/// disk, in sync; with `relay` (a delay), a reaches b through a `netem`
/// relay that the caller may stop (a partition), and the peer `timeout`
/// is 10 s. None if a tool or root is missing (outside CI).
fn failing_pair(
    dir: &std::path::Path,
    relay: Option<&str>,
) -> Option<(Pair, FuseDisk, Option<KillOnDrop>)> {
    if !(have("nbdkit") && have("nbdfuse") && have("qemu-io") && root("FUSE")) {
        return None;
    }
    let disk = FuseDisk::failing(dir, "16M");
    let mut p = Pair::prepare("C", "16M");
    p.set_disk(0, &disk.file());
    let netem = relay.map(|delay| {
        p.set_timeout("10s");
        p.relay_b(delay)
    });
    p.up_in_sync("the first sync", Duration::from_secs(60));
    Some((p, disk, netem))
}

/// A pair in protocol C whose node `i` (0: the Primary a, 1: b) has a
/// [`FuseDisk::hanging`] disk and `disk-timeout = "1s"`, in sync. None if
/// a tool or root is missing (outside CI).
fn hanging_pair(dir: &std::path::Path, i: usize) -> Option<(Pair, FuseDisk)> {
    if !(have("nbdkit") && have("nbdfuse") && have("qemu-io") && root("FUSE")) {
        return None;
    }
    let disk = FuseDisk::hanging(dir, "16M");
    let mut p = Pair::prepare("C", "16M");
    p.set_disk(i, &disk.file());
    p.configure("disk-timeout = \"1s\"");
    p.up_in_sync("the first sync", Duration::from_secs(60));
    Some((p, disk))
}

/// A C pair over a filesystem that can stop answering (ext4 on a loop
/// device over nbdkit's pause filter, through nbdfuse), `place` putting
/// files of the pair on it, up and in sync; None (the test skips) without
/// root or a tool. Bind all three, the disk first: dropped in reverse, the
/// nodes stop, the filesystem is unmounted, then the FUSE disk goes.
fn hanging_fs_pair(
    dir: &std::path::Path,
    place: impl FnOnce(&mut Pair, &Ext4),
) -> Option<(FuseDisk, Ext4, Pair)> {
    let tools = ["nbdkit", "nbdfuse", "qemu-io", "losetup", "mkfs.ext4"];
    if !(tools.iter().all(|t| have(t)) && root("FUSE, losetup and mount")) {
        return None;
    }
    let disk = FuseDisk::hanging(dir, "64M");
    let fs = Ext4::make(&disk.file(), &dir.join("fs"));
    let mut p = Pair::prepare("C", "16M");
    place(&mut p, &fs);
    p.up_in_sync("the first sync", Duration::from_secs(60));
    Some((disk, fs, p))
}

/// A qemu-io command against `uri`: its output, whatever its exit status.
fn qemu_io(uri: &str, cmd: &str) -> String {
    let out = run_timeout(
        Command::new("qemu-io").args(["-f", "raw", "-t", "none", uri, "-c", cmd]),
        Duration::from_secs(30),
    );
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// The Primary's disk starts failing writes mid-stream (16 in flight,
/// protocol C). Every write it answered OK is on the Secondary; the
/// failed ones are answered EIO, and so is every request after them; the
/// disk shows `Failed` with the reason; reads of the detached disk fail
/// too. The operator's procedure of "Replacing a failed disk" (switch
/// over, restart the failed node on a working disk) ends with the two
/// disks byte-identical, the new Primary's data on both.
#[test]
fn a_primary_whose_disk_fails_acknowledges_only_what_the_peer_holds() {
    let dir = tempfile::Builder::new().prefix("tb-eio").tempdir_in(test_tmp()).unwrap();
    let Some((mut p, disk, _)) = failing_pair(dir.path(), None) else { return };

    let (answers, _) =
        write_through_failure(&p, (16 << 20) / BLOCK, 16, 300, || disk.fail_writes(true));
    let ok = acknowledged(&answers);
    let failed: Vec<(u64, u32)> =
        answers.iter().filter(|(_, e)| **e != 0).map(|(c, e)| (*c, *e)).collect();
    assert!(ok.len() >= 300 && !failed.is_empty(), "{} ok, {} failed", ok.len(), failed.len());
    assert!(failed.iter().all(|(_, e)| *e == 5), "not EIO: {failed:?}");
    eprintln!("{} writes acknowledged, {} failed with EIO", ok.len(), failed.len());

    let a = p.status(0);
    assert_eq!(a["disk"], "Failed", "{a}");
    let why = a["last_error"].as_str().unwrap_or_default().to_string();
    assert!(why.contains("local disk failed"), "{why}");
    // Every acknowledged write is on the Secondary.
    let b = std::fs::read(&p.nodes[1].disk).unwrap();
    let missing = cookie_blocks_missing(&b, &ok);
    assert!(missing.is_empty(), "acknowledged writes missing on b: {missing:?}");
    // The detached disk serves nothing and takes nothing (its writes work
    // again, the node does not trust it).
    disk.fail_writes(false);
    for (what, cmd) in [("write", "write -P 0x5a 0 4k"), ("read", "read 0 4k")] {
        let out = qemu_io(&p.uri(0), cmd);
        assert!(out.contains("Input/output error"), "a {what} on a Failed disk: {out}");
    }

    // Switch over, then restart the failed node: a full sync from b.
    p.ok(&["secondary"], 0);
    p.ok(&["disconnect"], 1);
    p.ok(&["primary"], 1);
    p.ok(&["connect"], 1);
    assert!(p.down(0).success(), "a did not stop: {}", tail(&p.log(0)));
    p.up(0);
    p.wait_synced("the full sync onto the failed node", Duration::from_secs(60));
    let a = p.status(0);
    assert_eq!(a["disk"], "UpToDate", "{a}");
    assert_eq!(p.status(1)["role"], "Primary");
    p.wait_drained();
    assert!(
        std::fs::read(disk.file()).unwrap() == std::fs::read(&p.nodes[1].disk).unwrap(),
        "the disks differ after the full sync"
    );
}

/// `disk-timeout`: the Primary's disk stops answering (nbdkit's pause
/// filter) under a pipelined writer (8 in flight, protocol C). After
/// `disk-timeout` (1 s) the disk is detached (`Failed`, "no completion
/// for 1s"), and the writes that waited for it are answered without it:
/// OK, as b applied them; what comes after gets EIO. None stays
/// unanswered (without the timeout they all waited for the disk, and the
/// writer gives up after 30 s). Once the disk answers again, the detached
/// disk stays detached.
#[test]
fn a_primary_whose_disk_stops_answering_detaches_it_after_disk_timeout() {
    let dir = tempfile::Builder::new().prefix("tb-hang").tempdir_in(test_tmp()).unwrap();
    let Some((mut p, disk)) = hanging_pair(dir.path(), 0) else { return };
    // (Dropped before the pair, which kills its nodes and waits for them.)
    let _resume = disk.resume_on_drop();

    let mut stalled = None;
    let (answers, after) = write_through_failure(&p, 1024, 8, 100, || {
        disk.hang(true);
        stalled = Some(std::time::Instant::now());
    });
    let waited = stalled.expect("the disk stalled").elapsed();
    let ok = acknowledged(&answers);
    eprintln!(
        "{} writes acknowledged, {} failed, answered {waited:?} after the stall",
        ok.len(),
        answers.len() - ok.len()
    );
    // The writes in flight at the stall waited for the timeout, then were
    // answered OK (b holds them).
    assert!(waited >= Duration::from_secs(1), "answered before disk-timeout: {waited:?}");
    assert!(waited < Duration::from_secs(10), "answered {waited:?} after the stall");
    let before: Vec<u64> = (0..after).filter(|c| answers.get(c) != Some(&0)).collect();
    assert!(before.is_empty(), "writes in flight at the stall not acknowledged: {before:?}");
    let a = p.status(0);
    assert_eq!(a["disk"], "Failed", "{a}");
    let why = a["last_error"].as_str().unwrap_or_default().to_string();
    assert!(why.contains("no completion for 1s"), "{why}");
    let b = std::fs::read(&p.nodes[1].disk).unwrap();
    let missing = cookie_blocks_missing(&b, &ok);
    assert!(missing.is_empty(), "acknowledged writes missing on b: {missing:?}");
    let out = qemu_io(&p.uri(0), "read 0 4k");
    assert!(out.contains("Input/output error"), "a read on a Failed disk: {out}");
    // The disk answers again (its late completions are ignored): the
    // detached disk stays detached.
    disk.hang(false);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(p.status(0)["disk"], "Failed");
    assert!(p.down(0).success(), "a did not stop: {}", tail(&p.log(0)));
}

/// An ext4 filesystem made on `device` and mounted at `mnt`; unmounted and
/// its loop device detached on drop.
struct Ext4 {
    mnt: std::path::PathBuf,
    loopdev: String,
}

impl Ext4 {
    fn make(device: &std::path::Path, mnt: &std::path::Path) -> Ext4 {
        Ext4::make_with(device, mnt, &[])
    }

    /// With extra `mkfs.ext4` options.
    fn make_with(device: &std::path::Path, mnt: &std::path::Path, options: &[&str]) -> Ext4 {
        std::fs::create_dir_all(mnt).unwrap();
        let loopdev =
            run_ok(Command::new("losetup").args(["-f", "--show"]).arg(device)).trim().to_string();
        let fs = Ext4 { mnt: mnt.to_path_buf(), loopdev };
        run_ok(Command::new("mkfs.ext4").args(["-q", "-F"]).args(options).arg(&fs.loopdev));
        run_ok(Command::new("mount").arg(&fs.loopdev).arg(mnt));
        fs
    }

    /// Without a journal, holding `name` of `size` bytes written in full
    /// and synced: a later sync of its overwrites is the data's writeback
    /// alone (no allocation, no journal commit that a failing device
    /// would abort).
    fn plain_with_file(
        device: &std::path::Path,
        mnt: &std::path::Path,
        name: &str,
        size: usize,
    ) -> (Ext4, std::path::PathBuf) {
        let fs = Ext4::make_with(device, mnt, &["-O", "^has_journal"]);
        let file = mnt.join(name);
        std::fs::write(&file, vec![0x11u8; size]).unwrap();
        std::fs::File::open(&file).unwrap().sync_all().unwrap();
        (fs, file)
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = Command::new("losetup").args(["-d", &self.loopdev]).status();
    }
}

/// `disk-timeout` with the Primary's disk file and its metadata on one
/// filesystem that stops answering (ext4 on a loop device over nbdkit's
/// pause filter, through nbdfuse): a write lands in the page cache, the
/// FLUSH after it hangs in the filesystem's sync, and the disk is
/// detached after 1 s. b completed that FLUSH, but it is not answered OK
/// on b's word alone: the record saying a's disk is detached cannot be
/// saved on that filesystem either, and without it a power loss would
/// bring a back UpToDate over a disk lacking the flushed write (whose
/// activity-log extents would then move from a over b's copy; found by a
/// unit test). It gets EIO once that save has had its `disk-timeout`.
#[test]
fn a_flush_whose_disk_and_metadata_hang_is_not_answered_on_the_peers_word() {
    let dir = tempfile::Builder::new().prefix("tb-hangfs").tempdir_in(test_tmp()).unwrap();
    // (Dropped in reverse: the disk answers again, the nodes stop, the
    // filesystem is unmounted, then the FUSE disk goes.)
    let Some((disk, _fs, p)) = hanging_fs_pair(dir.path(), |p, fs| {
        p.set_disk(0, &fs.mnt.join("a.img"));
        p.set_meta(0, &fs.mnt.join("a.meta"));
        p.configure("disk-timeout = \"1s\"");
    }) else {
        return;
    };
    let _resume = disk.resume_on_drop();
    let out = qemu_io(&p.uri(0), "write -P 0x11 0 4k");
    assert!(out.contains("wrote 4096"), "{out}");
    disk.hang(true);
    // Over a plain NBD client: the write's and the FLUSH's own answers.
    let mut c = Client::go_addr(p.nodes[0].nbd, false);
    c.s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let t = std::time::Instant::now();
    c.request(0, 1, 1, 0, 4096, &[0x22; 4096]); // WRITE
    assert_eq!(c.simple_reply(), (0, 1), "the write did not reach the page cache");
    c.request(0, 3, 2, 0, 0, &[]); // FLUSH
    let flush = c.simple_reply();
    let took = t.elapsed();
    eprintln!("FLUSH answered {flush:?} after {took:?}");
    assert_eq!(flush, (5, 2), "the FLUSH was not failed with EIO");
    assert!(took >= Duration::from_secs(1), "answered before disk-timeout: {took:?}");
    let a = p.status(0);
    assert_eq!(a["disk"], "Failed", "{a}");
    // b holds the write (it was replicated; its FLUSH there completed).
    let b = std::fs::read(&p.nodes[1].disk).unwrap();
    assert!(b[..4096].iter().all(|&x| x == 0x22), "b lacks the write");
}

/// A Secondary promoted while a write it received still waits to be
/// issued (its activity-log transaction hangs: its metadata is on a
/// filesystem that stopped answering) serves no read before that write.
/// A read answered with the older data, the write landing after it, is
/// what a filesystem mounted on the new Primary cannot survive (journal
/// replay reads a block that then changes under it). Protocol C and a
/// killed before b applied it: the write was never acknowledged, either
/// answer would do, but not both in turn (`Core::reads_settled`).
#[test]
fn a_read_on_a_new_primary_waits_for_the_writes_it_received() {
    let dir = tempfile::Builder::new().prefix("tb-hangmeta").tempdir_in(test_tmp()).unwrap();
    // (A peer timeout well above the second the write is given below:
    // with 1 s, a loaded CI machine saw a give b up — "completed no
    // operation for 1s" — before the check, and resync the write.)
    let Some((disk, _fs, mut p)) = hanging_fs_pair(dir.path(), |p, fs| {
        p.set_meta(1, &fs.mnt.join("b.meta"));
        p.set_timeout("4s");
    }) else {
        return;
    };
    let _resume = disk.resume_on_drop();
    // b has taken in a write (it records that once) and is idle.
    let out = qemu_io(&p.uri(0), "write -P 0x11 0 4k");
    assert!(out.contains("wrote 4096"), "{out}");
    p.wait_drained();
    disk.hang(true);
    // A write to an extent b's activity log does not hold: b receives it
    // and waits for the log's transaction on the hung filesystem.
    const AT: u64 = 8 << 20;
    let mut w = Client::go_addr(p.nodes[0].nbd, false);
    w.request(0, 1, 1, AT, 4096, &[0x22; 4096]); // WRITE
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(p.status(0)["in_flight"], 1, "the write is not waiting for b");
    p.kill(0);
    p.wait_unlinked(1);
    // b's promotion saves its record on the hung filesystem too: the verb
    // waits, the role is Primary at once.
    let mut promote = Command::new(BIN)
        .args(["primary", "--config"])
        .arg(&p.config)
        .args(["--node", "b"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    p.wait_one(1, "b to be Primary", |b| b["role"] == "Primary");
    let mut r = Client::go_addr(p.nodes[1].nbd, false);
    r.request(0, 0, 2, AT, 4096, &[]); // READ
    r.s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let early = r.s.peek(&mut [0u8; 1]);
    assert!(
        early.is_err(),
        "b answered a read while the write it received waited to be issued: {:?}",
        {
            r.s.set_read_timeout(None).unwrap();
            (r.simple_reply(), r.bytes(8))
        }
    );
    disk.hang(false);
    r.s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    assert_eq!(r.simple_reply(), (0, 2), "the read failed");
    assert!(r.bytes(4096).iter().all(|&x| x == 0x22), "the read misses the write b received");
    let done = wait_exit(&mut promote, Duration::from_secs(20), "primary did not return");
    assert!(done.success(), "primary failed once the filesystem answered");
    let out = qemu_io(&p.uri(1), "read -P 0x22 8M 4k");
    assert!(out.contains("read 4096/4096") && !out.contains("fail"), "{out}");
}

/// `down` on a node whose disk stopped answering (detached by
/// `disk-timeout`), with the disk still hung: the stop completes (no final
/// flush of the detached disk, no wait for its lane) and the NBD export
/// closes. The process itself exits once the kernel gives back the thread
/// whose write waits in the disk (a FUSE request already taken by the
/// server, like a hung block device, cannot be interrupted): here, when the
/// disk answers again; `down` returns then (before, it returned as soon as
/// the main thread had exited, the disk file still open).
#[test]
fn a_node_whose_disk_hangs_stops_on_down() {
    let dir = tempfile::Builder::new().prefix("tb-hang").tempdir_in(test_tmp()).unwrap();
    let Some((mut p, disk)) = hanging_pair(dir.path(), 0) else { return };
    let _resume = disk.resume_on_drop();
    disk.hang(true);
    // One write meets the hung disk: answered once the disk is detached
    // (b applied it). A read issued behind it on the same connection (it
    // waits for the writes before it) fails then, instead of waiting for
    // the disk.
    let out = run_timeout(
        Command::new("qemu-io").args(["-f", "raw", "-t", "none", &p.uri(0)]).args([
            "-c",
            "aio_write -P 0x33 0 4k",
            "-c",
            "sleep 300",
            "-c",
            "aio_read 0 4k",
            "-c",
            "aio_flush",
        ]),
        Duration::from_secs(30),
    );
    let out =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.contains("wrote 4096/4096"), "the write the peer applied: {out}");
    assert!(out.contains("Input/output error"), "the read behind the hung write: {out}");
    assert_eq!(p.status(0)["disk"], "Failed");
    // `down` waits for the process to exit, which it cannot while the
    // disk holds a thread of it (the files close with the last thread).
    let mut down = Command::new(BIN)
        .args(["down", "--config"])
        .arg(&p.config)
        .args(["--node", "a"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !p.log(0).contains("twinblock::up: stopped") {
        assert!(
            std::time::Instant::now() < deadline,
            "the stop did not complete: {}",
            tail(&p.log(0))
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(p.log(0).contains("stopping without a final flush"), "{}", tail(&p.log(0)));
    assert!(std::net::TcpStream::connect(p.nodes[0].nbd).is_err(), "the export is still open");
    std::thread::sleep(Duration::from_secs(1));
    assert!(down.try_wait().unwrap().is_none(), "down returned while a thread of a still waits");
    disk.hang(false);
    // The disk answers: the process exits, and `down` returns.
    let ten = Duration::from_secs(10);
    let done = wait_exit(&mut down, ten, "down did not return once the disk answered");
    assert!(done.success(), "down failed once the disk answered");
    let mut child = p.nodes[0].child.take().expect("a runs");
    let status = wait_exit(&mut child, ten, "a did not exit once its disk answered");
    assert!(status.success(), "a exited with {status}: {}", tail(&p.log(0)));
}

/// `disk-timeout` covers the Primary's reads too (an application read is
/// the shell's own operation on the disk): a read the disk never answers
/// fails after the timeout and detaches the disk, with nothing written.
#[test]
fn a_read_the_disk_never_answers_detaches_it_after_disk_timeout() {
    let dir = tempfile::Builder::new().prefix("tb-hang").tempdir_in(test_tmp()).unwrap();
    let Some((p, disk)) = hanging_pair(dir.path(), 0) else { return };
    let _resume = disk.resume_on_drop();
    // The disk's pages out of the page cache: the read must reach the disk.
    let f = std::fs::File::open(disk.file()).unwrap();
    // SAFETY: posix_fadvise on an open file descriptor.
    let r = unsafe {
        libc::posix_fadvise(std::os::fd::AsRawFd::as_raw_fd(&f), 0, 0, libc::POSIX_FADV_DONTNEED)
    };
    assert_eq!(r, 0, "posix_fadvise");
    disk.hang(true);
    let started = std::time::Instant::now();
    let out = qemu_io(&p.uri(0), "read 8M 4k");
    let took = started.elapsed();
    assert!(out.contains("Input/output error"), "a read of the hung disk: {out}");
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(10), "{took:?}");
    let a = p.status(0);
    assert_eq!(a["disk"], "Failed", "{a}");
    let why = a["last_error"].as_str().unwrap_or_default().to_string();
    assert!(why.contains("a read: no completion for 1s"), "{why}");
}

/// An application read the disk fails (EIO) detaches the disk, as a
/// failed write does: the node stayed UpToDate, connected and promotable
/// with a disk whose every read failed, and said nothing (found by
/// review, helper-87 D4). The read fails; the peer holds the data.
#[test]
fn a_read_the_disk_fails_detaches_it() {
    if !(have("nbdkit") && have("nbdfuse") && have("qemu-io") && root("FUSE")) {
        return;
    }
    let dir = tempfile::Builder::new().prefix("tb-eio").tempdir_in(test_tmp()).unwrap();
    let disk = FuseDisk::failing_reads(dir.path(), "16M");
    let mut p = Pair::prepare("C", "16M");
    p.set_disk(0, &disk.file());
    p.up_in_sync("the first sync", Duration::from_secs(60));
    let written = qemu_io(&p.uri(0), "write -P 0x5a 8M 4k");
    assert!(!written.contains("error"), "{written}");
    p.wait_drained();
    // The disk's pages out of the page cache: the read must reach the disk.
    let f = std::fs::File::open(disk.file()).unwrap();
    // SAFETY: posix_fadvise on an open file descriptor.
    let r = unsafe {
        libc::posix_fadvise(std::os::fd::AsRawFd::as_raw_fd(&f), 0, 0, libc::POSIX_FADV_DONTNEED)
    };
    assert_eq!(r, 0, "posix_fadvise");
    disk.fail_writes(true);
    let out = qemu_io(&p.uri(0), "read 8M 4k");
    assert!(out.contains("Input/output error"), "a read of the failing disk: {out}");
    let a = p.status(0);
    assert_eq!(a["disk"], "Failed", "{a}");
    let why = a["last_error"].as_str().unwrap_or_default().to_string();
    assert!(why.contains("application read"), "{why}");
    assert_eq!(p.status(1)["disk"], "UpToDate");
    let b = std::fs::read(&p.nodes[1].disk).unwrap();
    assert!(b[8 << 20..(8 << 20) + 4096].iter().all(|&x| x == 0x5a), "b lacks the write");
}

/// Writes waiting for a peer that stopped answering (a partition: the
/// relay to b is gone), their local part done, when another write fails
/// on the local disk: that failure detaches the disk and ends the session,
/// and those waiting writes are held by the failed disk alone. They fail
/// with EIO: answered OK (as before the fix, once the new generation was
/// saved) they were acknowledged writes that b never got. (A partition
/// the Primary notices first is another story: writes go on alone, on a
/// good disk, as the design allows.)
#[test]
fn writes_waiting_for_a_partitioned_peer_fail_with_the_local_disk() {
    let dir = tempfile::Builder::new().prefix("tb-eio").tempdir_in(test_tmp()).unwrap();
    // 20 ms each way: the writes in flight when the relay stops are stuck
    // in it.
    let Some((p, disk, netem)) = failing_pair(dir.path(), Some("20ms")) else { return };
    let relay = netem.as_ref().expect("a relay").0.id() as libc::pid_t;
    let (answers, after) = write_through_failure(&p, 1024, 16, 100, || {
        // The partition: the relay stops (no ICMP error tells a the link
        // is gone; the peer is lost only after `timeout`).
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(relay, libc::SIGSTOP) }, 0);
        std::thread::sleep(Duration::from_millis(300));
        disk.fail_writes(true);
    });
    let ok = acknowledged(&answers);
    let waiting_failed = answers.iter().filter(|(c, e)| **c < after && **e != 0).count();
    eprintln!("{} writes acknowledged, {waiting_failed} waiting ones failed", ok.len());
    assert_eq!(p.status(0)["disk"], "Failed");
    if let Some(line) = p.gave_up_peer(0) {
        panic!("a gave up its peer before the disk failed: {line}");
    }
    assert!(waiting_failed >= 1, "no write was waiting for the peer at the failure");
    let b = std::fs::read(&p.nodes[1].disk).unwrap();
    let missing = cookie_blocks_missing(&b, &ok);
    assert!(
        missing.is_empty(),
        "writes acknowledged that b does not hold: {missing:?}\n{}",
        tail(&p.log(0))
    );
}

/// The second of the day of a log line (`2026-11-30T22:56:48.696734Z ...`).
fn log_seconds(line: &str) -> Option<f64> {
    let time = line.split_whitespace().next()?.split('T').nth(1)?.trim_end_matches('Z');
    let mut parts = time.split(':');
    let (h, m, s): (f64, f64, f64) =
        (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
    Some(h * 3600.0 + m * 60.0 + s)
}

/// The Secondary b (the node that accepts the link) on a disk that stops
/// answering while it applies a replicated write: after `disk-timeout` b
/// detaches its disk and drops the link; a goes on alone (the write is on
/// its disk, the block marked for b). While the write b issued is still in
/// its disk, b refuses every link a dials, and says why: a's status names
/// b's reason, a dials less and less often, and each side logs the
/// refusal once, not at every attempt. Once the disk answers, b takes the
/// link and a full sync onto the disk it detached: both disks are equal.
#[test]
fn a_secondary_whose_disk_hangs_refuses_the_link_until_it_answers() {
    let dir = tempfile::Builder::new().prefix("tb-hang").tempdir_in(test_tmp()).unwrap();
    let Some((p, disk)) = hanging_pair(dir.path(), 1) else { return };
    // (Dropped before the pair, which kills its nodes and waits for them.)
    let _resume = disk.resume_on_drop();

    disk.hang(true);
    // The write waits for b's apply until b detaches its disk; it is on
    // a's disk, so a answers it then.
    let out = qemu_io(&p.uri(0), "write -P 0x5a 1M 64k");
    assert!(out.contains("wrote 65536/65536"), "the write before b's disk hung: {out}");
    let refused = "b refused the link: the local disk is detached with operations it never \
                   completed";
    p.wait("b refusing a's links", Duration::from_secs(20), |a, _| {
        a["last_error"].as_str() == Some(refused)
    });
    // Before the refusals, the end of the session said why too.
    let detached = "b closed the link: the local disk failed (no completion for 1s)";
    assert!(p.log(0).contains(detached), "{}", tail(&p.log(0)));
    let b = p.status(1);
    assert_eq!(b["disk"], "Failed", "{b}");
    assert!(b["last_error"].as_str().unwrap_or_default().contains("no completion for 1s"), "{b}");
    // a writes on alone, for longer than a few of its dial intervals.
    let out = qemu_io(&p.uri(0), "write -P 0x5b 2M 64k");
    assert!(out.contains("wrote 65536/65536"), "a write while b refuses: {out}");
    std::thread::sleep(Duration::from_secs(3));
    // Less and less often: by now 800 ms apart (the tests' `connect-interval`
    // of 100 ms, doubled up to 8 times that), where it was every 100 ms.
    // (A loaded machine only stretches the gaps.)
    let dials: Vec<f64> = p
        .log(0)
        .lines()
        .filter(|l| l.contains("replication link up"))
        .filter_map(log_seconds)
        .collect();
    // (Across midnight, a day later.)
    let last: Vec<f64> =
        dials.windows(2).rev().take(2).map(|w| (w[1] - w[0]).rem_euclid(86400.0) * 1e3).collect();
    assert!(
        last.len() == 2 && last.iter().all(|&gap| gap >= 700.0),
        "a's last dials {last:?} ms apart: {}",
        tail(&p.log(0))
    );
    let a = p.status(0);
    assert_eq!(a["connection"], "Connecting", "{a}");
    assert_eq!(a["out_of_sync_bytes"], 2 * 65536, "{a}");
    assert_eq!(a["last_error"], refused, "{a}");
    // Each side says it once (later refusals are debug lines).
    let warnings = |i: usize, what: &str| {
        p.log(i).lines().filter(|l| l.contains(" WARN ") && l.contains(what)).count()
    };
    assert_eq!(warnings(1, "refused a replication connection"), 1, "{}", tail(&p.log(1)));
    assert_eq!(warnings(0, "refused the link"), 1, "{}", tail(&p.log(0)));

    disk.hang(false);
    p.wait_synced("b's sync once its disk answers", Duration::from_secs(60));
    let (a, b) = (p.status(0), p.status(1));
    assert_eq!((&a["disk"], &b["disk"]), (&"UpToDate".into(), &"UpToDate".into()), "{a}\n{b}");
    assert_eq!(a["last_error"], serde_json::Value::Null, "{a}");
    let (on_a, on_b) =
        (std::fs::read(&p.nodes[0].disk).unwrap(), std::fs::read(disk.file()).unwrap());
    assert_eq!(on_b[1 << 20..(1 << 20) + 65536], [0x5au8; 65536][..], "the first write on b");
    assert_eq!(on_b[2 << 20..(2 << 20) + 65536], [0x5bu8; 65536][..], "the second write on b");
    assert!(on_a == on_b, "a's and b's disks differ after the sync");
}

const MIB: u64 = 1 << 20;
/// Writes of 1 MiB a [`stream_writes`] client sends.
const WRITES: u64 = 80;

/// A pair in protocol C (96 MiB) whose b has a [`FuseDisk::hanging`] disk
/// with its dirty pages capped (b's writes then wait for the paused disk,
/// not for the page cache to fill), in sync, with `timeout`. None if a
/// tool or root is missing (outside CI).
fn stalling_pair(dir: &std::path::Path, timeout: &str) -> Option<(Pair, FuseDisk)> {
    if !(have("nbdkit") && have("nbdfuse") && have("qemu-io") && root("FUSE")) {
        return None;
    }
    let disk = FuseDisk::hanging(dir, "96M");
    disk.dirty_limit_1m();
    let mut p = Pair::prepare("C", "96M");
    p.set_disk(1, &disk.file());
    p.set_timeout(timeout);
    p.up_in_sync("the first sync", Duration::from_secs(60));
    Some((p, disk))
}

/// [`WRITES`] writes of 1 MiB to `addr`, write `i` at MiB `i` filled with
/// `i + 1`, pipelined (a's in-flight budget takes 64 of them): each
/// write's errno once all are answered (a read timeout of 120 s ends it).
fn stream_writes(addr: std::net::SocketAddr) -> std::thread::JoinHandle<BTreeMap<u64, u32>> {
    std::thread::spawn(move || {
        let mut c = Client::go_addr(addr, false);
        let mut rd = c.s.try_clone().unwrap();
        rd.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let replies = std::thread::spawn(move || {
            let mut errnos = BTreeMap::new();
            let mut head = [0u8; 16];
            while errnos.len() < WRITES as usize && rd.read_exact(&mut head).is_ok() {
                let errno = u32::from_be_bytes(head[4..8].try_into().unwrap());
                errnos.insert(u64::from_be_bytes(head[8..].try_into().unwrap()), errno);
            }
            errnos
        });
        for i in 0..WRITES {
            c.request(0, 1, i, i * MIB, MIB as u32, &vec![i as u8 + 1; MIB as usize]);
        }
        replies.join().unwrap()
    })
}

/// Every write of [`stream_writes`] answered OK, on both disks, and the
/// disks identical.
fn assert_streamed(p: &Pair, disk: &FuseDisk, errnos: &BTreeMap<u64, u32>) {
    assert_eq!(errnos.len(), WRITES as usize, "every write answered");
    assert!(errnos.values().all(|e| *e == 0), "{errnos:?}");
    let (on_a, on_b) =
        (std::fs::read(&p.nodes[0].disk).unwrap(), std::fs::read(disk.file()).unwrap());
    for i in 0..WRITES as usize {
        assert!(on_a[i << 20..(i + 1) << 20].iter().all(|&x| x == i as u8 + 1), "write {i} on a");
    }
    assert!(on_a == on_b, "a's and b's disks differ");
}

/// a's UDP bytes sent to b once they stop growing (keep-alives and
/// acknowledgements aside: under 64 KiB in 1.5 s), after they first grew
/// past `past` bytes; `status` looks at the link every `ping-interval`,
/// so one look may lag by that. Fails after 60 s, or if `writer` ends.
fn sent_when_settled(
    p: &Pair,
    past: u64,
    writer: Option<&std::thread::JoinHandle<BTreeMap<u64, u32>>>,
) -> u64 {
    let sent = || p.status(0)["link"]["bytes_sent"].as_u64().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut last = (sent(), std::time::Instant::now());
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let now = sent();
        if now > last.0 + (64 << 10) || now <= past {
            last = (now, std::time::Instant::now());
        } else if last.1.elapsed() >= Duration::from_millis(1500) {
            return now;
        }
        assert!(std::time::Instant::now() < deadline, "a's sending never settled: {now} bytes");
        if writer.is_some_and(|w| w.is_finished()) {
            panic!("the writes finished on a hung disk: {}\n{}", p.status(0), p.status(1));
        }
    }
}

/// A Secondary whose disk stops answering while large writes stream in:
/// its store lane fills past its bound (twice the link's flow-control
/// window), its link's reader stops taking in frames, and QUIC's flow
/// control holds the Primary back. Meanwhile the link is still watched:
/// b's `status` shows a's keep-alives arriving (its session's tick goes on
/// while the reader waits for room). When the disk answers, every write
/// completes and the disks are identical.
#[test]
fn a_secondary_whose_disk_stalls_holds_the_primary_back_and_its_link_stays_watched() {
    let dir = tempfile::Builder::new().prefix("tb-lane").tempdir_in(test_tmp()).unwrap();
    // a gives up a peer that acknowledges nothing for `timeout`: longer
    // than the test's stall.
    let Some((p, disk)) = stalling_pair(dir.path(), "60s") else { return };
    let _resume = disk.resume_on_drop();
    let received = |p: &Pair| p.status(1)["link"]["datagrams_received"].as_u64().unwrap();
    let before = sent_when_settled(&p, 0, None);

    disk.hang(true);
    let writer = stream_writes(p.nodes[0].nbd);
    // a's sending stops once b's lane and the window are full. b's reader
    // stops only with more than 32 MiB in the lane.
    let stalled = sent_when_settled(&p, before + 32 * MIB, Some(&writer)) - before;
    let a = p.status(0);
    assert_eq!(a["connection"], "Connected", "{a}");
    assert!(a["in_flight"].as_u64().unwrap() > 0, "{a}");
    // What b took in: the lane's 32 MiB and the write that crossed it, the
    // rest of the frames one read decoded and a part-read frame (1 MiB
    // each at most here), and the 16 MiB QUIC window unread; QUIC's
    // headers and tags on top (about 0.5% in 8951-byte packets). Without
    // the reader's pause a sends all that a's NBD budget takes in (64 MiB
    // and more).
    assert!(stalled < 60 * MIB, "a sent {} MiB into the stall", stalled as f64 / MIB as f64);
    // b's view of the link goes on: a's keep-alives (every 250 ms) arrive.
    let (r0, b0) = (received(&p), p.status(1));
    std::thread::sleep(Duration::from_millis(1500));
    let (r1, b1) = (received(&p), p.status(1));
    assert!(r1 >= r0 + 3, "b's link counters froze while its lane was full: {b0}\n{b1}");
    assert_eq!(b1["connection"], "Connected", "{b1}");
    assert_eq!(p.status(0)["connection"], "Connected", "a still waits for b");

    disk.hang(false);
    let errnos = writer.join().unwrap();
    p.wait_drained();
    assert_streamed(&p, &disk, &errnos);
}

/// As above, but with the default `timeout` (3 s), shorter than the
/// stall: a gives b up and its writes go on alone; the session ends on
/// both sides while b's disk still hangs (a dials b again and may give it
/// up again meanwhile); once the disk answers b resyncs and the disks are
/// identical.
#[test]
fn a_secondary_given_up_while_its_lane_is_full_resyncs_once_its_disk_answers() {
    let dir = tempfile::Builder::new().prefix("tb-lane").tempdir_in(test_tmp()).unwrap();
    let Some((p, disk)) = stalling_pair(dir.path(), "3s") else { return };
    let _resume = disk.resume_on_drop();
    let ended = |i: usize| p.log(i).matches("replication session ended").count();
    let (a0, b0) = (ended(0), ended(1));

    disk.hang(true);
    let errnos = stream_writes(p.nodes[0].nbd).join().unwrap();
    // Answered while b's disk still hangs: a went on alone.
    assert!(errnos.values().all(|e| *e == 0), "{errnos:?}");
    assert!(p.gave_up_peer(0).is_some() || p.gave_up_peer(1).is_some(), "{}", tail(&p.log(0)));
    assert_eq!(p.status(0)["out_of_sync_bytes"].as_u64().unwrap() % MIB, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ended(0) == a0 || ended(1) == b0 {
        assert!(
            std::time::Instant::now() < deadline,
            "a session outlived the other side's give-up while b's disk hung:\n{}\n{}",
            tail(&p.log(0)),
            tail(&p.log(1))
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    disk.hang(false);
    p.wait_synced("b's resync once its disk answers", Duration::from_secs(60));
    assert_streamed(&p, &disk, &errnos);
}

/// An operator disconnects a from a b whose disk stalls with its lane
/// full: a's writer is held by QUIC's flow control, as b reads nothing.
/// The disconnect takes effect within seconds (a waits at most 2 s for
/// b to confirm its Outdate), not when b would give a up
/// (`timeout`, 60 s here): a's close is not queued behind the held frames
/// (they get half a second, then the connection closes with the core's
/// reason), so b's session ends within seconds and b's `last_error` says
/// why; a's writes go on alone.
/// Once the disk answers, `connect` resyncs b and the disks are
/// identical.
#[test]
fn a_disconnect_from_a_peer_whose_lane_is_full_takes_effect_at_once() {
    let dir = tempfile::Builder::new().prefix("tb-lane").tempdir_in(test_tmp()).unwrap();
    let Some((p, disk)) = stalling_pair(dir.path(), "60s") else { return };
    let _resume = disk.resume_on_drop();
    let before = sent_when_settled(&p, 0, None);

    disk.hang(true);
    let writer = stream_writes(p.nodes[0].nbd);
    sent_when_settled(&p, before + 32 * MIB, Some(&writer));
    assert_eq!(p.status(1)["connection"], "Connected");

    let asked = std::time::Instant::now();
    p.ok(&["disconnect"], 0);
    let deadline = asked + Duration::from_secs(10);
    loop {
        let b = p.status(1);
        if b["connection"] != "Connected" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "b still connected {:?} after a's disconnect: {b}\n{}",
            asked.elapsed(),
            tail(&p.log(0))
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // b was told why (it read nothing, so it did not confirm a's Outdate:
    // a waited for that at most 2 s, and says so).
    let b = p.status(1);
    let why = b["last_error"].as_str().unwrap_or_default();
    assert!(why.starts_with("a closed the link: disconnected by the operator"), "{b}");
    // a answers its writes alone, with b's disk still hung.
    let errnos = writer.join().unwrap();
    assert!(errnos.values().all(|e| *e == 0), "{errnos:?}");
    assert_eq!(p.status(0)["connection"], "StandAlone");

    disk.hang(false);
    p.ok(&["connect"], 0);
    p.wait_synced("b's resync after the connect", Duration::from_secs(60));
    assert_streamed(&p, &disk, &errnos);
}

/// A file of `size` bytes on ext4 (no journal) over a device whose writes
/// fail on command ([`Ext4::plain_with_file`] over [`FuseDisk::failing`]);
/// None, after saying why, without the tools or root. Dropped in order:
/// the file system, then the device, then the directory.
struct FailingFile {
    _fs: Ext4,
    disk: FuseDisk,
    _dir: tempfile::TempDir,
    file: std::path::PathBuf,
}

impl FailingFile {
    fn make(prefix: &str, name: &str, size: usize) -> Option<FailingFile> {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir_in(test_tmp()).unwrap();
        let tools = ["nbdkit", "nbdfuse", "losetup", "mkfs.ext4"];
        if !(tools.iter().all(|t| have(t)) && root("FUSE, losetup and mount")) {
            return None;
        }
        let disk = FuseDisk::failing(dir.path(), "64M");
        let (fs, file) = Ext4::plain_with_file(&disk.file(), &dir.path().join("fs"), name, size);
        Some(FailingFile { _fs: fs, disk, _dir: dir, file })
    }
}

/// A FLUSH that failed is not followed by one that succeeds without the
/// lost writes. `twinblock serve`'s disk is a file on ext4 (no journal,
/// the file written in full first, so that a sync is the data's
/// writeback alone) on a loop device over nbdkit's error filter: a write
/// lands in the page cache, the disk starts failing, the FLUSH's
/// writeback fails and the page cache drops the write. Linux reports
/// such an error to each open file once: the next fdatasync on the file
/// returns 0, so before the store latched its first failed sync, a
/// second FLUSH after the disk came back was answered OK although the
/// write it covers is not on the disk (and concurrent FLUSHes shared one
/// report: one failed, the others were answered OK). Now every FLUSH and
/// FUA write after a failed sync fails, and reads go on.
#[test]
fn after_a_failed_flush_no_flush_succeeds_without_the_lost_write() {
    let Some(failing) = FailingFile::make("tb-syncerr", "x.img", 4 << 20) else { return };
    let (disk, image) = (&failing.disk, failing.file.clone());
    let sdir = tempfile::Builder::new().prefix("tb-test").tempdir_in(test_tmp()).unwrap();
    let serve = Serve::start_on(sdir, image, URING, &[]).unwrap_or_else(|e| panic!("{e}"));
    let mut c = Client::go(&serve, false);
    c.s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.request(0, 1, 1, 0, 4096, &[0x22; 4096]); // WRITE, into the page cache
    assert_eq!(c.simple_reply(), (0, 1));
    disk.fail_writes(true);
    c.request(0, 3, 2, 0, 0, &[]); // FLUSH: its writeback fails
    let (errno, cookie) = c.simple_reply();
    assert_eq!(cookie, 2);
    assert_eq!(errno, 5, "a FLUSH whose writeback failed: EIO");
    disk.fail_writes(false);
    c.request(0, 3, 3, 0, 0, &[]); // FLUSH again, the disk answering
    let (errno, _) = c.simple_reply();
    assert_eq!(
        errno, 5,
        "a FLUSH after the failed one was answered OK: the write it covers was dropped with the \
         failed writeback"
    );
    c.request(1, 1, 4, 8192, 4096, &[0x33; 4096]); // FUA WRITE
    let (errno, _) = c.simple_reply();
    assert_eq!(errno, 5, "a FUA write after a failed sync: EIO");
    c.request(0, 0, 5, 1 << 20, 4096, &[]); // READ
    let (errno, _) = c.simple_reply();
    assert_eq!(errno, 0, "reads go on");
    assert_eq!(c.bytes(4096), vec![0x11u8; 4096]);
}

/// `down` whose final flush fails: the node records its disk as failed
/// instead of stopping with it recorded `UpToDate`. a (Primary, protocol
/// C) has its disk on a file system over a device that then fails its
/// writes (as in the test above); its metadata is elsewhere and works.
/// A write is acknowledged (on both nodes, unflushed), then `down` on a:
/// the final flush fails, and the write is gone from a's disk once its
/// page cache is dropped. Before, a came back `UpToDate` as the crashed
/// Primary, and its activity-log extents were resynced over b's copy:
/// the acknowledged write was gone from both. Now a comes back `Failed`
/// and takes a full sync from b, and both hold the write.
#[test]
fn a_final_flush_that_fails_at_down_leaves_the_disk_failed() {
    let Some((failing, mut p)) = acked_write_on_a_failing_disk("tb-stopflush") else { return };
    failing.disk.fail_writes(true);
    let exit = p.down(0);
    assert!(!exit.success(), "down exits non-zero when its final flush fails");
    failing.disk.fail_writes(false);
    // What a's page cache held of the failed writeback goes.
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    restart_a_and_find_the_write_on_both(&mut p, &failing.file);
    assert!(p.log(0).contains("local disk failed (the final flush"), "{}", tail(&p.log(0)));
}

/// A pair in sync (C) whose node a has a [`FailingFile`] for its disk,
/// after one write of 0x22 at offset 0 was acknowledged (a plain client:
/// qemu-io would FLUSH at its exit); None without the tools.
fn acked_write_on_a_failing_disk(prefix: &str) -> Option<(FailingFile, Pair)> {
    let failing = FailingFile::make(prefix, "a.img", 16 << 20)?;
    let mut p = Pair::prepare("C", "16M");
    p.set_disk(0, &failing.file);
    p.up_in_sync("the first sync", Duration::from_secs(60));
    let mut c = Client::go_addr(p.nodes[0].nbd, false);
    c.s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.request(0, 1, 1, 0, 4096, &[0x22; 4096]); // WRITE, in both page caches
    assert_eq!(c.simple_reply(), (0, 1), "the write was acknowledged");
    Some((failing, p))
}

/// Starts a again and, once the pair is in sync, finds the acknowledged
/// write on both disks (a's at `image`).
fn restart_a_and_find_the_write_on_both(p: &mut Pair, image: &std::path::Path) {
    p.up(0);
    p.wait_connected();
    p.wait_synced("the resync after the restart", Duration::from_secs(60));
    for (name, file) in [("a", image), ("b", p.nodes[1].disk.as_path())] {
        let mut block = vec![0u8; 4096];
        std::fs::File::open(file).unwrap().read_exact(&mut block).unwrap();
        assert!(
            block.iter().all(|&x| x == 0x22),
            "{name} lacks the acknowledged write after the restart (a's log: {})",
            tail(&p.log(0))
        );
    }
}

/// A Primary killed while its disk's writeback fails: no sync reported
/// the failure before the process died, and the kernel let the pages go.
/// Its next start finds its activity log held (an unclean stop), and as
/// the name that sorts first it is the source of the log's extents. The
/// core's recovery flush hears of the failure (Linux reports a failed
/// writeback to a descriptor opened after it as long as none has seen
/// it), but only once the node runs: when the handshake came first, b was
/// already a's SyncTarget (Inconsistent) as a's disk failed, and the pair
/// was left with no usable disk (`WaitForForce`) though b held every
/// acknowledged write. Now the start syncs the disk before the node runs
/// and records it Failed: a takes a full sync from b. (With the inode
/// evicted as well, `drop_caches` 3, the report is gone and no process can
/// hear of it.)
#[test]
fn a_primary_killed_while_its_writeback_fails_takes_the_peers_data_at_restart() {
    let Some((failing, mut p)) = acked_write_on_a_failing_disk("tb-killwb") else { return };
    failing.disk.fail_writes(true);
    // The writeback fails (sync(2) reports it to nobody), then a dies.
    assert!(Command::new("sync").status().unwrap().success());
    p.kill(0);
    failing.disk.fail_writes(false);
    // The page cache lets the pages go (1: not the inodes, which keep the
    // unreported error, as a restart soon after a crash finds them).
    std::fs::write("/proc/sys/vm/drop_caches", "1").unwrap();
    restart_a_and_find_the_write_on_both(&mut p, &failing.file);
    assert!(
        p.log(0).contains("after an unclean stop the disk's writeback failed"),
        "{}",
        tail(&p.log(0))
    );
}

/// A Secondary whose disk fails one sync (a transient writeback error)
/// is detached and takes a full sync from the Primary once the disk
/// answers again; the full sync's own flushes succeed. The store fails
/// every sync after a failed one (the latch), so without lifting it when
/// the detached disk is rewritten by that full sync, b failed each
/// checkpoint flush of it and looped: detached, resync, detached.
#[test]
fn a_secondary_whose_disk_failed_one_sync_recovers_by_a_full_sync() {
    let Some(failing) = FailingFile::make("tb-synconce", "b.img", 16 << 20) else { return };
    let (disk, image) = (&failing.disk, failing.file.clone());
    let mut p = Pair::prepare("C", "16M");
    p.set_disk(1, &image);
    p.up_in_sync("the first sync", Duration::from_secs(60));
    let mut c = Client::go_addr(p.nodes[0].nbd, false);
    c.s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.request(0, 1, 1, 0, 65536, &[0x5c; 65536]); // WRITE, in b's page cache
    assert_eq!(c.simple_reply(), (0, 1));
    disk.fail_writes(true);
    c.request(0, 3, 2, 0, 0, &[]); // FLUSH: b's writeback fails
    let (errno, _) = c.simple_reply();
    assert_eq!(errno, 0, "a's FLUSH is answered (b's part failed, the range marked)");
    p.wait("b's disk detached", Duration::from_secs(20), |_, b| b["disk"] == "Failed");
    disk.fail_writes(false);
    p.wait_synced("b's full sync", Duration::from_secs(60));
    let (a, b) = (p.status(0), p.status(1));
    assert_eq!(b["disk"], "UpToDate", "{b}");
    assert_eq!(a["out_of_sync_bytes"], 0);
    // Written once more through b's page cache and flushed: b's syncs are
    // trusted again.
    p.qemu_io(0, "write -P 0x6d 1M 64k");
    p.wait_drained();
    let mut block = vec![0u8; 65536];
    std::fs::File::open(&image).unwrap().read_exact(&mut block).unwrap();
    assert!(block.iter().all(|&x| x == 0x5c), "b lacks the write its failed sync dropped");
    assert!(p.log(1).contains("syncs are trusted again"), "{}", tail(&p.log(1)));
}

/// The seconds left of a rebuild's wait in a `last_error` ("... the next
/// rebuild in 7.9s (...").
fn rebuild_wait_left(why: &str) -> Option<f64> {
    why.split("the next rebuild in ").nth(1)?.split('s').next()?.parse().ok()
}

/// A Secondary whose disk fails every write (a cause that persists: a
/// full file system, a dead disk) is rebuilt less and less often: a
/// rebuild that fails makes the next one wait (at once, then 2 s, 4 s,
/// 8 s, ... up to 60 s), where before it ran a full sync about once a
/// second for ever. b's `last_error` says why and when; once the disk is
/// fixed, `connect` on b rebuilds it at once, long before its wait ends.
#[test]
fn a_secondary_whose_rebuilds_keep_failing_waits_longer_each_time() {
    let Some(failing) = FailingFile::make("tb-rebuilds", "b.img", 16 << 20) else { return };
    let (disk, image) = (&failing.disk, failing.file.clone());
    let mut p = Pair::prepare("C", "16M");
    p.set_disk(1, &image);
    p.up_in_sync("the first sync", Duration::from_secs(60));
    let rebuilds = |p: &Pair| {
        p.log(1).lines().filter(|l| l.contains("SyncTarget: the peer's data is newer")).count()
    };
    let before = rebuilds(&p);
    disk.fail_writes(true);
    p.qemu_io(0, "write -P 0x5e 1M 64k"); // qemu-io FLUSHes at its exit
    p.wait("b's disk detached", Duration::from_secs(20), |_, b| b["disk"] == "Failed");
    let start = std::time::Instant::now();
    // Rebuilds at 0, 0, 2, 6 and 14 s from here: 4 or 5 in 13 s (a
    // rebuild a second before: 13 or more).
    std::thread::sleep(Duration::from_secs(13));
    let n = rebuilds(&p) - before;
    assert!((3..=5).contains(&n), "{n} rebuilds in 13 s: {}", tail(&p.log(1)));
    let b = p.status(1);
    let why = b["last_error"].as_str().unwrap_or_default().to_string();
    assert!(
        why.contains("failed again while being rebuilt from the peer")
            && why.contains("Input/output error"),
        "{b}"
    );
    assert_eq!(b["disk"], "Failed", "{b}");
    // a dials on (refused, every 800 ms at most): each side warns once
    // for each wait, not at every refusal (whose countdown moves).
    let warnings = |i: usize, what: &str| {
        p.log(i)
            .lines()
            .filter(|l| l.contains(" WARN ") && l.contains(what) && l.contains("next rebuild in"))
            .count()
    };
    let (on_a, on_b) = (warnings(0, "refused the link"), warnings(1, "refused a replication"));
    assert!(on_a <= 4 && on_b <= 4, "{on_a} and {on_b} warnings: {}", tail(&p.log(0)));
    // The next wait is long (8 s, or 16 s): the operator fixes the disk
    // and runs `connect` instead of waiting for it.
    p.wait("a long wait before b's next rebuild", Duration::from_secs(30), |_, b| {
        b["last_error"].as_str().and_then(rebuild_wait_left).is_some_and(|s| s >= 6.0)
    });
    let left = rebuild_wait_left(p.status(1)["last_error"].as_str().unwrap_or_default()).unwrap();
    disk.fail_writes(false);
    let asked = std::time::Instant::now();
    p.ok(&["connect"], 1);
    p.wait_synced("b's rebuild after `connect`", Duration::from_secs(60));
    let took = asked.elapsed().as_secs_f64();
    assert!(took < left, "rebuilt {took:.1}s after `connect`, its wait was {left:.1}s");
    let b = p.status(1);
    assert_eq!(b["disk"], "UpToDate", "{b}");
    assert_eq!(b["last_error"], serde_json::Value::Null, "{b}");
    let mut block = vec![0u8; 65536];
    let mut f = std::fs::File::open(&image).unwrap();
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(1 << 20)).unwrap();
    f.read_exact(&mut block).unwrap();
    assert!(block.iter().all(|&x| x == 0x5e), "b lacks the write after its rebuild");
    eprintln!("{n} rebuilds in 13 s; rebuilt {took:.1}s after connect ({:?})", start.elapsed());
}

/// A start whose metadata volume has no room for the new node's bitmap
/// (a 64 GiB device's, 2 MiB, on a 1 MiB tmpfs) fails naming the file
/// and "No space left on device", and leaves the volume as it found it.
/// Before, the half-written `a.meta.bitmap.tmp` stayed, holding all the
/// room that was left, for every file on that volume (another resource's
/// metadata there then failed its updates, and its device its writes).
/// Given room, the next start works.
#[test]
fn a_metadata_save_that_finds_no_room_leaves_no_temporary_file() {
    if !root("mounting a small tmpfs for the metadata") {
        return;
    }
    let vol = Tmpfs::mount("tb-fullmeta", "1M");
    let mut p = Pair::prepare("C", "64G");
    p.set_meta(0, &vol.path().join("a.meta"));
    let out = run_timeout(
        Command::new(BIN).args(["up", "--config"]).arg(&p.config).args(["--node", "a"]),
        Duration::from_secs(30),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a started: {err}");
    assert!(err.contains("a.meta.bitmap") && err.contains("No space left on device"), "{err}");
    let left: Vec<String> = vol.files().into_iter().filter(|f| f.ends_with(".tmp")).collect();
    assert!(left.is_empty(), "the failed start left {left:?} on the full volume");
    vol.resize("8M");
    p.up(0);
    assert_eq!(vol.files(), ["a.meta", "a.meta.al", "a.meta.bitmap", "a.meta.disk"]);
}

/// The metadata volume of a Primary fills up, its peer gone (every write
/// then waits for a new generation to be saved first). The write fails
/// with ENOSPC, never OK, and so does the FLUSH after it; `last_error`
/// names the file that could not be written and says "No space left on
/// device" (before: `cannot save metadata: errno 28`); the saved `meta`
/// is the one from before, whole; reads work. Once room is freed, writes
/// work again without a restart (the save is retried once a second).
#[test]
fn a_full_metadata_volume_fails_writes_and_names_the_file() {
    if !(have("qemu-io") && root("mounting a small tmpfs for the metadata")) {
        return;
    }
    let vol = Tmpfs::mount("tb-fullmeta", "8M");
    let mut p = Pair::prepare("C", "16M");
    let meta = vol.path().join("a.meta");
    p.set_meta(0, &meta);
    p.up_in_sync("the first sync", Duration::from_secs(60));
    let out = qemu_io(&p.uri(0), "write -P 0x11 0 64k");
    assert!(out.contains("wrote 65536/65536"), "{out}");
    p.wait_drained();
    let saved = std::fs::read(&meta).unwrap();
    let filler = vol.fill();
    assert!(p.down(1).success(), "b did not stop: {}", tail(&p.log(1)));
    p.wait_unlinked(0);

    let mut c = Client::go_addr(p.nodes[0].nbd, false);
    c.s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.request(0, 1, 1, 0, 4096, &[0x22; 4096]); // WRITE
    assert_eq!(c.simple_reply(), (28, 1), "the write was not failed with ENOSPC");
    c.request(0, 3, 2, 0, 0, &[]); // FLUSH
    let flush = c.simple_reply();
    assert_ne!(flush.0, 0, "the FLUSH after the failed write succeeded");
    let a = p.status(0);
    let why = a["last_error"].as_str().unwrap_or_default().to_string();
    eprintln!("the FLUSH after it: {flush:?}; last_error: {why}");
    assert!(
        why.contains(&meta.display().to_string()) && why.contains("No space left on device"),
        "{a}"
    );
    assert!(p.log(0).contains(&format!("{}: No space left on device", meta.display())));
    assert_eq!(std::fs::read(&meta).unwrap(), saved, "a.meta changed (torn?)");
    let out = qemu_io(&p.uri(0), "read -P 0x11 0 64k");
    assert!(out.contains("read 65536/65536") && !out.contains("fail"), "{out}");

    std::fs::remove_file(filler).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = qemu_io(&p.uri(0), "write -P 0x33 0 64k");
        if out.contains("wrote 65536/65536") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "writes still fail with room: {out}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = qemu_io(&p.uri(0), "read -P 0x33 0 64k");
    assert!(out.contains("read 65536/65536") && !out.contains("fail"), "{out}");
    assert_ne!(std::fs::read(&meta).unwrap(), saved, "the new generation was never saved");
}

/// The Secondary's metadata volume fills up under replicated writes
/// (protocol C; `al-extents = 7` and writes cycling over eight extents,
/// so that b's activity log grows past the room it had). b cannot record
/// what it takes in: its disk is detached (`Failed`, `last_error` naming
/// its metadata file and "No space left on device"; before, "metadata:
/// errno 28"), and the Primary goes on alone, every write answered OK (it
/// holds them, marked out of sync). Once room is freed, `connect` on b
/// rebuilds it: the disks are identical.
#[test]
fn a_secondary_whose_metadata_volume_fills_is_detached_then_rebuilt() {
    if !(have("qemu-io") && root("mounting a small tmpfs for the metadata")) {
        return;
    }
    let vol = Tmpfs::mount("tb-fullmeta", "8M");
    let mut p = Pair::prepare("C", "32M");
    p.configure("al-extents = 7");
    p.set_meta(1, &vol.path().join("b.meta"));
    p.up_in_sync("the first sync", Duration::from_secs(60));
    let filler = vol.fill();
    let writes: Vec<String> =
        (0..400).map(|i| format!("write -P {} {}M 4k", i % 200 + 16, (i % 8) * 4)).collect();
    let out = run_qemu_io(&p.uri(0), &writes);
    assert_eq!(out.matches("wrote 4096/4096").count(), 400, "{out}");
    p.wait("b's disk detached", Duration::from_secs(20), |_, b| b["disk"] == "Failed");
    let b = p.status(1);
    let why = b["last_error"].as_str().unwrap_or_default().to_string();
    eprintln!("b: {why}");
    assert!(
        why.contains(&vol.path().join("b.meta").display().to_string())
            && why.contains("No space left on device"),
        "{b}"
    );
    assert_eq!(p.status(0)["disk"], "UpToDate");
    std::fs::remove_file(filler).unwrap();
    p.ok(&["connect"], 1);
    p.wait_synced("b's rebuild once room was freed", Duration::from_secs(60));
    p.wait_drained();
    assert!(
        std::fs::read(&p.nodes[0].disk).unwrap() == std::fs::read(&p.nodes[1].disk).unwrap(),
        "the disks differ after b's rebuild"
    );
}

/// The Primary's disk is a sparse file on a file system that fills up
/// (a 4 MiB tmpfs under a 16 MiB device) under a pipelined writer (16 in
/// flight, protocol C). The writes that meet the full file system fail
/// (ENOSPC, or EIO for those behind it), never OK; every write answered
/// OK is on the Secondary; the disk is detached, saying why.
#[test]
fn a_primary_whose_disk_file_fills_acknowledges_only_what_the_peer_holds() {
    if !root("mounting a small tmpfs for the disk") {
        return;
    }
    let vol = Tmpfs::mount("tb-fulldisk", "4M");
    let mut p = Pair::prepare("C", "16M");
    p.set_disk(0, &vol.path().join("a.img"));
    p.up_in_sync("the first sync", Duration::from_secs(60));
    let (answers, _) = write_through_failure(&p, (16 << 20) / BLOCK, 16, 1, || {});
    let ok = acknowledged(&answers);
    let failed: Vec<(u64, u32)> =
        answers.iter().filter(|(_, e)| **e != 0).map(|(c, e)| (*c, *e)).collect();
    eprintln!("{} writes acknowledged, {} failed", ok.len(), failed.len());
    assert!(ok.len() >= 500 && !failed.is_empty(), "{} ok, {} failed", ok.len(), failed.len());
    assert!(failed.iter().all(|(_, e)| *e == 28 || *e == 5), "not ENOSPC/EIO: {failed:?}");
    assert!(failed.iter().any(|(_, e)| *e == 28), "none failed with ENOSPC: {failed:?}");
    let a = p.status(0);
    assert_eq!(a["disk"], "Failed", "{a}");
    let why = a["last_error"].as_str().unwrap_or_default().to_string();
    assert!(why.contains("No space left on device"), "{why}");
    let b = std::fs::read(&p.nodes[1].disk).unwrap();
    let missing = cookie_blocks_missing(&b, &ok);
    assert!(missing.is_empty(), "acknowledged writes missing on b: {missing:?}");
}

/// The Secondary's disk is a sparse file on a file system that fills up
/// (a 4 MiB tmpfs under a 16 MiB device) while `protocol` writes 8 MiB
/// of data to the Primary (nbdcopy). The Primary answers every write OK
/// and goes on alone, the blocks b lacks out of sync; b's disk is
/// detached saying why, and so does a (`b closed the link: ... No space
/// left on device`). Once room is freed, `connect` on b rebuilds it: the
/// disks are identical, and b's file takes no more room than its data
/// (the holes stay holes).
fn a_secondary_whose_disk_file_fills(protocol: &str) {
    if !(have("nbdcopy") && root("mounting a small tmpfs for the disk")) {
        return;
    }
    let vol = Tmpfs::mount("tb-fulldisk", "4M");
    let mut p = Pair::prepare(protocol, "16M");
    p.set_disk(1, &vol.path().join("b.img"));
    p.up_in_sync("the first sync", Duration::from_secs(60));
    let src = p.dir.path().join("src.img");
    std::fs::write(&src, pattern(8 << 20, 141)).unwrap();
    let out = run_timeout(Command::new("nbdcopy").arg(&src).arg(p.uri(0)), Duration::from_secs(60));
    assert!(out.status.success(), "nbdcopy: {}", String::from_utf8_lossy(&out.stderr));
    p.wait("b's disk detached", Duration::from_secs(20), |_, b| b["disk"] == "Failed");
    let (a, b) = (p.status(0), p.status(1));
    assert_eq!(a["disk"], "UpToDate", "{a}");
    assert!(a["out_of_sync_bytes"].as_u64().unwrap_or(0) > 0, "{a}");
    for s in [&a, &b] {
        let why = s["last_error"].as_str().unwrap_or_default();
        assert!(why.contains("No space left on device"), "{s}");
    }
    std::fs::remove_file(&src).unwrap();
    vol.resize("64M");
    p.ok(&["connect"], 1);
    p.wait_synced("b's rebuild once room was freed", Duration::from_secs(60));
    p.wait_drained();
    let data = std::fs::read(&p.nodes[0].disk).unwrap();
    assert_eq!(&data[..8 << 20], &pattern(8 << 20, 141)[..], "a lacks what nbdcopy wrote");
    assert!(data == std::fs::read(&p.nodes[1].disk).unwrap(), "the disks differ after b's rebuild");
    let used =
        std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&p.nodes[1].disk).unwrap());
    assert!(used * 512 <= 9 << 20, "b's rebuilt file takes {} bytes", used * 512);
}

#[test]
fn a_secondary_whose_disk_file_fills_is_detached_then_rebuilt_protocol_c() {
    a_secondary_whose_disk_file_fills("C");
}

#[test]
fn a_secondary_whose_disk_file_fills_is_detached_then_rebuilt_protocol_a() {
    a_secondary_whose_disk_file_fills("A");
}

/// A Primary running alone (its peer down) whose disk file fills up is
/// trusted again, once room is freed, with `secondary` and `primary
/// --force` (its disk holds every write it acknowledged), and goes on
/// alone: it writes, is restarted, writes again. Its peer, back, takes
/// all of a's data and the disks are identical. Before, the peer was
/// refused as `unrelated devices` once a had written alone after the
/// force (a known limit until 2026-12-07).
#[test]
fn a_lone_primary_forced_after_its_disk_filled_still_resyncs_its_peer() {
    if !(have("qemu-io") && root("mounting a small tmpfs for the disk")) {
        return;
    }
    let vol = Tmpfs::mount("tb-fulldisk", "4M");
    let mut p = Pair::prepare("C", "16M");
    p.set_disk(0, &vol.path().join("a.img"));
    p.up_in_sync("the first sync", Duration::from_secs(60));
    p.down(1);
    let (answers, _) = write_through_failure(&p, (16 << 20) / BLOCK, 16, 1, || {});
    let ok = acknowledged(&answers);
    assert!(ok.len() >= 500, "{} writes acknowledged alone", ok.len());
    assert!(answers.values().any(|e| *e == 28), "none failed with ENOSPC");
    p.wait_one(0, "a's disk detached", |a| a["disk"] == "Failed");
    vol.resize("64M");
    p.ok(&["secondary"], 0);
    p.ok(&["primary", "--force"], 0);
    p.qemu_io(0, "write -P 0x5a 12M 1M");
    p.down(0);
    p.up(0);
    p.ok(&["primary"], 0);
    p.qemu_io(0, "write -P 0x6b 14M 1M");
    p.up(1);
    p.wait_synced("b's resync from the forced a", Duration::from_secs(60));
    p.wait_drained();
    let b = p.status(1);
    assert_eq!(b["disk"], "UpToDate", "{b}");
    let (da, db) =
        (std::fs::read(&p.nodes[0].disk).unwrap(), std::fs::read(&p.nodes[1].disk).unwrap());
    assert!(da == db, "the disks differ after b's resync");
    let missing = cookie_blocks_missing(&db, &ok);
    assert!(missing.is_empty(), "writes a acknowledged alone missing on b: {missing:?}");
    assert!(db[12 << 20..13 << 20].iter().all(|&x| x == 0x5a), "the write after the force");
    assert!(db[14 << 20..15 << 20].iter().all(|&x| x == 0x6b), "the write after the restart");
}

/// `primary` on a node whose metadata volume is full cannot save the
/// record that says it is Primary: it fails (exit non-zero, one line
/// naming the file and "No space left on device"), and the node stays
/// Secondary, as `drbdadm primary` fails when DRBD cannot write its meta
/// data. Before, it answered OK and the node was Primary on a record that
/// said otherwise (the operator, or Pacemaker's agent, believed the
/// promotion had succeeded). So for `primary` asked of the connected peer
/// and for `primary --force` alone; once room is freed, `primary` works.
#[test]
fn primary_on_a_full_metadata_volume_fails_naming_the_file_and_stays_secondary() {
    if !root("mounting a small tmpfs for the metadata") {
        return;
    }
    let vol = Tmpfs::mount("tb-fullmeta", "8M");
    let mut p = Pair::prepare("C", "16M");
    let meta = vol.path().join("a.meta");
    p.set_meta(0, &meta);
    p.up_in_sync("the first sync", Duration::from_secs(60));
    p.ok(&["secondary"], 0);
    p.wait("a Secondary", Duration::from_secs(10), |a, b| {
        a["role"] == "Secondary" && b["peer"]["role"] == "Secondary"
    });
    let saved = std::fs::read(&meta).unwrap();
    let filler = vol.fill();
    let refused = |args: &[&str]| {
        let out = p.cli("primary", args, 0);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("primary {args:?}: {:?} {err}", out.status);
        assert!(!out.status.success(), "primary {args:?} succeeded on a full metadata volume");
        assert!(
            err.contains(&format!("cannot save metadata {}", meta.display()))
                && err.contains("No space left on device"),
            "{err}"
        );
        // A save that failed is not in flight: it never lands (before,
        // `primary` said it might, and that a restart could then find the
        // promotion; review, helper-162).
        assert!(!err.contains("still in flight"), "{err}");
        let a = p.status(0);
        assert_eq!(a["role"], "Secondary", "{a}");
    };
    refused(&[]);
    assert_eq!(p.status(1)["peer"]["role"], "Secondary");
    p.ok(&["disconnect"], 0);
    refused(&["--force"]);
    assert_eq!(std::fs::read(&meta).unwrap(), saved, "a.meta changed (torn?)");

    std::fs::remove_file(filler).unwrap();
    p.ok(&["primary"], 0);
    assert_eq!(p.status(0)["role"], "Primary");
    assert_ne!(std::fs::read(&meta).unwrap(), saved, "the promotion was never saved");
}

/// `primary --force` on an Outdated Secondary whose metadata volume is
/// full fails (its record cannot be saved), and must leave the disk as
/// it was: Outdated on its old generation, before and after room is
/// freed. The Primary, which wrote on alone, then resyncs it. Before,
/// what the force declared (UpToDate, a generation of its own) stayed in
/// memory and was saved once there was room: the operator was told the
/// promotion failed, yet b met a as a split brain and refused it (had a
/// not written, b would have overwritten a's data; review, helper-146).
#[test]
fn a_failed_primary_force_leaves_the_disk_as_it_was() {
    if !(have("qemu-io") && root("mounting a small tmpfs for the metadata")) {
        return;
    }
    let vol = Tmpfs::mount("tb-fullmeta-b", "8M");
    let mut p = Pair::prepare("C", "16M");
    let meta = vol.path().join("b.meta");
    p.set_meta(1, &meta);
    p.up_in_sync("the first sync", Duration::from_secs(60));
    p.qemu_io(0, "write -P 0x11 0 1M");
    p.ok(&["disconnect"], 0);
    p.wait_one(1, "b Outdated by a's disconnect", |b| b["disk"] == "Outdated");
    p.qemu_io(0, "write -P 0x22 2M 1M");
    let filler = vol.fill();
    let out = p.cli("primary", &["--force"], 1);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "primary --force succeeded on a full metadata volume");
    assert!(err.contains("No space left on device"), "{err}");
    let b = p.status(1);
    assert_eq!((&b["role"], &b["disk"]), (&"Secondary".into(), &"Outdated".into()), "{b}");
    std::fs::remove_file(filler).unwrap();
    // Room again: b's next saves must not bring the force back.
    std::thread::sleep(Duration::from_secs(2));
    let b = p.status(1);
    assert_eq!(b["disk"], "Outdated", "the failed force came back: {b}");
    b_takes_as_write_alone(&p, 2, 0x22);
}

/// `primary --force` on an Outdated node whose metadata's filesystem
/// stops answering: the verb answers (failing) and says the force is
/// undone and that its record, should it land, is rolled back at a start.
/// Once the filesystem answers again (the hung first record lands), the
/// node stays Outdated, also across a `kill -9` and a restart, and takes
/// its peer's data, the write its peer acknowledged alone included.
#[test]
fn a_primary_force_whose_record_hangs_is_undone_for_good() {
    let dir = tempfile::Builder::new().prefix("tb-hangfs").tempdir_in(test_tmp()).unwrap();
    let Some((disk, _fs, mut p)) = hanging_fs_pair(dir.path(), |p, fs| {
        p.set_meta(1, &fs.mnt.join("b.meta"));
    }) else {
        return;
    };
    let _resume = disk.resume_on_drop();
    p.ok(&["disconnect"], 0);
    p.wait_one(1, "b Outdated by a's disconnect", |b| b["disk"] == "Outdated");
    p.qemu_io(0, "write -P 0x33 1M 1M");
    disk.hang(true);
    let out = run_timeout(
        Command::new(BIN)
            .args(["primary", "--force", "--config"])
            .arg(&p.config)
            .args(["--node", "b"]),
        Duration::from_secs(30),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "primary --force succeeded with its record unsaved");
    assert!(err.contains("was not saved within"), "{err}");
    assert!(err.contains("the force is undone"), "{err}");
    let b = p.status(1);
    assert_eq!((&b["role"], &b["disk"]), (&"Secondary".into(), &"Outdated".into()), "{b}");
    disk.hang(false);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(p.status(1)["disk"], "Outdated", "the undone force came back");
    p.kill(1);
    p.up(1);
    p.wait_one(1, "b up", |b| b["role"] == "Secondary");
    assert_eq!(p.status(1)["disk"], "Outdated", "the undone force came back at a restart");
    b_takes_as_write_alone(&p, 1, 0x33);
}

/// `connect` on a, b's resync from it: the two disks are identical, and
/// a's write alone (the MiB at `mib` of `value`) is on b.
fn b_takes_as_write_alone(p: &Pair, mib: usize, value: u8) {
    p.ok(&["connect"], 0);
    p.wait_synced("b's resync from a", Duration::from_secs(60));
    p.wait_drained();
    let (da, db) =
        (std::fs::read(&p.nodes[0].disk).unwrap(), std::fs::read(&p.nodes[1].disk).unwrap());
    assert!(da == db, "the disks differ after b's resync");
    let written = &db[mib << 20..(mib + 1) << 20];
    assert!(written.iter().all(|&x| x == value), "a's write alone is not on b");
}

/// A `meta` left between a forced promotion's two records: the first
/// (the force, holding the record it replaced as `pending`) landed, the
/// process stopped before the second, as when a hung save lands after
/// `primary` said the force failed and undid it. The daemon starts on
/// the record before the force (b Outdated on its old generation, not
/// UpToDate on the forced one), saves it back, and takes a's data: a's
/// write alone is on both disks. (Before, it started forced and met a as
/// a split brain, or under some policies overwrote a's write.)
#[test]
fn a_daemon_started_on_an_unconfirmed_forced_record_starts_as_before_the_force() {
    if !have("qemu-io") {
        return;
    }
    let mut p = Pair::prepare("C", "16M");
    p.up_in_sync("the first sync", Duration::from_secs(60));
    p.qemu_io(0, "write -P 0x11 0 1M");
    p.ok(&["disconnect"], 0);
    p.wait_one(1, "b Outdated by a's disconnect", |b| b["disk"] == "Outdated");
    p.wait_saved(1, "Outdated");
    p.qemu_io(0, "write -P 0x22 2M 1M");
    p.kill(1);
    // b's record as the force's first would be: UpToDate on a generation
    // of its own, promoted now, holding the record it replaced.
    let path = p.dir.path().join("b.meta");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut before = saved.clone();
    for k in ["version", "node", "resource", "size", "disk_identified", "bitmap_id"] {
        before.as_object_mut().unwrap().remove(k);
    }
    let old = saved["gen"]["current"].as_u64().unwrap();
    let mut first = saved.clone();
    first["disk"] = "UpToDate".into();
    first["gen"]["history"] = serde_json::json!([old, saved["gen"]["history"][0]]);
    first["gen"]["bitmap"] = old.into();
    first["gen"]["current"] = 0x5eed_f0ce_u64.into();
    first["promoted_at"] = (saved["promoted_at"].as_u64().unwrap() + 1).into();
    first["pending"] = before;
    std::fs::write(&path, serde_json::to_string_pretty(&first).unwrap()).unwrap();
    p.up(1);
    p.wait_one(1, "b up", |b| b["role"] == "Secondary");
    let b = p.status(1);
    assert_eq!(b["disk"], "Outdated", "b started on the unconfirmed force: {b}");
    assert!(
        p.log(1).contains("never confirmed"),
        "the start does not say why: {}",
        tail(&p.log(1))
    );
    // Saved back: the record on disk is the one before the force.
    p.wait_saved(1, "Outdated");
    let now: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(now.get("pending").is_none(), "{now}");
    assert_eq!(now["gen"]["current"].as_u64(), Some(old), "{now}");
    b_takes_as_write_alone(&p, 2, 0x22);
}

/// `primary` on a node whose metadata's filesystem stops answering: the
/// record saying it is Primary is never saved, and the verb still answers
/// (after `timeout` and a second), failing, naming why; the node is not
/// Primary. Once the filesystem answers again, `primary` works.
#[test]
fn primary_whose_metadata_save_hangs_answers_and_stays_secondary() {
    let dir = tempfile::Builder::new().prefix("tb-hangfs").tempdir_in(test_tmp()).unwrap();
    let Some((disk, _fs, p)) = hanging_fs_pair(dir.path(), |p, fs| {
        p.set_meta(0, &fs.mnt.join("a.meta"));
    }) else {
        return;
    };
    let _resume = disk.resume_on_drop();
    p.ok(&["secondary"], 0);
    p.wait("a Secondary", Duration::from_secs(10), |a, b| {
        a["role"] == "Secondary" && b["peer"]["role"] == "Secondary"
    });
    p.ok(&["disconnect"], 0);
    disk.hang(true);
    let t = std::time::Instant::now();
    let out = run_timeout(
        Command::new(BIN).args(["primary", "--config"]).arg(&p.config).args(["--node", "a"]),
        Duration::from_secs(30),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("primary after {:?}: {:?} {err}", t.elapsed(), out.status);
    assert!(!out.status.success(), "primary succeeded with its record unsaved");
    assert!(err.contains("was not saved within"), "{err}");
    assert!(err.contains("still in flight"), "the failure is said final: {err}");
    assert!(t.elapsed() < Duration::from_secs(10), "answered after {:?}", t.elapsed());
    assert_eq!(p.status(0)["role"], "Secondary");
    disk.hang(false);
    p.ok(&["primary"], 0);
    assert_eq!(p.status(0)["role"], "Primary");
}
