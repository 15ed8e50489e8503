//! `twinblock netem`: a UDP relay that adds latency, jitter and loss, to
//! rehearse an inter-AZ link on one machine (this kernel has no netem).
//! Datagrams from each client go to `--forward` from a socket of their own;
//! replies come back the same way. Jitter never reorders (each datagram
//! leaves no earlier than the one before it).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::signals::Shutdown;

pub struct NetemArgs {
    pub listen: SocketAddr,
    pub forward: SocketAddr,
    pub delay: Duration,
    pub jitter: Duration,
    pub loss: f64,
}

/// Delay line for one direction: datagrams leave at their time, in order.
fn delay_line(
    sock: Arc<UdpSocket>,
    to: Option<SocketAddr>,
    args: Arc<NetemArgs>,
    seed: u64,
) -> mpsc::UnboundedSender<Vec<u8>> {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    tokio::spawn(async move {
        while let Some((at, pkt)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            let _ = match to {
                Some(to) => sock.send_to(&pkt, to).await,
                None => sock.send(&pkt).await,
            };
        }
    });
    let (in_tx, mut in_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        let mut rng = seed | 1;
        let mut last = Instant::now();
        while let Some(pkt) = in_rx.recv().await {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let r = (rng >> 11) as f64 / (1u64 << 53) as f64;
            if r * 100.0 < args.loss {
                continue;
            }
            let jitter = args.jitter.mul_f64((rng % 1000) as f64 / 1000.0);
            let at = (Instant::now() + args.delay + jitter).max(last);
            last = at;
            if tx.send((at, pkt)).is_err() {
                break;
            }
        }
    });
    in_tx
}

pub async fn run(args: NetemArgs) -> Result<()> {
    if !(0.0..=100.0).contains(&args.loss) {
        bail!("--loss must be a percentage between 0 and 100");
    }
    let shutdown = Shutdown::install()?;
    let listen = Arc::new(
        UdpSocket::bind(args.listen)
            .await
            .with_context(|| format!("cannot bind {}", args.listen))?,
    );
    println!(
        "twinblock netem: {} -> {} with delay {:?}, jitter {:?}, loss {}%",
        listen.local_addr()?,
        args.forward,
        args.delay,
        args.jitter,
        args.loss
    );
    let args = Arc::new(args);
    let mut clients: HashMap<SocketAddr, mpsc::UnboundedSender<Vec<u8>>> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    let relay = async {
        loop {
            let (n, from) = listen.recv_from(&mut buf).await?;
            if !clients.contains_key(&from) {
                let up = Arc::new(UdpSocket::bind("0.0.0.0:0").await?);
                up.connect(args.forward).await?;
                let seed = clients.len() as u64 * 2 + 1;
                let forward = delay_line(up.clone(), None, args.clone(), seed);
                let back = delay_line(listen.clone(), Some(from), args.clone(), seed + 7);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = up.recv(&mut buf).await {
                        if back.send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                });
                clients.insert(from, forward);
            }
            let _ = clients[&from].send(buf[..n].to_vec());
        }
        #[allow(unreachable_code)]
        Ok::<(), std::io::Error>(())
    };
    tokio::select! {
        r = relay => r.context("relay")?,
        _ = shutdown.wait() => {}
    }
    Ok(())
}
