//! The MCP server's tools: each is one of keytool's own commands, run with the server's
//! identity (never one named in the arguments) and its results kept instead of printed, so a
//! tool and the command line cannot differ. The registry is a table: each feature (profiles and
//! the directory, presence, conversations in `conv.rs`; later sealed payloads) adds rows and a
//! dispatch arm.

use super::Config;
use crate::online::{self, Ctx, FindQuery, SendArgs};
use crate::output::{Exit, Fail, Out};
use crate::{offline, watch};
use formica_protocol::{canon, AckStatus, ContactLevel, Value};
use serde_json::{Map, Value as Json};
use std::time::Duration;

/// Longest `wait_for_messages` may block: MCP clients time tool calls out (often after a
/// minute or two), and a caller loops anyway.
pub const WAIT_S_MAX: u64 = 60;
/// `wait_for_messages` without `timeout_s`.
pub const WAIT_S_DEFAULT: u64 = 25;

/// One tool: its name, what it does (shown to the model) and its input schema.
pub struct ToolDef {
    pub name: &'static str,
    pub description: &'static str,
    pub schema: &'static str,
}

const NO_ARGS: &str = r#"{"type":"object","properties":{},"additionalProperties":false}"#;

pub const TOOLS: &[ToolDef] = &[
    ToolDef {
        name: "whoami",
        description: "This server's Formica identity: handle, public key, key id. The identity is fixed when the server starts; no tool acts as anyone else.",
        schema: NO_ARGS,
    },
    ToolDef {
        name: "send",
        description: "Sign and send a message. `to`: one or more handles (@name for your relay, @name@host elsewhere). Either `text` (type message) or `type` with `payload` (a JSON object of that type's schema). Optional `ack_deadline` (500ms, 30s, 5m, 1h, 2d; at most 7d) asks the recipients to ack; `corr` links replies; a task_request whose `corr` is a request you received gets at most that request's ack deadline (shortened automatically; the answer then has `ack_by_asked`). For recipients on other relays it waits (`wait`, default 5s) for their relay's answer and fails with its error code if it refused (for not_contact: send a contact_request first). The payload is sealed (end-to-end encrypted; relays cannot read it) when every recipient publishes an encryption key: the result says `sealed`; when false, `unsealed_reason` and `no_enc_key` (who has no key) say why. `plain`: true sends it unsealed on purpose.",
        schema: r#"{"type":"object","properties":{
            "to":{"type":"array","items":{"type":"string"},"minItems":1},
            "text":{"type":"string"},
            "type":{"type":"string"},
            "payload":{"type":"object"},
            "ack_deadline":{"type":"string"},
            "corr":{"type":"string"},
            "wait":{"type":"string"},
            "plain":{"type":"boolean","description":"Send unsealed (relays can read it); default false"},
            "sealed":{"type":"boolean","description":"Fail instead of sending unsealed when a recipient publishes no encryption key; default false"}},
          "required":["to"],"additionalProperties":false}"#,
    },
    ToolDef {
        name: "inbox",
        description: "One page of the inbox, oldest first, after `after` (a cursor from an earlier page; default: the start). Returns items (cursor, envelope, ack: pending/acked/timed_out for messages that asked you for an ack) and `next`, the cursor to pass next time. A sealed (end-to-end encrypted) item has `sealed`: true and `payload`, the opened payload to read instead of the envelope's; one that cannot be opened has `open_error` (`reason`: bad_sender, not_a_recipient, unknown_key_id, key_expired, key_not_valid, bad_tag, bad_padding, bad_plaintext, malformed).",
        schema: r#"{"type":"object","properties":{
            "after":{"type":"string"},
            "limit":{"type":"integer","minimum":1}},
          "additionalProperties":false}"#,
    },
    ToolDef {
        name: "wait_for_messages",
        description: "Wait until the inbox has items after `after` (default: the start), at most `timeout_s` seconds (default 25, at most 60), and return them with `next`. Pass `next` to the following call: across calls no item is lost or repeated. `timed_out` is true when nothing came. Items are as the inbox tool returns them (sealed ones opened: `sealed`, `payload` or `open_error`).",
        schema: r#"{"type":"object","properties":{
            "after":{"type":"string"},
            "timeout_s":{"type":"integer","minimum":1,"maximum":60},
            "limit":{"type":"integer","minimum":1}},
          "additionalProperties":false}"#,
    },
    ToolDef {
        name: "ack",
        description: "Acknowledge a message you received: `id` (64 hex), `status` received/processed/rejected (default received), optional `reason`.",
        schema: r#"{"type":"object","properties":{
            "id":{"type":"string"},
            "status":{"type":"string","enum":["received","processed","rejected"]},
            "reason":{"type":"string"},
            "from":{"type":"string","description":"The sender, if the message is no longer in the first pages of the inbox"}},
          "required":["id"],"additionalProperties":false}"#,
    },
    ToolDef {
        name: "status",
        description: "Delivery state of a message you sent (`id`), per recipient: accepted, forwarded, delivered, acked (with ack_status), timed_out or dead_lettered (with reason).",
        schema: r#"{"type":"object","properties":{"id":{"type":"string"}},"required":["id"],"additionalProperties":false}"#,
    },
    ToolDef {
        name: "resolve",
        description: "Fetch an agent's key log (`handle`), verified from its first entry: current key, key id, recovery key, tier.",
        schema: r#"{"type":"object","properties":{"handle":{"type":"string"}},"required":["handle"],"additionalProperties":false}"#,
    },
    ToolDef {
        name: "contacts_list",
        description: "Who may send you messages, and at which level (read, message, task).",
        schema: NO_ARGS,
    },
    ToolDef {
        name: "contacts_add",
        description: "Allow `handle` to send you messages up to `level` (read, message, task).",
        schema: r#"{"type":"object","properties":{"handle":{"type":"string"},"level":{"type":"string","enum":["read","message","task"]}},"required":["handle","level"],"additionalProperties":false}"#,
    },
    ToolDef {
        name: "contacts_remove",
        description: "Stop accepting messages from `handle`.",
        schema: r#"{"type":"object","properties":{"handle":{"type":"string"}},"required":["handle"],"additionalProperties":false}"#,
    },
    ToolDef {
        name: "contact_request",
        description: "Ask `handle` to let you message them at `level` (read, message, task), with an optional `note`. They answer later, and no notice comes back either way: once they accept, send to them works (until then it fails with not_contact).",
        schema: r#"{"type":"object","properties":{"handle":{"type":"string"},"level":{"type":"string","enum":["read","message","task"]},"note":{"type":"string"}},"required":["handle","level"],"additionalProperties":false}"#,
    },
    ToolDef {
        name: "requests_list",
        description: "Contact requests waiting for your answer (id, from, level, note).",
        schema: NO_ARGS,
    },
    ToolDef {
        name: "requests_accept",
        description: "Accept contact request `id` (at the level asked, or `level`).",
        schema: r#"{"type":"object","properties":{"id":{"type":"string"},"level":{"type":"string","enum":["read","message","task"]}},"required":["id"],"additionalProperties":false}"#,
    },
    ToolDef {
        name: "requests_reject",
        description: "Reject contact request `id`.",
        schema: r#"{"type":"object","properties":{"id":{"type":"string"}},"required":["id"],"additionalProperties":false}"#,
    },
    ToolDef {
        name: "profile_set",
        description: "Publish your signed profile, so other agents can learn what you do and find you. It replaces your previous one. Only you and agents you granted a contact level can read it, unless `listed` is true: then every agent of your relay can read it and find it with the find tool. `name` is required (1 to 64 characters); `description` at most 280 characters; `capabilities`: what you can do, each {id, version, tags} where id and tags are lower-case words like code-review or sql.postgres; `accepts`: message types you handle (message, task_request, x-...); `ttl`: how long it stays valid (default 30d, at most your relay's limit); publish it again before it expires.",
        schema: r#"{"type":"object","properties":{
            "name":{"type":"string","minLength":1,"maxLength":64},
            "description":{"type":"string","maxLength":280},
            "capabilities":{"type":"array","maxItems":32,"items":{"type":"object","properties":{
                "id":{"type":"string","description":"[a-z0-9] then [a-z0-9._-], at most 64 bytes"},
                "version":{"type":"string","description":"1 to 32 of [A-Za-z0-9._+-]"},
                "tags":{"type":"array","maxItems":8,"items":{"type":"string"}}},
              "required":["id"],"additionalProperties":false}},
            "accepts":{"type":"array","maxItems":32,"items":{"type":"string"}},
            "platform":{"type":"string","description":"The agent framework you run on"},
            "model":{"type":"string","description":"The model behind you"},
            "listed":{"type":"boolean","description":"In the relay's directory (default false)"},
            "ttl":{"type":"string","description":"30s, 12h, 30d, ... (default 30d)"}},
          "required":["name"],"additionalProperties":false}"#,
    },
    ToolDef {
        name: "profile_show",
        description: "Read an agent's profile (`handle`; default: your own), verified against the agent's key log (its key at the time it was signed, the signature, the handle): name, description, capabilities, accepted message types, and the tier the relay reports. not_found means there is none you may see: the agent has none, it expired, or it is unlisted and you are not its contact.",
        schema: r#"{"type":"object","properties":{"handle":{"type":"string"}},"additionalProperties":false}"#,
    },
    ToolDef {
        name: "find",
        description: "Search your relay's directory of listed profiles: by `capability` (an exact capability id), `text` (case-insensitive, in the name, description, capability ids and tags), `min_tier` (trust tier level). Returns `results` (each a verified profile with its handle and tier) and `next`: pass it as `cursor` for the following page (null when there is no more). `all` follows the pages itself (at most 20). `status` keeps the agents whose presence is that (available, busy, away, offline). With `federated: true` your relay's peers are searched too: one page from each relay (no cursor, no `all`), with `relays` (each relay and whether it answered) and `partial` (true when one did not); remote profiles are verified like local ones.",
        schema: r#"{"type":"object","properties":{
            "capability":{"type":"string"},
            "text":{"type":"string","minLength":1,"maxLength":64},
            "min_tier":{"type":"integer","minimum":0},
            "limit":{"type":"integer","minimum":1},
            "cursor":{"type":"string"},
            "federated":{"type":"boolean"},
            "status":{"type":"string","enum":["available","busy","away","offline"]},
            "all":{"type":"boolean"}},
          "additionalProperties":false}"#,
    },
    ToolDef {
        name: "presence_set",
        description: "Tell the agents you granted a contact level how available you are. `status`: busy or away (you are occupied: they should expect slow answers; for 60 minutes unless `minutes` says otherwise), or available (ends busy or away early; 5 minutes by default). `minutes`: how long it holds, at most your relay's limit (1440 on the reference relay); afterwards you are available again. `note`: a short text for them (at most 280 characters), e.g. what you are working on. The status is signed with your key. Your contacts see it only while you are connected: this call counts as a heartbeat (about a minute), and you stay connected while wait_for_messages waits or an inbox subscription is open; otherwise they see offline. Returns `shown`: what your contacts see now.",
        schema: r#"{"type":"object","properties":{
            "status":{"type":"string","enum":["available","busy","away"]},
            "minutes":{"type":"integer","minimum":1},
            "note":{"type":"string","maxLength":280}},
          "required":["status"],"additionalProperties":false}"#,
    },
    ToolDef {
        name: "presence_show",
        description: "Whether an agent (`handle`; default: yourself) is reachable now. `status`: available, busy, away, or offline (it holds no connection to its relay: a reply may take long). For an agent that granted you a contact level (`view` full) also `last_seen` (ms since the Unix epoch; null when its relay has not seen it since it started) and, from its signed status, `note` and `expires`, verified against the agent's key log (`verified`). For another agent with a listed profile only `status` (`view` coarse, as the relay reports it). not_found: you may not see its presence (it did not grant you a level and has no listed profile), or it is on another relay (not supported yet).",
        schema: r#"{"type":"object","properties":{"handle":{"type":"string"}},"additionalProperties":false}"#,
    },
    ToolDef {
        name: "who",
        description: "The presence of your contacts (the agents you granted a contact level) on your relay: `presence`, a list of {handle, status, view, last_seen, note, expires, verified} as presence_show returns them, and `count`. Use it to choose whom to ask: available agents answer soonest; busy, away and offline ones may take long. Contacts whose presence you may not see (they did not grant you a level and have no listed profile) and contacts on other relays are left out.",
        schema: NO_ARGS,
    },
];

/// Every tool: [`TOOLS`], then the conversation tools.
pub fn all() -> impl Iterator<Item = &'static ToolDef> {
    TOOLS.iter().chain(super::conv::TOOLS)
}

/// Formica's JSON value as serde's.
pub fn to_json(v: &Value) -> Json {
    serde_json::from_slice(&canon::canonicalize(v)).unwrap_or(Json::Null)
}

/// Arguments, checked against what the tool takes (the schema says the same; a client that
/// does not check it still gets a clear error).
pub(super) struct Args<'a> {
    pub(super) tool: &'a str,
    pub(super) m: &'a Map<String, Json>,
}

impl Args<'_> {
    pub(super) fn input(&self, msg: String) -> Fail {
        Fail::new(Exit::Input, format!("{}: {msg}", self.tool))
    }
    pub(super) fn str_opt(&self, k: &str) -> Result<Option<String>, Fail> {
        match self.m.get(k) {
            None | Some(Json::Null) => Ok(None),
            Some(Json::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.input(format!("`{k}` must be a string"))),
        }
    }
    pub(super) fn str_req(&self, k: &str) -> Result<String, Fail> {
        self.str_opt(k)?
            .ok_or_else(|| self.input(format!("`{k}` is required")))
    }
    pub(super) fn u64_opt(&self, k: &str) -> Result<Option<u64>, Fail> {
        match self.m.get(k) {
            None | Some(Json::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.input(format!("`{k}` must be a whole number"))),
        }
    }
    pub(super) fn bool_opt(&self, k: &str) -> Result<Option<bool>, Fail> {
        match self.m.get(k) {
            None | Some(Json::Null) => Ok(None),
            Some(Json::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.input(format!("`{k}` must be true or false"))),
        }
    }
    pub(super) fn strs(&self, k: &str, v: Option<&Json>) -> Result<Vec<String>, Fail> {
        match v {
            None | Some(Json::Null) => Ok(Vec::new()),
            Some(Json::Array(a)) => a
                .iter()
                .map(|x| x.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or_else(|| self.input(format!("`{k}` is a list of strings"))),
            Some(_) => Err(self.input(format!("`{k}` is a list of strings"))),
        }
    }
    pub(super) fn only(&self, allowed: &[&str]) -> Result<(), Fail> {
        match self.m.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(self.input(format!(
                "unknown argument `{k}` (it takes: {})",
                allowed.join(", ")
            ))),
            None => Ok(()),
        }
    }
}

fn words<T: Copy>(tool: &str, field: &str, s: &str, all: &[(&str, T)]) -> Result<T, Fail> {
    all.iter()
        .find(|(w, _)| *w == s)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            Fail::new(
                Exit::Input,
                format!(
                    "{tool}: `{field}` is one of {}",
                    all.iter().map(|(w, _)| *w).collect::<Vec<_>>().join(", ")
                ),
            )
        })
}

fn limit_u32(a: &Args<'_>) -> Result<Option<u32>, Fail> {
    a.u64_opt("limit")?
        .map(|n| u32::try_from(n).map_err(|_| a.input("`limit` is too large".into())))
        .transpose()
}

/// Runs tool `name` with `args` as the configured identity: the structured result, or the
/// failure keytool would print (protocol code, message, hint).
pub fn call(cfg: &Config, name: &str, args: &Map<String, Json>) -> Result<Json, Fail> {
    let out = Out::capturing();
    let ctx = Ctx {
        out: &out,
        home: &cfg.home,
        relay: cfg.relay.as_deref(),
    };
    let id = cfg.identity.as_str();
    let a = Args {
        tool: name,
        m: args,
    };
    match name {
        "whoami" => {
            a.only(&[])?;
            offline::whoami(&out, &cfg.home, id)?;
        }
        "send" => {
            a.only(&[
                "to",
                "text",
                "type",
                "payload",
                "ack_deadline",
                "corr",
                "wait",
                "plain",
                "sealed",
            ])?;
            let to: Vec<String> = match args.get("to") {
                Some(Json::Array(v)) if !v.is_empty() => v
                    .iter()
                    .map(|h| h.as_str().map(str::to_owned))
                    .collect::<Option<_>>()
                    .ok_or_else(|| a.input("`to` holds handles (strings)".into()))?,
                _ => return Err(a.input("`to` is a non-empty list of handles".into())),
            };
            let payload_doc = match args.get("payload") {
                None | Some(Json::Null) => None,
                Some(p @ Json::Object(_)) => Some(
                    formica_protocol::json::parse(
                        p.to_string().as_bytes(),
                        formica_protocol::json::JsonLimits::default(),
                    )
                    .map_err(|e| Fail::code(e.code(), format!("send: `payload`: {e}")))?,
                ),
                Some(_) => return Err(a.input("`payload` must be a JSON object".into())),
            };
            let text = a.str_opt("text")?;
            let mut rest: Vec<String> = Vec::new();
            match (&text, &payload_doc) {
                (Some(t), None) => rest.push(t.clone()),
                (None, Some(_)) if args.get("type").is_none_or(Json::is_null) => {
                    return Err(
                        a.input("`payload` needs `type` (the payload's message type)".into())
                    )
                }
                (None, Some(_)) => {}
                (Some(_), Some(_)) => {
                    return Err(a.input("give `text` or `payload`, not both".into()))
                }
                (None, None) => {
                    return Err(a.input("`text` (or `type` and `payload`) is required".into()))
                }
            }
            rest.extend(to[1..].iter().cloned());
            let dur = |k: &str| -> Result<Option<Duration>, Fail> {
                a.str_opt(k)?
                    .map(|s| online::parse_duration(&s).map_err(|e| a.input(format!("`{k}`: {e}"))))
                    .transpose()
            };
            let wait = dur("wait")?.unwrap_or(Duration::from_secs(5));
            if wait > Duration::from_secs(60) {
                return Err(a.input("`wait` is at most 1m".into()));
            }
            online::send(
                &ctx,
                id,
                SendArgs {
                    to: to[0].clone(),
                    rest,
                    msg_type: a.str_opt("type")?,
                    payload: None,
                    payload_doc,
                    ack_deadline: dur("ack_deadline")?,
                    corr: a.str_opt("corr")?,
                    no_shorten: false,
                    wait,
                    plain: a.bool_opt("plain")?.unwrap_or(false),
                    sealed: a.bool_opt("sealed")?.unwrap_or(false),
                },
            )?;
        }
        "inbox" => {
            a.only(&["after", "limit"])?;
            let after = a.str_opt("after")?;
            return page(&ctx, id, after, limit_u32(&a)?, None);
        }
        "wait_for_messages" => {
            a.only(&["after", "timeout_s", "limit"])?;
            let after = a.str_opt("after")?;
            let secs = a.u64_opt("timeout_s")?.unwrap_or(WAIT_S_DEFAULT);
            if !(1..=WAIT_S_MAX).contains(&secs) {
                return Err(a.input(format!("`timeout_s` is 1..={WAIT_S_MAX}")));
            }
            let limit = limit_u32(&a)?;
            let first = page(&ctx, id, after.clone(), limit, Some(false))?;
            if first["items"].as_array().is_some_and(|v| !v.is_empty()) {
                return Ok(first);
            }
            // Nothing yet: follow the stream from the same cursor until one item arrives.
            let s = online::session(&ctx, id)?;
            let mut came = false;
            watch::follow(
                &s,
                after.clone(),
                Some(Duration::from_secs(secs)),
                false,
                None,
                |_, _| {
                    came = true;
                    Ok(false)
                },
            )?;
            return if came {
                page(&ctx, id, after, limit, Some(false))
            } else {
                Ok(first_with_timeout(first))
            };
        }
        "ack" => {
            a.only(&["id", "status", "reason", "from"])?;
            let status = match a.str_opt("status")? {
                None => AckStatus::Received,
                Some(s) => words(name, "status", &s, AckStatus::WORDS)?,
            };
            online::ack(
                &ctx,
                id,
                &a.str_req("id")?,
                status,
                a.str_opt("reason")?,
                a.str_opt("from")?.as_deref(),
            )?;
        }
        "status" => {
            a.only(&["id"])?;
            online::status(&ctx, id, &a.str_req("id")?)?;
        }
        "resolve" => {
            a.only(&["handle"])?;
            online::resolve(&ctx, &a.str_req("handle")?, id)?;
        }
        "contacts_list" => {
            a.only(&[])?;
            online::contacts_list(&ctx, id)?;
            return Ok(Json::Object(list_of("contacts", out.take())));
        }
        "contacts_add" => {
            a.only(&["handle", "level"])?;
            let level = words(name, "level", &a.str_req("level")?, ContactLevel::WORDS)?;
            online::contacts_add(&ctx, id, &a.str_req("handle")?, level)?;
        }
        "contacts_remove" => {
            a.only(&["handle"])?;
            online::contacts_remove(&ctx, id, &a.str_req("handle")?)?;
        }
        "contact_request" => {
            a.only(&["handle", "level", "note"])?;
            let level = words(name, "level", &a.str_req("level")?, ContactLevel::WORDS)?;
            online::contact_request(&ctx, id, &a.str_req("handle")?, level, a.str_opt("note")?)?;
        }
        "requests_list" => {
            a.only(&[])?;
            online::requests_list(&ctx, id)?;
            return Ok(Json::Object(list_of("requests", out.take())));
        }
        "requests_accept" => {
            a.only(&["id", "level"])?;
            let level = a
                .str_opt("level")?
                .map(|l| words(name, "level", &l, ContactLevel::WORDS))
                .transpose()?;
            online::requests_answer(&ctx, id, &a.str_req("id")?, Some(level))?;
        }
        "requests_reject" => {
            a.only(&["id"])?;
            online::requests_answer(&ctx, id, &a.str_req("id")?, None)?;
        }
        "profile_set" => {
            a.only(&[
                "name",
                "description",
                "capabilities",
                "accepts",
                "platform",
                "model",
                "listed",
                "ttl",
            ])?;
            let spec = super::profile::spec(&a)?;
            online::profile_set(&ctx, id, &spec)?;
        }
        "profile_show" => {
            a.only(&["handle"])?;
            online::profile_show(&ctx, id, a.str_opt("handle")?.as_deref())?;
        }
        "find" => {
            a.only(&[
                "capability",
                "text",
                "min_tier",
                "limit",
                "cursor",
                "all",
                "federated",
                "status",
            ])?;
            let min_tier = a
                .u64_opt("min_tier")?
                .map(|n| u32::try_from(n).map_err(|_| a.input("`min_tier` is too large".into())))
                .transpose()?;
            let q = FindQuery {
                capability: a.str_opt("capability")?,
                text: a.str_opt("text")?,
                min_tier,
                limit: limit_u32(&a)?,
                cursor: a.str_opt("cursor")?,
                all: a.bool_opt("all")?.unwrap_or(false),
                federated: a.bool_opt("federated")?.unwrap_or(false),
                status: a.str_opt("status")?,
            };
            if let Some(s) = &q.status {
                if !["available", "busy", "away", "offline"].contains(&s.as_str()) {
                    return Err(a.input("`status` is available, busy, away or offline".into()));
                }
            }
            if q.federated && (q.cursor.is_some() || q.all) {
                return Err(a.input(
                    "`federated` gives one page per relay: it takes no `cursor` or `all`".into(),
                ));
            }
            online::find(&ctx, id, &q)?;
            let mut results = out.take();
            let last = results.pop().map(|v| to_json(&v)).unwrap_or(Json::Null);
            let mut m = list_of("results", results);
            m.insert("count".into(), last["count"].clone());
            m.insert("next".into(), last["next"].clone());
            if q.federated {
                m.insert("partial".into(), last["partial"].clone());
                m.insert("relays".into(), last["relays"].clone());
            }
            return Ok(Json::Object(m));
        }
        "presence_set" | "presence_show" | "who" => return super::presence::call(&ctx, id, &a),
        n if super::conv::TOOLS.iter().any(|t| t.name == n) => {
            return super::conv::call(&ctx, id, &a)
        }
        other => return Err(Fail::new(Exit::Input, format!("no tool named {other:?}"))),
    }
    let mut results = out.take();
    Ok(match results.len() {
        1 => to_json(&results.remove(0)),
        _ => Json::Object(list_of("results", results)),
    })
}

fn list_of(key: &str, items: Vec<Value>) -> Map<String, Json> {
    let mut m = Map::new();
    m.insert("ok".into(), Json::Bool(true));
    m.insert(key.into(), Json::Array(items.iter().map(to_json).collect()));
    m
}

fn first_with_timeout(mut v: Json) -> Json {
    if let Json::Object(m) = &mut v {
        m.insert("timed_out".into(), Json::Bool(true));
    }
    v
}

/// One inbox page after `after` as `{"ok","items","next"}` (`next` is the cursor to pass next
/// time: the last item's, or `after` itself when there is none); with `timed_out` when given.
pub fn page(
    ctx: &Ctx<'_>,
    id: &str,
    after: Option<String>,
    limit: Option<u32>,
    timed_out: Option<bool>,
) -> Result<Json, Fail> {
    let next = online::inbox(ctx, id, after.as_deref(), limit)?;
    let items = ctx.out.take();
    let mut m = list_of("items", items);
    m.insert("next".into(), Json::String(next));
    if let Some(t) = timed_out {
        m.insert("timed_out".into(), Json::Bool(t));
    }
    Ok(Json::Object(m))
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Every schema is a JSON object schema, the level enums are the protocol's words, and an
    /// argument outside the schema is refused by the tool itself.
    #[test]
    fn every_schema_parses_and_names_what_the_tool_takes() {
        let levels: Vec<&str> = ContactLevel::WORDS.iter().map(|(w, _)| *w).collect();
        for t in all() {
            let v: Json = serde_json::from_str(t.schema)
                .unwrap_or_else(|e| panic!("{}: schema is not JSON: {e}", t.name));
            assert_eq!(v["type"], "object", "{}", t.name);
            assert_eq!(v["additionalProperties"], false, "{}", t.name);
            let props = v["properties"].as_object().expect("properties");
            if let Some(p) = props.get("level") {
                let e: Vec<&str> = p["enum"]
                    .as_array()
                    .expect("level enum")
                    .iter()
                    .filter_map(Json::as_str)
                    .collect();
                assert_eq!(e, levels, "{}", t.name);
            }
            let mut args = Map::new();
            args.insert("no_such_argument".into(), Json::Bool(true));
            let cfg = Config {
                home: std::env::temp_dir().join("formica-mcp-schema-test-nonexistent"),
                relay: Some("http://127.0.0.1:1".into()),
                identity: "x".into(),
            };
            let e = call(&cfg, t.name, &args).expect_err(t.name);
            assert!(
                e.message.contains("unknown argument"),
                "{}: {}",
                t.name,
                e.message
            );
        }
    }
}
