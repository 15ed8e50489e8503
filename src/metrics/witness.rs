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
use twinblock_replicator::arbiter::Refusal;
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
    // (The arbiter keeps its last holder after the lease ran out, when
    // anyone may claim: that is no holder.)
    let holding = st.lease_left_ms.is_some_and(|ms| ms > 0);
    let holder: Vec<String> = st.holder.iter().filter(|_| holding).cloned().collect();
    per_member(
        &mut reg,
        "holder",
        "1 for the node that holds the Primary right (its lease may still run)",
        st,
        &holder,
    );
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
        "Time since each node's last request (a Primary renews every heartbeat; a Secondary asks \
         only to claim)",
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
    // A refusal by data starts at 0 for every node: a series that first
    // appears at 1 has no increase() (the alert on it would never fire
    // for a node's first refusal). Only a claim is judged by its data.
    for m in &st.members {
        for refusal in [
            Refusal::DataUnknown { node: m.clone(), peer: String::new() },
            Refusal::DataNotDescended { node: m.clone(), peer: String::new(), alone: 0 },
        ] {
            let _ = requests.get_or_create(&vec![
                ("member", m.clone()),
                ("kind", "claim".to_owned()),
                ("verdict", refusal.label().to_owned()),
            ]);
        }
    }
    for r in &st.requests {
        let l = vec![
            ("member", r.node.clone()),
            ("kind", r.kind.to_owned()),
            ("verdict", r.verdict.to_owned()),
        ];
        requests.get_or_create(&l).inc_by(r.count);
    }
    let age = FloatGauge::default();
    reg.register_with_unit(
        "status_age",
        "How old these figures are (the witness publishes them every 100 ms; more: it is stuck, \
         e.g. saving its state)",
        Unit::Seconds,
        age.clone(),
    );
    age.set(st.taken.map_or(f64::NAN, |t| t.elapsed().as_secs_f64()));
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
        // A lease that ran out: the arbiter still names its last holder,
        // but nobody holds the right.
        let text = render(&WitnessStatus { lease_left_ms: Some(0), ..st });
        let line = r#"twinblock_witness_holder{resource="r",node="w",member="b"} 0"#;
        assert!(text.lines().any(|l| l == line), "no {line} in:\n{text}");
    }

    /// A node's first refusal by its data shows as an increase: its
    /// series is there at 0 before it (Prometheus' increase() sees
    /// nothing of a series that first appears at 1).
    #[test]
    fn refusals_by_data_are_counted_from_zero() {
        let st = WitnessStatus {
            resource: "r".into(),
            node: "w".into(),
            members: vec!["a".into(), "b".into()],
            ..WitnessStatus::default()
        };
        let text = render(&st);
        for m in ["a", "b"] {
            for v in ["data_unknown", "data_not_descended"] {
                let line = format!(
                    r#"twinblock_witness_requests_total{{resource="r",node="w",member="{m}",kind="claim",verdict="{v}"}} 0"#
                );
                assert!(text.lines().any(|l| l == line), "no {line} in:\n{text}");
            }
        }
        let st = WitnessStatus {
            requests: vec![RequestCount {
                node: "a".into(),
                kind: "claim",
                verdict: "data_unknown",
                count: 1,
            }],
            ..st
        };
        let line = r#"twinblock_witness_requests_total{resource="r",node="w",member="a",kind="claim",verdict="data_unknown"} 1"#;
        assert!(render(&st).lines().any(|l| l == line));
    }

    /// The critical alert on a claim refused by its data matches exactly
    /// the verdicts the witness gives such refusals (a renamed label would
    /// silence it).
    #[test]
    fn the_alert_on_refusals_by_data_names_their_verdicts() {
        let rules = include_str!("../../scripts/alerts.yml");
        let at = rules.find("verdict=~\"").expect("the alert's verdict pattern") + 10;
        let pattern = &rules[at..at + rules[at..].find('"').expect("end of the pattern")];
        let mut alerted: Vec<&str> = pattern.split('|').collect();
        alerted.sort_unstable();
        let (n, p) = (String::from("a"), String::from("b"));
        let all = [
            Refusal::OtherResource { serves: n.clone() },
            Refusal::NamesItself { node: n.clone() },
            Refusal::Held { holder: n.clone() },
            Refusal::HeldSince { node: n.clone(), holder: p.clone() },
            Refusal::Behind { node: n.clone(), other: p.clone(), gen: 1, other_gen: 2 },
            Refusal::Unsettled { node: n.clone(), other: p.clone() },
            Refusal::Outdated { node: n.clone() },
            Refusal::NotPromotable { node: n.clone() },
            Refusal::DataUnknown { node: n.clone(), peer: p.clone() },
            Refusal::DataNotDescended { node: n.clone(), peer: p, alone: 1 },
            Refusal::NoRecord { node: n },
            Refusal::JustStarted,
        ];
        let mut by_data: Vec<&str> =
            all.iter().filter(|r| r.by_data()).map(|r| r.label()).collect();
        by_data.sort_unstable();
        assert_eq!(alerted, by_data);
    }
}
