//! The MCP tools `presence_set`, `presence_show` and `who`: their arguments, checked, and the
//! commands they run (`presence set --heartbeat`, `presence show`, `who`).

use super::tools::{to_json, Args};
use crate::online::{self, Ctx, StatusSpec};
use crate::output::{Exit, Fail};
use serde_json::{Map, Value as Json};
use std::time::Duration;

/// Runs one of the presence tools (`a` names which) as identity `id`.
pub(super) fn call(ctx: &Ctx<'_>, id: &str, a: &Args<'_>) -> Result<Json, Fail> {
    match a.tool {
        "presence_set" => {
            a.only(&["status", "minutes", "note"])?;
            let note = a.str_opt("note")?;
            let status = online::check_status(&a.str_req("status")?, note.as_deref())
                .map_err(|e| a.input(e))?;
            let duration = match a.u64_opt("minutes")? {
                None => None,
                Some(0) => return Err(a.input("`minutes` is at least 1".into())),
                Some(m) => Some(Duration::from_secs(
                    m.checked_mul(60)
                        .ok_or_else(|| a.input("`minutes` is too large".into()))?,
                )),
            };
            let spec = StatusSpec {
                status,
                duration,
                note,
            };
            // The agent calling is evidently there: the status shows at once (PRES-1).
            online::presence_set(ctx, id, &spec, true)?;
        }
        "presence_show" => {
            a.only(&["handle"])?;
            online::presence_show(ctx, id, a.str_opt("handle")?.as_deref())?;
        }
        "who" => {
            a.only(&[])?;
            online::who(ctx, id)?;
            let mut lines = ctx.out.take();
            let last = lines.pop().map(|v| to_json(&v)).unwrap_or(Json::Null);
            let mut m = Map::new();
            m.insert("ok".into(), Json::Bool(true));
            m.insert(
                "presence".into(),
                Json::Array(lines.iter().map(to_json).collect()),
            );
            m.insert("count".into(), last["count"].clone());
            return Ok(Json::Object(m));
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
