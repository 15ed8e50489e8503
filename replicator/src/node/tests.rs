//! The shell's persistence against real files.

use super::*;

/// A one-node resource in `dir` (the peer is never started).
fn resource(dir: &std::path::Path) -> ResourceConfig {
    let text = r#"
name = "r"
protocol = "C"
size = "1M"
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
    ResourceConfig::parse(&dir.join("r.toml"), text).unwrap()
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
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let node = rt.block_on(async { Node::open(res, "a", &StoreOptions::default()) }).unwrap();
    rt.block_on(node.promote(true)).unwrap();
    let durable = |node: &Node| node.lock().core.meta_durable();
    while !durable(&node) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(Meta::load(&meta, "a", "r", 1 << 20).unwrap().unwrap().disk, DiskState::UpToDate);
    // The metadata files are busy (a slow metadata volume): the next
    // record save waits for them.
    let files = node.files.clone();
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        let _busy = files.lock().unwrap();
        locked_tx.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    });
    locked_rx.recv().unwrap();
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
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let node = rt.block_on(async { Node::open(res, "a", &StoreOptions::default()) }).unwrap();
    rt.block_on(node.promote(true)).unwrap();
    while !node.lock().core.meta_durable() {
        std::thread::sleep(Duration::from_millis(5));
    }
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
