//! Delivery states, acks, deadlines and receipts (DELIV-*, ACK-*, RCPT-*), and the message
//! status endpoint (API-13). Deadlines are short (1500 ms) and every wait is bounded by the
//! relay's published `ack.deadline_check_ms` plus a margin.

use super::*;
use crate::case::{case, Env};
use crate::target::{env_str, is_receipt, payload_str};

pub fn cases() -> Vec<Case> {
    use ErrorCode as E;
    vec![
        case("ack.flow", &["ACK-1", "ACK-3", "DELIV-1", "DELIV-3", "DELIV-5", "API-9", "API-13", "RCPT-1", "RCPT-2", "RCPT-3", "RCPT-4", "TYPE-7"], "accepted -> delivered (with a receipt) -> acked: the ack needs no grant, reaches the sender with an acked receipt; the recipient's page says the ack is pending, then acked", ack_flow),
        case("ack.statuses", &["ACK-2", "DELIV-2"], "received, processed and rejected all settle the delivery as acked with that ack_status", ack_statuses),
        case("ack.no-deadline", &["ACK-3", "RCPT-2"], "a message without ack_by can be acked; reading it makes no delivered receipt", ack_no_deadline),
        case("ack.before-read", &["DELIV-3", "ACK-3"], "an ack may settle a delivery that is still accepted", ack_before_read),
        case("ack.unknown-message", &["ACK-3"], "an ack of an unknown message is ack_forbidden", ack_unknown).codes(&[E::AckForbidden]),
        case("ack.not-recipient", &["ACK-3"], "an ack by an agent that is not a recipient is ack_forbidden", ack_not_recipient).codes(&[E::AckForbidden]),
        case("ack.wrong-to", &["ACK-3", "TYPE-7"], "an ack not addressed to the message's sender is invalid_field (to)", ack_wrong_to).codes(&[E::InvalidField]),
        case("ack.settled", &["ACK-3", "DELIV-2"], "a second ack is ack_settled and changes nothing", ack_settled).codes(&[E::AckSettled]),
        case("ack.timeout", &["ACK-4", "DELIV-1", "DELIV-2", "DELIV-3", "RCPT-1", "RCPT-2", "RCPT-3"], "a deadline that passes without an ack times the delivery out, with a timed_out receipt; a late ack is ack_settled; another message's later deadline is left alone", ack_timeout).codes(&[E::AckSettled]),
        case("ack.cascade", &["ACK-5", "INGEST-1"], "a task_request answering (corr) a task_request its sender received with ack_by may not ask for a later ack_by: deadline_after_parent with field ack_by and ack_by_max; the parent's deadline, an earlier one or none is accepted, as is a later one from an agent that did not receive the parent or for a parent without ack_by", ack_cascade).codes(&[E::DeadlineAfterParent]),
        case("deliv.per-recipient", &["DELIV-1", "DELIV-5"], "each recipient of one message has its own delivery state", per_recipient),
        case("rcpt.none-about-receipts", &["RCPT-2"], "reading receipts makes no receipts about them, and only the listed changes make receipts", no_receipt_about_receipts),
        case("status.access", &["API-13"], "only the sender may read a message's status; others, unknown and malformed ids are not_found", status_access).codes(&[E::NotFound]),
    ]
}

struct Trio {
    a: Agent,
    b: Agent,
    c: Agent,
}

/// `a` sends; `b` and `c` let `a` send messages.
fn trio(t: &Target, tag: &str) -> R<Trio> {
    let a = t.register(&format!("{tag}a"))?;
    let b = t.register(&format!("{tag}b"))?;
    let c = t.register(&format!("{tag}c"))?;
    t.grant(&b, &a.handle, "message")?;
    t.grant(&c, &a.handle, "message")?;
    Ok(Trio { a, b, c })
}

fn receipts_for(items: &[(String, Value)], id: &str) -> Vec<Value> {
    items
        .iter()
        .filter(|(_, e)| env_str(e, "type") == Some("receipt") && payload_str(e, "msg") == Some(id))
        .map(|(_, e)| e.clone())
        .collect()
}

/// The `ack` member of the first inbox page item of `a` holding envelope `id` (API-9).
fn page_ack(t: &Target, a: &Agent, id: &str) -> R<Option<Value>> {
    let r = t.authed(a, "GET", "/v1/inbox?after=0", b"")?;
    let v = r.expect_json(200)?;
    let items = at(v, &["items"]).and_then(Value::as_array).unwrap_or(&[]);
    let item = items
        .iter()
        .find(|i| at(i, &["envelope", "id"]) == Some(&s(id)))
        .ok_or_else(|| Stop::Fail(format!("{}: message {id} is not on the first page", r.what)))?;
    Ok(at(item, &["ack"]).cloned())
}

fn ack_flow(e: &Env<'_>) -> R {
    let t = e.t;
    let x = trio(t, "akf")?;
    let m = msg_ack(t, &x.a, &[&x.b.handle], 60_000);
    t.send_ok(&m)?;
    let st = t.status(&x.a, &m.id)?;
    let v = st.expect_json(200)?.clone();
    ensure!(
        at(&v, &["id"]) == Some(&s(&m.id)) && at(&v, &["type"]) == Some(&s("message")),
        "{}: {} (API-13)",
        st.what,
        st.brief()
    );
    let ack_by = m.value.as_object().and_then(|o| o.get("ack_by")).cloned();
    ensure!(
        at(&v, &["ack_by"]).cloned() == ack_by,
        "{}: ack_by {:?} (API-13)",
        st.what,
        at(&v, &["ack_by"])
    );
    let (s0, r0) = t.delivery(&x.a, &m.id, &x.b.handle)?;
    ensure!(
        s0 == "accepted",
        "a new message's delivery is {s0:?}, not accepted (DELIV-1)"
    );
    ensure!(
        at(&r0, &["ack"]).is_none(),
        "an accepted delivery carries `ack` (API-13)"
    );
    let pending = page_ack(t, &x.b, &m.id)?;
    ensure!(
        pending == Some(s("pending")),
        "the recipient's inbox page gives an unacked item with ack_by `ack` {pending:?}, not \"pending\" (API-9)"
    );
    t.wait_delivery(&x.a, &m.id, &x.b.handle, "delivered", 3000)?;
    let rd = t.wait_inbox(&x.a, 3000, "a delivered receipt", |v| {
        is_receipt(v, &m.id, "delivered")
    })?;
    t.verify_receipt(&rd)?;
    // The sender has granted the recipient nothing: acks need no grant (ACK-1).
    let k = ack(t, &x.b, &x.a.handle, &m.id, "processed");
    t.send_ok(&k)?;
    let v = t.wait_delivery(&x.a, &m.id, &x.b.handle, "acked", 3000)?;
    ensure!(
        at(&v, &["ack"]) == Some(&s(&k.id)) && at(&v, &["ack_status"]) == Some(&s("processed")),
        "the acked delivery reports ack {:?} ack_status {:?} (API-13, DELIV-1)",
        at(&v, &["ack"]),
        at(&v, &["ack_status"])
    );
    let acked = page_ack(t, &x.b, &m.id)?;
    ensure!(
        acked == Some(s("acked")),
        "the recipient's inbox page gives an item it acked `ack` {acked:?}, not \"acked\" (API-9)"
    );
    let items = t.inbox(&x.a)?;
    expect_delivered_as_sent(&items, &k, &x.a.handle)?;
    let ra = t.wait_inbox(&x.a, 3000, "an acked receipt", |v| {
        is_receipt(v, &m.id, "acked")
    })?;
    t.verify_receipt(&ra)?;
    ensure!(
        payload_str(&ra, "ack") == Some(k.id.as_str())
            && payload_str(&ra, "ack_status") == Some("processed"),
        "the acked receipt names ack {:?} status {:?} (RCPT-2, TYPE-8)",
        payload_str(&ra, "ack"),
        payload_str(&ra, "ack_status")
    );
    ensure!(
        payload_str(&ra, "recipient") == Some(x.b.handle.as_str()),
        "the acked receipt's recipient is {:?} (RCPT-3)",
        payload_str(&ra, "recipient")
    );
    let _ = x.c;
    Ok(())
}

fn ack_statuses(e: &Env<'_>) -> R {
    let t = e.t;
    let x = trio(t, "aks")?;
    for st in ["received", "processed", "rejected"] {
        let m = msg_ack(t, &x.a, &[&x.b.handle], 60_000);
        t.send_ok(&m)?;
        let k = ack(t, &x.b, &x.a.handle, &m.id, st);
        t.send_ok(&k)?;
        let v = t.wait_delivery(&x.a, &m.id, &x.b.handle, "acked", 3000)?;
        ensure!(
            at(&v, &["ack_status"]) == Some(&s(st)),
            "an ack with status {st} left ack_status {:?} (ACK-2)",
            at(&v, &["ack_status"])
        );
    }
    Ok(())
}

fn ack_no_deadline(e: &Env<'_>) -> R {
    let t = e.t;
    let x = trio(t, "akn")?;
    let m = msg(t, &x.a, &[&x.b.handle]);
    t.send_ok(&m)?;
    t.inbox(&x.b)?;
    t.wait_delivery(&x.a, &m.id, &x.b.handle, "delivered", 3000)?;
    sleep_ms(300);
    let rs = receipts_for(&t.inbox(&x.a)?, &m.id);
    ensure!(rs.is_empty(), "reading a message without ack_by produced {} receipt(s) (RCPT-2: delivered receipts only when ack_by is present)", rs.len());
    t.send_ok(&ack(t, &x.b, &x.a.handle, &m.id, "received"))?;
    t.wait_delivery(&x.a, &m.id, &x.b.handle, "acked", 3000)?;
    t.wait_inbox(&x.a, 3000, "an acked receipt", |v| {
        is_receipt(v, &m.id, "acked")
    })?;
    Ok(())
}

fn ack_before_read(e: &Env<'_>) -> R {
    let t = e.t;
    let x = trio(t, "akb")?;
    let m = msg_ack(t, &x.a, &[&x.b.handle], 60_000);
    t.send_ok(&m)?;
    t.send_ok(&ack(t, &x.b, &x.a.handle, &m.id, "received"))?;
    t.wait_delivery(&x.a, &m.id, &x.b.handle, "acked", 3000)?;
    // Reading now changes nothing: acked is terminal.
    t.inbox(&x.b)?;
    sleep_ms(300);
    let (st, _) = t.delivery(&x.a, &m.id, &x.b.handle)?;
    ensure!(
        st == "acked",
        "after the recipient read an acked message the delivery is {st:?} (DELIV-2)"
    );
    Ok(())
}

fn ack_unknown(e: &Env<'_>) -> R {
    let t = e.t;
    let x = trio(t, "aku")?;
    refuse(
        t,
        &ack(t, &x.b, &x.a.handle, &"ab".repeat(32), "received").wire,
        ErrorCode::AckForbidden,
    )?;
    Ok(())
}

fn ack_not_recipient(e: &Env<'_>) -> R {
    let t = e.t;
    let x = trio(t, "akr")?;
    let m = msg(t, &x.a, &[&x.b.handle]);
    t.send_ok(&m)?;
    refuse(
        t,
        &ack(t, &x.c, &x.a.handle, &m.id, "received").wire,
        ErrorCode::AckForbidden,
    )?;
    Ok(())
}

fn ack_wrong_to(e: &Env<'_>) -> R {
    let t = e.t;
    let x = trio(t, "akw")?;
    let m = msg(t, &x.a, &[&x.b.handle]);
    t.send_ok(&m)?;
    refuse_field(
        t,
        &ack(t, &x.b, &x.c.handle, &m.id, "received").wire,
        ErrorCode::InvalidField,
        "to",
    )?;
    Ok(())
}

fn ack_settled(e: &Env<'_>) -> R {
    let t = e.t;
    let x = trio(t, "akt")?;
    let m = msg(t, &x.a, &[&x.b.handle]);
    t.send_ok(&m)?;
    let k1 = ack(t, &x.b, &x.a.handle, &m.id, "received");
    t.send_ok(&k1)?;
    refuse(
        t,
        &ack(t, &x.b, &x.a.handle, &m.id, "processed").wire,
        ErrorCode::AckSettled,
    )?;
    let (st, v) = t.delivery(&x.a, &m.id, &x.b.handle)?;
    ensure!(
        st == "acked" && at(&v, &["ack"]) == Some(&s(&k1.id)),
        "after a refused second ack the delivery is {st:?} with ack {:?} (DELIV-2)",
        at(&v, &["ack"])
    );
    Ok(())
}

fn ack_timeout(e: &Env<'_>) -> R {
    let t = e.t;
    let x = trio(t, "ako")?;
    // A message whose deadline lies far beyond this case (one hour), to both recipients, sent
    // first: the deadline that passes must time out only its own message's delivery.
    let later = msg_ack(t, &x.a, &[&x.b.handle, &x.c.handle], 3_600_000);
    t.send_ok(&later)?;
    let m = msg_ack(t, &x.a, &[&x.b.handle], 1500);
    t.send_ok(&m)?;
    let lag = t.deadline_lag_ms();
    t.wait_delivery(&x.a, &m.id, &x.b.handle, "timed_out", 1500 + lag)
        .map_err(|err| match err {
            Stop::Fail(msg) => Stop::Fail(format!(
                "{msg}; the relay publishes ack.deadline_check_ms {:?} (ACK-4)",
                t.published.deadline_check_ms
            )),
            other => other,
        })?;
    let rc = t.wait_inbox(&x.a, 3000, "a timed_out receipt", |v| {
        is_receipt(v, &m.id, "timed_out")
    })?;
    t.verify_receipt(&rc)?;
    ensure!(
        payload_str(&rc, "recipient") == Some(x.b.handle.as_str()),
        "the timed_out receipt's recipient is {:?} (RCPT-3)",
        payload_str(&rc, "recipient")
    );
    ensure!(
        payload_str(&rc, "ack").is_none(),
        "a timed_out receipt carries `ack` (TYPE-8)"
    );
    refuse(
        t,
        &ack(t, &x.b, &x.a.handle, &m.id, "received").wire,
        ErrorCode::AckSettled,
    )?;
    // Reading after the timeout changes nothing (timed_out is terminal).
    t.inbox(&x.b)?;
    sleep_ms(300);
    let (st, _) = t.delivery(&x.a, &m.id, &x.b.handle)?;
    ensure!(
        st == "timed_out",
        "a timed-out delivery became {st:?} (DELIV-2)"
    );
    // One more deadline check later, the message with the later deadline is still pending for
    // both recipients (b's delivery is delivered by the read above, or still accepted if the
    // relay records reads late, DELIV-4), and no timed_out receipt names it (ACK-4, DELIV-3).
    let check_ms = t.published.deadline_check_ms.unwrap_or(1000).clamp(0, 5000);
    sleep_ms(u64::try_from(check_ms).unwrap_or(1000));
    for (who, allowed) in [
        (&x.b.handle, &["accepted", "delivered"][..]),
        (&x.c.handle, &["accepted"][..]),
    ] {
        let (st, _) = t.delivery(&x.a, &later.id, who)?;
        ensure!(
            allowed.contains(&st.as_str()),
            "the delivery to {who} of a message whose ack_by is an hour away is {st:?} after another message's deadline passed (ACK-4, DELIV-3)"
        );
    }
    ensure!(
        !t.inbox(&x.a)?
            .iter()
            .any(|(_, v)| is_receipt(v, &later.id, "timed_out")),
        "the sender received a timed_out receipt for the message whose deadline has not passed (ACK-4, RCPT-2)"
    );
    Ok(())
}

fn per_recipient(e: &Env<'_>) -> R {
    let t = e.t;
    let x = trio(t, "dpr")?;
    let m = msg_ack(t, &x.a, &[&x.b.handle, &x.c.handle], 60_000);
    t.send_ok(&m)?;
    t.send_ok(&ack(t, &x.b, &x.a.handle, &m.id, "processed"))?;
    t.wait_delivery(&x.a, &m.id, &x.b.handle, "acked", 3000)?;
    let (st, _) = t.delivery(&x.a, &m.id, &x.c.handle)?;
    ensure!(
        st == "accepted",
        "the other recipient's delivery is {st:?}, not accepted (DELIV-1: one state per recipient)"
    );
    t.inbox(&x.c)?;
    t.wait_delivery(&x.a, &m.id, &x.c.handle, "delivered", 3000)?;
    let (st, _) = t.delivery(&x.a, &m.id, &x.b.handle)?;
    ensure!(
        st == "acked",
        "the first recipient's delivery changed to {st:?} (DELIV-2)"
    );
    Ok(())
}

fn no_receipt_about_receipts(e: &Env<'_>) -> R {
    let t = e.t;
    let x = trio(t, "rnr")?;
    let m = msg_ack(t, &x.a, &[&x.b.handle], 60_000);
    t.send_ok(&m)?;
    t.inbox(&x.b)?;
    t.wait_inbox(&x.a, 3000, "a delivered receipt", |v| {
        is_receipt(v, &m.id, "delivered")
    })?;
    t.send_ok(&ack(t, &x.b, &x.a.handle, &m.id, "received"))?;
    t.wait_inbox(&x.a, 3000, "an acked receipt", |v| {
        is_receipt(v, &m.id, "acked")
    })?;
    // Read everything (the receipts included) twice, give the relay time to react, and count.
    t.inbox(&x.a)?;
    sleep_ms(500);
    let items = t.inbox(&x.a)?;
    let receipts: Vec<&Value> = items
        .iter()
        .map(|(_, e)| e)
        .filter(|e| env_str(e, "type") == Some("receipt"))
        .collect();
    ensure!(receipts.len() == 2, "the sender holds {} receipts, expected exactly delivered and acked (RCPT-2: none about receipts, no others)", receipts.len());
    for r in receipts {
        ensure!(
            payload_str(r, "msg") == Some(m.id.as_str()),
            "a receipt about {:?}, not about the message (RCPT-2)",
            payload_str(r, "msg")
        );
    }
    Ok(())
}

fn status_access(e: &Env<'_>) -> R {
    let t = e.t;
    let x = trio(t, "sta")?;
    let m = msg(t, &x.a, &[&x.b.handle]);
    t.send_ok(&m)?;
    let v = t.status(&x.a, &m.id)?.expect_json(200)?.clone();
    ensure!(
        at(&v, &["ack_by"]) == Some(&Value::Null),
        "a message without ack_by reports ack_by {:?}, not null (API-13)",
        at(&v, &["ack_by"])
    );
    ensure!(
        at(&v, &["ts"]).and_then(Value::as_i64)
            == m.value
                .as_object()
                .and_then(|o| o.get("ts"))
                .and_then(Value::as_i64),
        "status ts differs from the envelope's (API-13)"
    );
    let list = at(&v, &["recipients"])
        .and_then(Value::as_array)
        .unwrap_or(&[])
        .to_vec();
    ensure!(
        list.len() == 1,
        "status lists {} recipients (API-13)",
        list.len()
    );
    for k in ["handle", "status"] {
        ensure!(
            at(&list[0], &[k]).and_then(Value::as_str).is_some(),
            "a recipient without string `{k}` (API-13)"
        );
    }
    t.status(&x.b, &m.id)?.expect_error(ErrorCode::NotFound)?;
    t.status(&x.a, &"cd".repeat(32))?
        .expect_error(ErrorCode::NotFound)?;
    t.status(&x.a, &m.id.to_ascii_uppercase())?
        .expect_error(ErrorCode::NotFound)?;
    t.status(&x.a, "not-an-id")?
        .expect_error(ErrorCode::NotFound)?;
    Ok(())
}

/// A `task_request` from `a` to `to`, answering `corr`, asking for an ack at `ack_by`.
fn task(t: &Target, a: &Agent, to: &Handle, corr: Option<&str>, ack_by: Option<i64>) -> Signed {
    let mut o = t.envelope(
        a,
        "task_request",
        &[to],
        obj(vec![("task", s("review")), ("input", s(&t.uniq("in")))]),
    );
    if let Some(c) = corr {
        o.insert("corr", s(c));
    }
    if let Some(b) = ack_by {
        o.insert("ack_by", int(b));
    }
    t.sign(&o, &a.key)
}

fn ack_cascade(e: &Env<'_>) -> R {
    let t = e.t;
    let a = t.register("casa")?;
    let b = t.register("casb")?;
    let c = t.register("casc")?;
    let d = t.register("casd")?;
    t.grant(&b, &a.handle, "task")?;
    t.grant(&c, &b.handle, "task")?;
    t.grant(&c, &d.handle, "task")?;
    // The parent: a asks b, with a deadline a minute away.
    let parent = task(t, &a, &b.handle, None, Some(t.now() + 60_000));
    t.send_ok(&parent)?;
    let limit = parent
        .value
        .as_object()
        .and_then(|o| o.get("ack_by"))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    // b passes the work on to c and asks for more time than it has.
    let late = task(t, &b, &c.handle, Some(&parent.id), Some(limit + 30_000));
    let r = t.post_envelope(&late.wire)?;
    r.expect_error_field(ErrorCode::DeadlineAfterParent, "ack_by")?;
    ensure!(
        r.error_member("ack_by_max").and_then(Value::as_i64) == Some(limit),
        "{}: ack_by_max is {:?}, expected the parent's ack_by {limit} (ACK-5): {}",
        r.what,
        r.error_member("ack_by_max"),
        r.brief()
    );
    // Nothing was accepted: the same child at the parent's deadline is new, not a duplicate.
    t.send_ok(&task(t, &b, &c.handle, Some(&parent.id), Some(limit)))?;
    t.send_ok(&task(
        t,
        &b,
        &c.handle,
        Some(&parent.id),
        Some(limit - 10_000),
    ))?;
    t.send_ok(&task(t, &b, &c.handle, Some(&parent.id), None))?;
    // d did not receive the parent: its corr limits nothing.
    t.send_ok(&task(
        t,
        &d,
        &c.handle,
        Some(&parent.id),
        Some(limit + 30_000),
    ))?;
    // A parent without ack_by limits nothing either.
    let open = task(t, &a, &b.handle, None, None);
    t.send_ok(&open)?;
    t.send_ok(&task(
        t,
        &b,
        &c.handle,
        Some(&open.id),
        Some(t.now() + 120_000),
    ))?;
    Ok(())
}
