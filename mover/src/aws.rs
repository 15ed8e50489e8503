//! The EC2 movers: Elastic IP, overlay route, secondary private IP.
//!
//! Each one reads the current owner first (nothing to do when it is us),
//! makes the change, then polls a `Describe*` call until the address shows
//! up here. Every API call goes through [`Ec2::call`], which retries
//! throttling, 5xx, timeouts and connection errors with backoff until the
//! overall deadline and fails at once on anything else.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::Client;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use aws_smithy_types::retry::ErrorKind;

use crate::backoff::Backoff;
use crate::{AddressSpec, Guard, Identity, Kind, MoveError, MoveReport, Permit};

/// One API call's own limit (connect + request + answer).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the guard is asked while a call is in flight or a retry waits.
const GUARD_POLL: Duration = Duration::from_millis(100);

/// Error codes that mean "try again later".
const RETRY_CODES: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "EC2ThrottledException",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
    "RequestTimeout",
    "RequestTimeoutException",
];

pub(crate) async fn move_address(
    spec: &AddressSpec,
    me: &Identity,
    deadline: Duration,
    guard: Guard<'_>,
) -> Result<MoveReport, MoveError> {
    let ec2 = Ec2::connect(spec, deadline, guard).await?;
    let (already_in_place, detail) = match spec.kind {
        Kind::AwsEip => eip(&ec2, spec, me).await?,
        Kind::AwsRoute => route(&ec2, spec, me).await?,
        Kind::AwsSecondaryIp => secondary_ip(&ec2, spec, me).await?,
        // (Dispatched to `command::run`; an error, not a panic, if not.)
        Kind::Command => {
            return Err(MoveError::Setup("the command mover is not an AWS mover".into()))
        }
    };
    Ok(MoveReport {
        kind: spec.kind,
        already_in_place,
        known: true,
        attempts: ec2.attempts.load(Ordering::Relaxed),
        elapsed: ec2.started.elapsed(),
        detail,
    })
}

/// An EC2 client bound to one move's deadline and the caller's guard.
struct Ec2<'g> {
    client: Client,
    guard: Guard<'g>,
    started: Instant,
    until: Instant,
    deadline: Duration,
    attempts: AtomicU32,
}

enum Class {
    Retry(String),
    Fatal { code: String, message: String },
}

/// A read (`Describe*`) or a change (`AssociateAddress`, ...): only
/// changes wait for [`Permit::Go`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Change,
}

impl<'g> Ec2<'g> {
    async fn connect(
        spec: &AddressSpec,
        deadline: Duration,
        guard: Guard<'g>,
    ) -> Result<Ec2<'g>, MoveError> {
        let started = Instant::now();
        let region = spec.region.clone().unwrap_or_default();
        let attempt = ATTEMPT_TIMEOUT.min(deadline).max(Duration::from_millis(100));
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT.min(attempt))
            .read_timeout(attempt)
            .operation_attempt_timeout(attempt)
            .operation_timeout(attempt)
            .build();
        // Retries are ours (bounded by the caller's deadline), not the SDK's.
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(region))
            .http_client(http)
            .timeout_config(timeouts)
            .retry_config(RetryConfig::disabled());
        if let Some(e) = &spec.endpoint {
            loader = loader.endpoint_url(e);
        }
        let conf = tokio::time::timeout(deadline, loader.load())
            .await
            .map_err(|_| MoveError::Setup("loading the AWS configuration timed out".into()))?;
        Ok(Ec2 {
            client: Client::new(&conf),
            guard,
            started,
            until: started + deadline,
            deadline,
            attempts: AtomicU32::new(0),
        })
    }

    /// Asks the guard before an attempt of `op`: Stop fails the move, Wait
    /// holds a change back (with backoff, until the deadline). Asked before
    /// every attempt, not once per move: a retry sent after the node lost
    /// the right would take the address from the node that has it now.
    async fn permitted(&self, op: &'static str, kind: Op) -> Result<(), MoveError> {
        let mut backoff =
            Backoff::new(Duration::from_millis(100), Duration::from_secs(1), self.until);
        loop {
            match (self.guard)() {
                Permit::Go => return Ok(()),
                Permit::Stop(reason) => {
                    tracing::warn!(op, %reason, "move withdrawn");
                    return Err(MoveError::Withdrawn { op, reason });
                }
                Permit::Wait(_) if kind == Op::Read => return Ok(()),
                Permit::Wait(why) => {
                    tracing::info!(op, %why, "change held back");
                    if !backoff.wait().await {
                        return Err(MoveError::Deadline {
                            op,
                            attempts: 0,
                            deadline: self.deadline,
                            last: format!("not permitted: {why}"),
                        });
                    }
                }
            }
        }
    }

    /// `fut`, given up as soon as the guard says [`Permit::Stop`] (asked
    /// every [`GUARD_POLL`]). Found by review (helper-106): a call in
    /// flight (up to [`ATTEMPT_TIMEOUT`]) or a backoff sleep (up to 5 s)
    /// ran to its end after the node was told to demote, and `on_demote`
    /// waited behind it. A request already sent is not called back by
    /// this (nothing can): the successor's re-check takes the address back.
    async fn unless_stopped<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = T>,
    ) -> Result<T, MoveError> {
        let stopped = async {
            loop {
                tokio::time::sleep(GUARD_POLL).await;
                if let Permit::Stop(reason) = (self.guard)() {
                    return reason;
                }
            }
        };
        tokio::select! {
            v = fut => Ok(v),
            reason = stopped => {
                tracing::warn!(op, %reason, "move withdrawn while waiting");
                Err(MoveError::Withdrawn { op, reason })
            }
        }
    }

    /// Runs one EC2 operation with retries on transient failures.
    async fn call<T, E, Fut>(
        &self,
        op: &'static str,
        kind: Op,
        f: impl Fn() -> Fut,
    ) -> Result<T, MoveError>
    where
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let mut backoff =
            Backoff::new(Duration::from_millis(200), Duration::from_secs(5), self.until);
        let mut attempts = 0;
        loop {
            self.permitted(op, kind).await?;
            attempts += 1;
            self.attempts.fetch_add(1, Ordering::Relaxed);
            let left = self.until.saturating_duration_since(Instant::now());
            let last = match self.unless_stopped(op, tokio::time::timeout(left, f())).await? {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => match classify(&e) {
                    Class::Retry(why) => why,
                    Class::Fatal { code, message } => {
                        tracing::error!(op, %code, %message, "EC2 call failed (not retryable)");
                        return Err(MoveError::Aws { op, code, message });
                    }
                },
                Err(_) => "no answer before the deadline".to_string(),
            };
            tracing::warn!(op, attempt = attempts, error = %last, "EC2 call failed; retrying");
            if !self.unless_stopped(op, backoff.wait()).await? {
                return Err(MoveError::Deadline { op, attempts, deadline: self.deadline, last });
            }
        }
    }

    /// Polls `check` (None: in place; Some(why not)) until it passes or the
    /// deadline comes.
    async fn verify<Fut>(&self, op: &'static str, check: impl Fn() -> Fut) -> Result<(), MoveError>
    where
        Fut: Future<Output = Result<Option<String>, MoveError>>,
    {
        let mut backoff =
            Backoff::new(Duration::from_millis(100), Duration::from_secs(1), self.until);
        loop {
            match check().await? {
                None => {
                    tracing::info!(op, "verified: the address is ours");
                    return Ok(());
                }
                Some(why) => {
                    tracing::info!(op, state = %why, "not in place yet");
                    if !self.unless_stopped(op, backoff.wait()).await? {
                        return Err(MoveError::NotMoved {
                            op,
                            deadline: self.deadline,
                            detail: why,
                        });
                    }
                }
            }
        }
    }
}

fn classify<E>(e: &SdkError<E, HttpResponse>) -> Class
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let full = || DisplayErrorContext(e).to_string();
    if let Some(why) = credentials_hiccup(e) {
        return Class::Retry(why);
    }
    if let Some(message) = credentials_missing(e) {
        return Class::Fatal { code: "NoCredentials".into(), message };
    }
    match e {
        SdkError::TimeoutError(_) => Class::Retry("timed out".into()),
        // I/O, timeouts, and "transient" failures such as a connection
        // closed before the answer (every call here is idempotent, so
        // sending it again is safe); not user or client errors.
        SdkError::DispatchFailure(d)
            if d.is_io()
                || d.is_timeout()
                || matches!(
                    d.as_other(),
                    Some(
                        ErrorKind::TransientError
                            | ErrorKind::ServerError
                            | ErrorKind::ThrottlingError
                    )
                ) =>
        {
            Class::Retry(format!("connection failed: {}", full()))
        }
        SdkError::ResponseError(r) => {
            let status = r.raw().status().as_u16();
            if status >= 500 || status == 429 {
                Class::Retry(format!("HTTP {status}"))
            } else {
                Class::Fatal { code: format!("HTTP {status}"), message: full() }
            }
        }
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            let code = e.code().map(str::to_string);
            let message = e.message().unwrap_or_default().to_string();
            let retry_code = code.as_deref().is_some_and(|c| RETRY_CODES.contains(&c));
            if retry_code || status >= 500 || status == 429 {
                Class::Retry(format!(
                    "HTTP {status} {}{}",
                    code.as_deref().unwrap_or(""),
                    if message.is_empty() { String::new() } else { format!(": {message}") }
                ))
            } else {
                Class::Fatal {
                    code: code.unwrap_or_else(|| format!("HTTP {status}")),
                    message: if message.is_empty() { full() } else { message },
                }
            }
        }
        // Construction failures, missing credentials, bad endpoint URL...
        _ => Class::Fatal { code: "ClientError".into(), message: full() },
    }
}

/// A credentials provider that failed or timed out (the instance
/// profile's IMDS answering 503 or not at all, STS throttled): transient,
/// retried as the API's own hiccups are. Credentials that are not
/// configured (`CredentialsNotLoaded`) or configured wrong are not.
/// Found by review (helper-118): such a hiccup failed the move at once as
/// a "ClientError", and a failover's `on_promote` waited for the next
/// re-check.
fn credentials_hiccup(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    use aws_credential_types::provider::error::CredentialsError;
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(c) = err.downcast_ref::<CredentialsError>() {
            return match c {
                CredentialsError::ProviderTimedOut(_) | CredentialsError::ProviderError(_) => {
                    Some(format!("loading credentials failed: {}", DisplayErrorContext(c)))
                }
                _ => None,
            };
        }
        next = err.source();
    }
    None
}

/// No credentials configured anywhere the SDK's chain looks: what to
/// do, in one line. Found by review: the SDK's own text for this (every
/// provider of the chain and why each gave nothing) was about 2 KB, and
/// went whole into `status`'s `last_error` and the log.
fn credentials_missing(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    use aws_credential_types::provider::error::CredentialsError;
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(CredentialsError::CredentialsNotLoaded(_)) = err.downcast_ref() {
            return Some(
                "no AWS credentials: none of the environment (AWS_ACCESS_KEY_ID), the \
                 profile files, web identity, the container's or the instance profile's \
                 (IMDS) gave any; give the instance an IAM role allowed to move the address"
                    .into(),
            );
        }
        next = err.source();
    }
    None
}

/// Elastic IP: AssociateAddress to our instance (or ENI).
async fn eip(
    ec2: &Ec2<'_>,
    spec: &AddressSpec,
    me: &Identity,
) -> Result<(bool, String), MoveError> {
    let alloc = spec.allocation_id.as_deref().unwrap_or_default().trim();
    let (instance, eni) = match (&me.instance_id, &me.eni) {
        (Some(i), _) => (Some(i.as_str()), None),
        (None, Some(e)) => (None, Some(e.as_str())),
        (None, None) => {
            return Err(MoveError::Identity { kind: spec.kind, what: "instance id (or ENI)" })
        }
    };
    let target = instance.or(eni).unwrap_or_default();
    // Who holds it now (Some(why not ours)), and its public IP for the logs.
    let owner = || async {
        let out = ec2
            .call("DescribeAddresses", Op::Read, || {
                ec2.client.describe_addresses().allocation_ids(alloc).send()
            })
            .await?;
        let Some(a) = out.addresses().iter().find(|a| a.allocation_id() == Some(alloc)) else {
            return Err(MoveError::Aws {
                op: "DescribeAddresses",
                code: "InvalidAllocationID.NotFound".into(),
                message: format!("{alloc} not in the answer"),
            });
        };
        let ours = match (instance, eni) {
            (Some(i), _) => a.instance_id() == Some(i),
            (None, Some(e)) => a.network_interface_id() == Some(e),
            (None, None) => false,
        };
        let ip = a.public_ip().unwrap_or("?").to_string();
        let why = (!ours).then(|| {
            format!(
                "{alloc} ({ip}) is on instance {} / ENI {}",
                a.instance_id().unwrap_or("-"),
                a.network_interface_id().unwrap_or("-")
            )
        });
        Ok((why, ip))
    };

    let (why, ip) = owner().await?;
    let Some(why) = why else {
        tracing::info!(%alloc, %ip, %target, "Elastic IP already in place");
        return Ok((true, format!("{alloc} ({ip}) already in place on {target}")));
    };
    tracing::info!(%alloc, %ip, %target, was = %why, "AssociateAddress");
    let out = ec2
        .call("AssociateAddress", Op::Change, || {
            ec2.client
                .associate_address()
                .allocation_id(alloc)
                .set_instance_id(instance.map(str::to_string))
                .set_network_interface_id(eni.map(str::to_string))
                .allow_reassociation(true)
                .send()
        })
        .await?;
    let assoc = out.association_id().unwrap_or("-").to_string();
    tracing::info!(%alloc, association_id = %assoc, "AssociateAddress done; verifying");
    ec2.verify("DescribeAddresses", || async { Ok(owner().await?.0) }).await?;
    Ok((false, format!("{alloc} ({ip}) associated with {target} (association {assoc})")))
}

/// Overlay IP: ReplaceRoute on each table so that `cidr` goes to our ENI.
async fn route(
    ec2: &Ec2<'_>,
    spec: &AddressSpec,
    me: &Identity,
) -> Result<(bool, String), MoveError> {
    let cidr = spec.cidr.as_deref().unwrap_or_default().trim();
    let eni = me
        .eni
        .as_deref()
        .ok_or(MoveError::Identity { kind: spec.kind, what: "ENI (network interface id)" })?;
    let tables = &spec.route_table_ids;
    // Tables whose route to `cidr` does not point at our ENI, with why.
    let elsewhere = || async {
        let out = ec2
            .call("DescribeRouteTables", Op::Read, || {
                ec2.client.describe_route_tables().set_route_table_ids(Some(tables.clone())).send()
            })
            .await?;
        let mut off = Vec::new();
        for t in tables {
            let table = out.route_tables().iter().find(|rt| rt.route_table_id() == Some(t));
            let route = table.and_then(|rt| {
                rt.routes().iter().find(|r| r.destination_cidr_block() == Some(cidr))
            });
            match route {
                Some(r) if r.network_interface_id() == Some(eni) => {}
                Some(r) => off.push((
                    t.clone(),
                    format!(
                        "{t}: {cidr} -> {}",
                        r.network_interface_id().or(r.instance_id()).unwrap_or("-")
                    ),
                    true,
                )),
                None => off.push((t.clone(), format!("{t}: no route to {cidr}"), false)),
            }
        }
        Ok::<_, MoveError>(off)
    };

    let off = elsewhere().await?;
    if off.is_empty() {
        tracing::info!(%cidr, %eni, ?tables, "overlay route already in place");
        return Ok((true, format!("{cidr} already in place via {eni} in {}", tables.join(", "))));
    }
    // A table without the route: ReplaceRoute cannot create it. The
    // others move all the same, and the error names it (found by review,
    // helper-118: AWS's error names no table, and the tables after it
    // were left pointing at the old node).
    let (off, bare): (Vec<_>, Vec<_>) = off.into_iter().partition(|o| o.2);
    let bare: Vec<String> = bare.into_iter().map(|o| o.0).collect();
    for (table, was, _) in &off {
        tracing::info!(%table, %cidr, %eni, %was, "ReplaceRoute");
        ec2.call("ReplaceRoute", Op::Change, || {
            ec2.client
                .replace_route()
                .route_table_id(table)
                .destination_cidr_block(cidr)
                .network_interface_id(eni)
                .send()
        })
        .await?;
    }
    ec2.verify("DescribeRouteTables", || async {
        let off: Vec<_> = elsewhere().await?.into_iter().filter(|o| !bare.contains(&o.0)).collect();
        Ok((!off.is_empty()).then(|| off.into_iter().map(|o| o.1).collect::<Vec<_>>().join("; ")))
    })
    .await?;
    let moved: Vec<_> = off.into_iter().map(|o| o.0).collect();
    if !bare.is_empty() {
        return Err(MoveError::NoRoute { cidr: cidr.to_string(), tables: bare, moved });
    }
    Ok((false, format!("{cidr} now via {eni} in {}", moved.join(", "))))
}

/// Secondary private IP: AssignPrivateIpAddresses to our ENI.
async fn secondary_ip(
    ec2: &Ec2<'_>,
    spec: &AddressSpec,
    me: &Identity,
) -> Result<(bool, String), MoveError> {
    let ip = spec.private_ip.as_deref().unwrap_or_default().trim();
    let eni = me
        .eni
        .as_deref()
        .ok_or(MoveError::Identity { kind: spec.kind, what: "ENI (network interface id)" })?;
    let missing = || async {
        let out = ec2
            .call("DescribeNetworkInterfaces", Op::Read, || {
                ec2.client.describe_network_interfaces().network_interface_ids(eni).send()
            })
            .await?;
        let has = out
            .network_interfaces()
            .iter()
            .filter(|n| n.network_interface_id() == Some(eni))
            .flat_map(|n| n.private_ip_addresses())
            .any(|a| a.private_ip_address() == Some(ip));
        Ok::<_, MoveError>((!has).then(|| format!("{ip} is not on {eni}")))
    };

    if missing().await?.is_none() {
        tracing::info!(%ip, %eni, "secondary IP already in place");
        return Ok((true, format!("{ip} already in place on {eni}")));
    }
    tracing::info!(%ip, %eni, "AssignPrivateIpAddresses");
    ec2.call("AssignPrivateIpAddresses", Op::Change, || {
        ec2.client
            .assign_private_ip_addresses()
            .network_interface_id(eni)
            .private_ip_addresses(ip)
            .allow_reassignment(true)
            .send()
    })
    .await?;
    // The assignment is asynchronous on AWS: poll until it shows.
    ec2.verify("DescribeNetworkInterfaces", missing).await?;
    Ok((false, format!("{ip} assigned to {eni}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_credential_types::provider::error::CredentialsError;
    use aws_sdk_ec2::operation::associate_address::AssociateAddressError;

    /// The chain's "no credentials" is one short line naming what to do;
    /// a provider's failure is not taken for it (it is retried).
    #[test]
    fn missing_credentials_are_one_short_line() {
        let chain = "no providers in chain provided credentials: ".repeat(40);
        let e: SdkError<AssociateAddressError, HttpResponse> =
            SdkError::construction_failure(CredentialsError::not_loaded(chain));
        let Class::Fatal { code, message } = classify(&e) else { panic!("retried") };
        assert_eq!(code, "NoCredentials");
        assert!(message.len() < 300 && !message.contains('\n'), "{message}");
        assert!(message.contains("IAM role"), "{message}");
        let hiccup: SdkError<AssociateAddressError, HttpResponse> =
            SdkError::construction_failure(CredentialsError::provider_error("IMDS 503"));
        assert!(matches!(classify(&hiccup), Class::Retry(_)));
    }
}
