//! The reference relay, started in-process, passes every MUST case of the suite (apart from the
//! known relay bugs listed, with reasons, in results/reference-expected-failures.txt), and its
//! results equal the committed results/reference.jsonl.
//!
//! Regenerate the committed results after a change of the relay or the suite:
//! `CONFORMANCE_BLESS=1 cargo test -p formica-conformance --test reference`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use formica_conformance::{report, runner, Level};

const RESULTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/results/reference.jsonl");
const EXPECTED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/results/reference-expected-failures.txt"
);

#[test]
fn reference_relay_passes_every_must_case_and_matches_the_committed_results() {
    let relay = common::InProcessRelay::start(None);
    let mut opts = runner::Options::new(&relay.url);
    opts.jobs = 4;
    opts.level = Level::Should;
    let mut rep = runner::run(&opts).expect("the suite runs against the reference relay");
    let expected =
        report::parse_expected(&std::fs::read_to_string(EXPECTED).expect("expected failures"))
            .expect("expected failures parse");
    rep.apply_expected(&expected);
    let jsonl = rep.to_jsonl();
    if std::env::var_os("CONFORMANCE_BLESS").is_some() {
        std::fs::write(RESULTS, &jsonl).expect("write results");
    }
    let failures: Vec<String> = rep
        .must_failures()
        .iter()
        .map(|r| format!("{} [{}]: {}", r.id, r.reqs.join(" "), r.reason))
        .collect();
    assert!(failures.is_empty(), "MUST cases the reference relay fails (fix the relay, or list them with a reason in {EXPECTED}):\n{}", failures.join("\n"));
    assert!(
        rep.stale_expected.is_empty(),
        "stale entries in {EXPECTED}: {:?}",
        rep.stale_expected
    );
    assert_eq!(rep.exit_code(), 0);
    let committed = std::fs::read_to_string(RESULTS).unwrap_or_default();
    let diff: Vec<String> = {
        let old: std::collections::BTreeMap<String, String> = committed
            .lines()
            .filter_map(|l| report::CaseResult::from_json(l).map(|r| (r.id.clone(), l.to_owned())))
            .collect();
        let new: std::collections::BTreeMap<String, String> = jsonl
            .lines()
            .filter_map(|l| report::CaseResult::from_json(l).map(|r| (r.id.clone(), l.to_owned())))
            .collect();
        let mut d = Vec::new();
        for (id, l) in &new {
            match old.get(id) {
                Some(o) if o == l => {}
                Some(o) => d.push(format!("- {o}\n+ {l}")),
                None => d.push(format!("+ {l}")),
            }
        }
        for (id, o) in &old {
            if !new.contains_key(id) {
                d.push(format!("- {o}"));
            }
        }
        d
    };
    assert!(
        diff.is_empty(),
        "the reference relay's results differ from {RESULTS}; if the change is intended, regenerate with CONFORMANCE_BLESS=1 cargo test -p formica-conformance --test reference\n{}",
        diff.join("\n")
    );
}
