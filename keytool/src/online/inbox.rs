//! The inbox page, `ack` and `status` (per-recipient delivery state).

use super::sealing::{self, mark, opened_members, Opened, Opener};
use super::send::{emit_posted, post_envelope};
use super::{
    clean, obj, parse_handle, session, Ctx, Session, ACK_LOOKUP_PAGES_MAX, SUMMARY_CHARS_MAX,
};
use crate::output::{fmt_ms, Exit, Fail};
use formica_protocol::{
    canon, AckStatus, ErrorCode, Handle, MessageId, MessageType, Object, Payload, Value,
};

fn inbox_path(after: Option<&str>, limit: Option<u32>) -> String {
    let mut q = Vec::new();
    if let Some(a) = after {
        q.push(format!("after={a}"));
    }
    if let Some(l) = limit {
        q.push(format!("limit={l}"));
    }
    if q.is_empty() {
        "/v1/inbox".into()
    } else {
        format!("/v1/inbox?{}", q.join("&"))
    }
}

/// Checks a cursor before it goes into a path: cursors are opaque, but only printable ASCII
/// without `&`, `#`, `%` or spaces can be sent (and signed) as is.
pub fn check_cursor(c: &str) -> Result<(), Fail> {
    let ok = !c.is_empty()
        && c.len() <= 64
        && c.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'&' | b'#' | b'%' | b'?'));
    if ok {
        Ok(())
    } else {
        Err(
            Fail::code(ErrorCode::InvalidCursor, format!("{c:?} is not a cursor"))
                .hint("use a cursor printed by inbox or watch"),
        )
    }
}

/// One readable line for an inbox item; `ack` is the page's word for whether the reader still
/// owes an ack (API-9: pending, acked, timed_out); `sealed` the mark of a sealed payload.
pub fn item_line(cursor: &str, env: &Value, ack: Option<&str>, sealed: &str) -> String {
    let o = env.as_object();
    let s = |k: &str| {
        o.and_then(|o| o.get(k))
            .and_then(Value::as_str)
            .unwrap_or("?")
    };
    let ty = s("type");
    let p = o.and_then(|o| o.get("payload")).and_then(Value::as_object);
    let ps = |k: &str| p.and_then(|p| p.get(k)).and_then(Value::as_str);
    let short = |id: Option<&str>| clean(id.unwrap_or("?"), 12);
    let summary = match ty {
        "message" => ps("text")
            .map(|t| format!("{:?}", clean(t, SUMMARY_CHARS_MAX)))
            .unwrap_or_default(),
        "ack" => format!(
            "ack of {}: {}{}",
            short(ps("msg")),
            ps("status").unwrap_or("?"),
            ps("reason")
                .map(|r| format!(" ({})", clean(r, 80)))
                .unwrap_or_default()
        ),
        "receipt" => format!(
            "{} {} for {}{}{}",
            short(ps("msg")),
            ps("status").unwrap_or("?"),
            ps("recipient").unwrap_or("?"),
            ps("ack_status")
                .map(|a| format!(" ({a})"))
                .unwrap_or_default(),
            ps("reason")
                .map(|r| format!(" (reason: {})", clean(r, 80)))
                .unwrap_or_default()
        ),
        "contact_request" => format!(
            "asks for level {}{}",
            ps("level").unwrap_or("?"),
            ps("note")
                .map(|n| format!(": {:?}", clean(n, 80)))
                .unwrap_or_default()
        ),
        "task_request" => format!("task {}", clean(ps("task").unwrap_or("?"), 64)),
        "task_result" => format!(
            "result {} for {}",
            ps("status").unwrap_or("?"),
            clean(s("corr"), 64)
        ),
        _ => p
            .map(|p| {
                clean(
                    &String::from_utf8_lossy(&canon::canonicalize(&Value::Object(p.clone()))),
                    SUMMARY_CHARS_MAX,
                )
            })
            .unwrap_or_default(),
    };
    let ack = match (o.and_then(|o| o.get("ack_by")).and_then(Value::as_i64), ack) {
        (Some(_), Some("acked")) => "  [acked]".to_owned(),
        (Some(t), Some("timed_out")) => format!("  [ack deadline {} passed]", fmt_ms(t)),
        (Some(t), _) => format!("  [ack by {}]", fmt_ms(t)),
        (None, _) => String::new(),
    };
    format!(
        "{cursor:>6}  {ty:<15}  {}  {}  {summary}{sealed}{ack}",
        clean(s("from"), 80),
        clean(s("id"), 64)
    )
}

/// [`item_line`] for an item whose payload may be sealed: the opened payload is shown (nothing
/// for one that did not open), with the item's mark (`[sealed]`, or the reason it did not open).
pub fn shown_line(cursor: &str, env: &Value, ack: Option<&str>, opened: &Opened) -> String {
    match opened {
        None => item_line(cursor, env, ack, ""),
        Some(r) => {
            let p = r.as_ref().map(|p| p.to_value()).unwrap_or(Value::Null);
            let shown = sealing::with_members(env, vec![("payload", p)]);
            item_line(cursor, &shown, ack, &mark(opened))
        }
    }
}

/// The `{"cursor","envelope"}` of an inbox item, or a failure for a malformed page.
fn page_item(v: &Value) -> Result<(String, Value), Fail> {
    page_item_ack(v).map(|(c, e, _)| (c, e))
}

/// [`page_item`] and the item's `ack` member, if any.
fn page_item_ack(v: &Value) -> Result<(String, Value, Option<String>), Fail> {
    let o = v.as_object();
    let cursor = o.and_then(|o| o.get("cursor")).and_then(Value::as_str);
    let env = o.and_then(|o| o.get("envelope"));
    let ack = o
        .and_then(|o| o.get("ack"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    match (cursor, env) {
        (Some(c), Some(e)) => Ok((c.to_owned(), e.clone(), ack)),
        _ => Err(Fail::new(
            Exit::Failure,
            "the relay's inbox page has an item without cursor or envelope",
        )),
    }
}

/// `keytool inbox`. Returns the relay's `next` cursor (API-9).
pub fn inbox(
    ctx: &Ctx<'_>,
    identity_name: &str,
    after: Option<&str>,
    limit: Option<u32>,
) -> Result<String, Fail> {
    if let Some(c) = after {
        check_cursor(c)?;
    }
    let s = session(ctx, identity_name)?;
    let a = s.client.get(&inbox_path(after, limit), Some(&s.auth))?;
    let items = a
        .list("items")
        .iter()
        .map(page_item_ack)
        .collect::<Result<Vec<_>, _>>()?;
    let mut opener = Opener::new(&s, ctx.home);
    for (cursor, env, ack) in &items {
        let opened = opener.open_value(&s, env)?;
        let mut m = vec![("cursor", cursor.clone().into()), ("envelope", env.clone())];
        if let Some(a) = ack {
            m.push(("ack", a.clone().into()));
        }
        m.extend(opened_members(&opened));
        ctx.out
            .emit(&shown_line(cursor, env, ack.as_deref(), &opened), obj(m));
    }
    if !ctx.out.json {
        let next = a.str("next").unwrap_or("");
        if items.is_empty() {
            println!(
                "(no items{})",
                after
                    .map(|c| format!(" after cursor {c}"))
                    .unwrap_or_default()
            );
        } else {
            println!(
                "({} items; next page: keytool inbox --after {next})",
                items.len()
            );
        }
    }
    Ok(a.str("next").unwrap_or(after.unwrap_or("0")).to_owned())
}

/// Finds who sent message `id` to us by reading the inbox from the start.
fn find_sender(s: &Session, id: &MessageId) -> Result<(Handle, String), Fail> {
    let want = id.to_hex();
    let mut after: Option<String> = None;
    for _ in 0..ACK_LOOKUP_PAGES_MAX {
        let a = s
            .client
            .get(&inbox_path(after.as_deref(), None), Some(&s.auth))?;
        let items = a.list("items");
        for v in items {
            let (_, env) = page_item(v)?;
            let o = env.as_object();
            let get = |k: &str| o.and_then(|o| o.get(k)).and_then(Value::as_str);
            if get("id") == Some(want.as_str()) {
                let from = get("from")
                    .and_then(|f| Handle::parse(f).ok())
                    .ok_or_else(|| {
                        Fail::new(
                            Exit::Failure,
                            format!("message {want} in the inbox has no valid `from`"),
                        )
                    })?;
                return Ok((from, get("type").unwrap_or("").to_owned()));
            }
        }
        match a.str("next") {
            Some(n) if !items.is_empty() && Some(n) != after.as_deref() => {
                check_cursor(n)?;
                after = Some(n.to_owned());
            }
            _ => break,
        }
    }
    Err(Fail::code(ErrorCode::NotFound, format!("message {want} is not in the inbox of {}", s.me))
        .hint("ack takes the id of a message you received (keytool inbox shows ids); pass --from @sender if you know it"))
}

/// `keytool ack ID`.
pub fn ack(
    ctx: &Ctx<'_>,
    identity_name: &str,
    id: &str,
    status: AckStatus,
    reason: Option<String>,
    from: Option<&str>,
) -> Result<(), Fail> {
    let msg = MessageId::parse_hex(id).ok_or_else(|| {
        Fail::code(
            ErrorCode::InvalidField,
            format!("{id:?} is not a message id (64 hex)"),
        )
    })?;
    let s = session(ctx, identity_name)?;
    let sender = match from {
        Some(f) => parse_handle(f, &s.me)?,
        None => {
            let (sender, ty) = find_sender(&s, &msg)?;
            if ty == "ack" || ty == "receipt" {
                return Err(Fail::new(
                    Exit::Input,
                    format!(
                        "{id} is {ty} {}; acks and receipts are not acked",
                        if ty == "ack" { "an" } else { "a" }
                    ),
                ));
            }
            sender
        }
    };
    let (ack_id, result) = post_envelope(
        &s,
        vec![sender.clone()],
        MessageType::Ack,
        Payload::Ack {
            msg,
            status,
            reason,
        },
        None,
        None,
    )?;
    let note = format!("\n  acked {msg} from {sender}: {status}");
    emit_posted(
        ctx.out,
        "ack",
        &ack_id,
        &result,
        vec![
            ("msg", msg.to_hex().into()),
            ("to", sender.as_str().into()),
            ("status", status.as_str().into()),
        ],
        &note,
    );
    Ok(())
}

/// `keytool status ID`.
pub fn status(ctx: &Ctx<'_>, identity_name: &str, id: &str) -> Result<(), Fail> {
    let msg = MessageId::parse_hex(id).ok_or_else(|| {
        Fail::code(
            ErrorCode::InvalidField,
            format!("{id:?} is not a message id (64 hex)"),
        )
    })?;
    let s = session(ctx, identity_name)?;
    let a = s
        .client
        .get(&format!("/v1/messages/{msg}"), Some(&s.auth))
        .map_err(|f| match f.code {
            Some(ErrorCode::NotFound) => f.hint(format!(
                "only the sender of a message can read its status: check the id (keytool send printed it) and the identity ({})",
                s.me
            )),
            _ => f,
        })?;
    let o = a.body.as_object();
    let int = |k: &str| o.and_then(|o| o.get(k)).and_then(Value::as_i64);
    let mut text = format!(
        "message {msg}\n  type    {}\n  sent    {}\n  ack by  {}",
        clean(a.str("type").unwrap_or("?"), 64),
        int("ts").map(fmt_ms).unwrap_or_else(|| "?".into()),
        int("ack_by")
            .map(fmt_ms)
            .unwrap_or_else(|| "(no ack requested)".into())
    );
    if let Some(c) = a.str("conv") {
        text.push_str(&format!(
            "\n  conv    {} {}",
            clean(c, 64),
            match int("seq") {
                Some(n) => format!("(entry #{n})"),
                None => "(not numbered by its home relay yet)".into(),
            }
        ));
    }
    for r in a.list("recipients") {
        let ro = r.as_object();
        let rs = |k: &str| ro.and_then(|o| o.get(k)).and_then(Value::as_str);
        let updated = ro
            .and_then(|o| o.get("updated"))
            .and_then(Value::as_i64)
            .map(fmt_ms)
            .unwrap_or_default();
        let ack = match (rs("ack"), rs("ack_status"), rs("reason")) {
            (Some(id), Some(st), _) => format!("  ack {id} ({st})"),
            (_, _, Some(why)) => format!("  reason: {}", clean(why, 80)),
            _ => String::new(),
        };
        text.push_str(&format!(
            "\n  {:<32} {:<13} {updated}{ack}",
            clean(rs("handle").unwrap_or("?"), 80),
            clean(rs("status").unwrap_or("?"), 20)
        ));
    }
    let mut v = a.body.clone();
    if let Value::Object(o) = &mut v {
        let mut with_ok = Object::new();
        with_ok.insert("ok", Value::Bool(true));
        for (k, x) in o.iter() {
            with_ok.insert(k, x.clone());
        }
        *o = with_ok;
    }
    ctx.out.emit(&text, v);
    Ok(())
}
