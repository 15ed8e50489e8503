//! The shell's persistence against real files.

use super::*;

/// The two nodes of the test resources (TOML, after the top-level keys).
const NODES: &str = r#"
[tls]
ca = "ca.pem"
[nodes.a]
address = "127.0.0.1:1"
nbd = "127.0.0.1:2"
disk = "a.img"
meta = "a.meta"
control = "a.sock"
cert = "a.pem"
key = "a.key"
[nodes.b]
address = "127.0.0.1:3"
nbd = "127.0.0.1:4"
disk = "b.img"
meta = "b.meta"
control = "b.sock"
cert = "b.pem"
key = "b.key"
"#;

/// A one-node resource in `dir` (the peer is never started).
fn resource(dir: &std::path::Path) -> ResourceConfig {
    let text = format!("name = \"r\"\nprotocol = \"C\"\nsize = \"1M\"\n{NODES}");
    ResourceConfig::parse(&dir.join("r.toml"), &text).unwrap()
}

/// The runtime a test's node runs in.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Node `a` of `res` opened and forced Primary, its record saved.
fn primary(rt: &tokio::runtime::Runtime, res: ResourceConfig) -> Arc<Node> {
    let node = rt.block_on(async { Node::open(res, "a", &StoreOptions::default()) }).unwrap();
    rt.block_on(node.promote(true)).unwrap();
    while !node.lock().core.meta_durable() {
        std::thread::sleep(Duration::from_millis(5));
    }
    node
}

/// The metadata files busy for `how_long` (a slow or hung metadata
/// volume): held from before this returns.
fn hold_files(node: &Node, how_long: Duration) -> std::thread::JoinHandle<()> {
    let files = node.files.clone();
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        let _busy = files.lock().unwrap();
        locked_tx.send(()).unwrap();
        std::thread::sleep(how_long);
    });
    locked_rx.recv().unwrap();
    holder
}

/// The final flush at stop fails while a record save (issued before, on
/// its own task) is still under way: the record that says the disk
/// failed waits for it, and is issued by that task when it completes.
/// `up` then ended the process at once (`final_flush_failed` did not
/// wait), the task went with the runtime, and the record on disk stayed
/// UpToDate: the next start trusted a disk whose writeback had dropped
/// writes (its own new descriptor no longer hears of the failure).
#[test]
fn a_failed_final_flush_is_recorded_though_a_record_save_was_under_way() {
    let dir = tempfile::tempdir().unwrap();
    let res = resource(dir.path());
    let meta = dir.path().join("a.meta");
    let rt = runtime();
    let node = primary(&rt, res);
    let durable = |node: &Node| node.lock().core.meta_durable();
    assert_eq!(Meta::load(&meta, "a", "r", 1 << 20).unwrap().unwrap().disk, DiskState::UpToDate);
    // The metadata files are busy (a slow metadata volume): the next
    // record save waits for them.
    let holder = hold_files(&node, Duration::from_millis(300));
    // The first write changes the record (no longer fresh): its save is
    // under way.
    let writer = node.clone();
    rt.spawn(async move { writer.write(0, Bytes::from(vec![1u8; 4096]), false).await });
    std::thread::sleep(Duration::from_millis(50));
    assert!(!durable(&node), "the write's record is being saved");
    let eio = io::Error::from_raw_os_error(libc::EIO);
    rt.block_on(node.final_flush_failed(&eio));
    // `up` returns and the process ends (blocking tasks get their grace).
    drop(node);
    rt.shutdown_timeout(Duration::from_secs(5));
    holder.join().unwrap();
    let m = Meta::load(&meta, "a", "r", 1 << 20).unwrap().unwrap();
    assert_eq!(m.disk, DiskState::Failed, "the failed final flush is not on record");
}

/// The same with a record save that failed just before (the metadata
/// volume full for a moment): the record saying Failed is tried only by
/// the timer's retry, a second later, and the process had ended.
#[test]
fn a_failed_final_flush_is_recorded_though_a_record_save_failed_just_before() {
    let dir = tempfile::tempdir().unwrap();
    let res = resource(dir.path());
    let meta = dir.path().join("a.meta");
    let rt = runtime();
    let node = primary(&rt, res);
    // The next record save fails (its temporary file cannot be made).
    let tmp = dir.path().join("a.meta.tmp");
    std::fs::create_dir(&tmp).unwrap();
    let write = rt.block_on(node.write(0, Bytes::from(vec![1u8; 4096]), false));
    assert!(write.is_err(), "the write's record could not be saved");
    std::fs::remove_dir(&tmp).unwrap();
    let eio = io::Error::from_raw_os_error(libc::EIO);
    rt.block_on(node.final_flush_failed(&eio));
    drop(node);
    rt.shutdown_timeout(Duration::from_secs(5));
    let m = Meta::load(&meta, "a", "r", 1 << 20).unwrap().unwrap();
    assert_eq!(m.disk, DiskState::Failed, "the failed final flush is not on record");
}

/// Opens node `a` of `dir` (its disk a file there), forces it Primary,
/// and stops it cleanly: its record UpToDate.
fn uptodate_node(dir: &std::path::Path) {
    let rt = runtime();
    let node = primary(&rt, resource(dir));
    rt.block_on(node.demote_for_stop(Duration::from_secs(1), Duration::ZERO));
    node.close();
    drop(node);
    rt.shutdown_timeout(Duration::from_secs(5));
    let meta = dir.join("a.meta");
    assert_eq!(Meta::load(&meta, "a", "r", 1 << 20).unwrap().unwrap().disk, DiskState::UpToDate);
}

/// Opens node `a` of `dir` again: whether it started, and its record's
/// disk state after.
fn reopen(dir: &std::path::Path) -> (bool, DiskState) {
    let rt = runtime();
    let opened = rt.block_on(async { Node::open(resource(dir), "a", &StoreOptions::default()) });
    let started = opened.is_ok();
    drop(opened);
    rt.shutdown_timeout(Duration::from_secs(5));
    let meta = dir.join("a.meta");
    (started, Meta::load(&meta, "a", "r", 1 << 20).unwrap().unwrap().disk)
}

/// A node whose disk is a block device starts before the device has
/// appeared (a volume still attaching, udev not done at boot), or whose
/// disk file's file system is not mounted yet. Its path missing was taken
/// for a disk gone: the metadata was saved Failed for good and a sparse
/// regular file made at the disk's path. The data on the disk was then
/// given up: a full sync from the peer, or, with a peer that is not
/// UpToDate, no node to promote without `--force` (the node that held the
/// newest writes looks like the one to discard). The start is refused
/// instead, the metadata untouched, until it is there. (A file removed
/// from its file system is gone, as before.)
#[test]
fn a_disk_not_there_yet_is_not_taken_for_a_lost_disk() {
    let dir = tempfile::tempdir().unwrap();
    let meta = dir.path().join("a.meta");
    let disk = dir.path().join("a.img");
    let id = crate::disk_id::id_path(&meta);
    uptodate_node(dir.path());
    // As recorded for a block device (its stable name), now not there.
    std::fs::write(&id, "block device/serial=vol0123\n").unwrap();
    std::fs::remove_file(&disk).unwrap();
    let (started, disk_state) = reopen(dir.path());
    assert!(!started, "started on a block device that is not there");
    assert!(!disk.exists(), "a file was made at the block device's path");
    assert_eq!(disk_state, DiskState::UpToDate, "the data on the device was recorded lost");
    // A file on a file system not mounted (another device than the one
    // holding the path's directory now).
    std::fs::write(&id, "file dev=4242424242 ino=12 born=0\n").unwrap();
    let (started, disk_state) = reopen(dir.path());
    assert!(!started, "started on a file whose file system is not there");
    assert!(!disk.exists(), "a file was made under the mount point");
    assert_eq!(disk_state, DiskState::UpToDate, "the data on the file was recorded lost");
    // A file removed from its own file system: gone (Failed, a full sync).
    let dir = tempfile::tempdir().unwrap();
    uptodate_node(dir.path());
    std::fs::remove_file(dir.path().join("a.img")).unwrap();
    let (started, disk_state) = reopen(dir.path());
    assert!(started);
    assert_eq!(disk_state, DiskState::Failed);
}

/// The disk path is a symlink to the disk file on another file system
/// (`/var/lib/twinblock/r0.img -> /data/r0.img`), and the operator
/// replaces the disk as the README says: the file deleted (on its own,
/// mounted file system), the node started again. The path's directory is
/// on another device than the recorded file, so the start was refused as
/// if that file system were not mounted yet (review of helper-95's
/// `DiskAbsent`): a dangling symlink's target's directory is the one to
/// compare. A target whose directory is not there is still refused.
#[test]
fn a_disk_file_deleted_behind_a_symlink_to_another_file_system_is_gone() {
    use std::os::unix::fs::MetadataExt;
    let Ok(other) = tempfile::tempdir_in("/dev/shm") else { return };
    let dir = tempfile::tempdir().unwrap();
    let dev = |p: &std::path::Path| std::fs::metadata(p).unwrap().dev();
    if dev(other.path()) == dev(dir.path()) {
        return; // (needs two file systems)
    }
    let target = other.path().join("a.img");
    std::os::unix::fs::symlink(&target, dir.path().join("a.img")).unwrap();
    uptodate_node(dir.path());
    assert!(target.exists());
    std::fs::remove_file(&target).unwrap();
    let (started, disk_state) = reopen(dir.path());
    assert!(started, "a file deleted on its own, mounted, file system taken for one not there yet");
    assert_eq!(disk_state, DiskState::Failed);
    assert!(target.exists(), "the new disk file is made through the symlink");
    // Its directory not there (the file system not mounted): refused.
    let dir = tempfile::tempdir().unwrap();
    let sub = other.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::os::unix::fs::symlink(sub.join("a.img"), dir.path().join("a.img")).unwrap();
    uptodate_node(dir.path());
    std::fs::remove_dir_all(&sub).unwrap();
    let (started, disk_state) = reopen(dir.path());
    assert!(!started, "started on a disk whose directory is not there");
    assert_eq!(disk_state, DiskState::UpToDate);
}

/// A block device that is not there and is gone for good. `DiskAbsent`
/// told the operator to remove `META.disk`; the start after that took the
/// missing path for a gone disk and made a sparse regular file at the
/// device's path (on /dev: in memory, and holding the name the kernel
/// would give the replacement device's node), the very outcome the
/// refusal is there to prevent (review of helper-95's `DiskAbsent`). For
/// a block device the remedy is its replacement at that path, taken for
/// a replaced disk (Failed, a full sync from the peer): the message says
/// that, not to remove `META.disk`.
#[test]
fn a_block_device_not_there_is_not_answered_by_a_file_at_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let meta = dir.path().join("a.meta");
    let disk = dir.path().join("a.img");
    let id = crate::disk_id::id_path(&meta);
    uptodate_node(dir.path());
    std::fs::write(&id, "block device/serial=vol0123\n").unwrap();
    std::fs::remove_file(&disk).unwrap();
    let rt = runtime();
    let opened =
        rt.block_on(async { Node::open(resource(dir.path()), "a", &StoreOptions::default()) });
    let Err(e @ NodeError::DiskAbsent { .. }) = opened else { panic!("not refused as absent") };
    drop(rt);
    let msg = e.to_string();
    assert!(
        !msg.contains(&format!("remove {}", id.display())),
        "a block device gone for good is not to be answered by removing its identity: {msg}"
    );
    assert!(msg.contains("replacement"), "{msg}");
    // Its replacement at the path (a new disk, standing for the device):
    // another disk than the recorded one, Failed, a full sync.
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let (started, disk_state) = reopen(dir.path());
    assert!(started);
    assert_eq!(disk_state, DiskState::Failed);
}

/// The disk path cannot be looked up, for another reason than being
/// missing (here a symlink loop, an operator's `ln -sf` gone wrong; as
/// well a stale NFS handle, a FUSE mount whose daemon died, an EIO or
/// EACCES on a directory): the start took it for a gone disk, saved the
/// record Failed for good and then failed to open it. Once the path was
/// mended, the disk, intact, took a full sync from its peer (review of
/// helper-95's `DiskAbsent`: only NotFound is a missing path). The start
/// fails, the record untouched.
#[test]
fn a_disk_path_that_cannot_be_looked_up_is_not_taken_for_a_lost_disk() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("a.img");
    let real = dir.path().join("real.img");
    uptodate_node(dir.path());
    std::fs::rename(&disk, &real).unwrap();
    // a.img -> b.img -> a.img
    std::os::unix::fs::symlink("b.img", &disk).unwrap();
    std::os::unix::fs::symlink("a.img", dir.path().join("b.img")).unwrap();
    let (started, disk_state) = reopen(dir.path());
    assert!(!started);
    assert_eq!(disk_state, DiskState::UpToDate, "a path not looked up was recorded lost");
    // Mended: the same disk.
    std::fs::remove_file(&disk).unwrap();
    std::os::unix::fs::symlink(&real, &disk).unwrap();
    let (started, disk_state) = reopen(dir.path());
    assert!(started);
    assert_eq!(disk_state, DiskState::UpToDate);
}

/// The final flush at stop failed and every record save fails too (the
/// metadata volume gone as well): the stop still ends within the wait,
/// and says the record was not saved. It returned as when it was, and
/// `up`'s error was the flush's alone (a log line aside): nothing told
/// the operator that the record still says UpToDate and that the next
/// start trusts the disk (its own descriptor no longer hears of the
/// failed writeback), nor what to do (remove `META.disk`: the disk is
/// then taken for another and takes a full sync; review).
#[test]
fn a_failed_final_flush_that_cannot_be_recorded_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let res = resource(dir.path());
    let meta = dir.path().join("a.meta");
    let rt = runtime();
    let node = primary(&rt, res);
    // Every record save fails from now on.
    std::fs::create_dir(dir.path().join("a.meta.tmp")).unwrap();
    let eio = io::Error::from_raw_os_error(libc::EIO);
    let t = std::time::Instant::now();
    let recorded = rt.block_on(node.final_flush_failed(&eio));
    assert!(t.elapsed() < Duration::from_secs(4), "the stop waited {:?}", t.elapsed());
    assert!(!recorded, "the record was not saved, and nothing says so");
    drop(node);
    rt.shutdown_timeout(Duration::from_secs(5));
    let m = Meta::load(&meta, "a", "r", 1 << 20).unwrap().unwrap();
    assert_eq!(m.disk, DiskState::UpToDate);
}

/// The final flush at stop failed and the metadata volume hangs (a dying
/// device often fails one request and stops answering the next; the
/// metadata often sits on it: `disk_timeout::RECORD_WAIT`). The record
/// saying Failed was saved in place, under the node's lock, by
/// `final_flush_failed` itself (or by the timer's retry): the stop hung
/// with it, past the 3 s the wait promises, until the volume answered or
/// systemd killed the process. It is saved on a blocking thread, as while
/// running, and the stop ends after the wait, saying it is not recorded
/// (review).
#[test]
fn a_failed_final_flush_does_not_hang_the_stop_on_a_hung_metadata_volume() {
    let dir = tempfile::tempdir().unwrap();
    let res = resource(dir.path());
    let rt = runtime();
    let node = primary(&rt, res);
    // The metadata volume stops answering (for longer than the wait).
    let holder = hold_files(&node, Duration::from_secs(5));
    let eio = io::Error::from_raw_os_error(libc::EIO);
    let t = std::time::Instant::now();
    let recorded = rt.block_on(node.final_flush_failed(&eio));
    let waited = t.elapsed();
    assert!(waited < Duration::from_millis(4500), "the stop waited {waited:?}");
    assert!(!recorded);
    drop(node);
    rt.shutdown_timeout(Duration::from_millis(100));
    holder.join().unwrap();
}

/// A one-node resource in `dir` with a controller (its witness never
/// started) that freezes without quorum.
fn controlled_resource(dir: &std::path::Path, extra: &str) -> ResourceConfig {
    let text = format!(
        "name = \"r\"\nprotocol = \"C\"\nsize = \"1M\"\nping-interval = \"100ms\"\n{extra}\n{NODES}{}",
        r#"[nodes.w]
witness = true
address = "127.0.0.1:5"
meta = "w.state"
control = "w.sock"
cert = "w.pem"
key = "w.key"
[controller]
dead_time = "400ms"
heartbeat = "100ms"
on_no_quorum = "freeze"
"#
    );
    ResourceConfig::parse(&dir.join("r.toml"), &text).unwrap()
}

/// Node `a` of [`controlled_resource`] (`extra`: more top-level keys),
/// forced Primary by its "witness" (the test answers its votes), whose
/// lease has run out: its reads are held (`freeze`).
fn primary_without_quorum(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    extra: &str,
) -> (Arc<Node>, mpsc::UnboundedReceiver<ControllerOut>) {
    let node = rt
        .block_on(async {
            Node::open(controlled_resource(dir, extra), "a", &StoreOptions::default())
        })
        .unwrap();
    let mut out = node.attach_controller();
    node.witness_link(true);
    // `primary --force` (after the start's guard), granted.
    std::thread::sleep(Duration::from_millis(300));
    let promote = {
        let node = node.clone();
        rt.spawn(async move { node.promote(true).await })
    };
    let vote = loop {
        match rt.block_on(out.recv()).expect("controller channel") {
            ControllerOut::Vote(v) if v.kind == crate::core::VoteKind::Claim => break v,
            _ => {}
        }
    };
    node.vote(granted(vote.id));
    rt.block_on(promote).unwrap().expect("promoted");
    assert_eq!(node.role(), Role::Primary);
    // No renewal is answered: the lease runs out, reads are held (freeze).
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(node.lock().core.read_gate(node.now(), true), crate::core::ReadGate::Wait);
    (node, out)
}

fn granted(id: u64) -> crate::core::VoteReply {
    crate::core::VoteReply { id, granted: true, holder: Some("a".into()), reason: "granted".into() }
}

/// Polls `f` once on a new thread outside any runtime: whether it was
/// pending (Err: it panicked).
fn poll_outside<F: std::future::Future + Send + Unpin>(
    f: &mut F,
) -> Result<bool, Box<dyn std::any::Any + Send>> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                std::pin::Pin::new(&mut *f).poll(&mut cx).is_pending()
            }))
        })
        .join()
        .unwrap()
    })
}

/// A read held by the controller's rules (`Node::quorum_for_read`: a
/// Primary without quorum, `freeze`) is polled again on whatever thread
/// wakes it (`finish_on_wake`: the NBD connection's `InlineTask`), which
/// may be one outside the runtime (a store worker that drops the shell's
/// lock after a state change). Each look armed a new tokio timer there,
/// and tokio panics creating one outside a runtime ("there is no reactor
/// running"): the waking thread died and the read hung (found by review,
/// helper-108). Now the timer is armed in the node's runtime.
#[test]
fn a_held_read_woken_outside_the_runtime_waits_on() {
    use std::future::Future;
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (node, out) = primary_without_quorum(&rt, dir.path(), "");
    let mut read = Box::pin(node.read(0, 4096));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    {
        // First polled on the connection's thread, in the runtime.
        let _rt = rt.enter();
        assert!(read.as_mut().poll(&mut cx).is_pending(), "the read was not held");
    }
    // Woken and polled again on a thread outside the runtime.
    node.lane_progress.notify_waiters();
    let polled = poll_outside(&mut read);
    assert!(matches!(polled, Ok(true)), "the held read panicked outside the runtime: {polled:?}");
    drop(read);
    drop(out);
}

/// The same read let through once quorum is back, with `disk-timeout`:
/// `Node::read` armed the disk timeout's timer on the thread that polled
/// it, outside the runtime, and tokio panicked (found by review,
/// helper-108).
#[test]
fn a_read_released_outside_the_runtime_arms_its_disk_timeout_in_it() {
    use std::future::Future;
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (node, mut out) = primary_without_quorum(&rt, dir.path(), "disk-timeout = \"5s\"");
    let mut read = Box::pin(node.read(0, 4096));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    {
        let _rt = rt.enter();
        assert!(read.as_mut().poll(&mut cx).is_pending(), "the read was not held");
    }
    // The witness renews the lease (a fresh renewal): the read may go on.
    let serve = || node.lock().core.read_gate(node.now(), true) == crate::core::ReadGate::Serve;
    while !serve() {
        if let ControllerOut::Vote(v) = rt.block_on(out.recv()).expect("controller channel") {
            if v.kind == crate::core::VoteKind::Renew {
                node.vote(granted(v.id));
            }
        }
    }
    node.lane_progress.notify_waiters();
    let polled = poll_outside(&mut read);
    assert!(polled.is_ok(), "the released read panicked outside the runtime: {polled:?}");
    drop(read);
    drop(out);
}

/// A Primary demoted without quorum (`secondary --force` on a fenced
/// one, or deposed) fails its reads as Secondary until it meets its peer
/// (`Ctl::superseded`); `status` says so (`controller.superseded`), or an
/// operator saw an UpToDate Secondary whose reads failed with EIO and no
/// reason anywhere but a debug log (found by review, helper-110).
#[test]
fn status_shows_a_demoted_primary_superseded() {
    use crate::core::Hook;
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (node, mut out) = primary_without_quorum(&rt, dir.path(), "");
    let _enter = rt.enter();
    let superseded = |node: &Node| {
        serde_json::to_value(node.status()).unwrap()["controller"]["superseded"].clone()
    };
    assert_eq!(superseded(&node), serde_json::json!(false));
    node.demote_forced();
    while !matches!(
        rt.block_on(out.recv()).expect("controller channel"),
        ControllerOut::Hook(Hook::Demote)
    ) {}
    node.hook_done(Hook::Demote, Ok(()));
    assert_eq!(node.role(), Role::Secondary);
    assert_eq!(node.lock().core.read_gate(node.now(), false), crate::core::ReadGate::Fail);
    assert_eq!(superseded(&node), serde_json::json!(true), "status does not say why reads fail");
    drop(out);
}

/// A hook that succeeds after it failed (`on_promote` run by the re-check
/// that moved the address after a failed move) takes the failure out of
/// `last_error`: `status` showed it for good (review, helper-107). A
/// newer error, or the same hook failing again, is shown. A demotion
/// that went well ends a promotion hook's failure too (the promotion is
/// over), not the other way round.
#[test]
fn a_hook_that_succeeds_after_it_failed_clears_its_last_error() {
    use crate::core::Hook;
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let node = primary(&rt, resource(dir.path()));
    let _enter = rt.enter();
    node.hook_done(Hook::Demote, Err("on_demote failed".into()));
    // A promotion's success does not clear a demotion's failure.
    node.hook_done(Hook::Promoted, Ok(()));
    assert!(node.status().last_error.is_some_and(|e| e.contains("on_demote failed")));
    node.hook_done(Hook::Demote, Ok(()));
    assert_eq!(node.status().last_error, None);
    node.hook_done(Hook::Promoted, Err("address move failed".into()));
    let e = node.status().last_error.unwrap_or_default();
    assert!(e.contains("address move failed"), "{e}");
    node.hook_done(Hook::Demote, Ok(()));
    assert_eq!(node.status().last_error, None, "a demotion ends the promotion's failure");
    node.hook_done(Hook::Promoted, Err("address move failed".into()));
    node.hook_done(Hook::Promoted, Ok(()));
    assert_eq!(node.status().last_error, None);
    // The same failure again is shown again.
    node.hook_done(Hook::Promoted, Err("address move failed".into()));
    assert!(node.status().last_error.is_some());
    // A newer error than the hook's is not cleared by the hook's success.
    node.hook_done(Hook::Demote, Err("on_demote failed".into()));
    node.hook_done(Hook::Promoted, Ok(()));
    let e = node.status().last_error.unwrap_or_default();
    assert!(e.contains("on_demote failed"), "{e}");
}

/// `primary --force` asked again while the first one waits for its record
/// (a hung metadata volume; a second operator, or a retry after the CLI's
/// own client gave up): the second must not answer OK before that record
/// is saved. Before, it answered OK at once (the node was Primary in
/// memory), then the first failed, demoted the node and undid what the
/// force declared (`core/declared.rs`): the second caller was told the
/// node is Primary on data that is again Outdated (review, helper-149).
#[test]
fn a_second_primary_force_is_not_answered_before_the_first_ones_record() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "name = \"r\"\nprotocol = \"C\"\nsize = \"1M\"\ntimeout = \"1s\"\n\
         ping-interval = \"200ms\"\n{NODES}"
    );
    let res = ResourceConfig::parse(&dir.path().join("r.toml"), &text).unwrap();
    let rt = runtime();
    let node = rt.block_on(async { Node::open(res, "a", &StoreOptions::default()) }).unwrap();
    while !node.lock().core.meta_durable() {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_ne!(node.lock().core.disk(), DiskState::UpToDate, "a new disk");
    // The metadata volume stops answering for longer than `primary` waits.
    let holder = hold_files(&node, Duration::from_secs(4));
    let first = {
        let node = node.clone();
        rt.spawn(async move { node.promote(true).await })
    };
    while node.lock().core.role() != Role::Primary {
        std::thread::sleep(Duration::from_millis(5));
    }
    let second = rt.block_on(node.promote(true));
    let first = rt.block_on(first).unwrap();
    assert!(first.is_err(), "the first primary --force: {first:?}");
    assert_eq!(node.lock().core.role(), Role::Secondary);
    assert!(second.is_err(), "the second primary --force answered OK on a force undone");
    drop(node);
    rt.shutdown_timeout(Duration::from_secs(5));
    holder.join().unwrap();
}

/// A `meta` left between a forced promotion's two records (the first
/// landed, holding the record before the force as `pending`; the process
/// stopped before the second), then the disk is gone (deleted, emptied)
/// or replaced: the start records the disk Failed. That mark went on the
/// top-level record only, and a start takes the held one
/// (`MetaRecord::at_start`): the node came back Outdated on a new empty
/// disk, its old record saved back (a resync sends only the blocks
/// marked; the rest stays zeroes under an account of good data). Review,
/// helper-162.
#[test]
fn a_disk_gone_under_an_unconfirmed_forced_record_starts_failed() {
    for (replaced, top) in
        [(false, DiskState::UpToDate), (true, DiskState::UpToDate), (true, DiskState::Failed)]
    {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("a.meta");
        uptodate_node(dir.path());
        let saved = Meta::load(&meta, "a", "r", 1 << 20).unwrap().unwrap();
        let mut before = saved.record();
        before.disk = DiskState::Outdated;
        let mut first = saved.clone();
        first.promoted_at += 1;
        // (A disk that failed again while the force's record was saved
        // stays Failed in it: the held record is what a start takes.)
        first.disk = top;
        first.pending = Some(Box::new(before));
        first.save(&meta).unwrap();
        let disk = dir.path().join("a.img");
        if replaced {
            // Another file at the disk's path (another inode).
            std::fs::remove_file(&disk).unwrap();
            std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
        } else {
            std::fs::remove_file(&disk).unwrap();
        }
        let rt = runtime();
        let node = rt
            .block_on(async { Node::open(resource(dir.path()), "a", &StoreOptions::default()) })
            .unwrap();
        let state = node.lock().core.disk();
        node.close();
        drop(node);
        rt.shutdown_timeout(Duration::from_secs(5));
        assert_eq!(
            state,
            DiskState::Failed,
            "replaced {replaced}, {top:?}: a new disk taken for the old"
        );
    }
}
