//! Conversation summaries (SPEC.md API-23, API-24): reading the relay's summary of one
//! conversation, listing them (`calls`, `conv list`), and showing one for people.

use super::{clean, ok_obj, session, Ctx, Session};
use crate::output::{fmt_ms, Exit, Fail};
use formica_protocol::{ErrorCode, Handle, MessageId, Value};

/// Most pages `conv list` and `calls` read (100 conversations each).
const LIST_PAGES_MAX: usize = 20;

/// A participant, as a summary lists it.
#[derive(Debug, Clone)]
pub struct Part {
    pub handle: Handle,
    pub role: String,
    pub state: String,
    pub reason: Option<String>,
}

/// A conversation's summary (API-23), as served (`value`) and read.
#[derive(Debug, Clone)]
pub struct Summary {
    pub id: MessageId,
    pub topic: String,
    pub mode: String,
    pub state: String,
    pub reason: Option<String>,
    pub expires: Option<i64>,
    pub turns: Option<i64>,
    pub posts: Option<i64>,
    pub seq: u64,
    pub participants: Vec<Part>,
    pub value: Value,
}

impl Summary {
    /// Reads a served summary; a malformed one is exit 1.
    pub fn from_value(v: &Value) -> Result<Summary, Fail> {
        let bad = |why: &str| {
            Fail::new(
                Exit::Failure,
                format!("the relay answered with a conversation summary that is not SPEC.md API-23's: {why}"),
            )
        };
        let o = v.as_object().ok_or_else(|| bad("not an object"))?;
        let s = |k: &str| o.get(k).and_then(Value::as_str);
        let i = |k: &str| o.get(k).and_then(Value::as_i64);
        let id = s("id")
            .and_then(MessageId::parse_hex)
            .ok_or_else(|| bad("no valid `id`"))?;
        let mut participants = Vec::new();
        for p in o
            .get("participants")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no `participants`"))?
        {
            let po = p
                .as_object()
                .ok_or_else(|| bad("a participant is not an object"))?;
            let ps = |k: &str| po.get(k).and_then(Value::as_str);
            participants.push(Part {
                handle: ps("handle")
                    .and_then(|h| Handle::parse(h).ok())
                    .ok_or_else(|| bad("a participant without a valid `handle`"))?,
                role: ps("role").unwrap_or("member").to_owned(),
                state: ps("state").unwrap_or("?").to_owned(),
                reason: ps("reason").map(str::to_owned),
            });
        }
        Ok(Summary {
            id,
            topic: s("topic").unwrap_or("").to_owned(),
            mode: s("mode").unwrap_or("?").to_owned(),
            state: s("state").ok_or_else(|| bad("no `state`"))?.to_owned(),
            reason: s("reason").map(str::to_owned),
            expires: i("expires"),
            turns: i("turns"),
            posts: i("posts"),
            seq: i("seq").and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
            participants,
            value: v.clone(),
        })
    }

    /// The owner: the participant with role `owner`, else the first (the caller).
    pub fn owner(&self) -> Option<&Handle> {
        self.participants
            .iter()
            .find(|p| p.role == "owner")
            .or(self.participants.first())
            .map(|p| &p.handle)
    }

    pub fn part(&self, h: &Handle) -> Option<&Part> {
        self.participants.iter().find(|p| &p.handle == h)
    }

    pub fn closed(&self) -> bool {
        self.state == "closed"
    }

    /// Readable: the id, state, mode and topic; the participants; the counts and times.
    pub fn text(&self, me: &Handle) -> String {
        let reason = self
            .reason
            .as_deref()
            .map(|r| format!(" ({})", clean(r, 40)))
            .unwrap_or_default();
        let parts: Vec<String> = self
            .participants
            .iter()
            .map(|p| {
                let role = if p.role == "member" {
                    String::new()
                } else {
                    format!(" ({})", clean(&p.role, 20))
                };
                let why = p
                    .reason
                    .as_deref()
                    .map(|r| format!(": {}", clean(r, 80)))
                    .unwrap_or_default();
                format!("{}{role} {}{why}", who(&p.handle, me), clean(&p.state, 20))
            })
            .collect();
        let posts = match (self.posts, self.turns) {
            (Some(p), Some(t)) => format!(", posts {p} of {t}"),
            _ => String::new(),
        };
        let expires = self
            .expires
            .map(|t| format!(", expires {}", fmt_ms(t)))
            .unwrap_or_default();
        format!(
            "{}  {}{reason}  {}  {:?}\n  {}\n  entries {}{posts}{expires}",
            self.id,
            clean(&self.state, 20),
            clean(&self.mode, 20),
            clean(&self.topic, 120),
            parts.join(", "),
            self.seq
        )
    }
}

/// A handle as people read it: `@name` on the reader's relay, else in full.
pub fn who(h: &Handle, me: &Handle) -> String {
    if h.host() == me.host() {
        h.local()
    } else {
        h.to_string()
    }
}

/// `GET /v1/conversations/{id}`: the summary, or `not_found` with a hint.
pub fn summary(s: &Session, conv: &MessageId) -> Result<Summary, Fail> {
    let a = s
        .client
        .get(&format!("/v1/conversations/{conv}"), Some(&s.auth))
        .map_err(not_yours)?;
    Summary::from_value(&a.body)
}

/// The hint for a conversation the relay does not show this agent (and for a read after an
/// entry it may not read).
pub fn not_yours(f: Fail) -> Fail {
    match f.code {
        Some(ErrorCode::NotFound) => f.hint(
            "no conversation of yours has this id (you are not a participant, or the relay removed it after it closed): keytool conv list --all lists yours",
        ),
        Some(ErrorCode::InvalidCursor) => f.hint(
            "--after is beyond the last entry you may read: read from the start (without --after)",
        ),
        _ => f,
    }
}

/// `GET /v1/conversations?QUERY`, every page (up to [`LIST_PAGES_MAX`]).
fn list(s: &Session, query: &str) -> Result<Vec<Summary>, Fail> {
    let mut out = Vec::new();
    let mut before: Option<String> = None;
    for _ in 0..LIST_PAGES_MAX {
        let mut q: Vec<String> = Vec::new();
        if !query.is_empty() {
            q.push(query.to_owned());
        }
        if let Some(b) = &before {
            q.push(format!("before={b}"));
        }
        let path = if q.is_empty() {
            "/v1/conversations".to_owned()
        } else {
            format!("/v1/conversations?{}", q.join("&"))
        };
        let a = s.client.get(&path, Some(&s.auth))?;
        let page = a.list("conversations");
        for v in page {
            out.push(Summary::from_value(v)?);
        }
        match a.str("next").and_then(MessageId::parse_hex) {
            Some(n) if !page.is_empty() && Some(n.to_hex()) != before => before = Some(n.to_hex()),
            _ => break,
        }
    }
    Ok(out)
}

/// `keytool calls` and `keytool conv list [--all]`: one summary per line, then the count.
fn emit_list(ctx: &Ctx<'_>, s: &Session, items: &[Summary], calls: bool) {
    for c in items {
        let mut text = c.text(&s.me);
        if calls {
            let owner = c.owner().map(|o| who(o, &s.me)).unwrap_or_default();
            text = format!(
                "{text}\n  {owner} calls you: keytool accept {} (or decline {})",
                c.id, c.id
            );
        }
        ctx.out.emit(&text, c.value.clone());
    }
    let n = items.len();
    let plural = if n == 1 { "" } else { "s" };
    let what = if calls {
        format!("call{plural} waiting for your answer")
    } else {
        format!("conversation{plural}")
    };
    ctx.out.emit(
        &format!("({n} {what})"),
        ok_obj(vec![("count", Value::Int(items.len() as i64))]),
    );
}

/// `keytool calls`: the conversations in which this agent is ringing or missed.
pub fn calls(ctx: &Ctx<'_>, identity: &str) -> Result<(), Fail> {
    let s = session(ctx, identity)?;
    let items = list(&s, "mine=ringing")?;
    emit_list(ctx, &s, &items, true);
    Ok(())
}

/// `keytool conv list [--all]`.
pub fn conv_list(ctx: &Ctx<'_>, identity: &str, all: bool) -> Result<(), Fail> {
    let s = session(ctx, identity)?;
    let items = list(&s, if all { "" } else { "state=open" })?;
    emit_list(ctx, &s, &items, false);
    Ok(())
}
