#![cfg(feature = "aws")]
//! The movers against moto (a real EC2 API emulator on loopback), with a
//! small fault-injecting HTTP proxy in front of it for throttling, 5xx and
//! deadline tests; the command mover; the IMDSv2 client against a
//! test-local IMDS that enforces tokens.
//!
//! Each AWS test starts its own `moto_server` on a free port. Without
//! `moto_server` the AWS tests are skipped with a printed reason, or fail
//! when `CI=true`.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use twinblock_mover::{
    imds, move_address, move_address_guarded, AddressSpec, Identity, Kind, MoveError, Permit,
};

const REGION: &str = "us-east-1";
/// An AMI from moto's built-in list (moto/ec2/resources/amis.json).
const AMI: &str = "ami-12c6146b";
const OVERLAY: &str = "10.9.9.9/32";
const SECONDARY: &str = "10.0.1.50";

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Dummy credentials for the standard chain; IMDS credentials off; the
/// movers' logs in the test output (shown for failing tests).
fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("twinblock_mover=debug"));
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::set_var("AWS_SESSION_TOKEN", "testing");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        std::env::remove_var("AWS_PROFILE");
    });
}

// ---------------------------------------------------------------- moto ---

/// A `moto_server` child on a free port, killed on drop.
struct Moto {
    child: tokio::process::Child,
    addr: SocketAddr,
}

impl Moto {
    /// None (after printing why) when moto_server is missing outside CI.
    async fn start() -> Option<Moto> {
        init();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let spawned = tokio::process::Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let child = match spawned {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                assert!(!in_ci(), "moto_server is required in CI (scripts/setup.sh installs it)");
                eprintln!("SKIP: moto_server is not installed (pip install 'moto[server]')");
                return None;
            }
            Err(e) => panic!("cannot start moto_server: {e}"),
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut moto = Moto { child, addr };
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            if TcpStream::connect(addr).await.is_ok() {
                return Some(moto);
            }
            if let Ok(Some(s)) = moto.child.try_wait() {
                panic!("moto_server exited at start: {s}");
            }
            assert!(Instant::now() < until, "moto_server did not listen within 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// An EC2 client for setting up and checking state (not through the proxy).
async fn ec2(endpoint: &str) -> aws_sdk_ec2::Client {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(endpoint)
        .http_client(http)
        .load()
        .await;
    aws_sdk_ec2::Client::new(&conf)
}

/// Two instances in one subnet, an Elastic IP on the first, two route
/// tables routing the overlay IP to the first's ENI, and a secondary IP
/// on the first's ENI.
struct World {
    ec2: aws_sdk_ec2::Client,
    instances: [String; 2],
    enis: [String; 2],
    allocation_id: String,
    tables: Vec<String>,
}

impl World {
    async fn build(moto: &Moto) -> World {
        let ec2 = ec2(&moto.url()).await;
        let vpc = ec2.create_vpc().cidr_block("10.0.0.0/16").send().await.unwrap();
        let vpc_id = vpc.vpc().unwrap().vpc_id().unwrap().to_string();
        let subnet = ec2
            .create_subnet()
            .vpc_id(&vpc_id)
            .cidr_block("10.0.1.0/24")
            .availability_zone("us-east-1a")
            .send()
            .await
            .unwrap();
        let subnet_id = subnet.subnet().unwrap().subnet_id().unwrap().to_string();
        let run = ec2
            .run_instances()
            .image_id(AMI)
            .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
            .min_count(2)
            .max_count(2)
            .subnet_id(&subnet_id)
            .send()
            .await
            .unwrap();
        let inst = run.instances();
        assert_eq!(inst.len(), 2, "RunInstances gave {inst:?}");
        let id = |i: usize| inst[i].instance_id().unwrap().to_string();
        let eni =
            |i: usize| inst[i].network_interfaces()[0].network_interface_id().unwrap().to_string();
        let (instances, enis) = ([id(0), id(1)], [eni(0), eni(1)]);

        let alloc = ec2
            .allocate_address()
            .domain(aws_sdk_ec2::types::DomainType::Vpc)
            .send()
            .await
            .unwrap();
        let allocation_id = alloc.allocation_id().unwrap().to_string();
        ec2.associate_address()
            .allocation_id(&allocation_id)
            .instance_id(&instances[0])
            .send()
            .await
            .unwrap();

        let mut tables = Vec::new();
        for _ in 0..2 {
            let rt = ec2.create_route_table().vpc_id(&vpc_id).send().await.unwrap();
            let t = rt.route_table().unwrap().route_table_id().unwrap().to_string();
            ec2.create_route()
                .route_table_id(&t)
                .destination_cidr_block(OVERLAY)
                .network_interface_id(&enis[0])
                .send()
                .await
                .unwrap();
            tables.push(t);
        }
        ec2.assign_private_ip_addresses()
            .network_interface_id(&enis[0])
            .private_ip_addresses(SECONDARY)
            .send()
            .await
            .unwrap();
        World { ec2, instances, enis, allocation_id, tables }
    }

    fn me(&self, i: usize) -> Identity {
        Identity { instance_id: Some(self.instances[i].clone()), eni: Some(self.enis[i].clone()) }
    }

    fn eip_spec(&self, endpoint: &str) -> AddressSpec {
        AddressSpec {
            kind: Kind::AwsEip,
            allocation_id: Some(self.allocation_id.clone()),
            region: Some(REGION.into()),
            endpoint: Some(endpoint.into()),
            ..AddressSpec::default()
        }
    }

    /// (instance, ENI) holding the Elastic IP, from DescribeAddresses.
    async fn eip_owner(&self) -> (Option<String>, Option<String>) {
        let out =
            self.ec2.describe_addresses().allocation_ids(&self.allocation_id).send().await.unwrap();
        let a = &out.addresses()[0];
        (a.instance_id().map(Into::into), a.network_interface_id().map(Into::into))
    }

    /// The ENI each table routes the overlay IP to.
    async fn route_targets(&self) -> Vec<Option<String>> {
        let out = self
            .ec2
            .describe_route_tables()
            .set_route_table_ids(Some(self.tables.clone()))
            .send()
            .await
            .unwrap();
        self.tables
            .iter()
            .map(|t| {
                let rt = out.route_tables().iter().find(|r| r.route_table_id() == Some(t))?;
                let r = rt.routes().iter().find(|r| r.destination_cidr_block() == Some(OVERLAY))?;
                r.network_interface_id().map(Into::into)
            })
            .collect()
    }

    /// The private IPs of ENI `i`.
    async fn ips(&self, i: usize) -> Vec<String> {
        let out = self
            .ec2
            .describe_network_interfaces()
            .network_interface_ids(&self.enis[i])
            .send()
            .await
            .unwrap();
        out.network_interfaces()[0]
            .private_ip_addresses()
            .iter()
            .filter_map(|a| a.private_ip_address().map(Into::into))
            .collect()
    }
}

const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn eip_moves_to_the_other_instance_and_a_repeat_is_a_no_op() {
    let Some(moto) = Moto::start().await else { return };
    let w = World::build(&moto).await;
    assert_eq!(w.eip_owner().await.0.as_deref(), Some(w.instances[0].as_str()));
    let spec = w.eip_spec(&moto.url());

    let r = move_address(&spec, &w.me(1), &[], DEADLINE).await.unwrap();
    assert!(!r.already_in_place, "{r}");
    let (inst, eni) = w.eip_owner().await;
    assert_eq!(inst.as_deref(), Some(w.instances[1].as_str()));
    assert_eq!(eni.as_deref(), Some(w.enis[1].as_str()));

    let again = move_address(&spec, &w.me(1), &[], DEADLINE).await.unwrap();
    assert!(again.already_in_place, "{again}");
    assert!(again.to_string().contains("already in place"), "{again}");
    assert_eq!(again.attempts, 1, "a no-op is one DescribeAddresses: {again}");
    assert_eq!(w.eip_owner().await.0.as_deref(), Some(w.instances[1].as_str()));

    // And back, by ENI alone (no instance id known).
    let by_eni = Identity { instance_id: None, eni: Some(w.enis[0].clone()) };
    let back = move_address(&spec, &by_eni, &[], DEADLINE).await.unwrap();
    assert!(!back.already_in_place, "{back}");
    // (moto leaves InstanceId empty for an association by ENI; AWS fills it.)
    assert_eq!(w.eip_owner().await.1.as_deref(), Some(w.enis[0].as_str()));
    let again = move_address(&spec, &by_eni, &[], DEADLINE).await.unwrap();
    assert!(again.already_in_place, "{again}");
}

#[tokio::test]
async fn route_moves_in_every_table_and_a_repeat_is_a_no_op() {
    let Some(moto) = Moto::start().await else { return };
    let w = World::build(&moto).await;
    let first = Some(w.enis[0].clone());
    assert_eq!(w.route_targets().await, vec![first.clone(), first]);
    let spec = AddressSpec {
        kind: Kind::AwsRoute,
        route_table_ids: w.tables.clone(),
        cidr: Some(OVERLAY.into()),
        region: Some(REGION.into()),
        endpoint: Some(moto.url()),
        ..AddressSpec::default()
    };
    let r = move_address(&spec, &w.me(1), &[], DEADLINE).await.unwrap();
    assert!(!r.already_in_place, "{r}");
    let second = Some(w.enis[1].clone());
    assert_eq!(w.route_targets().await, vec![second.clone(), second.clone()]);

    let again = move_address(&spec, &w.me(1), &[], DEADLINE).await.unwrap();
    assert!(again.already_in_place && again.detail.contains("already in place"), "{again}");
    assert_eq!(w.route_targets().await, vec![second.clone(), second]);

    // A table without the route: an error naming it, at once (the
    // others move: review, helper-118).
    let vpc = w.ec2.describe_vpcs().send().await.unwrap();
    let vpc_id = vpc.vpcs().iter().find(|v| v.cidr_block() == Some("10.0.0.0/16")).unwrap();
    let bare = w.ec2.create_route_table().vpc_id(vpc_id.vpc_id().unwrap()).send().await.unwrap();
    let bare = bare.route_table().unwrap().route_table_id().unwrap().to_string();
    let mut spec = spec;
    spec.route_table_ids.push(bare.clone());
    let started = Instant::now();
    let e = move_address(&spec, &w.me(0), &[], DEADLINE).await.unwrap_err();
    assert!(matches!(&e, MoveError::NoRoute { tables, .. } if *tables == [bare]), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn secondary_ip_moves_to_the_other_eni_and_a_repeat_is_a_no_op() {
    let Some(moto) = Moto::start().await else { return };
    let w = World::build(&moto).await;
    assert!(w.ips(0).await.contains(&SECONDARY.to_string()));
    assert!(!w.ips(1).await.contains(&SECONDARY.to_string()));
    let spec = AddressSpec {
        kind: Kind::AwsSecondaryIp,
        private_ip: Some(SECONDARY.into()),
        region: Some(REGION.into()),
        endpoint: Some(moto.url()),
        ..AddressSpec::default()
    };
    let r = move_address(&spec, &w.me(1), &[], DEADLINE).await.unwrap();
    assert!(!r.already_in_place, "{r}");
    assert!(w.ips(1).await.contains(&SECONDARY.to_string()), "{:?}", w.ips(1).await);

    let again = move_address(&spec, &w.me(1), &[], DEADLINE).await.unwrap();
    assert!(again.already_in_place && again.detail.contains("already in place"), "{again}");

    // The ENI is required for this kind.
    let no_eni = Identity { instance_id: Some(w.instances[1].clone()), eni: None };
    let e = move_address(&spec, &no_eni, &[], DEADLINE).await.unwrap_err();
    assert!(matches!(e, MoveError::Identity { .. }), "{e}");
}

// --------------------------------------------------------- fault proxy ---

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// HTTP 503 with an empty body.
    Unavailable,
    /// HTTP 400 with EC2's RequestLimitExceeded error document.
    Throttled,
    /// The connection is closed without an answer.
    Hangup,
}

/// An HTTP proxy in front of moto that answers the first `faults` requests
/// (of action `only`, or of any action) itself with `fault`, and forwards
/// the others, one request per upstream connection.
struct Proxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

struct ProxyState {
    upstream: SocketAddr,
    fault: Fault,
    faults: u32,
    only: Option<&'static str>,
    /// Requests answered with a fault.
    injected: AtomicU32,
    /// Requests handed on to moto.
    forwarded: AtomicU32,
    /// The `Action=` of each request, in order.
    actions: Mutex<Vec<String>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    async fn start(upstream: SocketAddr, fault: Fault, faults: u32) -> Proxy {
        Proxy::start_for(upstream, fault, faults, None).await
    }

    async fn start_for(
        upstream: SocketAddr,
        fault: Fault,
        faults: u32,
        only: Option<&'static str>,
    ) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ProxyState {
            upstream,
            fault,
            faults,
            only,
            injected: AtomicU32::new(0),
            forwarded: AtomicU32::new(0),
            actions: Mutex::new(Vec::new()),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let st = st.clone();
                tokio::spawn(async move {
                    let _ = serve(conn, &st).await;
                });
            }
        });
        Proxy { addr, state, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn actions(&self) -> Vec<String> {
        self.state.actions.lock().unwrap().clone()
    }

    fn injected(&self) -> u32 {
        self.state.injected.load(Ordering::SeqCst)
    }

    fn forwarded(&self) -> u32 {
        self.state.forwarded.load(Ordering::SeqCst)
    }
}

/// Reads one HTTP request (headers and Content-Length body).
async fn read_request(conn: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(Some(buf))
}

fn action_of(req: &[u8]) -> String {
    let text = String::from_utf8_lossy(req);
    text.split(['&', '\n', '?'])
        .find_map(|p| p.trim().strip_prefix("Action="))
        .unwrap_or("?")
        .to_string()
}

/// Adds `Connection: close` after the first line of an HTTP message.
fn with_close(msg: &[u8]) -> Vec<u8> {
    let Some(eol) = msg.windows(2).position(|w| w == b"\r\n") else { return msg.to_vec() };
    let mut out = msg[..eol + 2].to_vec();
    out.extend_from_slice(b"Connection: close\r\n");
    out.extend_from_slice(&msg[eol + 2..]);
    out
}

async fn serve(mut conn: TcpStream, st: &ProxyState) -> std::io::Result<()> {
    loop {
        let Some(req) = read_request(&mut conn).await? else { return Ok(()) };
        let action = action_of(&req);
        st.actions.lock().unwrap().push(action.clone());
        let targeted = st.only.is_none_or(|a| a == action);
        if targeted && st.injected.fetch_add(1, Ordering::SeqCst) < st.faults {
            let (status, body) = match st.fault {
                Fault::Hangup => return Ok(()),
                Fault::Unavailable => ("503 Service Unavailable", String::new()),
                Fault::Throttled => (
                    "400 Bad Request",
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error>\
                     <Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message>\
                     </Error></Errors><RequestID>fault-proxy</RequestID></Response>"
                        .to_string(),
                ),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(resp.as_bytes()).await?;
            continue;
        }
        if targeted {
            st.injected.fetch_sub(1, Ordering::SeqCst);
        }
        st.forwarded.fetch_add(1, Ordering::SeqCst);
        // One request per upstream connection, answered until EOF; the
        // client is told to close too, so every request passes here.
        let mut up = TcpStream::connect(st.upstream).await?;
        up.write_all(&with_close(&req)).await?;
        let mut resp = Vec::new();
        up.read_to_end(&mut resp).await?;
        conn.write_all(&with_close(&resp)).await?;
        return Ok(());
    }
}

#[tokio::test]
async fn throttling_is_retried_until_the_move_succeeds() {
    let Some(moto) = Moto::start().await else { return };
    let w = World::build(&moto).await;
    let proxy = Proxy::start(moto.addr, Fault::Throttled, 3).await;
    let spec = w.eip_spec(&proxy.url());
    let r = move_address(&spec, &w.me(1), &[], DEADLINE).await.unwrap();
    assert!(!r.already_in_place, "{r}");
    assert_eq!(proxy.injected(), 3, "{:?}", proxy.actions());
    assert!(proxy.forwarded() >= 1);
    // The throttled DescribeAddresses was sent again (3 refusals + 1 answer).
    let actions = proxy.actions();
    assert_eq!(&actions[..4], ["DescribeAddresses"; 4], "{actions:?}");
    assert!(r.attempts >= 6, "describe x4, associate, verify: {r}");
    assert_eq!(w.eip_owner().await.0.as_deref(), Some(w.instances[1].as_str()));
}

#[tokio::test]
async fn http_503_is_retried_until_the_move_succeeds() {
    let Some(moto) = Moto::start().await else { return };
    let w = World::build(&moto).await;
    let proxy = Proxy::start(moto.addr, Fault::Unavailable, 2).await;
    let spec = AddressSpec {
        kind: Kind::AwsSecondaryIp,
        private_ip: Some(SECONDARY.into()),
        region: Some(REGION.into()),
        endpoint: Some(proxy.url()),
        ..AddressSpec::default()
    };
    let r = move_address(&spec, &w.me(1), &[], DEADLINE).await.unwrap();
    assert!(!r.already_in_place, "{r}");
    assert_eq!(proxy.injected(), 2);
    assert!(r.attempts >= 5, "{r}");
    assert!(w.ips(1).await.contains(&SECONDARY.to_string()));
}

#[tokio::test]
async fn a_throttled_associate_address_is_sent_again() {
    let Some(moto) = Moto::start().await else { return };
    let w = World::build(&moto).await;
    let proxy = Proxy::start_for(moto.addr, Fault::Throttled, 2, Some("AssociateAddress")).await;
    let r = move_address(&w.eip_spec(&proxy.url()), &w.me(1), &[], DEADLINE).await.unwrap();
    assert!(!r.already_in_place, "{r}");
    let actions = proxy.actions();
    let sent = actions.iter().filter(|a| *a == "AssociateAddress").count();
    assert_eq!(sent, 3, "two refused, one through: {actions:?}");
    assert_eq!(w.eip_owner().await.0.as_deref(), Some(w.instances[1].as_str()));
}

#[tokio::test]
async fn a_failing_replace_route_is_retried_in_each_table() {
    let Some(moto) = Moto::start().await else { return };
    let w = World::build(&moto).await;
    let proxy = Proxy::start_for(moto.addr, Fault::Unavailable, 3, Some("ReplaceRoute")).await;
    let spec = AddressSpec {
        kind: Kind::AwsRoute,
        route_table_ids: w.tables.clone(),
        cidr: Some(OVERLAY.into()),
        region: Some(REGION.into()),
        endpoint: Some(proxy.url()),
        ..AddressSpec::default()
    };
    move_address(&spec, &w.me(1), &[], DEADLINE).await.unwrap();
    let actions = proxy.actions();
    let sent = actions.iter().filter(|a| *a == "ReplaceRoute").count();
    assert_eq!(sent, 5, "3 refused + one per table: {actions:?}");
    let second = Some(w.enis[1].clone());
    assert_eq!(w.route_targets().await, vec![second.clone(), second]);
}

#[tokio::test]
async fn dropped_connections_are_retried() {
    let Some(moto) = Moto::start().await else { return };
    let w = World::build(&moto).await;
    let proxy = Proxy::start(moto.addr, Fault::Hangup, 2).await;
    let spec = AddressSpec {
        kind: Kind::AwsSecondaryIp,
        private_ip: Some(SECONDARY.into()),
        region: Some(REGION.into()),
        endpoint: Some(proxy.url()),
        ..AddressSpec::default()
    };
    let r = move_address(&spec, &w.me(1), &[], DEADLINE).await.unwrap();
    assert_eq!(proxy.injected(), 2);
    assert!(r.attempts >= 5, "{r}");
    assert!(w.ips(1).await.contains(&SECONDARY.to_string()));
}

#[tokio::test]
async fn a_bad_allocation_id_fails_at_once_with_the_aws_code() {
    let Some(moto) = Moto::start().await else { return };
    let w = World::build(&moto).await;
    // Through a proxy that injects nothing, to count the requests.
    let proxy = Proxy::start(moto.addr, Fault::Unavailable, 0).await;
    let mut spec = w.eip_spec(&proxy.url());
    spec.allocation_id = Some("eipalloc-0000000000deadbee".into());
    let started = Instant::now();
    let e = move_address(&spec, &w.me(1), &[], DEADLINE).await.unwrap_err();
    let took = started.elapsed();
    assert!(e.to_string().contains("InvalidAllocationID.NotFound"), "{e}");
    assert_eq!(e.aws_code(), Some("InvalidAllocationID.NotFound"), "{e:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert_eq!(proxy.actions().len(), 1, "no retries: {:?}", proxy.actions());
    // The real address did not move.
    assert_eq!(w.eip_owner().await.0.as_deref(), Some(w.instances[0].as_str()));
}

#[tokio::test]
async fn the_deadline_is_honoured_when_every_answer_is_503() {
    let Some(moto) = Moto::start().await else { return };
    let w = World::build(&moto).await;
    let proxy = Proxy::start(moto.addr, Fault::Unavailable, u32::MAX).await;
    let spec = w.eip_spec(&proxy.url());
    let deadline = Duration::from_secs(3);
    let started = Instant::now();
    let e = move_address(&spec, &w.me(1), &[], deadline).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(e, MoveError::Deadline { .. }), "{e}");
    assert!(e.to_string().contains("503"), "{e}");
    assert!(took <= deadline + Duration::from_secs(1), "took {took:?}");
    assert!(proxy.actions().len() >= 3, "retried: {:?}", proxy.actions());
}

/// An Elastic IP move whose EC2 endpoint is a listener that accepts and
/// never answers (abort the task to close it).
async fn eip_at_a_silent_endpoint() -> (AddressSpec, Identity, tokio::task::JoinHandle<()>) {
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            conns.push(c);
        }
    });
    let spec = AddressSpec {
        kind: Kind::AwsEip,
        allocation_id: Some("eipalloc-1".into()),
        region: Some(REGION.into()),
        endpoint: Some(format!("http://{addr}")),
        ..AddressSpec::default()
    };
    (spec, Identity { instance_id: Some("i-1".into()), eni: None }, hold)
}

#[tokio::test]
async fn the_deadline_is_honoured_when_nothing_answers() {
    init();
    let (spec, me, hold) = eip_at_a_silent_endpoint().await;
    let deadline = Duration::from_secs(2);
    let started = Instant::now();
    let e = move_address(&spec, &me, &[], deadline).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(e, MoveError::Deadline { .. }), "{e}");
    assert!(took <= deadline + Duration::from_secs(1), "took {took:?}");
    hold.abort();
}

#[tokio::test]
async fn a_refused_connection_is_retried_until_the_deadline() {
    init();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let spec = AddressSpec {
        kind: Kind::AwsSecondaryIp,
        private_ip: Some(SECONDARY.into()),
        region: Some(REGION.into()),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        ..AddressSpec::default()
    };
    let me = Identity { instance_id: None, eni: Some("eni-1".into()) };
    let deadline = Duration::from_secs(2);
    let started = Instant::now();
    let e = move_address(&spec, &me, &[], deadline).await.unwrap_err();
    let took = started.elapsed();
    let MoveError::Deadline { attempts, .. } = &e else { panic!("{e:?}") };
    assert!(*attempts >= 3, "{e}");
    assert!(took >= deadline - Duration::from_millis(200), "used the deadline: {took:?}");
    assert!(took <= deadline + Duration::from_secs(1), "took {took:?}");
}

// ------------------------------------------- racing movers, the guard ---

/// A guard the test flips: what the controller's node would answer.
#[derive(Clone)]
struct Flag(Arc<Mutex<Permit>>);

impl Flag {
    fn new(p: Permit) -> Flag {
        Flag(Arc::new(Mutex::new(p)))
    }
    fn set(&self, p: Permit) {
        *self.0.lock().unwrap() = p;
    }
    fn get(&self) -> Permit {
        self.0.lock().unwrap().clone()
    }
}

/// Waits until the proxy has seen `action` at least `n` times.
async fn until_seen(proxy: &Proxy, action: &str, n: usize) {
    let until = Instant::now() + Duration::from_secs(10);
    while proxy.actions().iter().filter(|a| *a == action).count() < n {
        assert!(Instant::now() < until, "no {action}: {:?}", proxy.actions());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// Found by review (helper-103): node a (instance 1) was promoted and its
// move is slow (AssociateAddress throttled); a is deposed meanwhile and b
// (instance 0, where the address is) is promoted: b's move finds the
// address in place. a's move then went on retrying, and its retry landed
// with AllowReassociation: the address ended on a, now a Secondary. With
// the guard a stops at its next attempt; the address stays with b.
#[tokio::test]
async fn an_old_promotions_retry_does_not_take_the_address_from_the_new_primary() {
    let Some(moto) = Moto::start().await else { return };
    let w = World::build(&moto).await;
    let proxy = Proxy::start_for(moto.addr, Fault::Throttled, 6, Some("AssociateAddress")).await;
    let a_spec = w.eip_spec(&proxy.url());
    let a_flag = Flag::new(Permit::Go);
    let a_guard = {
        let f = a_flag.clone();
        move || f.get()
    };
    let a_me = w.me(1);
    let a_move = move_address_guarded(&a_spec, &a_me, &[], DEADLINE, &a_guard);
    let race = async {
        until_seen(&proxy, "AssociateAddress", 1).await;
        a_flag.set(Permit::Stop("deposed: the witness granted b".into()));
        let r = move_address(&w.eip_spec(&moto.url()), &w.me(0), &[], DEADLINE).await.unwrap();
        assert_eq!(w.eip_owner().await.0.as_deref(), Some(w.instances[0].as_str()), "{r}");
    };
    let (a_result, ()) = tokio::join!(a_move, race);
    let e = a_result.expect_err("a's move must not succeed once a is deposed");
    assert!(matches!(e, MoveError::Withdrawn { op: "AssociateAddress", .. }), "{e:?}");
    assert_eq!(
        w.eip_owner().await.0.as_deref(),
        Some(w.instances[0].as_str()),
        "the address must stay on the current Primary b: {:?}",
        proxy.actions()
    );
}

// Found by review (helper-106): the guard was asked only between attempts.
// A call in flight (EC2 not answering: up to 10 s an attempt) or a backoff
// sleep ran to its end after the node was told to demote, and the Demote
// hook (on_demote, and `down`, which waits only for on_demote's time)
// waited behind it, e.g. behind the periodic re-check. Stop now ends the
// move at once (a request already sent cannot be called back anyway; the
// successor's re-check takes the address back).
#[tokio::test]
async fn a_stop_ends_a_move_whose_call_is_in_flight() {
    init();
    let (spec, me, hold) = eip_at_a_silent_endpoint().await;
    let flag = Flag::new(Permit::Go);
    let guard = {
        let f = flag.clone();
        move || f.get()
    };
    let started = Instant::now();
    let stop = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        flag.set(Permit::Stop("demoting".into()));
        Instant::now()
    };
    let (r, stopped) = tokio::join!(move_address_guarded(&spec, &me, &[], DEADLINE, &guard), stop);
    let e = r.unwrap_err();
    assert!(matches!(e, MoveError::Withdrawn { .. }), "{e}");
    let late = stopped.elapsed();
    assert!(
        late < Duration::from_secs(1),
        "ended {late:?} after the stop ({:?})",
        started.elapsed()
    );
    hold.abort();
}

// A Primary without quorum (it may renew, or be deposed) holds its change
// back: reads go on, AssociateAddress waits until the guard says go.
#[tokio::test]
async fn a_change_waits_while_the_guard_says_wait() {
    let Some(moto) = Moto::start().await else { return };
    let w = World::build(&moto).await;
    let proxy = Proxy::start(moto.addr, Fault::Unavailable, 0).await;
    let spec = w.eip_spec(&proxy.url());
    let flag = Flag::new(Permit::Wait("no quorum".into()));
    let guard = {
        let f = flag.clone();
        move || f.get()
    };
    let me = w.me(1);
    let mv = move_address_guarded(&spec, &me, &[], DEADLINE, &guard);
    let release = async {
        until_seen(&proxy, "DescribeAddresses", 1).await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        let early = proxy.actions();
        assert!(!early.iter().any(|a| a == "AssociateAddress"), "{early:?}");
        flag.set(Permit::Go);
    };
    let (r, ()) = tokio::join!(mv, release);
    let r = r.unwrap();
    assert!(!r.already_in_place, "{r}");
    assert_eq!(w.eip_owner().await.0.as_deref(), Some(w.instances[1].as_str()));
}

// A guard that never says go fails the move at the deadline, unchanged.
#[tokio::test]
async fn a_change_held_back_until_the_deadline_fails_and_changes_nothing() {
    let Some(moto) = Moto::start().await else { return };
    let w = World::build(&moto).await;
    let guard = || Permit::Wait("no quorum".into());
    let deadline = Duration::from_secs(2);
    let started = Instant::now();
    let e = move_address_guarded(&w.eip_spec(&moto.url()), &w.me(1), &[], deadline, &guard)
        .await
        .unwrap_err();
    assert!(matches!(e, MoveError::Deadline { .. }), "{e:?}");
    assert!(e.to_string().contains("not permitted: no quorum"), "{e}");
    assert!(started.elapsed() <= deadline + Duration::from_secs(1));
    assert_eq!(w.eip_owner().await.0.as_deref(), Some(w.instances[0].as_str()));
}

// ------------------------------------------------------ command mover ---

fn command_spec(command: &str) -> AddressSpec {
    AddressSpec { kind: Kind::Command, command: Some(command.into()), ..AddressSpec::default() }
}

fn controller_env(nbd: &str) -> Vec<(String, String)> {
    [("TWINBLOCK_RESOURCE", "ldap"), ("TWINBLOCK_NODE", "b"), ("TWINBLOCK_NBD", nbd)]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .to_vec()
}

#[tokio::test]
async fn command_mover_gets_the_environment() {
    init();
    let dir = std::env::temp_dir().join(format!("tb-mover-cmd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("env.txt");
    let spec = command_spec(&format!(
        "echo \"$TWINBLOCK_RESOURCE $TWINBLOCK_NODE $TWINBLOCK_NBD\" > '{}'; echo moved",
        out.display()
    ));
    let r = move_address(&spec, &Identity::default(), &controller_env("127.0.0.1:10809"), DEADLINE)
        .await
        .unwrap();
    assert_eq!(r.kind, Kind::Command);
    assert!(r.detail.contains("moved"), "{r}");
    assert_eq!(std::fs::read_to_string(&out).unwrap().trim(), "ldap b 127.0.0.1:10809");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn command_mover_reports_a_failing_script() {
    init();
    let spec = command_spec("echo starting; echo \"no route for $TWINBLOCK_NODE\" >&2; exit 3");
    let e = move_address(&spec, &Identity::default(), &controller_env("x:1"), DEADLINE)
        .await
        .unwrap_err();
    let MoveError::CommandFailed { status, stderr_tail, .. } = &e else { panic!("{e:?}") };
    assert_eq!(status, "exit status 3");
    assert_eq!(stderr_tail, "no route for b");
    assert!(e.to_string().contains("exit status 3"), "{e}");
}

#[tokio::test]
async fn command_mover_kills_the_command_at_the_deadline() {
    init();
    // The shell's child keeps stdout open: the whole group must go.
    let spec = command_spec("echo waiting >&2; sleep 30; echo never");
    let started = Instant::now();
    let e =
        move_address(&spec, &Identity::default(), &[], Duration::from_secs(1)).await.unwrap_err();
    let took = started.elapsed();
    let MoveError::CommandTimeout { stderr_tail, .. } = &e else { panic!("{e:?}") };
    assert_eq!(stderr_tail, "waiting");
    assert!(took < Duration::from_millis(2500), "took {took:?}");
}

#[tokio::test]
async fn a_cancelled_command_move_takes_the_command_down() {
    init();
    let pidfile = std::env::temp_dir().join(format!("tb-mover-cancel-{}.pid", std::process::id()));
    let spec = command_spec(&format!("sleep 30 & echo $! > '{}'; wait", pidfile.display()));
    let me = Identity::default();
    let cancelled =
        tokio::time::timeout(Duration::from_millis(500), move_address(&spec, &me, &[], DEADLINE))
            .await;
    assert!(cancelled.is_err(), "the command should still run at 500 ms");
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    let _ = std::fs::remove_file(&pidfile);
    let until = Instant::now() + Duration::from_secs(5);
    // SAFETY: signal 0 only checks whether the process exists.
    while unsafe { libc::kill(pid, 0) } == 0 {
        assert!(Instant::now() < until, "sleep {pid} survived the cancelled move");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// The node is demoted while its address command runs: the command and
// its children are killed at once, not at the deadline.
#[tokio::test]
async fn a_withdrawn_command_move_kills_the_command() {
    init();
    let spec = command_spec("sleep 30");
    let flag = Flag::new(Permit::Go);
    let guard = {
        let f = flag.clone();
        move || f.get()
    };
    let me = Identity::default();
    let started = Instant::now();
    let mv = move_address_guarded(&spec, &me, &[], DEADLINE, &guard);
    let stop = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        flag.set(Permit::Stop("demoted".into()));
    };
    let (r, ()) = tokio::join!(mv, stop);
    let e = r.unwrap_err();
    assert!(matches!(e, MoveError::Withdrawn { op: "command", .. }), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    // Never started once stopped.
    let stopped = || Permit::Stop("demoted".into());
    let e = move_address_guarded(&spec, &me, &[], DEADLINE, &stopped).await.unwrap_err();
    assert!(matches!(e, MoveError::Withdrawn { .. }), "{e:?}");
}

// --------------------------------------------------------------- IMDS ---

/// A test-local IMDSv2: PUT token, then GETs with the token header only.
/// The first GET with a valid token is answered 401 (as if it expired) to
/// make the client fetch a new one.
struct Imds {
    addr: SocketAddr,
    tokens_issued: Arc<AtomicU32>,
    requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Imds {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Imds {
    async fn start(instance_id: &'static str, mac: &'static str, eni: &'static str) -> Imds {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tokens_issued = Arc::new(AtomicU32::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let expired_once = Arc::new(AtomicU32::new(0));
        let (t, r) = (tokens_issued.clone(), requests.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut c, _)) = listener.accept().await {
                let (t, r, x) = (t.clone(), r.clone(), expired_once.clone());
                tokio::spawn(async move {
                    let Ok(Some(req)) = read_request(&mut c).await else { return };
                    let text = String::from_utf8_lossy(&req).to_string();
                    let line = text.lines().next().unwrap_or_default().to_string();
                    r.lock().unwrap().push(line.clone());
                    let header = |name: &str| {
                        text.lines().find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                        })
                    };
                    let current = format!("token-{}", t.load(Ordering::SeqCst));
                    let (status, body) = if line.starts_with("PUT /latest/api/token ") {
                        if header("X-aws-ec2-metadata-token-ttl-seconds").as_deref()
                            == Some("21600")
                        {
                            let n = t.fetch_add(1, Ordering::SeqCst) + 1;
                            ("200 OK", format!("token-{n}"))
                        } else {
                            ("400 Bad Request", "missing ttl".into())
                        }
                    } else if header("X-aws-ec2-metadata-token").as_deref() != Some(&current)
                        || t.load(Ordering::SeqCst) == 0
                    {
                        ("401 Unauthorized", String::new())
                    } else if x.fetch_add(1, Ordering::SeqCst) == 0 {
                        // The first good token "expires" at once.
                        ("401 Unauthorized", String::new())
                    } else {
                        let path = line.split(' ').nth(1).unwrap_or_default();
                        let mac_path =
                            format!("/latest/meta-data/network/interfaces/macs/{mac}/interface-id");
                        match path {
                            "/latest/meta-data/instance-id" => ("200 OK", instance_id.into()),
                            "/latest/meta-data/mac" => ("200 OK", mac.into()),
                            p if p == mac_path => ("200 OK", eni.into()),
                            _ => ("404 Not Found", "not found".into()),
                        }
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = c.write_all(resp.as_bytes()).await;
                });
            }
        });
        Imds { addr, tokens_issued, requests, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

#[tokio::test]
async fn imds_resolves_instance_and_eni_and_refreshes_the_token_on_401() {
    init();
    let imds = Imds::start("i-0123456789abcdef0", "0a:1b:2c:3d:4e:5f", "eni-0aa11bb22").await;
    let got = imds::resolve(&imds.url(), Identity::default()).await.unwrap();
    assert_eq!(got.instance_id.as_deref(), Some("i-0123456789abcdef0"));
    assert_eq!(got.eni.as_deref(), Some("eni-0aa11bb22"));
    assert_eq!(imds.tokens_issued.load(Ordering::SeqCst), 2, "{:?}", imds.requests.lock());
    let reqs = imds.requests.lock().unwrap().clone();
    assert!(reqs.iter().any(|r| r.starts_with("GET /latest/meta-data/mac ")), "{reqs:?}");
}

#[tokio::test]
async fn imds_keeps_what_is_known_and_asks_only_for_the_rest() {
    init();
    let imds = Imds::start("i-from-imds", "02:00:00:00:00:01", "eni-from-imds").await;
    let want = Identity { instance_id: Some("i-configured".into()), eni: None };
    let got = imds::resolve(&imds.url(), want).await.unwrap();
    assert_eq!(got.instance_id.as_deref(), Some("i-configured"));
    assert_eq!(got.eni.as_deref(), Some("eni-from-imds"));
    let reqs = imds.requests.lock().unwrap().clone();
    assert!(!reqs.iter().any(|r| r.contains("instance-id")), "{reqs:?}");

    let both = Identity { instance_id: Some("i-x".into()), eni: Some("eni-x".into()) };
    let before = imds.requests.lock().unwrap().len();
    assert_eq!(imds::resolve(&imds.url(), both.clone()).await.unwrap(), both);
    assert_eq!(imds.requests.lock().unwrap().len(), before, "nothing asked");
}

// Found by review (helper-107): the controller asked IMDS at every
// address re-check when the config names no instance or ENI; what IMDS
// answered is kept for the life of the process.
#[tokio::test]
async fn imds_is_asked_once_per_process_for_each_answer() {
    init();
    let imds = Imds::start("i-cached", "02:00:00:00:00:03", "eni-cached").await;
    let first = imds::resolve_cached(&imds.url(), Identity::default()).await.unwrap();
    assert_eq!(first.instance_id.as_deref(), Some("i-cached"));
    assert_eq!(first.eni.as_deref(), Some("eni-cached"));
    let asked = imds.requests.lock().unwrap().len();
    assert!(asked > 0);
    let again = imds::resolve_cached(&imds.url(), Identity::default()).await.unwrap();
    assert_eq!(again, first);
    assert_eq!(imds.requests.lock().unwrap().len(), asked, "IMDS asked again");
    // What the caller gives wins over the cache, and is not cached.
    let want = Identity { instance_id: Some("i-configured".into()), eni: None };
    let got = imds::resolve_cached(&imds.url(), want).await.unwrap();
    assert_eq!(got.instance_id.as_deref(), Some("i-configured"));
    assert_eq!(got.eni.as_deref(), Some("eni-cached"));
    let again = imds::resolve_cached(&imds.url(), Identity::default()).await.unwrap();
    assert_eq!(again, first);
    assert_eq!(imds.requests.lock().unwrap().len(), asked, "IMDS asked again");
}

#[tokio::test]
async fn imds_gives_up_at_its_deadline_when_nothing_listens() {
    init();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let started = Instant::now();
    let e = imds::resolve_within(
        &format!("http://127.0.0.1:{port}"),
        Identity::default(),
        Duration::from_secs(1),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, imds::ImdsError::Deadline { .. }), "{e}");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
}

#[tokio::test]
async fn imds_identity_drives_the_eip_move() {
    init();
    // The controller's path: identity from IMDS, then the move.
    let Some(moto) = Moto::start().await else { return };
    let w = World::build(&moto).await;
    let id: &'static str = Box::leak(w.instances[1].clone().into_boxed_str());
    let eni: &'static str = Box::leak(w.enis[1].clone().into_boxed_str());
    let imds = Imds::start(id, "02:00:00:00:00:02", eni).await;
    let me = imds::resolve(&imds.url(), Identity::default()).await.unwrap();
    assert_eq!(me, w.me(1));
    move_address(&w.eip_spec(&moto.url()), &me, &[], DEADLINE).await.unwrap();
    assert_eq!(w.eip_owner().await.0.as_deref(), Some(id));
}

// ------------------------------------------------ credentials hiccup ---

/// An IMDS that serves instance-profile credentials (IMDSv2, with the TTL
/// header the SDK wants), answering 503 to everything for `sick` first.
async fn credentials_imds(sick: Duration) -> (SocketAddr, Arc<AtomicU32>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let refused = Arc::new(AtomicU32::new(0));
    let r = refused.clone();
    let until = Instant::now() + sick;
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            let r = r.clone();
            tokio::spawn(async move {
                let Ok(Some(req)) = read_request(&mut c).await else { return };
                let text = String::from_utf8_lossy(&req).to_string();
                let line = text.lines().next().unwrap_or_default().to_string();
                let path = line.split(' ').nth(1).unwrap_or_default().to_string();
                let (status, extra, body) = if Instant::now() < until {
                    r.fetch_add(1, Ordering::SeqCst);
                    ("503 Service Unavailable", "", String::new())
                } else if line.starts_with("PUT /latest/api/token ") {
                    ("200 OK", "x-aws-ec2-metadata-token-ttl-seconds: 21600\r\n", "tok".into())
                } else if path == "/latest/meta-data/iam/security-credentials/" {
                    ("200 OK", "", "role".into())
                } else if path == "/latest/meta-data/iam/security-credentials/role" {
                    let body = r#"{"Code":"Success","LastUpdated":"2026-12-06T00:00:00Z","Type":"AWS-HMAC","AccessKeyId":"testing","SecretAccessKey":"testing","Token":"testing","Expiration":"2099-01-01T00:00:00Z"}"#;
                    ("200 OK", "", body.to_string())
                } else {
                    ("404 Not Found", "", String::new())
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = c.write_all(resp.as_bytes()).await;
            });
        }
    });
    (addr, refused)
}

/// Found by review (helper-118): credentials that could not be loaded for
/// a moment (the instance profile's IMDS answering 503 or timing out, a
/// known hiccup on EC2) failed the move at once as a "ClientError", with
/// no retry within its deadline: a failover's address move failed, and
/// `on_promote` waited for the next re-check (30 s). Now a credentials
/// provider's error or time-out is retried like the API's own hiccups;
/// credentials that are not configured at all still fail at once.
#[tokio::test]
async fn a_credentials_hiccup_is_retried_within_the_deadline() {
    const NAME: &str = "a_credentials_hiccup_is_retried_within_the_deadline";
    // In a process of its own: the credentials must come from the
    // instance profile (IMDS), not from the environment the other tests
    // share.
    if std::env::var_os("TB_CREDENTIALS_CHILD").is_none() {
        init();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
            .env("TB_CREDENTIALS_CHILD", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("1 passed"), "{text}");
        return;
    }
    let Some(moto) = Moto::start().await else { return };
    let w = World::build(&moto).await;
    let (imds, refused) = credentials_imds(Duration::from_secs(4)).await;
    for k in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"] {
        std::env::remove_var(k);
    }
    std::env::remove_var("AWS_EC2_METADATA_DISABLED");
    std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials");
    std::env::set_var("AWS_CONFIG_FILE", "/nonexistent/config");
    std::env::set_var("AWS_EC2_METADATA_SERVICE_ENDPOINT", format!("http://{imds}"));
    let r = move_address(&w.eip_spec(&moto.url()), &w.me(1), &[], DEADLINE).await;
    assert!(refused.load(Ordering::SeqCst) > 0, "the IMDS hiccup was not met");
    let r = r.unwrap();
    assert!(!r.already_in_place, "{r}");
    assert_eq!(w.eip_owner().await.0.as_deref(), Some(w.instances[1].as_str()));
}

/// Found by review (helper-118): with several route tables, one lacking
/// the route (ReplaceRoute cannot create it) failed the move with AWS's
/// message, which names no table, and the tables after it were not
/// moved. Now the others move, and the error names the table and the fix.
#[tokio::test]
async fn a_table_without_the_route_is_named_and_the_others_move() {
    let Some(moto) = Moto::start().await else { return };
    let w = World::build(&moto).await;
    let vpc = w.ec2.describe_vpcs().send().await.unwrap();
    let vpc_id = vpc.vpcs().iter().find_map(|v| {
        (v.cidr_block() == Some("10.0.0.0/16")).then(|| v.vpc_id().unwrap().to_string())
    });
    let rt = w.ec2.create_route_table().vpc_id(vpc_id.unwrap()).send().await.unwrap();
    let bare = rt.route_table().unwrap().route_table_id().unwrap().to_string();
    let spec = AddressSpec {
        kind: Kind::AwsRoute,
        route_table_ids: vec![w.tables[0].clone(), bare.clone(), w.tables[1].clone()],
        cidr: Some(OVERLAY.into()),
        region: Some(REGION.into()),
        endpoint: Some(moto.url()),
        ..AddressSpec::default()
    };
    let e = move_address(&spec, &w.me(1), &[], DEADLINE).await.unwrap_err();
    let text = e.to_string();
    assert!(text.contains(&bare) && text.contains("create"), "{text}");
    let second = Some(w.enis[1].clone());
    assert_eq!(w.route_targets().await, vec![second.clone(), second], "{text}");
}
