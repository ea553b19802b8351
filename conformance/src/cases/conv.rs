//! Conversations (SPEC.md section 19): the descriptor's `conversations` (CONVO-11), calls and
//! their rules (CONVO-3, CONVO-5; the contact level `message`, TYPE-14), the answer of an accepted
//! conversation envelope (`conv`, `seq`), the entries a call makes (CONVO-4) and the summary of
//! API-24. The actions of CONVO-6 are in `conv_actions`, posts, turns and expiry in `conv_posts`,
//! reading in `conv_read`, ringing, `busy` and the open-conversation limit in `conv_live`.
//!
//! Section 19 reuses the ids CONVO-1 to CONVO-3 of section 1 (conformance); the cases cite
//! CONVO-2 and CONVO-3 for section 19's, and never CONVO-1, which the not-applicable list holds for
//! section 1's meaning: section 19's CONVO-1 (a call creates a conversation whose id is the
//! call's, with a topic, mode, participants, turn limit, expiry and state) is checked by
//! `conv.call` under CONVO-4, CONVO-5 and API-24.

use super::conv_kit::*;
use super::*;
use crate::case::{case, Env};

pub fn cases() -> Vec<Case> {
    use ErrorCode as E;
    vec![
        case("conv.descriptor", &["CONVO-11", "DESC-1"], "the descriptor's `conversations` has participants_max (at least 2), open_max, ring_ms, turns_max, ttl_max_ms, posts_per_min (positive integers) and closed_keep_ms (an integer >= 0); a relay that omits it refuses call and conv_action with tier_forbidden", descriptor),
        case("conv.call", &["CONVO-1", "CONVO-4", "CONVO-5", "CONVO-2", "API-24", "API-25", "CONVO-10", "TYPE-14"], "a call is 201 with conv = its id and seq 1, delivered to each invitee's inbox as sent, entry 1 (prev 64 zeros, hash per CONVO-4) that every participant reads; the summary has home, topic, mode, state ringing, the owner joined and the invitees ringing with their roles, seq and head, and the turn limit and expiry in force (the call's, else the relay's maxima)", call_case),
        case("conv.call-contact", &["CONVO-5", "TYPE-14", "CONTACT-4"], "a call needs the contact level message from every invitee: a stranger is not_contact, a read grant level_insufficient, one invitee without a grant refuses the whole call (no conversation, nothing delivered)", call_contact).codes(&[E::NotContact, E::LevelInsufficient, E::NotFound]),
        case("conv.call-rules", &["CONVO-5", "CONVO-3", "ENV-7", "ENV-16"], "a call's turns above conversations.turns_max, expires beyond ts + ttl_max_ms or not after ts are invalid_field at the member; ack_by and conv on a call are invalid_field; an invitee homed on a relay that is not an active peer is unknown_recipient; none of them creates a conversation", call_rules).codes(&[E::InvalidField, E::UnknownRecipient]),
        case("conv.participants-max", &["CONVO-5", "CONVO-6", "CONVO-2", "CONVO-11"], "a conversation fills up to participants_max participants, owner included (a call, then invites, as the sender's tier allows recipients); one more is invalid_field at payload.participants, in an invite and, where the tier allows that many recipients, in a call; a participant that declined still counts", participants_max).codes(&[E::InvalidField]),
    ]
}

fn descriptor(e: &Env<'_>) -> R {
    let t = e.t;
    let d = t.descriptor.as_ref().map_err(|m| Stop::Fail(m.clone()))?;
    let Some(c) = at(d, &["conversations"]) else {
        // CONVO-11: without conversations, calls and actions are tier_forbidden.
        let x = trio(t, "cvdn")?;
        let cl = call(t, &x.a, &[&x.b.handle], "async");
        refuse_conv(t, &cl, ErrorCode::TierForbidden, None)?;
        refuse_conv(
            t,
            &act(t, &x.b, &unknown_conv(t), &x.a.handle, "accept"),
            ErrorCode::TierForbidden,
            None,
        )?;
        return Ok(());
    };
    ensure!(
        c.as_object().is_some(),
        "the descriptor's `conversations` is not an object (CONVO-11)"
    );
    for k in LIMIT_MEMBERS {
        let v = at(c, &[k]).and_then(Value::as_i64);
        let min = if k == "closed_keep_ms" { 0 } else { 1 };
        ensure!(
            v.is_some_and(|n| n >= min),
            "the descriptor's conversations.{k} is {:?}, not an integer >= {min} (CONVO-11)",
            at(c, &[k])
        );
    }
    let l = lim(t)?;
    ensure!(
        l.participants_max >= 2,
        "conversations.participants_max is {}: a conversation has at least two participants (CONVO-1, CONVO-11)",
        l.participants_max
    );
    Ok(())
}

fn call_case(e: &Env<'_>) -> R {
    let t = e.t;
    let l = lim(t)?;
    let x = trio(t, "cvc")?;
    // Async, so that no invitation rings out while the case reads (that is conv.ring-out's).
    let o = call_obj(
        t,
        &x.a,
        &[(&x.b.handle, "member"), (&x.c.handle, "observer")],
        "async",
        None,
        None,
    );
    let c = t.sign(&o, &x.a.key);
    send_at(t, &c, &c.id, 1)?;
    // Delivered to each invitee's inbox like any envelope (CONVO-5).
    for who in [&x.b, &x.c] {
        let items = t.inbox(who)?;
        expect_delivered_as_sent(&items, &c, &who.handle)?;
    }
    // Entry 1 is the call; every participant, ringing ones and observers included, reads it.
    let mut head = String::new();
    for who in [&x.a, &x.b, &x.c] {
        let es = entries(t, who, &c.id)?;
        ensure!(
            es.len() == 1,
            "{} reads {} entries of a new conversation, expected 1 (the call, CONVO-4, CONVO-10)",
            who.handle,
            es.len()
        );
        expect_env_at(&es, 1, &c)?;
        head = at(&es[0], &["hash"])
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
    }
    let es = entries(t, &x.a, &c.id)?;
    let at1 = at(&es[0], &["at"]).and_then(Value::as_i64).unwrap_or(0);
    let sum = summary(t, &x.a, &c.id)?;
    let topic = at(&c.value, &["payload", "topic"])
        .and_then(Value::as_str)
        .unwrap_or("");
    for (k, want) in [
        ("id", c.id.as_str()),
        ("home", t.host.as_str()),
        ("topic", topic),
        ("mode", "async"),
        ("state", "ringing"),
        ("head", head.as_str()),
    ] {
        ensure!(
            sum_str(&sum, k) == want,
            "GET /v1/conversations/{}: {k} is {:?}, expected {want:?} (API-23, API-24, CONVO-1)",
            c.id,
            at(&sum, &[k])
        );
    }
    ensure!(
        at(&sum, &["reason"]).is_none(),
        "a ringing conversation's summary has a reason (API-23)"
    );
    let n = |k: &str| at(&sum, &[k]).and_then(Value::as_i64);
    ensure!(
        n("seq") == Some(1) && n("posts") == Some(0),
        "the summary of a new conversation has seq {:?} and posts {:?}, expected 1 and 0 (API-23)",
        n("seq"),
        n("posts")
    );
    ensure!(
        n("created") == Some(at1),
        "the summary's created {:?} is not entry 1's at {at1} (CONVO-1)",
        n("created")
    );
    ensure!(n("turns") == Some(l.turns_max), "a call without turns: the summary's turns is {:?}, expected conversations.turns_max {} (CONVO-1, API-24)", n("turns"), l.turns_max);
    let want_exp = at1 + l.ttl_max_ms;
    ensure!(n("expires") == Some(want_exp), "a call without expires: the summary's expires is {:?}, expected created + conversations.ttl_max_ms = {want_exp} (CONVO-1, API-24)", n("expires"));
    let parts = at(&sum, &["participants"])
        .and_then(Value::as_array)
        .map(<[Value]>::to_vec)
        .unwrap_or_default();
    let want = [
        (&x.a.handle, "owner", "joined"),
        (&x.b.handle, "member", "ringing"),
        (&x.c.handle, "observer", "ringing"),
    ];
    ensure!(
        parts.len() == 3,
        "the summary lists {} participants, expected 3 (CONVO-1)",
        parts.len()
    );
    for (p, (h, role, st)) in parts.iter().zip(want) {
        let g = |k: &str| at(p, &[k]).and_then(Value::as_str).unwrap_or("");
        ensure!(
            g("handle") == h.as_str() && g("role") == role && g("state") == st,
            "participant {}: {} {} {}, expected {h} {role} {st} (CONVO-1, CONVO-2)",
            g("handle"),
            g("handle"),
            g("role"),
            g("state")
        );
    }
    // An invitee sees the same summary.
    let sb = summary(t, &x.b, &c.id)?;
    ensure!(
        canon::canonicalize(&sb) == canon::canonicalize(&sum),
        "the invitee's summary differs from the owner's: {} (API-24)",
        crate::http::quote(&canon::canonicalize(&sb))
    );
    // The call's own turn limit and expiry are in force when given.
    let o = call_obj(
        t,
        &x.a,
        &[(&x.b.handle, "member")],
        "live",
        Some(5),
        Some(600_000),
    );
    let ts = o.get("ts").and_then(Value::as_i64).unwrap_or(0);
    let c2 = t.sign(&o, &x.a.key);
    send_at(t, &c2, &c2.id, 1)?;
    let s2 = summary(t, &x.a, &c2.id)?;
    let n2 = |k: &str| at(&s2, &[k]).and_then(Value::as_i64);
    ensure!(n2("turns") == Some(5) && n2("expires") == Some(ts + 600_000) && sum_str(&s2, "mode") == "live", "a live call with turns 5 and expires ts + 600000: the summary says turns {:?} expires {:?} mode {:?} (CONVO-1, API-24)", n2("turns"), n2("expires"), at(&s2, &["mode"]));
    Ok(())
}

fn call_contact(e: &Env<'_>) -> R {
    let t = e.t;
    lim(t)?;
    let a = t.register("cvka")?;
    let stranger = t.register("cvkb")?;
    let reader = t.register("cvkc")?;
    let friend = t.register("cvkd")?;
    t.grant(&reader, &a.handle, "read")?;
    t.grant(&friend, &a.handle, "message")?;
    refuse_conv(
        t,
        &call(t, &a, &[&stranger.handle], "async"),
        ErrorCode::NotContact,
        None,
    )?;
    refuse_conv(
        t,
        &call(t, &a, &[&reader.handle], "live"),
        ErrorCode::LevelInsufficient,
        None,
    )?;
    let mixed = call(t, &a, &[&friend.handle, &stranger.handle], "async");
    refuse_conv(t, &mixed, ErrorCode::NotContact, None)?;
    // Refused for all: no conversation, and the invitee that granted the level got nothing.
    get(t, &a, &format!("/v1/conversations/{}", mixed.id))?.expect_error(ErrorCode::NotFound)?;
    ensure!(
        find(&t.inbox(&friend)?, &mixed.id).is_none(),
        "a call refused with not_contact reached the invitee that had granted the level (INGEST-3)"
    );
    // With the grant it goes through.
    let ok = call(t, &a, &[&friend.handle], "async");
    send_at(t, &ok, &ok.id, 1)
}

fn call_rules(e: &Env<'_>) -> R {
    let t = e.t;
    let l = lim(t)?;
    let x = trio(t, "cvr")?;
    let b = [(&x.b.handle, "member")];
    let mut refused = Vec::new();
    let mut bad = |o: Object, code: ErrorCode, field: &str, what: &str| -> R {
        let sg = t.sign(&o, &x.a.key);
        at_step(what, refuse_conv(t, &sg, code, Some(field)).map(|_| ()))?;
        refused.push(sg.id);
        Ok(())
    };
    if l.turns_max < (1 << 50) {
        bad(
            call_obj(t, &x.a, &b, "async", Some(l.turns_max + 1), None),
            ErrorCode::InvalidField,
            "payload.turns",
            "turns of conversations.turns_max + 1",
        )?;
    }
    bad(
        call_obj(t, &x.a, &b, "async", None, Some(l.ttl_max_ms + 1)),
        ErrorCode::InvalidField,
        "payload.expires",
        "expires of ts + conversations.ttl_max_ms + 1",
    )?;
    bad(
        call_obj(t, &x.a, &b, "async", None, Some(0)),
        ErrorCode::InvalidField,
        "payload.expires",
        "expires equal to ts",
    )?;
    let o = call_obj(t, &x.a, &b, "async", None, None);
    let ts = o.get("ts").and_then(Value::as_i64).unwrap_or(0);
    bad(
        with(o, "ack_by", int(ts + 60_000)),
        ErrorCode::InvalidField,
        "ack_by",
        "a call with ack_by",
    )?;
    bad(
        with(
            call_obj(t, &x.a, &b, "async", None, None),
            "conv",
            s(&unknown_conv(t)),
        ),
        ErrorCode::InvalidField,
        "conv",
        "a call with conv",
    )?;
    // CONVO-3: every participant is registered on this relay or homed on an active peer.
    let elsewhere = Handle::parse(&format!(
        "@{}@other-relay.example",
        x.b.handle.name().as_str()
    ))
    .map_err(|e| Stop::Fail(format!("suite bug: {e}")))?;
    let sg = t.sign(
        &call_obj(t, &x.a, &[(&elsewhere, "member")], "async", None, None),
        &x.a.key,
    );
    at_step(
        "an invitee homed on a relay that is not a peer",
        refuse_conv(t, &sg, ErrorCode::UnknownRecipient, None).map(|_| ()),
    )?;
    refused.push(sg.id);
    for id in &refused {
        get(t, &x.a, &format!("/v1/conversations/{id}"))?.expect_error(ErrorCode::NotFound)?;
    }
    // Within the limits the same call is accepted.
    let ok = t.sign(
        &call_obj(
            t,
            &x.a,
            &b,
            "async",
            Some(l.turns_max.min(1 << 50)),
            Some(l.ttl_max_ms),
        ),
        &x.a.key,
    );
    send_at(t, &ok, &ok.id, 1)
}

fn participants_max(e: &Env<'_>) -> R {
    let t = e.t;
    let l = lim(t)?;
    let n = l.participants_max;
    // The sender's tier bounds the recipients of one envelope (TRUST-7): the invitees come in
    // a call and invites of at most that many.
    let per_env = t
        .published
        .tier0()
        .recipients_max
        .min(t.published.recipients_max);
    if n > 12 || per_env < 1 {
        skip!("conversations.participants_max is {n}: the case registers that many agents (at most 12)");
    }
    let a = t.register("cvpa")?;
    let mut others = Vec::new();
    for _ in 0..n {
        let o = t.register("cvpo")?;
        t.grant(&o, &a.handle, "message")?;
        others.push(o);
    }
    let hs: Vec<&Handle> = others.iter().map(|o| &o.handle).collect();
    let chunk = usize::try_from(per_env).unwrap_or(1);
    if hs.len() <= chunk {
        at_step(
            "a call of participants_max invitees",
            refuse_conv(
                t,
                &call(t, &a, &hs, "async"),
                ErrorCode::InvalidField,
                Some("payload.participants"),
            )
            .map(|_| ()),
        )?;
    }
    // participants_max - 1 invitees: the call, then invites.
    let room = &hs[..hs.len() - 1];
    let first = &room[..room.len().min(chunk)];
    let c = call(t, &a, first, "async");
    send_at(t, &c, &c.id, 1)?;
    let mut seq = 1;
    for group in room[first.len()..].chunks(chunk) {
        let parts: Vec<(&Handle, &str)> = group.iter().map(|h| (*h, "member")).collect();
        seq += 1;
        at_step(
            "an invite within participants_max",
            send_at(t, &invite(t, &a, &c.id, &parts), &c.id, seq),
        )?;
    }
    let last = &others[others.len() - 1];
    at_step(
        "an invite past participants_max",
        refuse_conv(
            t,
            &invite(t, &a, &c.id, &[(&last.handle, "member")]),
            ErrorCode::InvalidField,
            Some("payload.participants"),
        )
        .map(|_| ()),
    )?;
    // A declined participant still counts towards the maximum (CONVO-2).
    send_at(
        t,
        &act(t, &others[0], &c.id, &a.handle, "decline"),
        &c.id,
        seq + 1,
    )?;
    at_step(
        "an invite past participants_max after a decline",
        refuse_conv(
            t,
            &invite(t, &a, &c.id, &[(&last.handle, "member")]),
            ErrorCode::InvalidField,
            Some("payload.participants"),
        )
        .map(|_| ()),
    )
}
