//! Tier limits as published (TRUST-1, TRUST-7, TRUST-8): the payload cap and the recipient cap
//! at their exact bounds, the envelope rate per key, the types a tier may send, vouches and
//! reports (TRUST-3..5), and promotion when the published thresholds are reachable (TRUST-2).

use super::*;
use crate::case::{case, Env};

pub fn cases() -> Vec<Case> {
    use ErrorCode as E;
    vec![
        case("tier.payload-cap", &["TRUST-7", "TRUST-8", "ENV-8"], "a payload of exactly the tier's payload_bytes_max is accepted, one byte more is payload_too_large", payload_cap).codes(&[E::PayloadTooLarge]),
        case("tier.recipients-cap", &["TRUST-7", "TRUST-8", "ENV-6"], "exactly the tier's recipients_max recipients are accepted, one more is too_many_recipients", recipients_cap).codes(&[E::TooManyRecipients]),
        case("tier.rate", &["TRUST-7", "HTTP-5"], "envelopes beyond the tier's rate_per_min per key are rate_limited with retry_after_s and Retry-After", rate).codes(&[E::RateLimited]),
        case("tier.may-send", &["TRUST-7", "TRUST-4", "TYPE-14"], "a type outside the tier's may_send is tier_forbidden; the types inside are not", may_send).codes(&[E::TierForbidden]),
        case("trust.report", &["TRUST-3", "TYPE-11"], "a report goes to exactly the subject's relay, never about the sender, and only about registered subjects", report).codes(&[E::InvalidField, E::UnknownRecipient]),
        case("trust.reports-per-day", &["TRUST-5", "TRUST-7"], "reports beyond the tier's reports_per_day are rate_limited", reports_per_day).codes(&[E::RateLimited]),
        case("trust.vouch-rules", &["TRUST-3", "TRUST-4", "TYPE-10"], "vouches go to the subject's relay, about a registered subject other than the sender", vouch_rules).codes(&[E::InvalidField, E::UnknownRecipient, E::TierForbidden]),
        case("trust.promotion", &["TRUST-2"], "an agent that meets the next tier's published thresholds is at that tier", promotion),
    ]
}

fn payload_of_len(n: usize) -> Value {
    // {"text":"..."} is 11 bytes plus the text.
    obj(vec![("text", s(&"p".repeat(n.saturating_sub(11))))])
}

fn payload_cap(e: &Env<'_>) -> R {
    let t = e.t;
    let cap = t.published.tier0().payload_bytes_max;
    if cap < 11 || cap + 2000 > t.published.envelope_bytes_max {
        skip!(
            "tier payload_bytes_max {cap} cannot be reached inside envelope_bytes_max {}",
            t.published.envelope_bytes_max
        );
    }
    let a = t.register("tpay")?;
    let at_cap = payload_of_len(cap as usize);
    ensure!(
        canon::canonicalize(&at_cap).len() as i64 == cap,
        "suite bug: payload length"
    );
    t.send_ok(&t.sign(&t.envelope(&a, "message", &[&a.handle], at_cap), &a.key))
        .map_err(|err| match err {
            Stop::Fail(m) => Stop::Fail(format!(
                "a payload of exactly payload_bytes_max = {cap} bytes: {m} (TRUST-8)"
            )),
            other => other,
        })?;
    refuse(
        t,
        &t.sign(
            &t.envelope(
                &a,
                "message",
                &[&a.handle],
                payload_of_len(cap as usize + 1),
            ),
            &a.key,
        )
        .wire,
        ErrorCode::PayloadTooLarge,
    )?;
    Ok(())
}

fn recipients_cap(e: &Env<'_>) -> R {
    let t = e.t;
    let max = t.published.tier0().recipients_max as usize;
    if max == 0 || max > 8 {
        skip!("tier recipients_max {max}: the case registers at most 8 recipients");
    }
    if max as i64 >= t.published.recipients_max {
        skip!("the tier's recipients_max equals limits.recipients_max; env.recipients-limit checks that bound");
    }
    let a = t.register("trca")?;
    let mut rs = vec![];
    for _ in 1..max {
        let r = t.register("trcr")?;
        t.grant(&r, &a.handle, "message")?;
        rs.push(r);
    }
    let mut to: Vec<&Handle> = rs.iter().map(|r| &r.handle).collect();
    to.push(&a.handle);
    t.send_ok(&msg(t, &a, &to)).map_err(|err| match err {
        Stop::Fail(m) => Stop::Fail(format!(
            "exactly recipients_max = {max} recipients: {m} (TRUST-8)"
        )),
        other => other,
    })?;
    let extra = t.fresh_handle("trcextra");
    to.push(&extra);
    refuse(t, &msg(t, &a, &to).wire, ErrorCode::TooManyRecipients)?;
    Ok(())
}

fn rate(e: &Env<'_>) -> R {
    let t = e.t;
    let per_min = t.published.tier0().rate_per_min;
    if per_min > 120 {
        skip!("tier rate_per_min {per_min}: the case sends at most 121 envelopes");
    }
    let a = t.register("trate")?;
    for n in 0..=per_min {
        let r = t.post_envelope(&msg(t, &a, &[&a.handle]).wire)?;
        if r.status == 201 {
            continue;
        }
        r.expect_error(ErrorCode::RateLimited)
            .map_err(|err| match err {
                Stop::Fail(m) => Stop::Fail(format!("envelope {} of a burst: {m}", n + 1)),
                other => other,
            })?;
        let wait = r
            .error_member("retry_after_s")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        ensure!(
            (1..=60).contains(&wait),
            "retry_after_s {wait} is not a wait of 1..60 s for a per-minute limit (TRUST-7)"
        );
        return Ok(());
    }
    fail!("{} envelopes from one key in a burst were all accepted; the tier publishes rate_per_min {per_min} (TRUST-7)", per_min + 1)
}

fn may_send(e: &Env<'_>) -> R {
    let t = e.t;
    let tier = t.published.tier0();
    let a = t.register("tms")?;
    let b = t.register("tmsb")?;
    t.grant(&b, &a.handle, "task")?;
    let relay = Handle::relay(&t.host);
    let mut forbidden = 0;
    for ty in [
        "message",
        "task_request",
        "x-conformance.ping",
        "vouch",
        "report",
    ] {
        let (to, payload): (&Handle, Value) = match ty {
            "message" => (&b.handle, text(t)),
            "task_request" => (
                &b.handle,
                obj(vec![("task", s("t")), ("input", s(&t.uniq("i")))]),
            ),
            "vouch" => (
                &relay,
                obj(vec![
                    ("subject", s(b.handle.as_str())),
                    ("action", s("grant")),
                ]),
            ),
            "report" => (
                &relay,
                obj(vec![
                    ("subject", s(b.handle.as_str())),
                    ("reason", s("other")),
                    ("note", s(&t.uniq("n"))),
                ]),
            ),
            _ => (&b.handle, obj(vec![("n", s(&t.uniq("x")))])),
        };
        let sg = t.sign(&t.envelope(&a, ty, &[to], payload), &a.key);
        if tier.may_send(ty) {
            if ty == "vouch" && tier.vouches_max == 0 {
                continue;
            }
            t.send_ok(&sg).map_err(|err| match err {
                Stop::Fail(m) => Stop::Fail(format!(
                    "{ty} is in may_send of tier {}: {m} (TRUST-7)",
                    tier.name
                )),
                other => other,
            })?;
        } else {
            forbidden += 1;
            refuse(t, &sg.wire, ErrorCode::TierForbidden)?;
        }
    }
    if forbidden == 0 {
        skip!(
            "tier {} may send every type; nothing to refuse with tier_forbidden",
            tier.name
        );
    }
    Ok(())
}

fn report_env(t: &Target, a: &Agent, to: &Handle, subject: &str) -> Signed {
    t.sign(
        &t.envelope(
            a,
            "report",
            &[to],
            obj(vec![
                ("subject", s(subject)),
                ("reason", s("spam")),
                ("note", s(&t.uniq("r"))),
            ]),
        ),
        &a.key,
    )
}

fn report(e: &Env<'_>) -> R {
    let t = e.t;
    if !t.published.tier0().may_send("report") {
        skip!("tier {} may not send reports", t.published.tier0().name);
    }
    let a = t.register("trpa")?;
    let b = t.register("trpb")?;
    let relay = Handle::relay(&t.host);
    t.send_ok(&report_env(t, &a, &relay, b.handle.as_str()))?;
    refuse_field(
        t,
        &report_env(t, &a, &relay, a.handle.as_str()).wire,
        ErrorCode::InvalidField,
        "payload.subject",
    )?;
    refuse_field(
        t,
        &report_env(t, &a, &b.handle, b.handle.as_str()).wire,
        ErrorCode::InvalidField,
        "to",
    )?;
    let other =
        Handle::parse("@relay@elsewhere.example").map_err(|err| Stop::Fail(err.to_string()))?;
    refuse_field(
        t,
        &report_env(t, &a, &other, b.handle.as_str()).wire,
        ErrorCode::InvalidField,
        "to",
    )?;
    refuse(
        t,
        &report_env(t, &a, &relay, t.fresh_handle("trpghost").as_str()).wire,
        ErrorCode::UnknownRecipient,
    )?;
    Ok(())
}

fn reports_per_day(e: &Env<'_>) -> R {
    let t = e.t;
    let tier = t.published.tier0();
    if !tier.may_send("report") {
        skip!("tier {} may not send reports", tier.name);
    }
    if tier.reports_per_day > 10 {
        skip!(
            "tier reports_per_day {}: the case files at most 11",
            tier.reports_per_day
        );
    }
    let a = t.register("trda")?;
    let b = t.register("trdb")?;
    let relay = Handle::relay(&t.host);
    for n in 0..tier.reports_per_day {
        t.send_ok(&report_env(t, &a, &relay, b.handle.as_str()))
            .map_err(|err| match err {
                Stop::Fail(m) => Stop::Fail(format!(
                    "report {} of {} allowed per day: {m} (TRUST-8)",
                    n + 1,
                    tier.reports_per_day
                )),
                other => other,
            })?;
    }
    refuse(
        t,
        &report_env(t, &a, &relay, b.handle.as_str()).wire,
        ErrorCode::RateLimited,
    )?;
    Ok(())
}

fn vouch_rules(e: &Env<'_>) -> R {
    let t = e.t;
    let a = t.register("tvra")?;
    let b = t.register("tvrb")?;
    let relay = Handle::relay(&t.host);
    let vouch = |to: &Handle, subject: &str| {
        t.sign(
            &t.envelope(
                &a,
                "vouch",
                &[to],
                obj(vec![("subject", s(subject)), ("action", s("grant"))]),
            ),
            &a.key,
        )
    };
    // Parse-level rules hold whatever the tier.
    refuse_field(
        t,
        &vouch(&relay, a.handle.as_str()).wire,
        ErrorCode::InvalidField,
        "payload.subject",
    )?;
    refuse_field(
        t,
        &vouch(&b.handle, b.handle.as_str()).wire,
        ErrorCode::InvalidField,
        "to",
    )?;
    let tier = t.published.tier0();
    if !tier.may_send("vouch") {
        refuse(
            t,
            &vouch(&relay, b.handle.as_str()).wire,
            ErrorCode::TierForbidden,
        )?;
        return Ok(());
    }
    refuse(
        t,
        &vouch(&relay, t.fresh_handle("tvrghost").as_str()).wire,
        ErrorCode::UnknownRecipient,
    )?;
    Ok(())
}

fn promotion(e: &Env<'_>) -> R {
    let t = e.t;
    let tiers = &t.published.tiers;
    let Some(next) = tiers.get(1) else {
        skip!("the relay publishes a single tier")
    };
    if next.min_age_ms > 5000 || next.min_acked > 5 || next.min_vouches > 0 {
        skip!(
            "tier {} needs min_age_ms {}, min_acked {}, min_vouches {}: not reachable in a bounded run (the case needs at most 5 s, 5 acks, no vouches)",
            next.name, next.min_age_ms, next.min_acked, next.min_vouches
        );
    }
    let a = t.register("tpro")?;
    let b = t.register("tprob")?;
    t.grant(&b, &a.handle, "message")?;
    for _ in 0..next.min_acked {
        let m = msg(t, &a, &[&b.handle]);
        t.send_ok(&m)?;
        t.send_ok(&ack(t, &b, &a.handle, &m.id, "processed"))?;
    }
    sleep_ms(next.min_age_ms.max(0) as u64 + 200);
    let r = t.http.get(&format!("/v1/keys/{}", a.handle))?;
    r.expect_json(200)?;
    ensure!(
        r.str_member("tier")? == next.name,
        "an agent that meets tier {}'s thresholds is at tier {:?} (TRUST-2)",
        next.name,
        r.str_member("tier")?
    );
    Ok(())
}
