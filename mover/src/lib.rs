//! Moves twinblock's service address to this node when it becomes Primary.
//!
//! The failover controller calls [`move_address`] after a promotion and
//! before the `on_promote` hooks. Four movers exist, chosen by
//! `[controller.address] kind`:
//!
//! | kind | what it does |
//! | --- | --- |
//! | `aws-eip` | `AssociateAddress` (AllowReassociation) of an Elastic IP to this instance |
//! | `aws-route` | `ReplaceRoute` of an overlay IP (`cidr`) to this node's ENI, on each route table |
//! | `aws-secondary-ip` | `AssignPrivateIpAddresses` (AllowReassignment) of a private IP to this node's ENI |
//! | `command` | a user command, run with `sh -c` and the controller's environment |
//!
//! Every mover is idempotent: when the address is already here the call
//! succeeds and the [`MoveReport`] says "already in place". The AWS movers
//! (cargo feature `aws`, on by default) check the current owner first, act,
//! then verify with a `Describe*` call; throttling, 5xx answers, timeouts and
//! connection errors are retried with exponential backoff and jitter within
//! the caller's deadline, other AWS errors fail at once with their code.
//!
//! The node's identity (instance id, ENI) comes from the config or from
//! IMDSv2 through [`imds::resolve`].
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use twinblock_mover::{imds, move_address, AddressSpec, Identity, Kind};
//!
//! let spec = AddressSpec {
//!     kind: Kind::AwsEip,
//!     allocation_id: Some("eipalloc-0123".into()),
//!     region: Some("eu-west-1".into()),
//!     ..AddressSpec::default()
//! };
//! spec.validate()?;
//! let me = imds::resolve(imds::DEFAULT_ENDPOINT, Identity::default()).await?;
//! let env = [("TWINBLOCK_RESOURCE".to_string(), "ldap".to_string())];
//! let report = move_address(&spec, &me, &env, Duration::from_secs(30)).await?;
//! println!("{report}");
//! # Ok(()) }
//! ```

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[cfg(feature = "aws")]
mod aws;
mod backoff;
pub mod child;
mod command;
pub mod imds;

/// Which mover: `[controller.address] kind`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// `aws-eip`: Elastic IP, `AssociateAddress`.
    #[default]
    AwsEip,
    /// `aws-route`: overlay IP, `ReplaceRoute` on each route table.
    AwsRoute,
    /// `aws-secondary-ip`: secondary private IP, `AssignPrivateIpAddresses`.
    AwsSecondaryIp,
    /// `command`: a user command.
    Command,
}

impl Kind {
    /// The config spelling (`aws-eip`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::AwsEip => "aws-eip",
            Kind::AwsRoute => "aws-route",
            Kind::AwsSecondaryIp => "aws-secondary-ip",
            Kind::Command => "command",
        }
    }

    /// Whether this mover talks to the EC2 API.
    pub fn is_aws(self) -> bool {
        !matches!(self, Kind::Command)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Kind {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Kind, SpecError> {
        match s {
            "aws-eip" => Ok(Kind::AwsEip),
            "aws-route" => Ok(Kind::AwsRoute),
            "aws-secondary-ip" => Ok(Kind::AwsSecondaryIp),
            "command" => Ok(Kind::Command),
            other => Err(SpecError::invalid(
                "kind",
                format!(
                    "unknown kind {other:?} (expected aws-eip, aws-route, aws-secondary-ip or command)"
                ),
            )),
        }
    }
}

/// `[controller.address]`: how the service address moves. Plain data; the
/// config crate fills it (it also deserializes straight from the TOML
/// table, unknown keys refused: the controller's own keys `deadline`,
/// `recheck` and `imds_endpoint` are not the mover's and must be left
/// out) and calls [`AddressSpec::validate`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressSpec {
    pub kind: Kind,
    /// `aws-eip`: the Elastic IP's allocation id (`eipalloc-...`).
    pub allocation_id: Option<String>,
    /// `aws-route`: route tables whose route to `cidr` points at the Primary.
    #[serde(default)]
    pub route_table_ids: Vec<String>,
    /// `aws-route`: the overlay address, e.g. `10.9.9.9/32`.
    pub cidr: Option<String>,
    /// `aws-secondary-ip`: the private IP, e.g. `10.0.1.50`.
    pub private_ip: Option<String>,
    /// `command`: run with `sh -c`.
    pub command: Option<String>,
    /// AWS region; required by the AWS kinds.
    pub region: Option<String>,
    /// EC2 endpoint URL override (emulators such as moto).
    pub endpoint: Option<String>,
}

/// A bad `[controller.address]`: names the key and the reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("controller.address.{key}: {reason}")]
pub struct SpecError {
    /// The key under `controller.address`.
    pub key: &'static str,
    pub reason: String,
}

impl SpecError {
    fn invalid(key: &'static str, reason: impl Into<String>) -> SpecError {
        SpecError { key, reason: reason.into() }
    }

    fn required(key: &'static str, kind: Kind) -> SpecError {
        SpecError::invalid(key, format!("required for kind \"{kind}\""))
    }
}

fn present(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

impl AddressSpec {
    /// Checks that the keys the kind needs are there and well formed, and
    /// that no key of another kind is set (`cidr` with `aws-eip`: it
    /// would be ignored; found by review, helper-103).
    pub fn validate(&self) -> Result<(), SpecError> {
        let k = self.kind;
        let aws = [Kind::AwsEip, Kind::AwsRoute, Kind::AwsSecondaryIp];
        let others: [(&'static str, bool, &[Kind]); 7] = [
            ("allocation_id", self.allocation_id.is_some(), &[Kind::AwsEip]),
            ("route_table_ids", !self.route_table_ids.is_empty(), &[Kind::AwsRoute]),
            ("cidr", self.cidr.is_some(), &[Kind::AwsRoute]),
            ("private_ip", self.private_ip.is_some(), &[Kind::AwsSecondaryIp]),
            ("command", self.command.is_some(), &[Kind::Command]),
            ("region", self.region.is_some(), &aws),
            ("endpoint", self.endpoint.is_some(), &aws),
        ];
        if let Some((key, _, kinds)) =
            others.iter().find(|(_, set, kinds)| *set && !kinds.contains(&k))
        {
            let owners: Vec<String> = kinds.iter().map(|o| format!("\"{o}\"")).collect();
            return Err(SpecError::invalid(
                key,
                format!("belongs to kind {}, not to kind \"{k}\"", owners.join(" or ")),
            ));
        }
        match k {
            Kind::AwsEip => {
                let id = present(&self.allocation_id)
                    .ok_or_else(|| SpecError::required("allocation_id", k))?;
                if !id.starts_with("eipalloc-") {
                    return Err(SpecError::invalid(
                        "allocation_id",
                        format!("{id:?} is not an allocation id (eipalloc-...)"),
                    ));
                }
            }
            Kind::AwsRoute => {
                if self.route_table_ids.is_empty() {
                    return Err(SpecError::required("route_table_ids", k));
                }
                if let Some(bad) = self.route_table_ids.iter().find(|t| !t.starts_with("rtb-")) {
                    return Err(SpecError::invalid(
                        "route_table_ids",
                        format!("{bad:?} is not a route table id (rtb-...)"),
                    ));
                }
                let cidr = present(&self.cidr).ok_or_else(|| SpecError::required("cidr", k))?;
                check_cidr(cidr)?;
            }
            Kind::AwsSecondaryIp => {
                let ip = present(&self.private_ip)
                    .ok_or_else(|| SpecError::required("private_ip", k))?;
                if ip.parse::<std::net::Ipv4Addr>().is_err() {
                    return Err(SpecError::invalid(
                        "private_ip",
                        format!("{ip:?} is not an IPv4 address"),
                    ));
                }
            }
            Kind::Command => {
                present(&self.command).ok_or_else(|| SpecError::required("command", k))?;
            }
        }
        if k.is_aws() {
            present(&self.region).ok_or_else(|| SpecError::required("region", k))?;
            // As given: the SDK takes it untrimmed.
            check_region(self.region.as_deref().unwrap_or_default())?;
            if !cfg!(feature = "aws") {
                return Err(SpecError::invalid(
                    "kind",
                    format!("\"{k}\" needs twinblock built with the `aws` feature"),
                ));
            }
        }
        if let Some(e) = &self.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(SpecError::invalid(
                    "endpoint",
                    format!("{e:?} is not an http:// or https:// URL"),
                ));
            }
        }
        Ok(())
    }
}

/// A region name (`eu-west-1`, `us-gov-west-1`): lower-case words and a
/// number. Found by review (helper-118): an availability zone
/// (`us-east-1a`) or a typo was taken, and every move then retried its
/// endpoint's DNS failure until the deadline (60 s) at each failover.
fn check_region(region: &str) -> Result<(), SpecError> {
    let parts: Vec<&str> = region.split('-').collect();
    let word = |w: &&str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase());
    let number = |w: &str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit());
    let ok = parts.len() >= 3
        && parts[0].len() == 2
        && parts[..parts.len() - 1].iter().all(word)
        && number(parts[parts.len() - 1]);
    if ok {
        return Ok(());
    }
    let zone = region
        .strip_suffix(|c: char| c.is_ascii_lowercase())
        .is_some_and(|r| check_region(r).is_ok());
    Err(SpecError::invalid(
        "region",
        if zone {
            format!(
                "{region:?} is an availability zone, not a region (e.g. {:?})",
                &region[..region.len() - 1]
            )
        } else {
            format!("{region:?} is not an AWS region name (e.g. \"eu-west-1\")")
        },
    ))
}

fn check_cidr(cidr: &str) -> Result<(), SpecError> {
    let bad = || SpecError::invalid("cidr", format!("{cidr:?} is not an IPv4 CIDR (a.b.c.d/n)"));
    let (ip, len) = cidr.split_once('/').ok_or_else(bad)?;
    ip.parse::<std::net::Ipv4Addr>().map_err(|_| bad())?;
    match len.parse::<u8>() {
        Ok(n) if n <= 32 => Ok(()),
        _ => Err(bad()),
    }
}

/// Who this node is in EC2. Filled from the config (`cloud_instance_id`,
/// `cloud_eni`) and, for what is missing, by [`imds::resolve`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// `i-...`: used by `aws-eip` (which associates with the instance's
    /// primary interface).
    pub instance_id: Option<String>,
    /// `eni-...`: used by `aws-route` and `aws-secondary-ip` (and by `aws-eip`
    /// when no instance id is known).
    pub eni: Option<String>,
}

impl Identity {
    /// Empty or blank strings count as missing.
    pub fn normalized(self) -> Identity {
        let keep = |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        Identity { instance_id: keep(self.instance_id), eni: keep(self.eni) }
    }
}

/// What a successful move did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoveReport {
    pub kind: Kind,
    /// The address was already here: nothing was changed.
    pub already_in_place: bool,
    /// Whether the mover knows what it did (`already_in_place` or moved):
    /// always for the AWS kinds, which read the current owner first; for
    /// `command`, only when the command's last line of stdout is `moved`
    /// or `in-place` (else `already_in_place` is false: it ran and
    /// succeeded, nothing more is known).
    pub known: bool,
    /// API calls (or command runs) made, retries included.
    pub attempts: u32,
    pub elapsed: Duration,
    /// One line for logs: what moved where, or "already in place".
    pub detail: String,
}

impl fmt::Display for MoveReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} ({} call{}, {:.1?})",
            self.kind,
            self.detail,
            self.attempts,
            if self.attempts == 1 { "" } else { "s" },
            self.elapsed
        )
    }
}

/// The caller's answer to "may this node still move the address here?",
/// asked before every change a mover makes, before every retry, and
/// between verification polls.
///
/// Why: a move runs for seconds (retries, verification), and the node may
/// be demoted or deposed meanwhile while another node is promoted and
/// moves the address to itself. A late retry of the old move would take
/// the address back from the current Primary (it is sent with
/// `AllowReassociation`/`AllowReassignment`, so AWS obeys).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Permit {
    /// Go on.
    Go,
    /// Not now (e.g. a Primary without quorum, which may yet renew or be
    /// deposed): no change is made; reads go on, and the change is asked
    /// for again after a backoff, until the deadline.
    Wait(String),
    /// Never: the move stops at once and changes nothing more.
    Stop(String),
}

/// Asked before each change: see [`Permit`].
pub type Guard<'a> = &'a (dyn Fn() -> Permit + Send + Sync);

/// Why a move failed.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The node's identity lacks what this kind needs.
    #[error(
        "kind \"{kind}\" needs this node's {what} (set it in the config or let IMDS resolve it)"
    )]
    Identity { kind: Kind, what: &'static str },
    /// A non-retryable AWS error: failed at once.
    #[error("{op} failed: {code}: {message}")]
    Aws { op: &'static str, code: String, message: String },
    /// Transient failures went on until the deadline.
    #[error("{op}: gave up at the deadline ({deadline:?}) after {attempts} attempts; last error: {last}")]
    Deadline { op: &'static str, attempts: u32, deadline: Duration, last: String },
    /// The call succeeded but the address is not ours after it.
    #[error("{op}: the address did not arrive within the deadline ({deadline:?}): {detail}")]
    NotMoved { op: &'static str, deadline: Duration, detail: String },
    /// `aws-route`: these tables have no route to `cidr`, which
    /// ReplaceRoute cannot create (the others, `moved`, were moved).
    #[error(
        "no route to {cidr} in {tables:?} (ReplaceRoute cannot create one: create it once at \
         setup, `aws ec2 create-route --route-table-id ... --destination-cidr-block {cidr} \
         --network-interface-id ...`); moved in {moved:?}"
    )]
    NoRoute { cidr: String, tables: Vec<String>, moved: Vec<String> },
    /// The SDK could not even be set up (credentials, client config).
    #[error("AWS client setup: {0}")]
    Setup(String),
    /// The command could not be started.
    #[error("cannot run command `{command}`: {source}")]
    CommandSpawn { command: String, source: std::io::Error },
    /// The command exited non-zero (or by a signal).
    #[error("command `{command}` failed ({status}); stderr: {stderr_tail}")]
    CommandFailed { command: String, status: String, stderr_tail: String },
    /// The caller's guard said [`Permit::Stop`]: the move was given up
    /// before `op` (nothing more was changed).
    #[error("{op}: move withdrawn: {reason}")]
    Withdrawn { op: &'static str, reason: String },
    /// The command outlived the deadline and was killed.
    #[error("command `{command}` killed at the deadline ({deadline:?}); stderr: {stderr_tail}")]
    CommandTimeout { command: String, deadline: Duration, stderr_tail: String },
}

impl MoveError {
    /// The AWS error code, when the failure came from the EC2 API.
    pub fn aws_code(&self) -> Option<&str> {
        match self {
            MoveError::Aws { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Moves the service address described by `spec` to this node (`me`).
///
/// `env` is passed to the `command` mover (the controller gives
/// `TWINBLOCK_RESOURCE`, `TWINBLOCK_NODE`, `TWINBLOCK_NBD`). The whole move,
/// retries and verification included, ends within `deadline`. Safe to call
/// again: when the address is already here the report says so.
///
/// Unguarded: use [`move_address_guarded`] where the node may lose the
/// right to the address while the move runs.
pub async fn move_address(
    spec: &AddressSpec,
    me: &Identity,
    env: &[(String, String)],
    deadline: Duration,
) -> Result<MoveReport, MoveError> {
    move_address_guarded(spec, me, env, deadline, &|| Permit::Go).await
}

/// [`move_address`], asking `guard` before every change (and before every
/// retry and verification poll): [`Permit::Stop`] ends the move with
/// [`MoveError::Withdrawn`] (the command mover's command is killed),
/// [`Permit::Wait`] holds changes back until the deadline.
pub async fn move_address_guarded(
    spec: &AddressSpec,
    me: &Identity,
    env: &[(String, String)],
    deadline: Duration,
    guard: Guard<'_>,
) -> Result<MoveReport, MoveError> {
    spec.validate()?;
    let started = std::time::Instant::now();
    tracing::info!(kind = %spec.kind, ?deadline, "moving the service address");
    let result = match spec.kind {
        Kind::Command => command::run(spec, env, deadline, guard).await,
        #[cfg(feature = "aws")]
        _ => aws::move_address(spec, &me.clone().normalized(), deadline, guard).await,
        #[cfg(not(feature = "aws"))]
        k => {
            let _ = (me, guard);
            Err(MoveError::Spec(SpecError::invalid(
                "kind",
                format!("\"{k}\" needs twinblock built with the `aws` feature"),
            )))
        }
    };
    match &result {
        Ok(r) => tracing::info!(kind = %spec.kind, report = %r, "service address in place"),
        Err(e) => tracing::error!(
            kind = %spec.kind, elapsed = ?started.elapsed(), error = %e,
            "moving the service address failed"
        ),
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "aws")]
    fn spec(kind: Kind) -> AddressSpec {
        AddressSpec { kind, region: Some("us-east-1".into()), ..AddressSpec::default() }
    }

    // The AWS kinds validate only where they are built (feature `aws`).
    #[cfg(feature = "aws")]
    #[test]
    fn validate_names_the_missing_key() {
        let e = spec(Kind::AwsEip).validate().unwrap_err();
        assert_eq!(
            e.to_string(),
            "controller.address.allocation_id: required for kind \"aws-eip\""
        );
        let e = spec(Kind::AwsRoute).validate().unwrap_err();
        assert_eq!(e.key, "route_table_ids");
        let mut s = spec(Kind::AwsRoute);
        s.route_table_ids = vec!["rtb-1".into()];
        assert_eq!(s.validate().unwrap_err().key, "cidr");
        s.cidr = Some("10.9.9.9/33".into());
        assert_eq!(s.validate().unwrap_err().key, "cidr");
        s.cidr = Some("10.9.9.9/32".into());
        assert_eq!(s.validate(), Ok(()));
        s.region = None;
        assert_eq!(
            s.validate().unwrap_err().to_string(),
            "controller.address.region: required for kind \"aws-route\""
        );
        let mut s = spec(Kind::AwsSecondaryIp);
        s.private_ip = Some("10.0.1.500".into());
        assert_eq!(s.validate().unwrap_err().key, "private_ip");
        let s = AddressSpec { kind: Kind::Command, ..AddressSpec::default() };
        assert_eq!(s.validate().unwrap_err().key, "command");
        let s = AddressSpec {
            kind: Kind::Command,
            command: Some("true".into()),
            ..AddressSpec::default()
        };
        assert_eq!(s.validate(), Ok(()));
        let mut s = spec(Kind::AwsEip);
        s.allocation_id = Some("eipalloc-1".into());
        s.endpoint = Some("127.0.0.1:5000".into());
        assert_eq!(s.validate().unwrap_err().key, "endpoint");
    }

    // The AWS kinds validate only where they are built (feature `aws`).
    #[cfg(feature = "aws")]
    #[test]
    fn spec_deserializes_from_the_config_table() {
        let s: AddressSpec = toml::from_str(
            "kind = \"aws-route\"\nroute_table_ids = [\"rtb-1\", \"rtb-2\"]\n\
             cidr = \"10.9.9.9/32\"\nregion = \"eu-west-1\"\n\
             endpoint = \"http://127.0.0.1:5000\"\n",
        )
        .unwrap();
        assert_eq!(s.kind, Kind::AwsRoute);
        assert_eq!(s.route_table_ids, ["rtb-1", "rtb-2"]);
        assert_eq!(s.validate(), Ok(()));
        let s: AddressSpec = toml::from_str("kind = \"command\"\ncommand = \"true\"").unwrap();
        assert_eq!(s.validate(), Ok(()));
        assert!(toml::from_str::<AddressSpec>("kind = \"aws-eip\"\nallocation = \"x\"").is_err());
        assert!(toml::from_str::<AddressSpec>("kind = \"gcp-ip\"").is_err());
    }

    // Found by review (helper-103): a key of another kind was ignored.
    #[test]
    fn a_key_of_another_kind_is_refused_naming_it() {
        let s = AddressSpec {
            kind: Kind::Command,
            command: Some("true".into()),
            region: Some("eu-west-1".into()),
            ..AddressSpec::default()
        };
        let e = s.validate().unwrap_err();
        assert_eq!(e.key, "region");
        assert!(e.reason.contains("\"aws-eip\"") && e.reason.contains("\"command\""), "{e}");
        let s = AddressSpec {
            kind: Kind::AwsEip,
            allocation_id: Some("eipalloc-1".into()),
            region: Some("eu-west-1".into()),
            cidr: Some("10.9.9.9/32".into()),
            ..AddressSpec::default()
        };
        assert_eq!(
            s.validate().unwrap_err().to_string(),
            "controller.address.cidr: belongs to kind \"aws-route\", not to kind \"aws-eip\""
        );
    }

    // Found by review (helper-118): an availability zone or a typo in
    // `region` was taken, and each move retried the endpoint's DNS
    // failure until its deadline.
    #[cfg(feature = "aws")]
    #[test]
    fn a_region_that_is_not_one_is_refused_naming_the_key() {
        let mut s = spec(Kind::AwsEip);
        s.allocation_id = Some("eipalloc-1".into());
        for good in ["us-east-1", "eu-west-3", "us-gov-west-1", "cn-north-1", "us-isob-east-1"] {
            s.region = Some(good.into());
            assert_eq!(s.validate(), Ok(()), "{good}");
        }
        s.region = Some("us-east-1a".into());
        assert_eq!(
            s.validate().unwrap_err().to_string(),
            "controller.address.region: \"us-east-1a\" is an availability zone, not a region \
             (e.g. \"us-east-1\")"
        );
        for bad in ["US-EAST-1", "useast1", "eu-west", "eu_west_1", "eu-west-1 "] {
            s.region = Some(bad.into());
            let e = s.validate().unwrap_err();
            assert_eq!(e.key, "region", "{bad}: {e}");
        }
    }

    #[test]
    fn move_address_is_send() {
        fn send<T: Send>(_: &T) {}
        let (spec, me) = (AddressSpec::default(), Identity::default());
        let f = move_address(&spec, &me, &[], Duration::from_secs(1));
        send(&f);
        let g = || Permit::Go;
        let f = move_address_guarded(&spec, &me, &[], Duration::from_secs(1), &g);
        send(&f);
    }

    #[test]
    fn blank_identity_fields_are_missing() {
        let id = Identity { instance_id: Some(" ".into()), eni: Some("eni-1".into()) };
        assert_eq!(id.normalized(), Identity { instance_id: None, eni: Some("eni-1".into()) });
    }

    #[test]
    fn kind_strings_round_trip() {
        for k in [Kind::AwsEip, Kind::AwsRoute, Kind::AwsSecondaryIp, Kind::Command] {
            assert_eq!(k.as_str().parse::<Kind>(), Ok(k));
        }
        let e = "eip".parse::<Kind>().unwrap_err();
        assert_eq!(e.key, "kind");
    }
}
