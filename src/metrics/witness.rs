//! The witness's Prometheus endpoint (`metrics = "HOST:PORT"` under the
//! witness's node entry): who holds the Primary right and for how long,
//! who is outdated or runs alone, when each node was last heard, and
//! every request decided, by node, kind and verdict (a refusal by its
//! kind, `arbiter::Refusal::label`). Rendered at each scrape from the
//! witness's status, which it publishes every 100 ms. Every metric is
//! named `twinblock_witness_*` and carries the labels `resource` and
//! `node` (the witness); per data node, the label `member`.

use std::borrow::Cow;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use twinblock_replicator::witness::WitnessStatus;

type Labels = Vec<(&'static str, String)>;
type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

fn member(m: &str) -> Labels {
    vec![("member", m.to_owned())]
}

/// A per-member 0/1 gauge: 1 for the members `on` holds.
fn per_member(reg: &mut Registry, name: &str, help: &str, st: &WitnessStatus, on: &[String]) {
    let family = Family::<Labels, Gauge>::default();
    reg.register(name, help, family.clone());
    for m in &st.members {
        family.get_or_create(&member(m)).set(i64::from(on.contains(m)));
    }
}

/// The witness's metrics, in the OpenMetrics text format.
pub fn render(st: &WitnessStatus) -> String {
    let labels = [
        (Cow::Borrowed("resource"), Cow::Owned(st.resource.clone())),
        (Cow::Borrowed("node"), Cow::Owned(st.node.clone())),
    ];
    let mut reg = Registry::with_prefix_and_labels("twinblock_witness", labels.into_iter());
    let holder: Vec<String> = st.holder.iter().cloned().collect();
    per_member(&mut reg, "holder", "1 for the node that holds the Primary right", st, &holder);
    per_member(
        &mut reg,
        "outdated",
        "1 for a node its peer ran without (never promoted until it resyncs)",
        st,
        &st.outdated,
    );
    per_member(
        &mut reg,
        "running_alone",
        "1 for a node that runs without its outdated peer (its data's generation is kept)",
        st,
        &st.running_alone,
    );
    let lease = FloatGauge::default();
    reg.register_with_unit(
        "lease_remaining",
        "How long the holder's lease may still run, margin included (0: no holder)",
        Unit::Seconds,
        lease.clone(),
    );
    lease.set(st.lease_left_ms.unwrap_or(0) as f64 / 1000.0);
    let complete = Gauge::<i64>::default();
    reg.register(
        "record_complete",
        "1 once a grant told the witness which nodes are current (0 after a start without its state)",
        complete.clone(),
    );
    complete.set(i64::from(st.complete));
    let heard = Family::<Labels, FloatGauge>::default();
    reg.register_with_unit(
        "last_request_age",
        "Time since each node's last request",
        Unit::Seconds,
        heard.clone(),
    );
    for (m, ms) in &st.heard_ms_ago {
        heard.get_or_create(&member(m)).set(*ms as f64 / 1000.0);
    }
    let requests = Family::<Labels, Counter>::default();
    reg.register(
        "requests",
        "Requests decided, by node, kind (claim, renew, release) and verdict (granted, renewed, \
         released, or the refusal's kind)",
        requests.clone(),
    );
    for r in &st.requests {
        let l = vec![
            ("member", r.node.clone()),
            ("kind", r.kind.to_owned()),
            ("verdict", r.verdict.to_owned()),
        ];
        requests.get_or_create(&l).inc_by(r.count);
    }
    let failures = Counter::<u64>::default();
    reg.register(
        "state_save_failures",
        "Decisions undone because the witness could not save its state",
        failures.clone(),
    );
    failures.inc_by(st.state_save_failures);
    let mut out = String::new();
    // (Writing to a String cannot fail.)
    let _ = encode(&mut out, &reg);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinblock_replicator::witness::RequestCount;

    #[test]
    fn a_witness_status_renders_as_its_metrics() {
        let st = WitnessStatus {
            resource: "r".into(),
            node: "w".into(),
            role: "Witness",
            members: vec!["a".into(), "b".into()],
            holder: Some("b".into()),
            lease_left_ms: Some(1500),
            outdated: vec!["a".into()],
            running_alone: vec!["b".into()],
            complete: true,
            requests: vec![RequestCount {
                node: "b".into(),
                kind: "claim",
                verdict: "data_not_descended",
                count: 3,
            }],
            ..WitnessStatus::default()
        };
        let text = render(&st);
        for line in [
            r#"twinblock_witness_holder{resource="r",node="w",member="b"} 1"#,
            r#"twinblock_witness_holder{resource="r",node="w",member="a"} 0"#,
            r#"twinblock_witness_outdated{resource="r",node="w",member="a"} 1"#,
            r#"twinblock_witness_running_alone{resource="r",node="w",member="b"} 1"#,
            r#"twinblock_witness_lease_remaining_seconds{resource="r",node="w"} 1.5"#,
            r#"twinblock_witness_requests_total{resource="r",node="w",member="b",kind="claim",verdict="data_not_descended"} 3"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in:\n{text}");
        }
    }
}
