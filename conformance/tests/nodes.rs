//! The conformance suite against one relay made of two nodes on one shared store, behind a
//! front that sends each request to the other node than the one before (`common::nodes`):
//! every MUST case passes, apart from the few listed in [`PER_NODE`], which cannot hold on a
//! relay of several nodes by design, each with its reason.
//!
//! The store here is `SharedMem`, the in-memory double of a shared store; the same harness
//! takes any store (`NodesRelay::start` with one handle per node), for a PostgreSQL run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::nodes::NodesRelay;
use formica_conformance::report::{Report, Status};
use formica_conformance::{runner, Level};
use std::sync::atomic::Ordering;

/// Cases that may fail on a relay of several nodes, because what they check is kept by each
/// node apart, by design (the nodes share the store, not their memory), with the reason. They
/// are still run and reported; one of them that passes (when the requests that matter happen
/// to reach one node) is no error.
const PER_NODE: &[(&str, &str)] = &[];

/// Runs the suite as `reference.rs` does (level Should, 4 cases at once) against `relay`;
/// panics with every MUST failure not in [`PER_NODE`].
pub fn suite_passes(relay: &NodesRelay) -> Report {
    let started = std::time::Instant::now();
    let mut opts = runner::Options::new(&relay.url);
    opts.jobs = 4;
    opts.level = Level::Should;
    let rep = runner::run(&opts).expect("the suite runs against the nodes");
    let per_node = |id: &str| PER_NODE.iter().any(|(c, _)| *c == id);
    let count = |s: Status| rep.count(s, None);
    let sent: Vec<usize> = relay.front.sent.iter().map(|n| n.load(Ordering::Relaxed)).collect();
    eprintln!(
        "suite against {} nodes in {:.1} s: {} passed, {} failed, {} skipped; requests per node {sent:?}",
        relay.nodes.len(),
        started.elapsed().as_secs_f64(),
        count(Status::Pass),
        count(Status::Fail),
        count(Status::Skip),
    );
    for r in rep.results.iter().filter(|r| r.status == Status::Fail) {
        let why = if per_node(&r.id) { "per node, allowed" } else { "NOT allowed" };
        eprintln!("  failed ({why}): {} [{}] {}: {}", r.id, r.level.as_str(), r.reqs.join(" "), r.reason);
    }
    let failures: Vec<String> = rep
        .must_failures()
        .iter()
        .filter(|r| !per_node(&r.id))
        .map(|r| format!("{} [{}]: {}", r.id, r.reqs.join(" "), r.reason))
        .collect();
    assert!(
        failures.is_empty(),
        "MUST cases a relay of {} nodes fails (a bug of the node logic, or, when the case cannot hold on several nodes by design, list it with its reason in PER_NODE):\n{}",
        relay.nodes.len(),
        failures.join("\n")
    );
    assert!(
        sent.iter().all(|n| *n > 0),
        "the front did not spread the requests over the nodes: {sent:?}"
    );
    rep
}

#[test]
fn two_nodes_on_one_shared_store_pass_every_must_case() {
    let relay = NodesRelay::shared_mem();
    suite_passes(&relay);
}
