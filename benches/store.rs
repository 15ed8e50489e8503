//! The local store: 4 KiB writes and reads through each backend, one at a
//! time (latency) and 32 in flight (throughput).

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::sync::Arc;
use twinblock_replicator::{BackendChoice, Store, StoreOptions};

fn store_bench(c: &mut Criterion) {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for (name, backend) in [("uring", BackendChoice::IoUring), ("threads", BackendChoice::Threads)]
    {
        let path = dir.path().join(format!("{name}.img"));
        let opts = StoreOptions { backend, ..StoreOptions::default() };
        let store =
            Arc::new(rt.block_on(async { Store::open(&path, Some(256 << 20), &opts) }).unwrap());
        let data = Bytes::from(vec![0xa5u8; 4096]);
        let mut g = c.benchmark_group(format!("store_{name}"));
        g.throughput(Throughput::Elements(1));
        let mut i = 0u64;
        g.bench_function("write_4k_qd1", |b| {
            b.iter(|| {
                i = (i + 7919) % 65536;
                rt.block_on(store.write(i * 4096, data.clone(), false)).unwrap();
            })
        });
        g.bench_function("read_4k_qd1", |b| {
            b.iter(|| {
                i = (i + 7919) % 65536;
                rt.block_on(store.read(i * 4096, 4096)).unwrap();
            })
        });
        g.throughput(Throughput::Elements(32));
        g.bench_function("write_4k_qd32", |b| {
            b.iter(|| {
                rt.block_on(async {
                    let tasks: Vec<_> = (0..32u64)
                        .map(|k| {
                            let store = store.clone();
                            let data = data.clone();
                            tokio::spawn(async move {
                                store.write(k * 4096 * 97 % (256 << 20), data, false).await
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.unwrap().unwrap();
                    }
                })
            })
        });
        g.finish();
    }
}

criterion_group!(benches, store_bench);
criterion_main!(benches);
