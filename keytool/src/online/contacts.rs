//! Contacts (`contacts add|remove|list`) and contact requests (`requests list|accept|reject`).

use super::{clean, obj, ok_obj, parse_handle, session, Ctx};
use crate::output::{fmt_ms, Fail};
use formica_protocol::{canon, ContactLevel, ErrorCode, MessageId, Value};

fn level_body(level: Option<ContactLevel>) -> Vec<u8> {
    let v = match level {
        Some(l) => obj(vec![("level", l.as_str().into())]),
        None => obj(vec![]),
    };
    canon::canonicalize(&v)
}

/// `keytool contacts add @x --level L`.
pub fn contacts_add(
    ctx: &Ctx<'_>,
    identity_name: &str,
    who: &str,
    level: ContactLevel,
) -> Result<(), Fail> {
    let s = session(ctx, identity_name)?;
    let h = parse_handle(who, &s.me)?;
    let a = s.client.call(
        "PUT",
        &format!("/v1/contacts/{h}"),
        Some(&level_body(Some(level))),
        Some(&s.auth),
    )?;
    let lv = a.str("level").unwrap_or(level.as_str()).to_owned();
    ctx.out.emit(
        &format!("{h} may now send you messages that need level {lv} or less"),
        ok_obj(vec![("handle", h.as_str().into()), ("level", lv.into())]),
    );
    Ok(())
}

/// `keytool contacts remove @x`.
pub fn contacts_remove(ctx: &Ctx<'_>, identity_name: &str, who: &str) -> Result<(), Fail> {
    let s = session(ctx, identity_name)?;
    let h = parse_handle(who, &s.me)?;
    s.client
        .call("DELETE", &format!("/v1/contacts/{h}"), None, Some(&s.auth))?;
    ctx.out.emit(
        &format!("removed {h} from your contacts"),
        ok_obj(vec![
            ("handle", h.as_str().into()),
            ("removed", Value::Bool(true)),
        ]),
    );
    Ok(())
}

/// `keytool contacts list`: one JSON line per contact with `--json`.
pub fn contacts_list(ctx: &Ctx<'_>, identity_name: &str) -> Result<(), Fail> {
    let s = session(ctx, identity_name)?;
    let a = s.client.get("/v1/contacts", Some(&s.auth))?;
    let list = a.list("contacts");
    for c in list {
        let co = c.as_object();
        let cs = |k: &str| {
            co.and_then(|o| o.get(k))
                .and_then(Value::as_str)
                .unwrap_or("?")
        };
        let since = co
            .and_then(|o| o.get("since"))
            .and_then(Value::as_i64)
            .map(fmt_ms)
            .unwrap_or_default();
        ctx.out.emit(
            &format!(
                "{:<40} {:<8} since {since}",
                clean(cs("handle"), 80),
                clean(cs("level"), 16)
            ),
            c.clone(),
        );
    }
    if list.is_empty() && !ctx.out.json {
        println!("(no contacts: nobody can send you messages yet; keytool contacts add @them --level message)");
    }
    Ok(())
}

/// `keytool requests list`: one JSON line per pending request with `--json`.
pub fn requests_list(ctx: &Ctx<'_>, identity_name: &str) -> Result<(), Fail> {
    let s = session(ctx, identity_name)?;
    let a = s.client.get("/v1/contact-requests", Some(&s.auth))?;
    let list = a.list("requests");
    for r in list {
        let ro = r.as_object();
        let rs = |k: &str| ro.and_then(|o| o.get(k)).and_then(Value::as_str);
        let ts = ro
            .and_then(|o| o.get("ts"))
            .and_then(Value::as_i64)
            .map(fmt_ms)
            .unwrap_or_default();
        let note = rs("note")
            .map(|n| format!("  {:?}", clean(n, 80)))
            .unwrap_or_default();
        let line = format!(
            "{}  {:<32} {:<8} {ts}{note}",
            clean(rs("id").unwrap_or("?"), 64),
            clean(rs("from").unwrap_or("?"), 80),
            clean(rs("level").unwrap_or("?"), 16)
        );
        ctx.out.emit(&line, r.clone());
    }
    if list.is_empty() && !ctx.out.json {
        println!("(no pending contact requests)");
    }
    Ok(())
}

/// `keytool requests accept ID [--level L]` and `keytool requests reject ID`.
pub fn requests_answer(
    ctx: &Ctx<'_>,
    identity_name: &str,
    id: &str,
    accept: Option<Option<ContactLevel>>,
) -> Result<(), Fail> {
    let rid = MessageId::parse_hex(id).ok_or_else(|| {
        Fail::code(
            ErrorCode::InvalidField,
            format!("{id:?} is not a request id (64 hex)"),
        )
    })?;
    let s = session(ctx, identity_name)?;
    let unknown = |f: Fail| {
        match f.code {
        Some(ErrorCode::NotFound) => f.hint(
            "no pending request of yours has that id (answered already, or never sent to you): keytool requests list shows the pending ones",
        ),
        _ => f,
    }
    };
    match accept {
        Some(level) => {
            let a = s
                .client
                .call(
                    "POST",
                    &format!("/v1/contact-requests/{rid}/accept"),
                    Some(&level_body(level)),
                    Some(&s.auth),
                )
                .map_err(unknown)?;
            let h = a.str("handle").unwrap_or("?").to_owned();
            let lv = a.str("level").unwrap_or("?").to_owned();
            ctx.out.emit(
                &format!(
                    "accepted: {} may now send you messages at level {}",
                    clean(&h, 80),
                    clean(&lv, 16)
                ),
                ok_obj(vec![
                    ("id", rid.to_hex().into()),
                    ("handle", h.into()),
                    ("level", lv.into()),
                ]),
            );
        }
        None => {
            s.client
                .call(
                    "POST",
                    &format!("/v1/contact-requests/{rid}/reject"),
                    None,
                    Some(&s.auth),
                )
                .map_err(unknown)?;
            ctx.out.emit(
                &format!("rejected request {rid} (the requester is not told)"),
                ok_obj(vec![
                    ("id", rid.to_hex().into()),
                    ("rejected", Value::Bool(true)),
                ]),
            );
        }
    }
    Ok(())
}
