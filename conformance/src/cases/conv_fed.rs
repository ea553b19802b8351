//! Conversations across relays (SPEC.md 19.6) with `--peer`: the relay under test as a
//! conversation's home relay (a peer's agent answers and posts through the peer, both relays
//! end with the same entries) and as a participant relay (it keeps a replica byte for byte,
//! delivers the call, forwards its agent's answers and posts to the home relay, and declines
//! for an invitee that has not granted the caller).

use super::conv_kit::*;
use super::*;
use crate::case::{case, Env};

/// How long an entry may take to reach the other relay.
const FED_WAIT_MS: u64 = 20_000;

pub fn cases() -> Vec<Case> {
    vec![
        case("conv.fed-home", &["CONVO-3", "CONVO-12", "CONVO-13", "CONVO-15", "CONVO-16", "FED-4", "API-13"], "a call from an agent of the relay to an agent of its peer: the peer keeps a replica naming the relay as home, the peer's agent accepts and posts through the peer (201 with conv and no seq), and both relays serve the same entries, byte for byte; the message status of a post names its conversation and seq", fed_home).peer(),
        case("conv.fed-replica", &["CONVO-10", "CONVO-12", "CONVO-13", "CONVO-16", "API-13"], "a call from an agent of the peer to an agent of the relay: the relay keeps a replica of the peer's entries byte for byte, delivers the call to its agent's inbox, and forwards its agent's accept and posts to the home relay, which sequences them; the post's message status shows the seq the home relay gave it", fed_replica).peer(),
        case("conv.fed-decline", &["CONVO-14", "CONVO-4"], "an agent of the relay invited by a peer's agent it has not granted the contact level message is declined for with reason unavailable (an event entry at the home relay), and the call never reaches its inbox", fed_decline).peer(),
    ]
}

fn peer<'a>(e: &'a Env<'_>) -> R<&'a Target> {
    let p = e
        .peer
        .ok_or_else(|| Stop::Skip("conversations across relays: needs --peer".into()))?;
    if !e.t.published.federation_enabled || !p.published.federation_enabled {
        skip!("conversations across relays: the relay or its peer publishes federation.enabled = false");
    }
    lim(e.t)?;
    lim(p)?;
    Ok(p)
}

/// Waits until `a` reads on `t` entries of `conv` up to seq `n` at least; returns them.
fn wait_entries(t: &Target, a: &Agent, conv: &str, n: usize, what: &str) -> R<Vec<Value>> {
    let end = std::time::Instant::now() + std::time::Duration::from_millis(FED_WAIT_MS);
    loop {
        let r = get(t, a, &format!("/v1/conversations/{conv}"))?;
        if r.status == 200 {
            let es = entries(t, a, conv)?;
            if es.len() >= n {
                return Ok(es);
            }
        }
        if std::time::Instant::now() >= end {
            fail!(
                "{} never read {what} of conversation {conv} within {FED_WAIT_MS} ms (CONVO-15)",
                a.handle
            );
        }
        sleep_ms(100);
    }
}

/// Posts `sg` at `t`, a relay that holds a replica of `conv`: 201 with `conv` and no `seq`
/// (CONVO-16).
fn send_remote(t: &Target, sg: &Signed, conv: &str) -> R {
    let r = t.post_envelope(&sg.wire)?;
    r.expect_json(201)?;
    ensure!(
        r.str_member("result")? == "accepted" && r.str_member("conv")? == conv,
        "{}: expected 201 accepted with conv {conv}: {}",
        r.what,
        r.brief()
    );
    ensure!(
        r.member("seq").is_err(),
        "{}: a post in a conversation homed on another relay carries a seq; the home relay gives it (CONVO-16): {}",
        r.what,
        r.brief()
    );
    Ok(())
}

/// The two relays serve the same entries, byte for byte (CONVO-12), and the same head.
fn same_entries(t: &Target, a: &Agent, p: &Target, b: &Agent, conv: &str, n: usize) -> R {
    let here = wait_entries(t, a, conv, n, &format!("{n} entries"))?;
    let there = wait_entries(p, b, conv, n, &format!("{n} entries"))?;
    let w = |es: &[Value]| es.iter().map(canon::canonicalize).collect::<Vec<_>>();
    ensure!(
        w(&here) == w(&there),
        "the home relay and the replica serve different entries for {conv} (CONVO-12):\n{}\n{}",
        crate::http::quote(&canon::canonicalize(&Value::Array(here.clone()))),
        crate::http::quote(&canon::canonicalize(&Value::Array(there.clone())))
    );
    let (sa, sb) = (summary(t, a, conv)?, summary(p, b, conv)?);
    ensure!(
        sum_str(&sa, "head") == sum_str(&sb, "head") && !sum_str(&sa, "head").is_empty(),
        "the summaries' heads differ: {} and {} (CONVO-12, API-23)",
        sum_str(&sa, "head"),
        sum_str(&sb, "head")
    );
    Ok(())
}

fn fed_home(e: &Env<'_>) -> R {
    let t = e.t;
    let p = peer(e)?;
    let a = t.register("cfha")?;
    let b = p.register("cfhb")?;
    p.grant(&b, &a.handle, "message")?;
    let c = call(t, &a, &[&b.handle], "async");
    send_at(t, &c, &c.id, 1)?;
    let id = c.id.as_str();
    // The peer delivers the call from its replica, which names the relay as home.
    let got = p.wait_inbox(&b, FED_WAIT_MS, "the call", |v| {
        crate::target::env_str(v, "id") == Some(id)
    })?;
    ensure!(
        canon::canonicalize(&got) == c.wire,
        "the peer serves the call differently from what was signed (ENV-18)"
    );
    wait_entries(p, &b, id, 1, "the call")?;
    let sum = summary(p, &b, id)?;
    ensure!(
        sum_str(&sum, "home") == t.host.as_str(),
        "the peer's summary names home {:?}, expected the relay under test {} (CONVO-12)",
        sum_str(&sum, "home"),
        t.host
    );
    // b answers and posts through its own relay; the relay under test sequences them.
    send_remote(p, &act(p, &b, id, &a.handle, "accept"), id)?;
    let end = std::time::Instant::now() + std::time::Duration::from_millis(FED_WAIT_MS);
    while part_state(&summary(t, &a, id)?, &b.handle).map(|x| x.0) != Some("joined".into()) {
        if std::time::Instant::now() >= end {
            fail!("the peer's agent never joined at the home relay (CONVO-16)");
        }
        sleep_ms(100);
    }
    let pa = post(t, &a, id, &[&b.handle]);
    send_at(t, &pa, id, 3)?;
    expect_status_seq(t, &a, &pa.id, id, Some(3))?;
    let pb = post(p, &b, id, &[&a.handle]);
    send_remote(p, &pb, id)?;
    t.wait_inbox(&a, FED_WAIT_MS, "the peer's agent's post", |v| {
        crate::target::env_str(v, "id") == Some(pb.id.as_str())
    })?;
    let es = wait_entries(t, &a, id, 4, "the peer's agent's post")?;
    ensure!(
        entry_env_id(&es[3]) == Some(pb.id.as_str()),
        "entry 4 is not the peer's agent's post (CONVO-16)"
    );
    same_entries(t, &a, p, &b, id, 4)
}

fn fed_replica(e: &Env<'_>) -> R {
    let t = e.t;
    let p = peer(e)?;
    let a = t.register("cfra")?;
    let b = p.register("cfrb")?;
    t.grant(&a, &b.handle, "message")?;
    let c = call(p, &b, &[&a.handle], "async");
    send_at(p, &c, &c.id, 1)?;
    let id = c.id.as_str();
    let got = t.wait_inbox(&a, FED_WAIT_MS, "a peer's agent's call", |v| {
        crate::target::env_str(v, "id") == Some(id)
    })?;
    ensure!(
        canon::canonicalize(&got) == c.wire,
        "the relay serves the call differently from what was signed (ENV-18)"
    );
    let es = wait_entries(t, &a, id, 1, "the call")?;
    ensure!(
        entry_env_id(&es[0]) == Some(id),
        "entry 1 of the replica is not the call"
    );
    let sum = expect_part(t, &a, id, &a.handle, "ringing", None)?;
    ensure!(
        sum_str(&sum, "home") == p.host.as_str(),
        "the summary names home {:?}, expected the peer {} (CONVO-12)",
        sum_str(&sum, "home"),
        p.host
    );
    // A stranger to the conversation reads nothing of it here either (CONVO-10).
    let x = t.register("cfrx")?;
    get(t, &x, &format!("/v1/conversations/{id}"))?.expect_error(ErrorCode::NotFound)?;
    // a answers and posts through the relay under test, which forwards to the home relay.
    send_remote(t, &act(t, &a, id, &b.handle, "accept"), id)?;
    wait_entries(p, &b, id, 2, "the accept")?;
    send_at(p, &post(p, &b, id, &[&a.handle]), id, 3)?;
    let pa = post(t, &a, id, &[&b.handle]);
    send_remote(t, &pa, id)?;
    p.wait_inbox(&b, FED_WAIT_MS, "the relay's agent's post", |v| {
        crate::target::env_str(v, "id") == Some(pa.id.as_str())
    })?;
    same_entries(t, &a, p, &b, id, 4)?;
    // The entry came back numbered: the post's status shows where it stands.
    expect_status_seq(t, &a, &pa.id, id, Some(4))?;
    expect_part(t, &a, id, &a.handle, "joined", None).map(|_| ())
}

/// API-13 of a conversation envelope names its conversation and seq.
fn expect_status_seq(t: &Target, a: &Agent, msg: &str, conv: &str, want: Option<i64>) -> R {
    let r = get(t, a, &format!("/v1/messages/{msg}"))?;
    let v = r.expect_json(200)?;
    let got_conv = at(v, &["conv"]).and_then(Value::as_str);
    let got_seq = at(v, &["seq"]).and_then(Value::as_i64);
    ensure!(
        got_conv == Some(conv) && got_seq == want,
        "{}: conv {got_conv:?} and seq {got_seq:?}, expected {conv} and {want:?} (API-13, CONVO-16): {}",
        r.what,
        r.brief()
    );
    Ok(())
}

fn fed_decline(e: &Env<'_>) -> R {
    let t = e.t;
    let p = peer(e)?;
    let a = t.register("cfda")?;
    let g = t.register("cfdg")?;
    let b = p.register("cfdb")?;
    // g granted b, a did not.
    t.grant(&g, &b.handle, "message")?;
    let c = call(p, &b, &[&a.handle, &g.handle], "async");
    send_at(p, &c, &c.id, 1)?;
    let id = c.id.as_str();
    let end = std::time::Instant::now() + std::time::Duration::from_millis(FED_WAIT_MS);
    let es = loop {
        let es = entries(p, &b, id)?;
        if es.iter().any(|x| {
            entry_event(x).is_some_and(|(k, h, _)| k == "declined" && h == a.handle.as_str())
        }) {
            break es;
        }
        if std::time::Instant::now() >= end {
            fail!("the home relay never recorded a decline for {}, who has not granted the caller (CONVO-14)", a.handle);
        }
        sleep_ms(100);
    };
    let ev = es
        .iter()
        .filter_map(entry_event)
        .find(|(k, h, _)| k == "declined" && h == a.handle.as_str())
        .unwrap_or_default();
    ensure!(
        ev.2 == "unavailable",
        "the decline for an invitee without a grant has reason {:?}, expected \"unavailable\" (CONVO-14)",
        ev.2
    );
    ensure!(
        !es.iter()
            .any(|x| entry_event(x)
                .is_some_and(|(k, h, _)| k == "declined" && h == g.handle.as_str())),
        "the invitee that granted the caller was declined for too (CONVO-14)"
    );
    t.wait_inbox(&g, FED_WAIT_MS, "the call", |v| {
        crate::target::env_str(v, "id") == Some(id)
    })?;
    ensure!(
        !t.inbox(&a)?
            .iter()
            .any(|(_, v)| crate::target::env_str(v, "id") == Some(id)),
        "the call reached the inbox of an invitee the relay declined for (CONVO-14)"
    );
    Ok(())
}
