//! How the projections' rows are written: keys that sort the way the state reads them, and
//! values as canonical JSON (records) or a few fixed-width fields before the wire bytes (inbox
//! items and queued transfers, read on every page and transfer).

use super::records::{Agent, InboxItem, MessageRecord, PeerRecord, PendingRequest, Queued};
use super::records::{RecipientStatus, RemoteLog};
use crate::engine::events::PeerStatus;
use crate::store::tables::{from_sortable_i64, sortable_i64};
use formica_protocol::envelope::{AckStatus, ContactLevel, DeliveryState, MessageId, MessageType};
use formica_protocol::json::{self, JsonLimits};
use formica_protocol::keylog::{KeyLog, SignedKeyLogEntry};
use formica_protocol::{canon, Handle, Object, PublicKey, RelayHost, Value};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

fn limits() -> JsonLimits {
    JsonLimits {
        bytes_max: 64 << 20,
        depth_max: 64,
    }
}

fn json_bytes(o: Object) -> Vec<u8> {
    canon::canonicalize(&Value::Object(o))
}

fn parse(b: &[u8]) -> Option<Object> {
    match json::parse(b, limits()).ok()? {
        Value::Object(o) => Some(o),
        _ => None,
    }
}

fn int(o: &Object, k: &str) -> Option<i64> {
    o.get(k)?.as_i64()
}
fn string<'a>(o: &'a Object, k: &str) -> Option<&'a str> {
    o.get(k)?.as_str()
}
fn handle(o: &Object, k: &str) -> Option<Handle> {
    Handle::parse(string(o, k)?).ok()
}
fn hval(h: &Handle) -> Value {
    Value::from(h.as_str())
}
fn ints(v: &VecDeque<i64>) -> Value {
    Value::Array(v.iter().map(|x| Value::Int(*x)).collect())
}
fn read_ints(o: &Object, k: &str) -> Option<VecDeque<i64>> {
    o.get(k)?.as_array()?.iter().map(|x| x.as_i64()).collect()
}
fn entries(es: &[SignedKeyLogEntry]) -> Value {
    Value::Array(es.iter().map(|e| e.value().clone()).collect())
}
fn read_entries(o: &Object, k: &str) -> Option<Vec<SignedKeyLogEntry>> {
    o.get(k)?
        .as_array()?
        .iter()
        .map(|v| SignedKeyLogEntry::from_value(v.clone()).ok())
        .collect()
}
/// A key log from its entries, each checked against the one before (as when it was built).
fn read_log(o: &Object, k: &str) -> Option<KeyLog> {
    read_log_after(o, k, None)
}

/// Like [`read_log`], starting from `known`, a log checked before, when its entries are the
/// first ones read: only the entries after them are checked (their signatures verified).
/// A node that loads its state again after another node's commit (`writer::turn`) checks only
/// what changed, not every entry of every log again: that made each catch-up cost a
/// signature check per key log entry the relay holds.
fn read_log_after(o: &Object, k: &str, known: Option<&KeyLog>) -> Option<KeyLog> {
    let read = read_entries(o, k)?;
    let mut rest = read.iter();
    let mut log = match known {
        Some(l) if l.entries().len() <= read.len() && l.entries() == &read[..l.entries().len()] => {
            rest = read[l.entries().len()..].iter();
            l.clone()
        }
        _ => KeyLog::start(rest.next()?.clone()).ok()?,
    };
    for e in rest {
        log.append(e.clone()).ok()?;
    }
    Some(log)
}

// ---- keys ----

/// `handle NUL`: every row of one agent's inbox starts with it.
pub fn inbox_prefix(h: &Handle) -> Vec<u8> {
    let mut k = h.as_str().as_bytes().to_vec();
    k.push(0);
    k
}
pub fn inbox_key(h: &Handle, cursor: u64) -> Vec<u8> {
    let mut k = inbox_prefix(h);
    k.extend_from_slice(&cursor.to_be_bytes());
    k
}
pub fn inbox_key_cursor(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(
        k.get(k.len().checked_sub(8)?..)?.try_into().ok()?,
    ))
}
/// `time stored (sortable) || handle NUL || cursor`.
pub fn inbox_time_key(at: i64, h: &Handle, cursor: u64) -> Vec<u8> {
    let mut k = sortable_i64(at).to_vec();
    k.extend_from_slice(&inbox_key(h, cursor));
    k
}
/// The time, handle and cursor of an [`inbox_time_key`].
pub fn split_inbox_time_key(k: &[u8]) -> Option<(i64, Handle, u64)> {
    let at = from_sortable_i64(k)?;
    let rest = k.get(8..)?;
    let nul = rest.iter().position(|b| *b == 0)?;
    let h = Handle::parse(std::str::from_utf8(&rest[..nul]).ok()?).ok()?;
    Some((at, h, inbox_key_cursor(rest)?))
}
/// `sortable time || id`: the by-time index of messages and seen ids, and deadlines.
pub fn time_id_key(t: i64, id: &MessageId) -> Vec<u8> {
    let mut k = sortable_i64(t).to_vec();
    k.extend_from_slice(&id.0);
    k
}
pub fn split_time_id_key(k: &[u8]) -> Option<(i64, MessageId)> {
    let t = from_sortable_i64(k)?;
    Some((t, MessageId(k.get(8..40)?.try_into().ok()?)))
}
/// `host NUL`: every queued transfer of one peer starts with it.
pub fn peer_prefix(host: &RelayHost) -> Vec<u8> {
    let mut k = host.as_str().as_bytes().to_vec();
    k.push(0);
    k
}
pub fn outbound_key(host: &RelayHost, n: u64) -> Vec<u8> {
    let mut k = peer_prefix(host);
    k.extend_from_slice(&n.to_be_bytes());
    k
}
pub fn outbound_id_key(host: &RelayHost, id: &MessageId) -> Vec<u8> {
    let mut k = peer_prefix(host);
    k.extend_from_slice(&id.0);
    k
}
pub fn host_of_prefixed(k: &[u8]) -> Option<RelayHost> {
    let nul = k.iter().position(|b| *b == 0)?;
    RelayHost::parse(std::str::from_utf8(&k[..nul]).ok()?).ok()
}

// ---- inbox items and queued transfers: id (32) || at (8, sortable) || log record (8) ----
// The envelope's bytes are in the log record that stored it: a row points there instead of
// holding a second copy (which doubled what every commit writes).

pub fn item_value(id: &MessageId, at: i64, seq: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(48);
    v.extend_from_slice(&id.0);
    v.extend_from_slice(&sortable_i64(at));
    v.extend_from_slice(&seq.to_be_bytes());
    v
}
fn split_item(v: &[u8]) -> Option<(MessageId, i64, u64)> {
    if v.len() != 48 {
        return None;
    }
    let id = MessageId(v.get(..32)?.try_into().ok()?);
    let at = from_sortable_i64(v.get(32..40)?)?;
    let seq = u64::from_be_bytes(v.get(40..48)?.try_into().ok()?);
    Some((id, at, seq))
}
/// The log record an inbox item's or a queued transfer's row points at.
pub fn item_seq(v: &[u8]) -> Option<u64> {
    split_item(v).map(|(_, _, seq)| seq)
}
pub fn inbox_item(k: &[u8], v: &[u8]) -> Option<InboxItem> {
    let (id, at, seq) = split_item(v)?;
    Some(InboxItem {
        cursor: inbox_key_cursor(k)?,
        id,
        at,
        seq,
        wire: Arc::default(),
    })
}
pub fn queued(v: &[u8]) -> Option<Queued> {
    let (id, at, seq) = split_item(v)?;
    Some(Queued {
        id,
        seq,
        wire: Arc::default(),
        at,
    })
}

// ---- records ----

pub fn message_value(m: &MessageRecord) -> Vec<u8> {
    let mut o = Object::new();
    o.insert("sender", hval(&m.sender));
    o.insert("type", m.msg_type.as_str().into());
    o.insert("ts", Value::Int(m.ts));
    o.insert("at", Value::Int(m.at));
    o.insert("ack_by", m.ack_by.map(Value::Int).unwrap_or(Value::Null));
    let rs = m
        .recipients
        .iter()
        .map(|r| {
            let mut x = Object::new();
            x.insert("handle", hval(&r.handle));
            x.insert("state", r.state.as_str().into());
            x.insert("updated", Value::Int(r.updated));
            if let Some((id, st)) = &r.ack {
                x.insert("ack", id.to_hex().into());
                x.insert("ack_status", st.as_str().into());
            }
            if let Some(reason) = &r.reason {
                x.insert("reason", reason.as_str().into());
            }
            Value::Object(x)
        })
        .collect();
    o.insert("recipients", Value::Array(rs));
    if let Some(h) = &m.via {
        o.insert("via", h.as_str().into());
    }
    if let Some((c, seq)) = &m.conv {
        o.insert("conv", c.to_hex().into());
        if let Some(n) = seq {
            o.insert("conv_seq", Value::Int(*n as i64));
        }
    }
    json_bytes(o)
}

pub fn message_record(v: &[u8]) -> Option<MessageRecord> {
    let o = parse(v)?;
    let recipients = o
        .get("recipients")?
        .as_array()?
        .iter()
        .map(|r| {
            let x = r.as_object()?;
            let ack = match string(x, "ack") {
                Some(id) => Some((
                    MessageId::parse_hex(id)?,
                    AckStatus::parse(string(x, "ack_status")?)?,
                )),
                None => None,
            };
            Some(RecipientStatus {
                handle: handle(x, "handle")?,
                state: DeliveryState::parse(string(x, "state")?)?,
                updated: int(x, "updated")?,
                ack,
                reason: string(x, "reason").map(str::to_owned),
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(MessageRecord {
        sender: handle(&o, "sender")?,
        msg_type: MessageType::parse(string(&o, "type")?)?,
        ts: int(&o, "ts")?,
        at: int(&o, "at")?,
        ack_by: int(&o, "ack_by"),
        recipients,
        via: match string(&o, "via") {
            Some(h) => Some(RelayHost::parse(h).ok()?),
            None => None,
        },
        conv: match string(&o, "conv") {
            Some(c) => Some((
                MessageId::parse_hex(c)?,
                int(&o, "conv_seq").and_then(|n| u64::try_from(n).ok()),
            )),
            None => None,
        },
    })
}

pub fn agent_value(a: &Agent) -> Vec<u8> {
    let mut o = Object::new();
    o.insert("handle", hval(&a.handle));
    o.insert("keylog", entries(a.keylog.entries()));
    o.insert("registered_at", Value::Int(a.registered_at));
    o.insert("conflicts", entries(&a.conflicts));
    let mut contacts = Object::new();
    for (h, (level, since)) in &a.contacts {
        contacts.insert(
            h.as_str(),
            Value::Array(vec![level.as_str().into(), Value::Int(*since)]),
        );
    }
    o.insert("contacts", Value::Object(contacts));
    let mut requests = Object::new();
    for (id, r) in &a.requests {
        let mut x = Object::new();
        x.insert("from", hval(&r.from));
        x.insert("level", r.level.as_str().into());
        if let Some(n) = &r.note {
            x.insert("note", n.as_str().into());
        }
        x.insert("ts", Value::Int(r.ts));
        requests.insert(id.to_hex(), Value::Object(x));
    }
    o.insert("requests", Value::Object(requests));
    o.insert("requests_sent", ints(&a.requests_sent));
    o.insert("reports_sent", ints(&a.reports_sent));
    json_bytes(o)
}

pub fn agent(v: &[u8]) -> Option<Agent> {
    agent_after(v, |_| None)
}

/// Like [`agent`], with the agent's key log as checked before (`known`, by handle), which
/// [`read_log_after`] checks only from where it ends.
pub fn agent_after<'a>(v: &[u8], known: impl Fn(&Handle) -> Option<&'a KeyLog>) -> Option<Agent> {
    let o = parse(v)?;
    let h = handle(&o, "handle")?;
    let mut contacts = BTreeMap::new();
    for (h, x) in o.get("contacts")?.as_object()?.iter() {
        let x = x.as_array()?;
        contacts.insert(
            Handle::parse(h).ok()?,
            (
                ContactLevel::parse(x.first()?.as_str()?)?,
                x.get(1)?.as_i64()?,
            ),
        );
    }
    let mut requests = BTreeMap::new();
    for (id, x) in o.get("requests")?.as_object()?.iter() {
        let x = x.as_object()?;
        requests.insert(
            MessageId::parse_hex(id)?,
            PendingRequest {
                from: handle(x, "from")?,
                level: ContactLevel::parse(string(x, "level")?)?,
                note: string(x, "note").map(str::to_owned),
                ts: int(x, "ts")?,
            },
        );
    }
    Some(Agent {
        keylog: read_log_after(&o, "keylog", known(&h))?,
        handle: h,
        registered_at: int(&o, "registered_at")?,
        conflicts: read_entries(&o, "conflicts")?,
        contacts,
        requests,
        // From the agent's hot row (`hot_value`), read after this one.
        next_cursor: 1,
        read_upto: 0,
        acked_sent: 0,
        requests_sent: read_ints(&o, "requests_sent")?,
        reports_sent: read_ints(&o, "reports_sent")?,
    })
}

/// An agent's hot row: its next cursor, read mark and acks counted, 8 bytes each. They change
/// with nearly every message, so they are not in the agent's large row ([`agent_value`]).
pub fn hot_value(a: &Agent) -> Vec<u8> {
    let mut v = Vec::with_capacity(24);
    for n in [a.next_cursor, a.read_upto, a.acked_sent] {
        v.extend_from_slice(&n.to_be_bytes());
    }
    v
}

/// Sets `a`'s hot fields from its hot row.
pub fn read_hot(a: &mut Agent, v: &[u8]) -> Option<()> {
    let n = |i: usize| -> Option<u64> {
        Some(u64::from_be_bytes(
            v.get(i * 8..i * 8 + 8)?.try_into().ok()?,
        ))
    };
    a.next_cursor = n(0)?;
    a.read_upto = n(1)?;
    a.acked_sent = n(2)?;
    Some(())
}

pub fn peer_value(p: &PeerRecord) -> Vec<u8> {
    let mut o = Object::new();
    o.insert("key", p.key.to_hex().into());
    o.insert("status", p.status.as_str().into());
    o.insert("since", Value::Int(p.since));
    json_bytes(o)
}
pub fn peer(v: &[u8]) -> Option<PeerRecord> {
    let o = parse(v)?;
    Some(PeerRecord {
        key: PublicKey::parse_hex(string(&o, "key")?).ok()?,
        status: PeerStatus::parse(string(&o, "status")?)?,
        since: int(&o, "since")?,
    })
}

pub fn remote_value(r: &RemoteLog) -> Vec<u8> {
    let mut o = Object::new();
    o.insert("log", entries(r.log.entries()));
    o.insert("conflicts", entries(&r.conflicts));
    json_bytes(o)
}
pub fn remote(v: &[u8]) -> Option<RemoteLog> {
    let o = parse(v)?;
    Some(RemoteLog {
        log: read_log(&o, "log")?,
        conflicts: read_entries(&o, "conflicts")?,
    })
}

/// The `Small` table's keys: `kind NUL first [NUL second]`.
pub fn small_key(kind: &str, a: &str, b: Option<&str>) -> Vec<u8> {
    let mut k = kind.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(a.as_bytes());
    if let Some(b) = b {
        k.push(0);
        k.extend_from_slice(b.as_bytes());
    }
    k
}
/// The parts after the kind of a `Small` key.
pub fn small_parts(k: &[u8]) -> Option<(&str, &str, Option<&str>)> {
    let s = std::str::from_utf8(k).ok()?;
    let mut it = s.split('\0');
    Some((it.next()?, it.next()?, it.next()))
}
