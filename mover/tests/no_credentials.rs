#![cfg(feature = "aws")]
//! A machine with no AWS credentials anywhere (no environment keys, no
//! profile files, IMDS off): the move fails at once with one short line
//! naming what to do. Its own test binary: the environment is the
//! process's.

use std::time::{Duration, Instant};

use twinblock_mover::{move_address, AddressSpec, Identity, Kind, MoveError};

/// Found by review (helper-118): the SDK's text for this, every provider
/// of its chain and why, was about 2 KB in `status`'s `last_error`.
#[tokio::test]
async fn no_credentials_fail_the_move_in_one_short_line() {
    let home = tempfile::tempdir().unwrap();
    for k in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"] {
        std::env::remove_var(k);
    }
    for k in ["AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"] {
        std::env::remove_var(k);
    }
    std::env::remove_var("AWS_WEB_IDENTITY_TOKEN_FILE");
    std::env::set_var("HOME", home.path());
    std::env::set_var("AWS_CONFIG_FILE", home.path().join("config"));
    std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", home.path().join("credentials"));
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    // Nothing listens there: the move must fail before any request.
    let spec = AddressSpec {
        kind: Kind::AwsEip,
        allocation_id: Some("eipalloc-1".into()),
        region: Some("us-east-1".into()),
        endpoint: Some("http://127.0.0.1:9".into()),
        ..AddressSpec::default()
    };
    let me = Identity { instance_id: Some("i-0123456789abcdef0".into()), eni: None };
    let started = Instant::now();
    let e = move_address(&spec, &me, &[], Duration::from_secs(20)).await.unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, MoveError::Aws { .. }), "{e:?}");
    assert!(text.contains("no AWS credentials"), "{text}");
    assert!(text.len() < 400 && !text.contains('\n'), "{} bytes: {text}", text.len());
    assert!(started.elapsed() < Duration::from_secs(10), "retried: {:?}", started.elapsed());
}
