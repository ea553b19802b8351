//! Posts in conversations (CONVO-8): who may post and to whom, `conv` only on the types that
//! belong to a conversation, no contact grant needed, gap-free `seq`, delivery to the `to`
//! inboxes; acks of posts are ordinary acks and not entries (ACK-3); the turn limit and expiry
//! (CONVO-9); the per-conversation post rate (`conversations.posts_per_min`).

use super::conv_kit::*;
use super::*;
use crate::case::{case, Env};

pub fn cases() -> Vec<Case> {
    use ErrorCode as E;
    vec![
        case("conv.posts", &["CONVO-8", "CONVO-4", "CONTACT-1", "ENV-16"], "joined owners and members post to other joined participants with no contact grant; each post is 201 with the next seq (no gaps), the next entry as sent, and in its recipients' inboxes; a ringing sender or recipient, the sender itself, a non-participant in to and a stranger are not_participant; conv on an ack or a contact_request, or not 64 hex, is invalid_field (conv)", posts).codes(&[E::NotParticipant, E::InvalidField]),
        case("conv.post-acks", &["CONVO-8", "ACK-3", "DELIV-1"], "a post asking for an ack is acked with an ordinary ack (no conv): accepted, the delivery is acked, and the ack is not an entry", post_acks),
        case("conv.turn-limit", &["CONVO-9", "CONVO-4", "CONVO-8"], "the post that reaches the call's turn limit is accepted and followed at once by the event `closed` with reason turn_limit; later posts are turn_limit_reached, actions conversation_closed with reason turn_limit", turn_limit).codes(&[E::TurnLimitReached, E::ConversationClosed]),
        case("conv.expiry", &["CONVO-9", "CONVO-6", "CONVO-8", "CONVO-4"], "once the expiry of the call has passed, posts and actions are conversation_closed with reason expired (even before the event), and the relay appends the event `closed` with reason expired within the deadline check", expiry).codes(&[E::ConversationClosed]),
        case("conv.post-rate", &["CONVO-8", "CONVO-11"], "a conversation takes conversations.posts_per_min posts a minute, from all its participants together; the next is rate_limited with retry_after_s", post_rate).codes(&[E::RateLimited]),
    ]
}

fn posts(e: &Env<'_>) -> R {
    let t = e.t;
    lim(t)?;
    let x = trio(t, "cvp")?;
    let st = t.register("cvps")?;
    let c = call(t, &x.a, &[&x.b.handle, &x.c.handle], "async");
    send_at(t, &c, &c.id, 1)?;
    let id = c.id.as_str();
    at_step(
        "a post by a ringing invitee",
        refuse_conv(
            t,
            &post(t, &x.b, id, &[&x.a.handle]),
            ErrorCode::NotParticipant,
            None,
        )
        .map(|_| ()),
    )?;
    send_at(t, &act(t, &x.b, id, &x.a.handle, "accept"), id, 2)?;
    at_step(
        "a post to a ringing invitee",
        refuse_conv(
            t,
            &post(t, &x.a, id, &[&x.c.handle]),
            ErrorCode::NotParticipant,
            Some("to"),
        )
        .map(|_| ()),
    )?;
    at_step(
        "a post to a joined member and a non-participant",
        refuse_conv(
            t,
            &post(t, &x.a, id, &[&x.b.handle, &st.handle]),
            ErrorCode::NotParticipant,
            Some("to"),
        )
        .map(|_| ()),
    )?;
    at_step(
        "a post to the sender itself",
        refuse_conv(
            t,
            &post(t, &x.a, id, &[&x.a.handle]),
            ErrorCode::NotParticipant,
            Some("to"),
        )
        .map(|_| ()),
    )?;
    at_step(
        "a post by a non-participant",
        refuse_conv(
            t,
            &post(t, &st, id, &[&x.a.handle]),
            ErrorCode::NotParticipant,
            None,
        )
        .map(|_| ()),
    )?;
    at_step(
        "a post to an unknown conversation",
        refuse_conv(
            t,
            &post(t, &x.a, &unknown_conv(t), &[&x.b.handle]),
            ErrorCode::NotParticipant,
            None,
        )
        .map(|_| ()),
    )?;
    let p1 = post(t, &x.a, id, &[&x.b.handle]);
    send_at(t, &p1, id, 3)?;
    // a granted b no level: posts need no contact grant (CONTACT-1, TYPE-14).
    let p2 = post(t, &x.b, id, &[&x.a.handle]);
    send_at(t, &p2, id, 4)?;
    let mut tr = t.envelope(
        &x.b,
        "task_request",
        &[&x.a.handle],
        obj(vec![("task", s("review"))]),
    );
    tr.insert("conv", s(id));
    let p3 = t.sign(&tr, &x.b.key);
    send_at(t, &p3, id, 5)?;
    expect_delivered_as_sent(&t.inbox(&x.b)?, &p1, &x.b.handle)?;
    let inbox_a = t.inbox(&x.a)?;
    expect_delivered_as_sent(&inbox_a, &p2, &x.a.handle)?;
    expect_delivered_as_sent(&inbox_a, &p3, &x.a.handle)?;
    ensure!(
        find(&t.inbox(&x.c)?, &p1.id).is_none(),
        "a post to b reached c's inbox: a post is delivered to its `to` (CONVO-8)"
    );
    // Every participant reads every post, the ringing invitee included (CONVO-10).
    let es = entries(t, &x.c, id)?;
    ensure!(
        es.len() == 5,
        "{} entries after a call, an accept and three posts, expected 5 (CONVO-4)",
        es.len()
    );
    for (seq, p) in [(3, &p1), (4, &p2), (5, &p3)] {
        expect_env_at(&es, seq, p)?;
    }
    let sum = summary(t, &x.a, id)?;
    let n = |k: &str| at(&sum, &[k]).and_then(Value::as_i64);
    ensure!(
        n("posts") == Some(3) && n("seq") == Some(5),
        "the summary says posts {:?} seq {:?}, expected 3 and 5 (API-23)",
        n("posts"),
        n("seq")
    );
    ensure!(
        sum_str(&sum, "head") == at(&es[4], &["hash"]).and_then(Value::as_str).unwrap_or(""),
        "the summary's head is not the last entry's hash (API-23)"
    );
    // `conv` only on the types that belong to a conversation (ENV-16 step 16), and well formed.
    let mut k = t.envelope(
        &x.b,
        "ack",
        &[&x.a.handle],
        obj(vec![("msg", s(&p2.id)), ("status", s("received"))]),
    );
    k.insert("conv", s(id));
    at_step(
        "an ack with conv",
        refuse_conv(
            t,
            &t.sign(&k, &x.b.key),
            ErrorCode::InvalidField,
            Some("conv"),
        )
        .map(|_| ()),
    )?;
    let mut cr = t.envelope(
        &x.a,
        "contact_request",
        &[&x.b.handle],
        obj(vec![("level", s("message"))]),
    );
    cr.insert("conv", s(id));
    at_step(
        "a contact_request with conv",
        refuse_conv(
            t,
            &t.sign(&cr, &x.a.key),
            ErrorCode::InvalidField,
            Some("conv"),
        )
        .map(|_| ()),
    )?;
    let mut short = t.envelope(&x.a, "message", &[&x.b.handle], text(t));
    short.insert("conv", s(&id[..63]));
    at_step(
        "conv of 63 hex characters",
        refuse_conv(
            t,
            &t.sign(&short, &x.a.key),
            ErrorCode::InvalidField,
            Some("conv"),
        )
        .map(|_| ()),
    )?;
    let after = entries(t, &x.a, id)?;
    ensure!(
        after.len() == 5,
        "refused posts became entries ({} entries, expected 5)",
        after.len()
    );
    Ok(())
}

fn post_acks(e: &Env<'_>) -> R {
    let t = e.t;
    lim(t)?;
    let x = trio(t, "cvk")?;
    let (id, _) = started(t, &x, "async")?;
    let mut o = t.envelope(&x.a, "message", &[&x.b.handle], text(t));
    let ts = o.get("ts").and_then(Value::as_i64).unwrap_or(0);
    o.insert("ack_by", int(ts + 60_000));
    o.insert("conv", s(&id));
    let p = t.sign(&o, &x.a.key);
    send_at(t, &p, &id, 3)?;
    let k = ack(t, &x.b, &x.a.handle, &p.id, "processed");
    t.send_ok(&k)?;
    t.wait_delivery(&x.a, &p.id, &x.b.handle, "acked", 3000)?;
    let es = entries(t, &x.a, &id)?;
    ensure!(es.len() == 3, "after the ack of a post the conversation has {} entries, expected 3: acks are not entries (CONVO-8)", es.len());
    Ok(())
}

fn turn_limit(e: &Env<'_>) -> R {
    let t = e.t;
    lim(t)?;
    let x = trio(t, "cvt")?;
    let c = t.sign(
        &call_obj(t, &x.a, &[(&x.b.handle, "member")], "async", Some(2), None),
        &x.a.key,
    );
    send_at(t, &c, &c.id, 1)?;
    let id = c.id.as_str();
    send_at(t, &act(t, &x.b, id, &x.a.handle, "accept"), id, 2)?;
    send_at(t, &post(t, &x.a, id, &[&x.b.handle]), id, 3)?;
    let last = post(t, &x.b, id, &[&x.a.handle]);
    send_at(t, &last, id, 4)?;
    let es = entries(t, &x.a, id)?;
    ensure!(es.len() == 5, "after the post that reached the turn limit: {} entries, expected 5 (the post, then `closed`, CONVO-9)", es.len());
    expect_env_at(&es, 4, &last)?;
    expect_event_at(&es, 5, "closed", None, Some("turn_limit"))?;
    let sum = summary(t, &x.a, id)?;
    expect_state(&sum, "closed", Some("turn_limit"))?;
    ensure!(
        at(&sum, &["posts"]).and_then(Value::as_i64) == Some(2),
        "the summary's posts is {:?}, expected 2",
        at(&sum, &["posts"])
    );
    refuse_conv(
        t,
        &post(t, &x.a, id, &[&x.b.handle]),
        ErrorCode::TurnLimitReached,
        None,
    )?;
    refuse_closed(
        t,
        &act(t, &x.a, id, &x.a.handle, "close"),
        ErrorCode::ConversationClosed,
        "turn_limit",
    )?;
    refuse_closed(
        t,
        &act(t, &x.b, id, &x.a.handle, "leave"),
        ErrorCode::ConversationClosed,
        "turn_limit",
    )
}

fn expiry(e: &Env<'_>) -> R {
    let t = e.t;
    lim(t)?;
    let x = trio(t, "cve")?;
    let life = 2500;
    let o = call_obj(
        t,
        &x.a,
        &[(&x.b.handle, "member"), (&x.c.handle, "member")],
        "async",
        None,
        Some(life),
    );
    let expires = o.get("ts").and_then(Value::as_i64).unwrap_or(0) + life;
    let c = t.sign(&o, &x.a.key);
    send_at(t, &c, &c.id, 1)?;
    let id = c.id.as_str();
    send_at(t, &act(t, &x.b, id, &x.a.handle, "accept"), id, 2)?;
    let wait = expires + 300 - t.now();
    if wait > 0 {
        sleep_ms(wait as u64);
    }
    refuse_closed(
        t,
        &post(t, &x.a, id, &[&x.b.handle]),
        ErrorCode::ConversationClosed,
        "expired",
    )?;
    refuse_closed(
        t,
        &act(t, &x.c, id, &x.a.handle, "accept"),
        ErrorCode::ConversationClosed,
        "expired",
    )?;
    let es = wait_entries(
        t,
        &x.a,
        id,
        t.deadline_lag_ms(),
        "the event `closed` (expired)",
        |es| es.len() >= 3,
    )?;
    ensure!(
        es.len() == 3,
        "an expired conversation has {} entries, expected 3 (call, accept, `closed`)",
        es.len()
    );
    expect_event_at(&es, 3, "closed", None, Some("expired"))?;
    let at3 = at(&es[2], &["at"]).and_then(Value::as_i64).unwrap_or(0);
    ensure!(
        at3 > expires,
        "the `closed` (expired) event is at {at3}, not after the expiry {expires} (CONVO-9)"
    );
    expect_state(&summary(t, &x.a, id)?, "closed", Some("expired"))
}

fn post_rate(e: &Env<'_>) -> R {
    let t = e.t;
    let l = lim(t)?;
    let n = l.posts_per_min;
    let per_key = t.published.tier0().rate_per_min;
    if n > 120 || n / 2 > per_key || n + 1 >= l.turns_max {
        skip!("conversations.posts_per_min is {n} (tier 0 rate_per_min {per_key}, turns_max {}): two agents cannot post that many within a minute and the turn limit", l.turns_max);
    }
    let x = trio(t, "cvq")?;
    let (id, _) = started(t, &x, "async")?;
    // c joins and sends nothing else: its own envelope rate (TRUST-7) cannot be what refuses
    // its post at the end.
    send_at(t, &act(t, &x.c, &id, &x.a.handle, "accept"), &id, 3)?;
    let start = std::time::Instant::now();
    for k in 0..n {
        let (from, to) = if k % 2 == 0 {
            (&x.a, &x.b)
        } else {
            (&x.b, &x.a)
        };
        send_patiently(t, &post(t, from, &id, &[&to.handle]), &id, 4 + k)?;
    }
    if start.elapsed() > std::time::Duration::from_secs(45) {
        skip!(
            "posting {n} posts took {} s (the senders' own envelope rate), too close to a minute to tell the per-minute limit",
            start.elapsed().as_secs()
        );
    }
    let r = refuse_conv(
        t,
        &post(t, &x.c, &id, &[&x.a.handle]),
        ErrorCode::RateLimited,
        None,
    )?;
    ensure!(
        r.error_member("retry_after_s")
            .and_then(Value::as_i64)
            .is_some_and(|s| s >= 1),
        "{}: rate_limited without a positive retry_after_s (CONVO-8)",
        r.what
    );
    Ok(())
}
