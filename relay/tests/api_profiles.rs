//! App-level tests without sockets (`Router::oneshot`): profiles and the directory (SPEC.md
//! section 18). Named after the behaviour they check.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use formica_protocol::profile::{Capability, Profile};
use formica_protocol::{MessageType, SignedProfile};
use std::sync::Arc;

fn cap(id: &str, tags: &[&str]) -> Capability {
    Capability {
        id: id.into(),
        version: None,
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
    }
}

fn profile(r: &TestRelay, a: &Agent, seq: i64, listed: bool, caps: Vec<Capability>) -> Profile {
    Profile {
        handle: a.handle.clone(),
        key: a.key.public().key_id(),
        seq,
        ts: r.now(),
        expires: r.now() + 3_600_000,
        name: format!("Agent {}", a.handle.name().as_str()),
        description: Some("Reviews Rust Code".into()),
        capabilities: caps,
        accepts: vec![MessageType::Message, MessageType::TaskRequest],
        platform: None,
        model: None,
        listed,
    }
}

async fn publish(r: &TestRelay, a: &Agent, p: &Profile) -> Resp {
    let signed = p.sign(&a.key).unwrap();
    a.authed(r, "PUT", "/v1/profile", signed.wire()).await
}

fn handles(resp: &Resp) -> Vec<String> {
    resp.get("results")
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            field(e, &["profile", "handle"])
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn a_published_profile_is_served_byte_for_byte_and_verifies() {
    let r = TestRelay::new();
    let a = r.agent("alice").await;
    let p = profile(&r, &a, 1, false, vec![cap("code-review", &["rust"])]);
    let resp = publish(&r, &a, &p).await;
    resp.expect(200, "");
    assert_eq!(resp.str_("result"), "stored");
    let got = a
        .authed(&r, "GET", &format!("/v1/profiles/{}", a.handle), b"")
        .await;
    got.expect(200, "");
    assert_eq!(got.get("tier").as_i64(), Some(0));
    let served = SignedProfile::from_value(got.get("profile").clone()).unwrap();
    assert_eq!(served.wire(), p.sign(&a.key).unwrap().wire());
    served.verify(&a.key.public()).unwrap();
    // The same bytes again are a duplicate; another profile with the same seq is outdated.
    let again = publish(&r, &a, &p).await;
    again.expect(200, "");
    assert_eq!(again.str_("result"), "duplicate");
    r.advance(1);
    let other = profile(&r, &a, 1, true, vec![]);
    publish(&r, &a, &other)
        .await
        .expect(409, "profile_outdated");
    let newer = profile(&r, &a, 2, true, vec![]);
    publish(&r, &a, &newer).await.expect(200, "");
    let older = profile(&r, &a, 1, true, vec![cap("x", &[])]);
    publish(&r, &a, &older)
        .await
        .expect(409, "profile_outdated");
}

#[tokio::test]
async fn profile_checks_come_in_the_order_of_prof_4() {
    let r = TestRelay::new();
    let (a, b) = r.pair().await;
    // Not the authenticated agent's profile.
    let theirs = profile(&r, &b, 1, true, vec![]);
    let signed = theirs.sign(&b.key).unwrap();
    a.authed(&r, "PUT", "/v1/profile", signed.wire())
        .await
        .expect(403, "forbidden");
    // Schema errors name their field.
    let mut bad = profile(&r, &a, 1, true, vec![cap("Code", &[])]).to_value();
    if let formica_protocol::Value::Object(o) = &mut bad {
        o.insert("sig", "00".repeat(64).into());
    }
    let body = formica_protocol::canon::canonicalize(&bad);
    let resp = a.authed(&r, "PUT", "/v1/profile", &body).await;
    resp.expect(400, "invalid_field");
    assert_eq!(resp.field_of_error(), "capabilities[0].id");
    // A stale ts.
    let mut old = profile(&r, &a, 1, true, vec![]);
    old.ts -= 3_600_000;
    publish(&r, &a, &old).await.expect(400, "stale");
    // Signed with another key than the one named: the key named is a's, the signature not.
    let forged = profile(&r, &a, 1, true, vec![]);
    let mut v = forged.sign(&a.key).unwrap().value().clone();
    if let formica_protocol::Value::Object(o) = &mut v {
        let sig = profile(&r, &a, 2, true, vec![]).sign(&a.key).unwrap();
        o.insert("sig", sig.signature().to_hex().into());
    }
    let body = formica_protocol::canon::canonicalize(&v);
    a.authed(&r, "PUT", "/v1/profile", &body)
        .await
        .expect(400, "bad_signature");
    // The relay's limits: 16 capabilities, 30 days.
    let many: Vec<Capability> = (0..17).map(|i| cap(&format!("c{i}"), &[])).collect();
    let resp = publish(&r, &a, &profile(&r, &a, 1, true, many)).await;
    resp.expect(400, "invalid_field");
    assert_eq!(resp.field_of_error(), "capabilities");
    let mut long = profile(&r, &a, 1, true, vec![]);
    long.expires = long.ts + 31 * 24 * 3_600_000;
    let resp = publish(&r, &a, &long).await;
    resp.expect(400, "invalid_field");
    assert_eq!(resp.field_of_error(), "expires");
    // Over directory.profile_bytes_max.
    let big = vec![b' '; 5000];
    a.authed(&r, "PUT", "/v1/profile", &big)
        .await
        .expect(413, "too_large");
}

#[tokio::test]
async fn an_unlisted_profile_is_hidden_from_strangers_exactly_like_a_missing_one() {
    let r = TestRelay::new();
    let (a, b) = r.pair().await;
    let c = r.agent("carol").await;
    publish(
        &r,
        &a,
        &profile(&r, &a, 1, false, vec![cap("code-review", &[])]),
    )
    .await
    .expect(200, "");
    let unlisted = b
        .authed(&r, "GET", &format!("/v1/profiles/{}", a.handle), b"")
        .await;
    let no_profile = b
        .authed(&r, "GET", &format!("/v1/profiles/{}", c.handle), b"")
        .await;
    let unregistered = b.authed(&r, "GET", "/v1/profiles/@nobody", b"").await;
    let elsewhere = b
        .authed(&r, "GET", "/v1/profiles/@alice@relay-b.test", b"")
        .await;
    unlisted.expect(404, "not_found");
    for other in [&no_profile, &unregistered, &elsewhere] {
        assert_eq!((other.status, &other.raw), (unlisted.status, &unlisted.raw));
    }
    let card = b
        .authed(
            &r,
            "GET",
            &format!("/v1/profiles/{}/agent-card", a.handle),
            b"",
        )
        .await;
    assert_eq!((card.status, &card.raw), (unlisted.status, &unlisted.raw));
    // Not in the directory, even for its own capability.
    let found = b
        .authed(&r, "GET", "/v1/directory?capability=code-review", b"")
        .await;
    found.expect(200, "");
    assert!(handles(&found).is_empty());
    // A grant at any level (read) shows it to that contact, and only to it.
    a.put_contact(&r, &b.handle, "read").await.expect(200, "");
    b.authed(&r, "GET", &format!("/v1/profiles/{}", a.handle), b"")
        .await
        .expect(200, "");
    c.authed(&r, "GET", &format!("/v1/profiles/{}", a.handle), b"")
        .await
        .expect(404, "not_found");
    // Without a header: unauthorized, since the directory is not public.
    r.get(&format!("/v1/profiles/{}", a.handle))
        .await
        .expect(401, "unauthorized");
    r.get("/v1/directory").await.expect(401, "unauthorized");
}

#[tokio::test]
async fn an_expired_profile_is_not_shown_and_still_holds_its_seq() {
    let r = TestRelay::new();
    let (a, b) = r.pair().await;
    let mut p = profile(&r, &a, 5, true, vec![]);
    p.expires = p.ts + 60_000;
    publish(&r, &a, &p).await.expect(200, "");
    let path = format!("/v1/profiles/{}", a.handle);
    b.authed(&r, "GET", &path, b"").await.expect(200, "");
    r.advance(60_000);
    b.authed(&r, "GET", &path, b"")
        .await
        .expect(404, "not_found");
    let d = b.authed(&r, "GET", "/v1/directory", b"").await;
    assert!(handles(&d).is_empty());
    publish(&r, &a, &profile(&r, &a, 5, true, vec![]))
        .await
        .expect(409, "profile_outdated");
}

#[tokio::test]
async fn the_directory_finds_listed_agents_by_capability_and_text_and_pages_without_repeats() {
    let r = TestRelay::new();
    let viewer = r.agent("zed").await;
    let mut agents = Vec::new();
    for name in ["dave", "bea", "cleo", "abe"] {
        let a = r.agent(name).await;
        let caps = if name == "cleo" {
            vec![cap("translation", &["french"])]
        } else {
            vec![cap("code-review", &["rust"]), cap("testing", &[])]
        };
        publish(&r, &a, &profile(&r, &a, 1, name != "dave", caps))
            .await
            .expect(200, "");
        agents.push(a);
    }
    let all = viewer.authed(&r, "GET", "/v1/directory", b"").await;
    all.expect(200, "");
    let h = |n: &str| format!("@{n}@{HOST}");
    assert_eq!(handles(&all), vec![h("abe"), h("bea"), h("cleo")]);
    assert_eq!(all.get("next"), &formica_protocol::Value::Null);
    let rev = viewer
        .authed(&r, "GET", "/v1/directory?capability=code-review", b"")
        .await;
    assert_eq!(handles(&rev), vec![h("abe"), h("bea")]);
    // Text matches case-insensitively in names, descriptions, ids and tags.
    let fr = viewer
        .authed(&r, "GET", "/v1/directory?text=FRENCH", b"")
        .await;
    assert_eq!(handles(&fr), vec![h("cleo")]);
    let spaced = viewer
        .authed(&r, "GET", "/v1/directory?text=rust+code", b"")
        .await;
    assert_eq!(handles(&spaced).len(), 3);
    // One at a time, following `next`.
    let mut seen = Vec::new();
    let mut path = "/v1/directory?limit=1".to_owned();
    loop {
        let page = viewer.authed(&r, "GET", &path, b"").await;
        page.expect(200, "");
        seen.extend(handles(&page));
        match page.get("next").as_str() {
            Some(n) => path = format!("/v1/directory?limit=1&cursor={n}"),
            None => break,
        }
    }
    assert_eq!(seen, vec![h("abe"), h("bea"), h("cleo")]);
    // Nobody is at tier 1 yet.
    let t = viewer
        .authed(&r, "GET", "/v1/directory?min_tier=1", b"")
        .await;
    assert!(handles(&t).is_empty());
    for (q, field) in [
        ("capability=Code", "capability"),
        ("limit=0", "limit"),
        ("limit=51", "limit"),
        ("min_tier=3", "min_tier"),
        ("text=", "text"),
    ] {
        let resp = viewer
            .authed(&r, "GET", &format!("/v1/directory?{q}"), b"")
            .await;
        resp.expect(400, "invalid_field");
        assert_eq!(resp.field_of_error(), field, "{q}");
    }
    viewer
        .authed(&r, "GET", "/v1/directory?cursor=nonsense", b"")
        .await
        .expect(400, "invalid_cursor");
}

#[tokio::test]
async fn searches_are_limited_per_agent_at_its_tier_rate() {
    let mut cfg = config(4);
    for t in &mut cfg.policy.tiers {
        t.searches_per_min = 1;
    }
    let r = TestRelay::with(cfg, Arc::new(formica_relay::store::MemStore::default()));
    let a = r.agent("alice").await;
    // The bucket holds max(per_min / 4, 10) searches.
    for _ in 0..10 {
        a.authed(&r, "GET", "/v1/directory", b"")
            .await
            .expect(200, "");
    }
    let resp = a.authed(&r, "GET", "/v1/directory", b"").await;
    resp.expect(429, "rate_limited");
    assert!(resp
        .get("error")
        .as_object()
        .unwrap()
        .get("retry_after_s")
        .is_some());
}

#[tokio::test]
async fn a_public_directory_answers_without_a_header_and_shows_only_listed_profiles() {
    let mut cfg = config(4);
    cfg.policy.directory.public = true;
    let r = TestRelay::with(cfg, Arc::new(formica_relay::store::MemStore::default()));
    let (a, b) = r.pair().await;
    publish(
        &r,
        &a,
        &profile(&r, &a, 1, true, vec![cap("code-review", &["rust"])]),
    )
    .await
    .expect(200, "");
    publish(&r, &b, &profile(&r, &b, 1, false, vec![]))
        .await
        .expect(200, "");
    r.get(&format!("/v1/profiles/{}", a.handle))
        .await
        .expect(200, "");
    r.get(&format!("/v1/profiles/{}", b.handle))
        .await
        .expect(404, "not_found");
    let d = r.get("/v1/directory").await;
    assert_eq!(handles(&d), vec![a.handle.to_string()]);
    // Presence is never shown without authentication, not even as a filter (PRES-4).
    r.get("/v1/directory?status=offline")
        .await
        .expect(401, "unauthorized");
    // The agent card carries the signed profile, which verifies.
    let card = r
        .get(&format!("/v1/profiles/{}/agent-card", a.handle))
        .await;
    card.expect(200, "");
    assert_eq!(
        card.str_("name"),
        format!("Agent {}", a.handle.name().as_str())
    );
    assert_eq!(field(&card.body, &["skills"]).as_array().unwrap().len(), 1);
    let ext = &field(&card.body, &["capabilities", "extensions"])
        .as_array()
        .unwrap()[0];
    let inner = SignedProfile::from_value(field(ext, &["params", "profile"]).clone()).unwrap();
    inner.verify(&a.key.public()).unwrap();
    // A header that is present is checked even so.
    r.call(
        "GET",
        "/v1/directory",
        b"",
        &[("authorization", "Formica nonsense".into())],
    )
    .await
    .expect(401, "unauthorized");
}

#[tokio::test]
async fn profiles_survive_a_restart() {
    let store = Arc::new(formica_relay::store::MemStore::default());
    let r = TestRelay::with(config(4), store.clone());
    let a = r.agent("alice").await;
    publish(
        &r,
        &a,
        &profile(&r, &a, 1, true, vec![cap("code-review", &[])]),
    )
    .await
    .expect(200, "");
    r.advance(1);
    publish(&r, &a, &profile(&r, &a, 2, true, vec![cap("testing", &[])]))
        .await
        .expect(200, "");
    let before = r
        .state(|st| ((*st.profiles).clone(), st.profile_index.clone()))
        .await;
    let TestRelay { relay, router, .. } = r;
    drop(router);
    assert!(relay.stop(std::time::Duration::from_secs(5)));
    let r2 = TestRelay::with(config(4), store);
    let after = r2
        .state(|st| ((*st.profiles).clone(), st.profile_index.clone()))
        .await;
    assert_eq!(before, after);
    let d = a_viewer_search(&r2, &a, "capability=testing").await;
    assert_eq!(handles(&d), vec![a.handle.to_string()]);
    let old = a_viewer_search(&r2, &a, "capability=code-review").await;
    assert!(handles(&old).is_empty());
}

async fn a_viewer_search(r: &TestRelay, a: &Agent, q: &str) -> Resp {
    a.authed(r, "GET", &format!("/v1/directory?{q}"), b"").await
}

#[tokio::test]
async fn a_search_examines_a_bounded_number_of_profiles_and_goes_on_from_next() {
    let mut cfg = config(4);
    cfg.policy.directory.page_max = 2;
    cfg.policy.directory.scan_max = 2;
    let r = TestRelay::with(cfg, Arc::new(formica_relay::store::MemStore::default()));
    let viewer = r.agent("zed").await;
    for name in ["a1", "a2", "a3", "a4", "a5", "b1", "b2"] {
        let a = r.agent(name).await;
        // Unlisted ones (b1, b2): never examined, never a cursor (PROF-8).
        let mut p = profile(&r, &a, 1, !name.starts_with('b'), vec![]);
        p.description = Some(if name == "a5" { "needle" } else { "hay" }.into());
        publish(&r, &a, &p).await.expect(200, "");
    }
    let mut path = "/v1/directory?text=needle".to_owned();
    let (mut pages, mut found) = (0, Vec::new());
    loop {
        let page = viewer.authed(&r, "GET", &path, b"").await;
        page.expect(200, "");
        pages += 1;
        found.extend(handles(&page));
        match page.get("next").as_str() {
            Some(n) => {
                assert!(!n.starts_with("@b"), "an unlisted handle as a cursor: {n}");
                path = format!("/v1/directory?text=needle&cursor={n}");
            }
            None => break,
        }
    }
    // Five listed profiles (the viewer has none), two examined per page: empty pages first.
    assert_eq!(found, vec![format!("@a5@{HOST}")]);
    assert_eq!(pages, 3);
}
