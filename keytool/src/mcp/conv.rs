//! The MCP tools of conversations (SPEC.md section 19): `call`, `calls`, `accept`, `decline`,
//! `conversation_send`, `conversation_history`, `conversation_leave`, `conversation_close`,
//! `conversation_list`. Each runs keytool's own command (`call`, `calls`, `accept`, `decline`,
//! `conv send|leave|close|list`; `conversation_history` is `conv history` with a wait), so
//! entries are checked against their hash chain as there.

use super::tools::{to_json, Args, ToolDef};
use crate::online::{self, CallSpec, Ctx, PostOpts};
use crate::output::{Exit, Fail};
use formica_protocol::envelope::{ConvActionKind, ConvMode};
use serde_json::{Map, Value as Json};
use std::time::Duration;

/// Longest `conversation_history` may wait (MCP clients time tool calls out).
pub const READ_WAIT_S_MAX: u64 = 60;

const ID_ONLY: &str = r#"{"type":"object","properties":{"id":{"type":"string"},"reason":{"type":"string","maxLength":280}},"required":["id"],"additionalProperties":false}"#;

pub const TOOLS: &[ToolDef] = &[
    ToolDef {
        name: "call",
        description: "Start a conversation: call agents (`to`: handles, of your relay or of its peers; each must have granted you contact level message) about `topic`. `mode`: live (default; an unanswered invitation rings about a minute, then shows missed but can still be accepted) or async (waits to be answered). Optional `observers` (they read, do not post), `turns` (most posts), `expires` (30m, 2h, 7d). Returns `conv`, the conversation id.",
        schema: r#"{"type":"object","properties":{
            "to":{"type":"array","items":{"type":"string"},"minItems":1},
            "topic":{"type":"string","maxLength":280},
            "mode":{"type":"string","enum":["live","async"]},
            "observers":{"type":"array","items":{"type":"string"}},
            "turns":{"type":"integer","minimum":1},
            "expires":{"type":"string"}},
          "required":["to","topic"],"additionalProperties":false}"#,
    },
    ToolDef {
        name: "calls",
        description: "Calls waiting for your answer (you are ringing or missed): `calls`, each a conversation summary (id, topic, mode, participants with role and state). Answer with accept or decline.",
        schema: r#"{"type":"object","properties":{},"additionalProperties":false}"#,
    },
    ToolDef {
        name: "accept",
        description: "Accept call `id`: you join the conversation; then conversation_history and conversation_send.",
        schema: r#"{"type":"object","properties":{"id":{"type":"string"}},"required":["id"],"additionalProperties":false}"#,
    },
    ToolDef {
        name: "decline",
        description: "Decline call `id`, with an optional `reason` the other participants see.",
        schema: ID_ONLY,
    },
    ToolDef {
        name: "conversation_send",
        description: "Post `text` to conversation `id` (one turn). It goes to every other joined participant, or to `to` (some of them). Optional `ack_deadline` (30s, 5m, ...) and `corr`. Sealed (end-to-end encrypted) when every recipient publishes an encryption key (`sealed` in the result; `plain`: true sends it unsealed). Returns `seq`, its place in the conversation (null when the conversation is homed on another relay, which numbers it: it then shows in conversation_history).",
        schema: r#"{"type":"object","properties":{
            "id":{"type":"string"},
            "text":{"type":"string"},
            "to":{"type":"array","items":{"type":"string"}},
            "ack_deadline":{"type":"string"},
            "corr":{"type":"string"},
            "plain":{"type":"boolean"},
            "sealed":{"type":"boolean"}},
          "required":["id","text"],"additionalProperties":false}"#,
    },
    ToolDef {
        name: "conversation_history",
        description: "Read conversation `id`: entries after `after` (a seq; default 0, the start), oldest first, each checked against the hash chain. An entry has `seq`, `at` and either `envelope` (the call, a post, an action: accept, decline, leave, close, invite) or `event` (missed, declined, closed); a sealed post also has `sealed`: true and `payload` (opened) or `open_error` (`reason`). `wait` (seconds, at most 60) waits for a new entry when there is none. Returns `entries`, `next` (pass it as `after` next time), `state` (ringing, active, closed) and `reason`.",
        schema: r#"{"type":"object","properties":{
            "id":{"type":"string"},
            "after":{"type":"integer","minimum":0},
            "limit":{"type":"integer","minimum":1},
            "wait":{"type":"integer","minimum":0,"maximum":60}},
          "required":["id"],"additionalProperties":false}"#,
    },
    ToolDef {
        name: "conversation_leave",
        description: "Leave conversation `id`, with an optional `reason`. When the owner leaves, the conversation closes.",
        schema: ID_ONLY,
    },
    ToolDef {
        name: "conversation_close",
        description: "Close conversation `id` that you own, with an optional `reason`: nobody can post in it any more.",
        schema: ID_ONLY,
    },
    ToolDef {
        name: "conversation_list",
        description: "Your open conversations (with `all` true, closed ones too): `conversations`, each a summary (id, topic, mode, state, reason, participants with role and state, seq, posts, turns, expires).",
        schema: r#"{"type":"object","properties":{"all":{"type":"boolean"}},"additionalProperties":false}"#,
    },
];

fn conv(a: &Args<'_>) -> Result<formica_protocol::MessageId, Fail> {
    online::conv_id(&a.str_req("id")?).map_err(|e| a.input(format!("`id`: {e}")))
}

fn reason(a: &Args<'_>) -> Result<Option<String>, Fail> {
    a.str_opt("reason")?
        .map(|r| online::note(&r).map_err(|e| a.input(format!("`reason`: {e}"))))
        .transpose()
}

fn duration(a: &Args<'_>, k: &str) -> Result<Option<Duration>, Fail> {
    a.str_opt(k)?
        .map(|s| online::positive(&s).map_err(|e| a.input(format!("`{k}`: {e}"))))
        .transpose()
}

/// The listing's lines as `{"ok", key: [...], "count"}`.
fn listing(ctx: &Ctx<'_>, key: &str) -> Json {
    let mut lines = ctx.out.take();
    let last = lines.pop().map(|v| to_json(&v)).unwrap_or(Json::Null);
    let mut m = Map::new();
    m.insert("ok".into(), Json::Bool(true));
    m.insert(key.into(), Json::Array(lines.iter().map(to_json).collect()));
    m.insert("count".into(), last["count"].clone());
    Json::Object(m)
}

/// Runs one of the conversation tools (`a` names which) as identity `id`.
pub(super) fn call(ctx: &Ctx<'_>, id: &str, a: &Args<'_>) -> Result<Json, Fail> {
    match a.tool {
        "call" => {
            a.only(&["to", "topic", "mode", "observers", "turns", "expires"])?;
            let members = a.strs("to", a.m.get("to"))?;
            if members.is_empty() {
                return Err(a.input("`to` is a non-empty list of handles".into()));
            }
            let topic =
                online::note(&a.str_req("topic")?).map_err(|e| a.input(format!("`topic`: {e}")))?;
            let mode = match a.str_opt("mode")? {
                None => ConvMode::Live,
                Some(m) => online::parse_mode(&m).map_err(|e| a.input(format!("`mode`: {e}")))?,
            };
            let turns = match a.u64_opt("turns")? {
                None => None,
                Some(0) => return Err(a.input("`turns` is at least 1".into())),
                Some(n) => {
                    Some(i64::try_from(n).map_err(|_| a.input("`turns` is too large".into()))?)
                }
            };
            let spec = CallSpec {
                members,
                topic,
                mode,
                turns,
                expires: duration(a, "expires")?,
                observers: a.strs("observers", a.m.get("observers"))?,
            };
            online::call(ctx, id, &spec)?;
        }
        "calls" => {
            a.only(&[])?;
            online::calls(ctx, id)?;
            return Ok(listing(ctx, "calls"));
        }
        "conversation_list" => {
            a.only(&["all"])?;
            online::conv_list(ctx, id, a.bool_opt("all")?.unwrap_or(false))?;
            return Ok(listing(ctx, "conversations"));
        }
        "accept" => {
            a.only(&["id"])?;
            online::act(ctx, id, &conv(a)?, ConvActionKind::Accept, None)?;
        }
        "decline" => {
            a.only(&["id", "reason"])?;
            online::act(ctx, id, &conv(a)?, ConvActionKind::Decline, reason(a)?)?;
        }
        "conversation_leave" | "conversation_close" => {
            a.only(&["id", "reason"])?;
            let action = if a.tool == "conversation_leave" {
                ConvActionKind::Leave
            } else {
                ConvActionKind::Close
            };
            online::act(ctx, id, &conv(a)?, action, reason(a)?)?;
        }
        "conversation_send" => {
            a.only(&[
                "id",
                "text",
                "to",
                "ack_deadline",
                "corr",
                "plain",
                "sealed",
            ])?;
            let opts = PostOpts {
                to: a.strs("to", a.m.get("to"))?,
                ack_deadline: duration(a, "ack_deadline")?,
                corr: a.str_opt("corr")?,
                plain: a.bool_opt("plain")?.unwrap_or(false),
                sealed: a.bool_opt("sealed")?.unwrap_or(false),
            };
            online::conv_send(ctx, id, &conv(a)?, a.str_req("text")?, &opts)?;
        }
        "conversation_history" => {
            a.only(&["id", "after", "limit", "wait"])?;
            let wait = a.u64_opt("wait")?.unwrap_or(0);
            if wait > READ_WAIT_S_MAX {
                return Err(a.input(format!("`wait` is at most {READ_WAIT_S_MAX}")));
            }
            let limit = a
                .u64_opt("limit")?
                .map(|n| match u32::try_from(n) {
                    Ok(l) if l > 0 => Ok(l),
                    _ => Err(a.input("`limit` is 1 or more".into())),
                })
                .transpose()?;
            let v = online::read_for_tool(
                ctx,
                id,
                &conv(a)?,
                a.u64_opt("after")?.unwrap_or(0),
                limit,
                Some(Duration::from_secs(wait)),
            )?;
            return Ok(to_json(&v));
        }
        other => return Err(Fail::new(Exit::Input, format!("no tool named {other:?}"))),
    }
    let mut results = ctx.out.take();
    match results.len() {
        1 => Ok(to_json(&results.remove(0))),
        n => Err(Fail::new(
            Exit::Failure,
            format!("{}: {n} results where one was expected", a.tool),
        )),
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_conversation_tools_are_the_ones_documented() {
        let names: Vec<&str> = TOOLS.iter().map(|t| t.name).collect();
        assert_eq!(
            names,
            [
                "call",
                "calls",
                "accept",
                "decline",
                "conversation_send",
                "conversation_history",
                "conversation_leave",
                "conversation_close",
                "conversation_list"
            ]
        );
        for t in TOOLS {
            let v: Json = serde_json::from_str(t.schema).expect(t.name);
            assert_eq!(v["type"], "object", "{}", t.name);
            assert!(t.description.len() < 600, "{}: keep it short", t.name);
        }
    }
}
