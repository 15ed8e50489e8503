use super::*;

fn opts(backend: BackendChoice, direct: bool) -> StoreOptions {
    StoreOptions { backend, direct, ..StoreOptions::default() }
}

async fn roundtrip(backend: BackendChoice, direct: bool) {
    roundtrip_with(opts(backend, direct)).await
}

async fn roundtrip_with(o: StoreOptions) {
    let (backend, direct) = (o.backend, o.direct);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    let store = Store::open(&path, Some(8 << 20), &o).unwrap();
    assert_eq!(store.size(), 8 << 20);

    // Aligned and unaligned writes, read back.
    let a = Bytes::from(vec![0xabu8; 64 * 1024]);
    store.write(4096, a.clone(), false).await.unwrap();
    let b = Bytes::from((0..1000u32).map(|i| i as u8).collect::<Vec<_>>());
    store.write(100_001, b.clone(), true).await.unwrap();
    assert_eq!(store.read(4096, 64 * 1024).await.unwrap(), a);
    assert_eq!(store.read(100_001, 1000).await.unwrap(), b);
    // Never-written space reads as zeroes.
    assert!(store.read(4 << 20, 8192).await.unwrap().iter().all(|&x| x == 0));
    store.flush().await.unwrap();

    // Many in flight at once.
    let writes = (0..200u64).map(|i| {
        let data = Bytes::from(vec![i as u8; 4096]);
        let store = &store;
        async move { store.write(i * 4096 + (1 << 20), data, false).await }
    });
    for r in futures_join_all(writes).await {
        r.unwrap();
    }
    for i in 0..200u64 {
        let got = store.read(i * 4096 + (1 << 20), 4096).await.unwrap();
        assert!(got.iter().all(|&x| x == i as u8), "block {i}");
    }

    // Discard reads back as zeroes and shows as a hole.
    store.discard(4096, 64 * 1024).await.unwrap();
    assert!(store.read(4096, 64 * 1024).await.unwrap().iter().all(|&x| x == 0));
    let ext = store.extents(4096, 64 * 1024).unwrap();
    assert_eq!(ext, vec![(64 * 1024, true)]);

    // Zeroing without punching keeps the range allocated.
    store.write(2 << 20, Bytes::from(vec![7u8; 8192]), false).await.unwrap();
    store.flush().await.unwrap();
    let blocks = || std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&path).unwrap());
    let before = blocks();
    store.zero(2 << 20, 8192, false, false).await.unwrap();
    assert!(store.read(2 << 20, 8192).await.unwrap().iter().all(|&x| x == 0));
    assert!(blocks() >= before, "zeroing without punching keeps the range allocated");
    drop(store);

    // Reopening checks the size.
    let err = Store::open(&path, Some(4 << 20), &opts(backend, direct)).err().unwrap();
    assert!(matches!(err, StoreError::SizeMismatch { actual, .. } if actual == 8 << 20), "{err}");
    let store = Store::open(&path, None, &opts(backend, direct)).unwrap();
    assert_eq!(store.read(100_001, 1000).await.unwrap(), b);
}

async fn futures_join_all<F: std::future::Future>(fs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let handles: Vec<_> = fs.collect();
    let mut out = Vec::with_capacity(handles.len());
    // Poll them concurrently with a JoinSet-free approach: pin and join.
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = handles.into_iter().map(Box::pin).collect();
    let mut results: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if results[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => results[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    for r in results {
        out.push(r.expect("every future completed"));
    }
    out
}

#[tokio::test]
async fn uring_roundtrip() {
    roundtrip(BackendChoice::IoUring, false).await;
}

#[tokio::test]
async fn uring_every_write_through_the_ring() {
    roundtrip_with(StoreOptions {
        backend: BackendChoice::IoUring,
        inline_write_max: 0,
        ..StoreOptions::default()
    })
    .await;
}

#[tokio::test]
async fn uring_direct_roundtrip() {
    roundtrip(BackendChoice::IoUring, true).await;
}

#[tokio::test]
async fn threads_roundtrip() {
    roundtrip(BackendChoice::Threads, false).await;
}

#[tokio::test]
async fn threads_direct_roundtrip() {
    roundtrip(BackendChoice::Threads, true).await;
}

#[tokio::test]
async fn missing_file_without_size_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = Store::open(&dir.path().join("nope"), None, &StoreOptions::default()).err().unwrap();
    assert!(matches!(err, StoreError::Missing { .. }), "{err}");
}

#[test]
fn backend_names_parse() {
    assert_eq!("uring".parse::<BackendChoice>().unwrap(), BackendChoice::IoUring);
    assert_eq!("threads".parse::<BackendChoice>().unwrap(), BackendChoice::Threads);
    assert_eq!("auto".parse::<BackendChoice>().unwrap(), BackendChoice::Auto);
    assert!("fast".parse::<BackendChoice>().is_err());
}
