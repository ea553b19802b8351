//! The log form of the conversation events: [`Event::Conv`] (an event entry, a removal) and
//! [`Event::ConvReplica`] (SPEC.md CONVO-13: the entries a conversation's home relay sent, as
//! served, with the home relay, its terms and the invitees this relay declined for).

use super::events::{ConvChange, Event};
use formica_protocol::conversation::Entry;
use formica_protocol::envelope::{EnvelopeLimits, MessageId};
use formica_protocol::json::JsonLimits;
use formica_protocol::schema::Fields;
use formica_protocol::{Handle, Object, RelayHost, Value};

pub(super) fn encode_replica(
    o: &mut Object,
    home: &RelayHost,
    conv: &MessageId,
    terms: (i64, i64),
    entries: &[Entry],
    declined: &[(Handle, String)],
) {
    o.insert("t", "conv_replica".into());
    o.insert("home", home.as_str().into());
    o.insert("conv", conv.to_hex().into());
    o.insert("turns", Value::Int(terms.0));
    o.insert("expires", Value::Int(terms.1));
    o.insert(
        "entries",
        Value::Array(entries.iter().map(|e| e.wire_value()).collect()),
    );
    o.insert(
        "declined",
        Value::Array(
            declined
                .iter()
                .map(|(h, r)| {
                    let mut x = Object::new();
                    x.insert("handle", h.as_str().into());
                    x.insert("reason", r.as_str().into());
                    Value::Object(x)
                })
                .collect(),
        ),
    );
}

pub(super) fn decode_replica(
    f: &mut Fields<'_>,
    at: i64,
    json: JsonLimits,
) -> Result<Event, String> {
    let e = |x: formica_protocol::schema::SchemaError| x.to_string();
    let limits = EnvelopeLimits {
        json,
        recipients_max: usize::MAX,
        payload_bytes_max: usize::MAX,
    };
    let entries = f
        .req("entries")
        .map_err(e)?
        .as_array()
        .ok_or("bad conv_replica entries")?
        .iter()
        .map(|v| Entry::from_value(v, &limits).map_err(|x| x.to_string()))
        .collect::<Result<Vec<_>, String>>()?;
    let declined = f
        .req("declined")
        .map_err(e)?
        .as_array()
        .ok_or("bad conv_replica declined")?
        .iter()
        .map(|v| {
            let o = v.as_object().ok_or("bad declined")?;
            let h = o
                .get("handle")
                .and_then(Value::as_str)
                .and_then(|s| Handle::parse(s).ok())
                .ok_or("bad declined handle")?;
            let r = o
                .get("reason")
                .and_then(Value::as_str)
                .ok_or("bad declined reason")?;
            Ok((h, r.to_owned()))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let home = RelayHost::parse(f.req_str("home").map_err(e)?).map_err(|x| x.to_string())?;
    let conv = MessageId::parse_hex(f.req_str("conv").map_err(e)?).ok_or("bad conv")?;
    Ok(Event::ConvReplica {
        at,
        home,
        conv,
        turns: f
            .req_int("turns", 1, formica_protocol::json::INT_ABS_MAX)
            .map_err(e)?,
        expires: f
            .req_int("expires", 0, formica_protocol::json::INT_ABS_MAX)
            .map_err(e)?,
        entries,
        declined,
    })
}

pub(super) fn encode_conv(o: &mut Object, conv: &MessageId, change: &ConvChange) {
    o.insert("t", "conv".into());
    o.insert("conv", conv.to_hex().into());
    match change {
        ConvChange::Entry(ev) => o.insert("event", ev.to_value()),
        ConvChange::Removed => o.insert("removed", Value::Bool(true)),
    };
}

pub(super) fn decode_conv(f: &mut Fields<'_>, at: i64) -> Result<Event, String> {
    let e = |x: formica_protocol::schema::SchemaError| x.to_string();
    let conv = MessageId::parse_hex(f.req_str("conv").map_err(e)?).ok_or("bad conv")?;
    let change = match f.opt("event") {
        Some(v) => ConvChange::Entry(
            formica_protocol::conversation::ConvEvent::from_value(v).map_err(|x| x.to_string())?,
        ),
        None => match f.req("removed").map_err(e)? {
            Value::Bool(true) => ConvChange::Removed,
            _ => return Err("bad conv change".into()),
        },
    };
    Ok(Event::Conv { at, conv, change })
}
