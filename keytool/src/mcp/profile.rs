//! The arguments of the MCP tool `profile_set`, from JSON: checked as `keytool profile set`
//! checks its command line (`online::check_spec`), with capabilities as objects.

use super::tools::Args;
use crate::online::{self, ProfileSpec};
use crate::output::Fail;
use formica_protocol::{Capability, MessageType};
use serde_json::Value as Json;

/// `profile_set`'s arguments, checked as `keytool profile set` checks its command line.
pub(super) fn spec(a: &Args<'_>) -> Result<ProfileSpec, Fail> {
    let mut capabilities = Vec::new();
    match a.m.get("capabilities") {
        None | Some(Json::Null) => {}
        Some(Json::Array(list)) => {
            for c in list {
                let Some(o) = c.as_object() else {
                    return Err(a.input("`capabilities` holds objects {id, version, tags}".into()));
                };
                if let Some(k) = o
                    .keys()
                    .find(|k| !["id", "version", "tags"].contains(&k.as_str()))
                {
                    return Err(a.input(format!(
                        "a capability has no member `{k}` (it takes: id, version, tags)"
                    )));
                }
                let c = Capability {
                    id: o.get("id").and_then(Json::as_str).unwrap_or("").to_owned(),
                    version: match o.get("version") {
                        None | Some(Json::Null) => None,
                        Some(v) => Some(
                            v.as_str()
                                .ok_or_else(|| {
                                    a.input("a capability's `version` is a string".into())
                                })?
                                .to_owned(),
                        ),
                    },
                    tags: a.strs("tags", o.get("tags"))?,
                };
                online::check_capability(&c)
                    .map_err(|e| a.input(format!("`capabilities`: {e}")))?;
                capabilities.push(c);
            }
        }
        Some(_) => {
            return Err(a.input("`capabilities` is a list of objects {id, version, tags}".into()))
        }
    }
    let accepts = a
        .strs("accepts", a.m.get("accepts"))?
        .iter()
        .map(|t| {
            MessageType::parse(t)
                .ok_or_else(|| a.input(format!("`accepts`: {t:?} is not a message type")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ttl = match a.str_opt("ttl")? {
        Some(t) => online::parse_ttl(&t).map_err(|e| a.input(format!("`ttl`: {e}")))?,
        None => online::TTL_DEFAULT,
    };
    let spec = ProfileSpec {
        name: a.str_req("name")?,
        description: a.str_opt("description")?,
        capabilities,
        accepts,
        platform: a.str_opt("platform")?,
        model: a.str_opt("model")?,
        listed: a.bool_opt("listed")?.unwrap_or(false),
        ttl,
    };
    online::check_spec(&spec).map_err(|e| a.input(e))?;
    Ok(spec)
}
