//! `twinblock netem`: a UDP relay that adds latency, jitter and loss, to
//! rehearse an inter-AZ link on one machine (this kernel has no netem).
//! Datagrams from each client go to `--forward` from a socket of their own;
//! replies come back the same way. Plain threads and `nanosleep`, so delays
//! below a millisecond are honoured (tokio's timer has 1 ms resolution).
//! Jitter never reorders: a datagram leaves no earlier than the one before.
//!
//! The relay's own timer overhead (how late `nanosleep` wakes up) is
//! measured at start and printed; the delay lines sleep that much less and
//! spin the rest, so the delay told is the delay added.
//!
//! Restarting a relay on the same port (other settings) does not break a
//! QUIC connection through it for good: the new relay forwards from a new
//! source port, which the receiving endpoint takes as a migration (path
//! validation, then the connection goes on); were the gap longer than the
//! node's `timeout`, the node declares the peer lost and dials again.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub struct NetemArgs {
    pub listen: SocketAddr,
    pub forward: SocketAddr,
    pub delay: Duration,
    pub jitter: Duration,
    pub loss: f64,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Asks the kernel to wake this thread's sleeps on time: a normal thread's
/// timers may fire up to 50 us late (the default timer slack, which lets
/// the kernel batch wake-ups). With that slack a delay line woke about
/// 57 us late and spun the rest of every wait: the relay then took a
/// third of a core at 20,000 datagrams a second, CPU the nodes it sits
/// between would never lose to a real network. With 1 ns of slack a
/// 100 us sleep wakes about 5 us late. Inherited by the threads this one
/// starts.
fn precise_timers() {
    // SAFETY: prctl with PR_SET_TIMERSLACK takes an integer argument.
    let r = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
    if r != 0 {
        eprintln!(
            "twinblock netem: cannot set the timer slack ({}); delays are kept by spinning",
            std::io::Error::last_os_error()
        );
    }
}

/// How late a short sleep wakes up on this machine: (median, p99).
pub fn timer_overhead() -> (Duration, Duration) {
    let mut late: Vec<Duration> = (0..200)
        .map(|_| {
            let t = Instant::now();
            std::thread::sleep(Duration::from_micros(100));
            t.elapsed().saturating_sub(Duration::from_micros(100))
        })
        .collect();
    late.sort_unstable();
    (late[late.len() / 2], late[late.len() * 99 / 100])
}

/// Waits until `at`: sleeps until `early` before it (the timer's typical
/// lateness), then spins.
fn wait_until(at: Instant, early: Duration) {
    loop {
        let now = Instant::now();
        if now >= at {
            return;
        }
        let left = at - now;
        if left > early {
            std::thread::sleep(left - early);
        } else {
            std::thread::yield_now();
        }
    }
}

/// A delay line: datagrams pushed into it leave `sock` (to `to`, or its
/// connected peer) after the delay, in order. The receiving thread stamps
/// each datagram (loss, delay, jitter) as it pushes it; one sender thread
/// per line waits for each stamp: one thread hand-off per datagram.
struct DelayLine {
    rng: Rng,
    last: Instant,
    args: Arc<NetemArgs>,
    out: mpsc::Sender<(Instant, Vec<u8>)>,
}

impl DelayLine {
    fn new(
        sock: Arc<UdpSocket>,
        to: Option<SocketAddr>,
        args: Arc<NetemArgs>,
        seed: u64,
        early: Duration,
    ) -> DelayLine {
        let (out, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
        std::thread::spawn(move || {
            for (at, pkt) in rx {
                wait_until(at, early);
                let _ = match to {
                    Some(to) => sock.send_to(&pkt, to),
                    None => sock.send(&pkt),
                };
            }
        });
        DelayLine { rng: Rng(seed | 1), last: Instant::now(), args, out }
    }

    /// Queues one datagram received now; false once the line is gone.
    fn push(&mut self, pkt: &[u8]) -> bool {
        if self.rng.unit() * 100.0 < self.args.loss {
            return true;
        }
        let jitter = self.args.jitter.mul_f64(self.rng.unit());
        let at = (Instant::now() + self.args.delay + jitter).max(self.last);
        self.last = at;
        self.out.send((at, pkt.to_vec())).is_ok()
    }
}

pub fn run(args: NetemArgs) -> Result<()> {
    if !(0.0..=100.0).contains(&args.loss) {
        bail!("--loss must be a percentage between 0 and 100");
    }
    let listen = Arc::new(
        UdpSocket::bind(args.listen).with_context(|| format!("cannot bind {}", args.listen))?,
    );
    twinblock_replicator::link::set_socket_buffers(&*listen, 4 << 20);
    precise_timers();
    let (median, p99) = timer_overhead();
    // Sleep less by the typical lateness (at most 1 ms) and spin the rest.
    let early = (median + median / 2).min(Duration::from_millis(1));
    println!(
        "twinblock netem: timer overhead: a 100us sleep wakes {}us late (median), {}us (p99); compensated",
        median.as_micros(),
        p99.as_micros()
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
    let mut clients: HashMap<SocketAddr, DelayLine> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = listen.recv_from(&mut buf).context("relay")?;
        if !clients.contains_key(&from) {
            let up = Arc::new(UdpSocket::bind("0.0.0.0:0")?);
            twinblock_replicator::link::set_socket_buffers(&*up, 4 << 20);
            up.connect(args.forward)?;
            let seed = clients.len() as u64 * 2 + 1;
            let forward = DelayLine::new(up.clone(), None, args.clone(), seed, early);
            let mut back =
                DelayLine::new(listen.clone(), Some(from), args.clone(), seed + 7, early);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                loop {
                    match up.recv(&mut buf) {
                        Ok(n) => {
                            if !back.push(&buf[..n]) {
                                break;
                            }
                        }
                        // ICMP "port unreachable" from a forward target that
                        // is not up yet; it may come up later.
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                        Err(_) => break,
                    }
                }
            });
            clients.insert(from, forward);
        }
        if let Some(line) = clients.get_mut(&from) {
            line.push(&buf[..n]);
        }
    }
}
