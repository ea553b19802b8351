//! Building, sending and reading conversations (SPEC.md section 19) for the `conv.*` cases:
//! what the descriptor publishes (CONVO-11), calls, actions and posts signed by the suite's
//! agents, the answer of an accepted one (`conv`, `seq`), summaries, entry pages and the checks
//! every entry the relay serves is held to (CONVO-4: canonical form, `seq` without gaps, `prev`
//! linking each entry to the one before, `hash` of the conversation tag and the entry).

pub use super::profile_kit::at_step;
use super::*;
use formica_protocol::conversation::Entry;
use formica_protocol::envelope::EnvelopeLimits;

/// The conversation limits a relay publishes (CONVO-11).
#[derive(Debug, Clone)]
pub struct ConvLim {
    pub participants_max: i64,
    pub open_max: i64,
    pub ring_ms: i64,
    pub turns_max: i64,
    pub ttl_max_ms: i64,
    pub posts_per_min: i64,
    pub closed_keep_ms: i64,
}

/// The members of the descriptor's `conversations` (CONVO-11), in SPEC order.
pub const LIMIT_MEMBERS: [&str; 9] = [
    "participants_max",
    "open_max",
    "ring_ms",
    "turns_max",
    "ttl_max_ms",
    "posts_per_min",
    "closed_keep_ms",
    "remote_max",
    "remote_per_peer_max",
];

/// The published limits; a skip when the relay does not publish `conversations` (a relay that
/// does not implement conversations omits it, CONVO-11; `conv.descriptor` checks that case).
pub fn lim(t: &Target) -> R<ConvLim> {
    let d = t.descriptor.as_ref().ok();
    let Some(c) = d.and_then(|d| at(d, &["conversations"])) else {
        skip!("the relay publishes no `conversations` member: it does not implement conversations (CONVO-11)");
    };
    let n = |k: &str| at(c, &[k]).and_then(Value::as_i64).unwrap_or(0);
    Ok(ConvLim {
        participants_max: n("participants_max"),
        open_max: n("open_max"),
        ring_ms: n("ring_ms"),
        turns_max: n("turns_max"),
        ttl_max_ms: n("ttl_max_ms"),
        posts_per_min: n("posts_per_min"),
        closed_keep_ms: n("closed_keep_ms"),
    })
}

/// `{"handle", "role"}` of a participant list (CONVO-5).
pub fn part(h: &Handle, role: &str) -> Value {
    obj(vec![("handle", s(h.as_str())), ("role", s(role))])
}

/// A call from `a` to `invitees` ((handle, role) in order; `to` is their handles), unsigned.
pub fn call_obj(
    t: &Target,
    a: &Agent,
    invitees: &[(&Handle, &str)],
    mode: &str,
    turns: Option<i64>,
    expires_in: Option<i64>,
) -> Object {
    let to: Vec<&Handle> = invitees.iter().map(|(h, _)| *h).collect();
    let mut p = vec![
        ("topic", s(&t.uniq("topic"))),
        ("mode", s(mode)),
        (
            "participants",
            Value::Array(invitees.iter().map(|(h, r)| part(h, r)).collect()),
        ),
    ];
    let mut o = t.envelope(a, "call", &to, Value::Null);
    let ts = o.get("ts").and_then(Value::as_i64).unwrap_or(0);
    if let Some(n) = turns {
        p.push(("turns", int(n)));
    }
    if let Some(ms) = expires_in {
        p.push(("expires", int(ts + ms)));
    }
    o.insert("payload", obj(p));
    o
}

/// A signed call whose invitees are all members.
pub fn call(t: &Target, a: &Agent, to: &[&Handle], mode: &str) -> Signed {
    let inv: Vec<(&Handle, &str)> = to.iter().map(|h| (*h, "member")).collect();
    t.sign(&call_obj(t, a, &inv, mode, None, None), &a.key)
}

/// A `conv_action` of `who` in `conv`, addressed to `to`, unsigned.
pub fn action_obj(
    t: &Target,
    who: &Agent,
    conv: &str,
    to: &[&Handle],
    action: &str,
    reason: Option<&str>,
    parts: Option<&[(&Handle, &str)]>,
) -> Object {
    let mut p = vec![("action", s(action))];
    if let Some(r) = reason {
        p.push(("reason", s(r)));
    }
    if let Some(ps) = parts {
        p.push((
            "participants",
            Value::Array(ps.iter().map(|(h, r)| part(h, r)).collect()),
        ));
    }
    let mut o = t.envelope(who, "conv_action", to, obj(p));
    o.insert("conv", s(conv));
    o
}

/// A signed action addressed to the owner `owner` (accept, decline, leave, close).
pub fn act(t: &Target, who: &Agent, conv: &str, owner: &Handle, action: &str) -> Signed {
    t.sign(
        &action_obj(t, who, conv, &[owner], action, None, None),
        &who.key,
    )
}

/// A signed invite of `parts` by the owner `who`, addressed to exactly them.
pub fn invite(t: &Target, who: &Agent, conv: &str, parts: &[(&Handle, &str)]) -> Signed {
    let to: Vec<&Handle> = parts.iter().map(|(h, _)| *h).collect();
    t.sign(
        &action_obj(t, who, conv, &to, "invite", None, Some(parts)),
        &who.key,
    )
}

/// A post: a `message` with `conv` and a unique text, from `who` to `to`.
pub fn post(t: &Target, who: &Agent, conv: &str, to: &[&Handle]) -> Signed {
    let mut o = t.envelope(who, "message", to, text(t));
    o.insert("conv", s(conv));
    t.sign(&o, &who.key)
}

/// Posts `sg`, requires 201 `accepted` with its id, a 64-hex `conv` and an integer `seq`
/// (answers of CONVO-5, CONVO-6, CONVO-8), and returns `seq`.
pub fn send_conv(t: &Target, sg: &Signed, conv: Option<&str>) -> R<i64> {
    let r = t.post_envelope(&sg.wire)?;
    r.expect_json(201)?;
    ensure!(
        r.str_member("result")? == "accepted" && r.str_member("id")? == sg.id,
        "{}: expected 201 accepted with id {}: {}",
        r.what,
        sg.id,
        r.brief()
    );
    let want = conv.unwrap_or(sg.id.as_str());
    let got = r.str_member("conv")?;
    ensure!(
        got == want,
        "{}: `conv` {got:?}, expected the conversation's id {want} (a call's own id for a call, CONVO-1, CONVO-4)",
        r.what
    );
    let seq = r.int_member("seq")?;
    ensure!(
        seq >= 1,
        "{}: `seq` {seq} is not a sequence number (CONVO-4)",
        r.what
    );
    Ok(seq)
}

/// Posts `sg`, waiting out `rate_limited` answers (the sender's tier rate, TRUST-7: a token
/// bucket whose burst may be smaller than a case's run of envelopes), at most a minute in all.
pub fn post_patiently(t: &Target, sg: &Signed) -> R<Resp> {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let r = t.post_envelope(&sg.wire)?;
        if r.status != 429 || r.code() != Some("rate_limited") || std::time::Instant::now() >= end {
            return Ok(r);
        }
        let wait = r
            .error_member("retry_after_s")
            .and_then(Value::as_i64)
            .unwrap_or(1)
            .clamp(1, 10);
        sleep_ms(1000 * wait as u64);
    }
}

/// Like [`send_at`], waiting out the sender's tier rate ([`post_patiently`]).
pub fn send_patiently(t: &Target, sg: &Signed, conv: &str, want: i64) -> R {
    let r = post_patiently(t, sg)?;
    r.expect_json(201)?;
    let seq = r.int_member("seq")?;
    ensure!(
        r.str_member("conv")? == conv && seq == want,
        "{}: conv {:?} seq {seq}, expected {conv} and {want} (CONVO-4)",
        r.what,
        r.str_member("conv")?
    );
    Ok(())
}

/// Sends `sg` and requires the conversation seq `want`.
pub fn send_at(t: &Target, sg: &Signed, conv: &str, want: i64) -> R {
    let seq = send_conv(t, sg, Some(conv))?;
    ensure!(
        seq == want,
        "POST /v1/envelopes ({}): entry seq {seq}, expected {want}: seqs follow each other without gaps (CONVO-4)",
        env_type(&sg.value)
    );
    Ok(())
}

/// The type (and action) of an envelope, for messages.
pub fn env_type(v: &Value) -> String {
    let ty = crate::target::env_str(v, "type").unwrap_or("?");
    match crate::target::payload_str(v, "action") {
        Some(a) => format!("{ty} {a}"),
        None => ty.to_owned(),
    }
}

/// A refusal of `sg` with `code` (and `field`).
pub fn refuse_conv(t: &Target, sg: &Signed, code: ErrorCode, field: Option<&str>) -> R<Resp> {
    let r = t.post_envelope(&sg.wire)?;
    match field {
        Some(f) => r.expect_error_field(code, f)?,
        None => r.expect_error(code)?,
    };
    Ok(r)
}

/// A refusal `conversation_closed` (or `turn_limit_reached`) whose `reason` is `reason`.
pub fn refuse_closed(t: &Target, sg: &Signed, code: ErrorCode, reason: &str) -> R {
    let r = refuse_conv(t, sg, code, None)?;
    if code == ErrorCode::ConversationClosed {
        let got = r.error_member("reason").and_then(Value::as_str);
        ensure!(
            got == Some(reason),
            "{}: conversation_closed with reason {got:?}, expected {reason:?} (CONVO-6, CONVO-8): {}",
            r.what,
            r.brief()
        );
    }
    Ok(())
}

/// `GET path` as `a`.
pub fn get(t: &Target, a: &Agent, path: &str) -> R<Resp> {
    t.authed(a, "GET", path, b"")
}

/// The summary of `conv` as `a` sees it (API-24).
pub fn summary(t: &Target, a: &Agent, conv: &str) -> R<Value> {
    let r = get(t, a, &format!("/v1/conversations/{conv}"))?;
    Ok(r.expect_json(200)?.clone())
}

/// The state (and reason) of `h` in a summary.
pub fn part_state(sum: &Value, h: &Handle) -> Option<(String, Option<String>)> {
    at(sum, &["participants"])?
        .as_array()?
        .iter()
        .find(|p| at(p, &["handle"]).and_then(Value::as_str) == Some(h.as_str()))
        .map(|p| {
            let g = |k: &str| at(p, &[k]).and_then(Value::as_str).map(str::to_owned);
            (g("state").unwrap_or_default(), g("reason"))
        })
}

/// Fails unless `h` is in `state` (with `reason`, when given) in `a`'s view of `conv`.
pub fn expect_part(
    t: &Target,
    a: &Agent,
    conv: &str,
    h: &Handle,
    state: &str,
    reason: Option<&str>,
) -> R<Value> {
    let sum = summary(t, a, conv)?;
    let got = part_state(&sum, h);
    let ok = got
        .as_ref()
        .is_some_and(|(st, r)| st == state && reason.is_none_or(|w| r.as_deref() == Some(w)));
    ensure!(
        ok,
        "GET /v1/conversations/{conv}: participant {h} is {got:?}, expected {state:?} with reason {reason:?} (CONVO-2)"
    );
    Ok(sum)
}

/// A string member of a summary.
pub fn sum_str<'a>(sum: &'a Value, k: &str) -> &'a str {
    at(sum, &[k]).and_then(Value::as_str).unwrap_or("")
}

/// Fails unless the conversation's `state` (and `reason`) is as given.
pub fn expect_state(sum: &Value, state: &str, reason: Option<&str>) -> R {
    let (st, rs) = (
        sum_str(sum, "state"),
        at(sum, &["reason"]).and_then(Value::as_str),
    );
    ensure!(
        st == state && rs == reason,
        "the conversation's state is {st:?} with reason {rs:?}, expected {state:?} with {reason:?} (CONVO-1, API-24)"
    );
    Ok(())
}

/// One page of entries: `GET /v1/conversations/{conv}/entries?{query}` as `a`.
pub fn page(t: &Target, a: &Agent, conv: &str, query: &str) -> R<Resp> {
    if query.is_empty() {
        return get(t, a, &format!("/v1/conversations/{conv}/entries"));
    }
    get(t, a, &format!("/v1/conversations/{conv}/entries?{query}"))
}

/// The entries of a page answer and its `next`.
pub fn page_items(r: &Resp) -> R<(Vec<Value>, i64)> {
    r.expect_json(200)?;
    let items = r
        .member("entries")?
        .as_array()
        .ok_or_else(|| Stop::Fail(format!("{}: `entries` is not an array (API-25)", r.what)))?
        .to_vec();
    let next = r.int_member("next")?;
    Ok((items, next))
}

/// Every entry `a` may read after `after`, following `next` (API-25), each checked against the
/// one before it (CONVO-4).
pub fn entries_after(t: &Target, a: &Agent, conv: &str, after: i64) -> R<Vec<Value>> {
    let mut out: Vec<Value> = Vec::new();
    let mut cur = after;
    for _ in 0..200 {
        let r = page(t, a, conv, &format!("after={cur}"))?;
        let (items, next) = page_items(&r)?;
        expect_raw_entries(&r, &items)?;
        if items.is_empty() {
            ensure!(
                next == cur,
                "{}: an empty page with next {next}, expected the after it was asked for, {cur} (API-25)",
                r.what
            );
            return Ok(out);
        }
        out.extend(items);
        let last = entry_seq(out.last().unwrap_or(&Value::Null));
        ensure!(
            next == last,
            "{}: next is {next}, expected the seq of the page's last entry, {last} (API-25)",
            r.what
        );
        cur = next;
    }
    fail!("GET /v1/conversations/{conv}/entries: more than 200 pages")
}

/// Every entry `a` may read, from the start, checked as a chain from seq 1.
pub fn entries(t: &Target, a: &Agent, conv: &str) -> R<Vec<Value>> {
    let es = entries_after(t, a, conv, 0)?;
    check_chain(&es, conv, None)?;
    Ok(es)
}

/// Each entry of a page is served in canonical form (HTTP-3, CONVO-4).
pub fn expect_raw_entries(r: &Resp, items: &[Value]) -> R {
    for e in items {
        expect_raw_contains(r, &canon::canonicalize(e), "an entry")?;
    }
    Ok(())
}

/// The seq of an entry (0 when it has none).
pub fn entry_seq(e: &Value) -> i64 {
    at(e, &["seq"]).and_then(Value::as_i64).unwrap_or(0)
}

/// The envelope id of an entry, if it holds an envelope.
pub fn entry_env_id(e: &Value) -> Option<&str> {
    at(e, &["envelope", "id"]).and_then(Value::as_str)
}

/// The event of an entry, as (kind, handle, reason).
pub fn entry_event(e: &Value) -> Option<(String, String, String)> {
    let ev = at(e, &["event"])?;
    let g = |k: &str| {
        at(ev, &[k])
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    Some((g("kind"), g("handle"), g("reason")))
}

/// CONVO-4 for one entry: it reads (the protocol crate's reader: members, exactly one of
/// `envelope` and `event`, the envelope's id) and its `hash` is BLAKE3 of the conversation tag
/// and its canonical form without `hash`, recomputed here from the value served.
pub fn check_entry(e: &Value, conv: &str) -> R {
    let seq = entry_seq(e);
    Entry::from_value(e, &EnvelopeLimits::default()).map_err(|err| {
        Stop::Fail(format!(
            "entry {seq} of {conv} does not read as an entry ({}: {err}) (CONVO-4): {}",
            err.code.as_str(),
            crate::http::quote(&canon::canonicalize(e))
        ))
    })?;
    let o = e
        .as_object()
        .ok_or_else(|| Stop::Fail("an entry is not an object".into()))?;
    let mut input = Domain::Conversation.tag().to_vec();
    canon::write_object(o, Some(&["hash"]), &mut input);
    let want = formica_protocol::hex::encode(blake3::hash(&input).as_bytes());
    let got = o.get("hash").and_then(Value::as_str).unwrap_or("");
    ensure!(
        got == want,
        "entry {seq} of {conv}: hash {got}, but BLAKE3 of the conversation tag and the entry is {want} (CONVO-4)"
    );
    ensure!(
        o.get("conv").and_then(Value::as_str) == Some(conv),
        "entry {seq}: conv {:?}, expected {conv} (CONVO-4)",
        o.get("conv")
    );
    Ok(())
}

/// CONVO-4 for a run of entries: each reads and hashes, seqs follow `prev_seq` + 1 on without
/// gaps, each `prev` is the hash of the entry before (64 zeros for seq 1); `prev` is the hash of
/// the entry before the first, when it does not start at seq 1.
pub fn check_chain(es: &[Value], conv: &str, prev: Option<(&str, i64)>) -> R {
    let zeros = "0".repeat(64);
    let (mut want_prev, mut want_seq) = match prev {
        Some((h, seq)) => (h.to_owned(), seq + 1),
        None => (zeros, 1),
    };
    for e in es {
        check_entry(e, conv)?;
        let seq = entry_seq(e);
        ensure!(
            seq == want_seq,
            "entries of {conv}: seq {seq} where {want_seq} was due: no gaps, no repeats (CONVO-4, CONVO-10)"
        );
        let p = at(e, &["prev"]).and_then(Value::as_str).unwrap_or("");
        ensure!(
            p == want_prev,
            "entry {seq} of {conv}: prev {p}, expected the hash of entry {} ({want_prev}) (CONVO-4)",
            seq - 1
        );
        want_prev = at(e, &["hash"])
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        want_seq += 1;
    }
    Ok(())
}

/// Fails unless entry `seq` of `es` holds envelope `sg`, served exactly as sent (ENV-15, ENV-18).
pub fn expect_env_at(es: &[Value], seq: i64, sg: &Signed) -> R {
    let e = es
        .iter()
        .find(|e| entry_seq(e) == seq)
        .ok_or_else(|| Stop::Fail(format!("no entry {seq} among {} entries", es.len())))?;
    let env = at(e, &["envelope"]).ok_or_else(|| {
        Stop::Fail(format!(
            "entry {seq} holds no envelope, expected the {} {} (CONVO-4): {}",
            env_type(&sg.value),
            sg.id,
            crate::http::quote(&canon::canonicalize(e))
        ))
    })?;
    ensure!(
        canon::canonicalize(env) == sg.wire,
        "entry {seq} holds {}, not the {} as sent, {} (CONVO-4, ENV-15)",
        crate::http::quote(&canon::canonicalize(env)),
        env_type(&sg.value),
        sg.id
    );
    Ok(())
}

/// Fails unless entry `seq` of `es` is the event `kind` (with `handle`, `reason` when given).
pub fn expect_event_at(
    es: &[Value],
    seq: i64,
    kind: &str,
    handle: Option<&Handle>,
    reason: Option<&str>,
) -> R {
    let e = es.iter().find(|e| entry_seq(e) == seq);
    let got = e.and_then(entry_event);
    let ok = got.as_ref().is_some_and(|(k, h, r)| {
        k == kind && handle.is_none_or(|w| h == w.as_str()) && reason.is_none_or(|w| r == w)
    });
    ensure!(
        ok,
        "entry {seq}: expected the event {kind:?} (handle {:?}, reason {reason:?}), found {} (CONVO-4)",
        handle.map(Handle::as_str),
        e.map(|e| crate::http::quote(&canon::canonicalize(e)))
            .unwrap_or_else(|| format!("no entry {seq} among {}", es.len()))
    );
    Ok(())
}

/// Three agents of this relay: `a` calls, `b` and `c` granted `a` the level `message`.
#[derive(Debug)]
pub struct Trio {
    pub a: Agent,
    pub b: Agent,
    pub c: Agent,
}

pub fn trio(t: &Target, tag: &str) -> R<Trio> {
    let a = t.register(&format!("{tag}a"))?;
    let b = t.register(&format!("{tag}b"))?;
    let c = t.register(&format!("{tag}c"))?;
    t.grant(&b, &a.handle, "message")?;
    t.grant(&c, &a.handle, "message")?;
    Ok(Trio { a, b, c })
}

/// A live call of `x.a` to `x.b` and `x.c` (members), accepted by `x.b`: (conv id, call).
pub fn started(t: &Target, x: &Trio, mode: &str) -> R<(String, Signed)> {
    let c = call(t, &x.a, &[&x.b.handle, &x.c.handle], mode);
    send_at(t, &c, &c.id, 1)?;
    send_at(t, &act(t, &x.b, &c.id, &x.a.handle, "accept"), &c.id, 2)?;
    Ok((c.id.clone(), c))
}

/// A conversation id nobody called: 64 hex characters.
pub fn unknown_conv(t: &Target) -> String {
    formica_protocol::hex::encode(blake3::hash(t.uniq("no such call").as_bytes()).as_bytes())
}

/// Polls `a`'s entries of `conv` until `pred` holds, for at most `within_ms`.
pub fn wait_entries(
    t: &Target,
    a: &Agent,
    conv: &str,
    within_ms: u64,
    what: &str,
    pred: impl Fn(&[Value]) -> bool,
) -> R<Vec<Value>> {
    let end = std::time::Instant::now() + std::time::Duration::from_millis(within_ms);
    loop {
        let es = entries(t, a, conv)?;
        if pred(&es) {
            return Ok(es);
        }
        if std::time::Instant::now() >= end {
            fail!(
                "conversation {conv}: {what} did not happen within {within_ms} ms; entries: {}",
                es.len()
            );
        }
        sleep_ms(100);
    }
}
