//! Federation cases with `--peer`: two reference relays, started in-process with federation
//! enabled (plain http on loopback, open peering) and peered through the admin API, pass every
//! federation case of the suite, and the relay vectors of auth.json re-created as handshakes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use formica_conformance::report::Status;
use formica_conformance::{runner, vectors};

fn federate(cfg: &mut formica_relay::config::RelayConfig) {
    cfg.policy.federation.enabled = true;
    cfg.policy.federation.scheme = "http".into();
    cfg.policy.federation.peering = "open".into();
    // The two relays are on loopback, which a handshake may not reach by default (FED-15).
    cfg.policy.federation.allow_private_peers = true;
}

/// Asks `a` to peer with `b` through `a`'s admin endpoint (loopback, bearer token).
fn peer(a: &common::InProcessRelay, b: &common::InProcessRelay) {
    let token =
        std::fs::read_to_string(a.dir.join(formica_relay::ADMIN_TOKEN_FILE)).expect("admin token");
    let body = format!("{{\"url\":\"http://{}\"}}", b.host);
    let r = ureq::post(&format!("{}/admin/v1/peers", a.url))
        .set("authorization", &format!("Bearer {}", token.trim()))
        .set("content-type", "application/json")
        .send_string(&body);
    match r {
        Ok(resp) => assert_eq!(resp.status(), 200),
        Err(ureq::Error::Status(s, resp)) => panic!(
            "peering failed: {s} {}",
            resp.into_string().unwrap_or_default()
        ),
        Err(e) => panic!("peering failed: {e}"),
    }
}

#[test]
fn federation_cases_pass_between_two_peered_reference_relays() {
    let a = common::InProcessRelay::start_with(None, federate);
    let b = common::InProcessRelay::start_with(None, federate);
    peer(&a, &b);
    let mut opts = runner::Options::new(&a.url);
    opts.peer = Some(b.url.clone());
    opts.only = vec![
        "fed.".into(),
        "conv.fed-".into(),
        "seal.fed-".into(),
        "desc.peering".into(),
        "desc.units".into(),
        "vec.auth.relay_".into(),
    ];
    let rep = runner::run(&opts).expect("the suite runs");
    // A relay checks the signature of a relay request other than the handshake only for an
    // active peer, which the suite is not: those relay_valid vectors are skipped, and only they.
    let not_handshake: Vec<String> = vectors::list(vectors::auth(), "relay_valid")
        .iter()
        .enumerate()
        .filter(|(_, c)| vectors::field(c, "path") != Some("/v1/federation/peers"))
        .map(|(i, _)| format!("vec.auth.relay_valid.{i}"))
        .collect();
    let bad: Vec<String> = rep
        .results
        .iter()
        .filter(|r| {
            let skip_ok = r.status == Status::Skip
                && not_handshake.contains(&r.id)
                && r.reason.contains("only for an active peer");
            r.status != Status::Pass && !skip_ok
        })
        .map(|r| format!("{} {}: {}", r.status.as_str(), r.id, r.reason))
        .collect();
    assert!(
        bad.is_empty(),
        "federation cases that did not pass between two peered reference relays:\n{}",
        bad.join("\n")
    );
    let relay_vectors = vectors::list(vectors::auth(), "relay_valid").len()
        + vectors::list(vectors::auth(), "relay_invalid").len();
    let relay_cases = rep
        .results
        .iter()
        .filter(|r| r.id.starts_with("vec.auth.relay_"))
        .count();
    assert_eq!(relay_cases, relay_vectors, "one case per relay vector");
    let conv_fed: Vec<&str> = rep
        .results
        .iter()
        .filter(|r| r.id.starts_with("conv.fed-"))
        .map(|r| r.id.as_str())
        .collect();
    assert_eq!(
        conv_fed,
        ["conv.fed-home", "conv.fed-replica", "conv.fed-decline"],
        "the conversation cases across relays ran"
    );
    assert!(
        rep.results
            .iter()
            .any(|r| r.id == "seal.fed-deliver" && r.status == Status::Pass),
        "the sealed delivery across relays ran and passed"
    );
    assert!(
        rep.results.len() >= 12 + relay_vectors,
        "{} cases ran",
        rep.results.len()
    );
    assert_eq!(rep.exit_code(), 0);
}
