//! Portable backend: blocking positional I/O on a small thread pool. Chosen
//! when io_uring is unavailable (old kernels, seccomp) or forced.

use std::io;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use super::op::{Done, Op};

type Job = (Op, oneshot::Sender<io::Result<Done>>);

pub(crate) struct Pool {
    tx: Option<mpsc::Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
}

impl Pool {
    pub fn new(threads: usize) -> io::Result<Pool> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut workers = Vec::with_capacity(threads);
        // The workers log (and finish what their completions wake) in the
        // opener's span: a node's resource and name.
        let span = tracing::Span::current();
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let span = span.clone();
            let w = std::thread::Builder::new().name(format!("tb-store-{i}")).spawn(move || {
                let _span = span.enter();
                loop {
                    let job = match rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok((op, reply)) = job else { return };
                    let _ = reply.send(op.run_blocking());
                }
            })?;
            workers.push(w);
        }
        Ok(Pool { tx: Some(tx), workers })
    }

    pub async fn run(&self, op: Op) -> io::Result<Done> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .as_ref()
            .ok_or_else(|| io::Error::other("store is closed"))?
            .send((op, tx))
            .map_err(|_| io::Error::other("store workers are gone"))?;
        rx.await.map_err(|_| io::Error::other("store worker dropped the request"))?
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.tx.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
