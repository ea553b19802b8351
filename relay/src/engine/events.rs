//! The relay's event log entries. Every state change is one of these, encoded as RFC 8785
//! JSON; projections (`state.rs`) are a pure function of the sequence.

use formica_protocol::envelope::{ContactLevel, EnvelopeLimits, MessageId, SignedEnvelope};
use formica_protocol::json::{self, JsonLimits};
use formica_protocol::keylog::SignedKeyLogEntry;
use formica_protocol::pow::Challenge;
use formica_protocol::schema::Fields;
use formica_protocol::{
    canon, Handle, Object, PublicKey, RelayHost, SignedProfile, SignedStatus, Value,
};

/// Where a peering stands on this side (SPEC.md FED-3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeerStatus {
    /// Both sides completed the handshake: envelopes flow.
    Active,
    /// The other relay asked; this relay's operator has not approved yet.
    Pending,
    /// This relay asked; the other side has not approved yet.
    Requested,
}

impl PeerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerStatus::Active => "active",
            PeerStatus::Pending => "pending",
            PeerStatus::Requested => "requested",
        }
    }
    pub fn parse(s: &str) -> Option<PeerStatus> {
        match s {
            "active" => Some(PeerStatus::Active),
            "pending" => Some(PeerStatus::Pending),
            "requested" => Some(PeerStatus::Requested),
            _ => None,
        }
    }
}

/// One state change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A handle was registered; `challenge` is consumed.
    Registered {
        at: i64,
        entry: SignedKeyLogEntry,
        challenge: Challenge,
    },
    /// A key log grew by one entry.
    KeyLogAppended { at: i64, entry: SignedKeyLogEntry },
    /// A valid entry that conflicts with the log was received and is kept as evidence.
    KeyLogConflict { at: i64, entry: SignedKeyLogEntry },
    /// An envelope was accepted: an agent's (already verified) or a receipt this relay made.
    Envelope { at: i64, envelope: SignedEnvelope },
    /// `handle` was handed its inbox up to `upto` (items become `delivered`).
    Read { at: i64, handle: Handle, upto: u64 },
    /// `owner` allows `contact` to send at `level`.
    ContactSet {
        at: i64,
        owner: Handle,
        contact: Handle,
        level: ContactLevel,
    },
    ContactRemoved {
        at: i64,
        owner: Handle,
        contact: Handle,
    },
    /// An agent's profile, checked (SPEC.md PROF-4), replaces the one held.
    ProfileSet { at: i64, profile: SignedProfile },
    /// An agent's presence status, checked (SPEC.md PRES-3), replaces the one held.
    StatusSet { at: i64, status: SignedStatus },
    /// `owner` answered contact request `request` (accepting at `level`, or rejecting).
    RequestAnswered {
        at: i64,
        owner: Handle,
        request: MessageId,
        level: Option<ContactLevel>,
    },
    /// A peer relay with the key learned at the handshake, and where the peering stands.
    PeerSet {
        at: i64,
        host: RelayHost,
        key: PublicKey,
        status: PeerStatus,
    },
    /// The operator removed a peer.
    PeerRemoved { at: i64, host: RelayHost },
    /// An entry of a remote agent's key log, verified against the cached log before it.
    RemoteKeyLog { at: i64, entry: SignedKeyLogEntry },
    /// A valid remote entry that conflicts with the cached log: evidence of a fork.
    RemoteKeyLogConflict { at: i64, entry: SignedKeyLogEntry },
    /// `peer` stored envelope `id` (accepted or duplicate): it leaves the outbound queue.
    Transferred {
        at: i64,
        peer: RelayHost,
        id: MessageId,
    },
    /// A peer reported that `recipient`, homed there, was handed message `msg` (its relay-signed
    /// delivery notice `id`).
    RemoteDelivered {
        at: i64,
        id: MessageId,
        msg: MessageId,
        recipient: Handle,
    },
    /// Forwarding `id` to `peer` was given up (`reason`: an error code or "expired").
    DeadLettered {
        at: i64,
        peer: RelayHost,
        id: MessageId,
        reason: String,
    },
    /// Retention (SPEC.md RET-1..RET-3): what the bounds make removable goes, examining at most
    /// `max` rows of each kind, oldest first. The bounds are in the event, so a replay removes
    /// exactly what the live relay removed whatever the configuration is then.
    Retained { at: i64, bounds: Retention },
    /// A checkpoint (`engine::checkpoint`): the snapshot of the projection tables as they stood
    /// after record `cp.len` is in the data directory, and this record commits to it (the chain
    /// hash of record `cp.len` and the snapshot's hash). Records before `cp.keep_from` may be
    /// dropped once a later checkpoint is logged.
    Checkpoint { at: i64, cp: CheckpointMark },
    /// A conversation changed without an agent's envelope (SPEC.md CONVO-4, CONVO-7, CONVO-9): the
    /// relay appended an event entry, or removed a closed conversation (`closed_keep_ms`).
    Conv {
        at: i64,
        conv: MessageId,
        change: ConvChange,
    },
    /// Entries of a conversation homed on the peer `home` were added to this relay's replica
    /// (SPEC.md CONVO-12..CONVO-14), with the turn limit and expiry in force there; `declined`
    /// are the invitees homed here that this relay declined for (CONVO-14: the invitation is
    /// not delivered to them). The envelopes inside are delivered to their recipients homed
    /// here; their inbox items point at this record.
    ConvReplica {
        at: i64,
        home: RelayHost,
        conv: MessageId,
        turns: i64,
        expires: i64,
        entries: Vec<formica_protocol::conversation::Entry>,
        declined: Vec<(Handle, String)>,
    },
}

/// What an [`Event::Conv`] does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConvChange {
    /// The next entry of the conversation is this event.
    Entry(formica_protocol::conversation::ConvEvent),
    /// The (closed) conversation and its entries are removed.
    Removed,
}

/// What a checkpoint record says (see [`Event::Checkpoint`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointMark {
    /// The log position the snapshot is the replay of.
    pub len: u64,
    /// The chain hash of record `len`.
    pub head: [u8; 32],
    /// Rows in the snapshot.
    pub rows: u64,
    /// The snapshot's hash (`store::snapshot`).
    pub hash: [u8; 32],
    /// The oldest record anything in the snapshot still needs: the least record an inbox item
    /// or a queued transfer points at, or `len + 1`.
    pub keep_from: u64,
}

/// The bounds of one retention sweep (times in ms since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Inbox items stored and message records made before this go once settled.
    pub delivered_before: i64,
    /// Inbox items and message records made before this go in any state.
    pub any_before: i64,
    /// Dedup ids of envelopes whose `ts` is before this go.
    pub seen_before: i64,
    /// Most rows of each kind examined.
    pub max: u64,
}

/// Limits for reading back what the relay itself wrote: generous, since the input was checked
/// against the published limits before it was logged.
fn log_limits() -> JsonLimits {
    JsonLimits {
        bytes_max: 16 << 20,
        depth_max: 64,
    }
}

impl Event {
    /// The common case of [`decode`](Self::decode): an envelope event exactly as
    /// [`encode`](Self::encode) writes it, `{"at":N,"envelope":E,"t":"envelope"}`. The envelope's
    /// bytes are canonical (the log holds only what the relay wrote, and the chain hash vouches
    /// for it), so they are parsed in place and kept as its wire form. `None` for any other
    /// layout, which the general path then reads.
    fn decode_envelope(bytes: &[u8]) -> Option<Result<Event, String>> {
        let rest = bytes.strip_prefix(b"{\"at\":")?;
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let (num, rest) = rest.split_at(digits);
        let env = rest
            .strip_prefix(b",\"envelope\":")?
            .strip_suffix(b",\"t\":\"envelope\"}")?;
        if num.is_empty() || num.len() > 16 || (num.len() > 1 && num[0] == b'0') {
            return None;
        }
        let at = std::str::from_utf8(num).ok()?.parse::<i64>().ok()?;
        if at > formica_protocol::json::INT_ABS_MAX {
            return None;
        }
        let limits = EnvelopeLimits {
            json: log_limits(),
            recipients_max: usize::MAX,
            payload_bytes_max: usize::MAX,
        };
        Some(
            SignedEnvelope::parse_stored_canonical(env, &limits)
                .map(|envelope| Event::Envelope { at, envelope })
                .map_err(|x| x.to_string()),
        )
    }

    /// The envelope's bytes inside the payload of a record that [`encode`](Self::encode) wrote
    /// for an envelope event (`{"at":N,"envelope":<bytes>,"t":"envelope"}`): inbox and queue
    /// rows point at the record instead of holding a copy.
    pub fn envelope_bytes(payload: &[u8]) -> Option<&[u8]> {
        let rest = payload.strip_prefix(b"{\"at\":")?;
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        rest.get(digits..)?
            .strip_prefix(b",\"envelope\":")?
            .strip_suffix(b",\"t\":\"envelope\"}")
    }

    pub fn at(&self) -> i64 {
        match self {
            Event::Registered { at, .. }
            | Event::KeyLogAppended { at, .. }
            | Event::KeyLogConflict { at, .. }
            | Event::Envelope { at, .. }
            | Event::Read { at, .. }
            | Event::ContactSet { at, .. }
            | Event::ContactRemoved { at, .. }
            | Event::ProfileSet { at, .. }
            | Event::StatusSet { at, .. }
            | Event::RequestAnswered { at, .. }
            | Event::PeerSet { at, .. }
            | Event::PeerRemoved { at, .. }
            | Event::RemoteKeyLog { at, .. }
            | Event::RemoteKeyLogConflict { at, .. }
            | Event::Transferred { at, .. }
            | Event::RemoteDelivered { at, .. }
            | Event::DeadLettered { at, .. }
            | Event::Retained { at, .. }
            | Event::Checkpoint { at, .. }
            | Event::Conv { at, .. }
            | Event::ConvReplica { at, .. } => *at,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        if let Event::Envelope { at, envelope } = self {
            // The envelope's canonical bytes are already made: the members sort as "at",
            // "envelope", "t", so the event's canonical form is written around them.
            let wire = envelope.wire();
            let mut out = Vec::with_capacity(wire.len() + 48);
            out.extend_from_slice(b"{\"at\":");
            out.extend_from_slice(at.to_string().as_bytes());
            out.extend_from_slice(b",\"envelope\":");
            out.extend_from_slice(wire);
            out.extend_from_slice(b",\"t\":\"envelope\"}");
            return out;
        }
        let mut o = Object::new();
        o.insert("at", Value::Int(self.at()));
        let h = |h: &Handle| Value::from(h.as_str());
        match self {
            Event::Registered {
                entry, challenge, ..
            } => {
                o.insert("t", "registered".into());
                o.insert("entry", entry.value().clone());
                o.insert("challenge", challenge.to_hex().into());
            }
            Event::KeyLogAppended { entry, .. } => {
                o.insert("t", "keylog".into());
                o.insert("entry", entry.value().clone());
            }
            Event::KeyLogConflict { entry, .. } => {
                o.insert("t", "keylog_conflict".into());
                o.insert("entry", entry.value().clone());
            }
            Event::Envelope { envelope, .. } => {
                o.insert("t", "envelope".into());
                o.insert("envelope", envelope.value().clone());
            }
            Event::Read { handle, upto, .. } => {
                o.insert("t", "read".into());
                o.insert("handle", h(handle));
                o.insert("upto", Value::Int(*upto as i64));
            }
            Event::ContactSet {
                owner,
                contact,
                level,
                ..
            } => {
                o.insert("t", "contact_set".into());
                o.insert("owner", h(owner));
                o.insert("contact", h(contact));
                o.insert("level", level.as_str().into());
            }
            Event::ContactRemoved { owner, contact, .. } => {
                o.insert("t", "contact_removed".into());
                o.insert("owner", h(owner));
                o.insert("contact", h(contact));
            }
            Event::RequestAnswered {
                owner,
                request,
                level,
                ..
            } => {
                o.insert("t", "request_answered".into());
                o.insert("owner", h(owner));
                o.insert("request", request.to_hex().into());
                o.insert(
                    "level",
                    level
                        .map(|l| Value::from(l.as_str()))
                        .unwrap_or(Value::Null),
                );
            }
            Event::PeerSet {
                host, key, status, ..
            } => {
                o.insert("t", "peer_set".into());
                o.insert("host", host.as_str().into());
                o.insert("key", key.to_hex().into());
                o.insert("status", status.as_str().into());
            }
            Event::ProfileSet { profile, .. } => {
                o.insert("t", "profile_set".into());
                o.insert("profile", profile.value().clone());
            }
            Event::StatusSet { status, .. } => {
                o.insert("t", "status_set".into());
                o.insert("status", status.value().clone());
            }
            Event::PeerRemoved { host, .. } => {
                o.insert("t", "peer_removed".into());
                o.insert("host", host.as_str().into());
            }
            Event::RemoteKeyLog { entry, .. } => {
                o.insert("t", "remote_keylog".into());
                o.insert("entry", entry.value().clone());
            }
            Event::RemoteKeyLogConflict { entry, .. } => {
                o.insert("t", "remote_keylog_conflict".into());
                o.insert("entry", entry.value().clone());
            }
            Event::Transferred { peer, id, .. } => {
                o.insert("t", "transferred".into());
                o.insert("peer", peer.as_str().into());
                o.insert("id", id.to_hex().into());
            }
            Event::RemoteDelivered {
                id, msg, recipient, ..
            } => {
                o.insert("t", "remote_delivered".into());
                o.insert("id", id.to_hex().into());
                o.insert("msg", msg.to_hex().into());
                o.insert("recipient", h(recipient));
            }
            Event::DeadLettered {
                peer, id, reason, ..
            } => {
                o.insert("t", "dead_lettered".into());
                o.insert("peer", peer.as_str().into());
                o.insert("id", id.to_hex().into());
                o.insert("reason", reason.as_str().into());
            }
            Event::Retained { bounds, .. } => {
                o.insert("t", "retained".into());
                o.insert("delivered_before", Value::Int(bounds.delivered_before));
                o.insert("any_before", Value::Int(bounds.any_before));
                o.insert("seen_before", Value::Int(bounds.seen_before));
                o.insert("max", Value::Int(bounds.max as i64));
            }
            Event::Checkpoint { cp, .. } => {
                o.insert("t", "checkpoint".into());
                o.insert("len", Value::Int(cp.len as i64));
                o.insert("head", formica_protocol::hex::encode(&cp.head).into());
                o.insert("rows", Value::Int(cp.rows as i64));
                o.insert("hash", formica_protocol::hex::encode(&cp.hash).into());
                o.insert("keep_from", Value::Int(cp.keep_from as i64));
            }
            Event::Conv { conv, change, .. } => {
                super::events_conv::encode_conv(&mut o, conv, change)
            }
            Event::ConvReplica {
                home,
                conv,
                turns,
                expires,
                entries,
                declined,
                ..
            } => super::events_conv::encode_replica(
                &mut o,
                home,
                conv,
                (*turns, *expires),
                entries,
                declined,
            ),
        }
        canon::canonicalize(&Value::Object(o))
    }

    pub fn decode(bytes: &[u8]) -> Result<Event, String> {
        if let Some(ev) = Event::decode_envelope(bytes) {
            return ev;
        }
        let v = json::parse(bytes, log_limits()).map_err(|e| e.to_string())?;
        let mut f = Fields::new(&v, "").map_err(|e| e.to_string())?;
        let e = |x: formica_protocol::schema::SchemaError| x.to_string();
        let at = f
            .req_int("at", 0, formica_protocol::json::INT_ABS_MAX)
            .map_err(e)?;
        let t = f.req_str("t").map_err(e)?;
        let entry = |f: &mut Fields<'_>| -> Result<SignedKeyLogEntry, String> {
            SignedKeyLogEntry::from_value(f.req("entry").map_err(e)?.clone())
                .map_err(|x| x.to_string())
        };
        let msg_id = |f: &mut Fields<'_>, k: &str| -> Result<MessageId, String> {
            MessageId::parse_hex(f.req_str(k).map_err(e)?).ok_or_else(|| format!("bad {k}"))
        };
        let host = |f: &mut Fields<'_>, k: &str| -> Result<RelayHost, String> {
            RelayHost::parse(f.req_str(k).map_err(e)?).map_err(|x| x.to_string())
        };
        let level = |s: &str| ContactLevel::parse(s).ok_or_else(|| format!("bad level {s}"));
        let ev = match t {
            "registered" => Event::Registered {
                at,
                entry: entry(&mut f)?,
                challenge: Challenge::parse_hex(f.req_str("challenge").map_err(e)?)
                    .ok_or("bad challenge")?,
            },
            "keylog" => Event::KeyLogAppended {
                at,
                entry: entry(&mut f)?,
            },
            "keylog_conflict" => Event::KeyLogConflict {
                at,
                entry: entry(&mut f)?,
            },
            "envelope" => {
                let limits = EnvelopeLimits {
                    json: log_limits(),
                    recipients_max: usize::MAX,
                    payload_bytes_max: usize::MAX,
                };
                let env = f.req("envelope").map_err(e)?.clone();
                Event::Envelope {
                    at,
                    envelope: SignedEnvelope::from_value(env, &limits)
                        .map_err(|x| x.to_string())?,
                }
            }
            "read" => Event::Read {
                at,
                handle: f.req_handle("handle").map_err(e)?,
                upto: f
                    .req_int("upto", 0, formica_protocol::json::INT_ABS_MAX)
                    .map_err(e)? as u64,
            },
            "contact_set" => Event::ContactSet {
                at,
                owner: f.req_handle("owner").map_err(e)?,
                contact: f.req_handle("contact").map_err(e)?,
                level: level(f.req_str("level").map_err(e)?)?,
            },
            "contact_removed" => Event::ContactRemoved {
                at,
                owner: f.req_handle("owner").map_err(e)?,
                contact: f.req_handle("contact").map_err(e)?,
            },
            "request_answered" => Event::RequestAnswered {
                at,
                owner: f.req_handle("owner").map_err(e)?,
                request: msg_id(&mut f, "request")?,
                level: match f.req("level").map_err(e)? {
                    Value::Null => None,
                    Value::String(s) => Some(level(s)?),
                    _ => return Err("bad level".into()),
                },
            },
            "peer_set" => Event::PeerSet {
                at,
                host: host(&mut f, "host")?,
                key: PublicKey::parse_hex(f.req_str("key").map_err(e)?)
                    .map_err(|x| x.to_string())?,
                status: PeerStatus::parse(f.req_str("status").map_err(e)?)
                    .ok_or("bad peer status")?,
            },
            "status_set" => Event::StatusSet {
                at,
                status: SignedStatus::from_value(f.req("status").map_err(e)?.clone())
                    .map_err(|x| x.to_string())?,
            },
            "profile_set" => Event::ProfileSet {
                at,
                profile: SignedProfile::from_value(f.req("profile").map_err(e)?.clone())
                    .map_err(|x| x.to_string())?,
            },
            "peer_removed" => Event::PeerRemoved {
                at,
                host: host(&mut f, "host")?,
            },
            "remote_keylog" => Event::RemoteKeyLog {
                at,
                entry: entry(&mut f)?,
            },
            "remote_keylog_conflict" => Event::RemoteKeyLogConflict {
                at,
                entry: entry(&mut f)?,
            },
            "transferred" => Event::Transferred {
                at,
                peer: host(&mut f, "peer")?,
                id: msg_id(&mut f, "id")?,
            },
            "remote_delivered" => Event::RemoteDelivered {
                at,
                id: msg_id(&mut f, "id")?,
                msg: msg_id(&mut f, "msg")?,
                recipient: f.req_handle("recipient").map_err(e)?,
            },
            "conv_replica" => super::events_conv::decode_replica(&mut f, at, log_limits())?,
            "conv" => super::events_conv::decode_conv(&mut f, at)?,
            "dead_lettered" => Event::DeadLettered {
                at,
                peer: host(&mut f, "peer")?,
                id: msg_id(&mut f, "id")?,
                reason: f.req_str("reason").map_err(e)?.to_owned(),
            },
            "retained" => {
                let mut t = |k: &str| {
                    f.req_int(k, 0, formica_protocol::json::INT_ABS_MAX)
                        .map_err(e)
                };
                Event::Retained {
                    at,
                    bounds: Retention {
                        delivered_before: t("delivered_before")?,
                        any_before: t("any_before")?,
                        seen_before: t("seen_before")?,
                        max: t("max")? as u64,
                    },
                }
            }
            "checkpoint" => {
                let n = |f: &mut Fields<'_>, k: &str| -> Result<u64, String> {
                    Ok(f.req_int(k, 0, formica_protocol::json::INT_ABS_MAX)
                        .map_err(e)? as u64)
                };
                let h32 = |f: &mut Fields<'_>, k: &str| -> Result<[u8; 32], String> {
                    formica_protocol::hex::decode_array::<32>(f.req_str(k).map_err(e)?)
                        .ok_or_else(|| format!("bad {k}"))
                };
                Event::Checkpoint {
                    at,
                    cp: CheckpointMark {
                        len: n(&mut f, "len")?,
                        head: h32(&mut f, "head")?,
                        rows: n(&mut f, "rows")?,
                        hash: h32(&mut f, "hash")?,
                        keep_from: n(&mut f, "keep_from")?,
                    },
                }
            }
            other => return Err(format!("unknown event type {other:?}")),
        };
        f.finish().map_err(e)?;
        Ok(ev)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use formica_protocol::envelope::{Envelope, MessageType, Payload};
    use formica_protocol::SecretKey;

    /// The envelope event is written around the envelope's kept wire bytes; that must be the
    /// same canonical form the generic path makes, and read back to the same event.
    #[test]
    fn envelope_event_is_canonical_and_reads_back() {
        let sk = SecretKey::from_seed(&[3; 32]);
        for (at, text) in [(0, "x"), (1_700_000_000_123, "quote \" and \u{1}")] {
            let se = Envelope {
                msg_type: MessageType::Message,
                type_version: 1,
                from: Handle::parse("@a@relay.example").unwrap(),
                key: sk.public().key_id(),
                to: vec![Handle::parse("@b@relay.example").unwrap()],
                ts: 1_700_000_000_000,
                corr: Some("c-1".into()),
                ack_by: None,
                conv: None,
                payload: Payload::Message {
                    text: text.into(),
                    data: None,
                },
            }
            .sign(&sk)
            .unwrap();
            let ev = Event::Envelope {
                at,
                envelope: se.clone(),
            };
            let mut o = Object::new();
            o.insert("t", "envelope".into());
            o.insert("envelope", se.value().clone());
            o.insert("at", Value::Int(at));
            assert_eq!(ev.encode(), canon::canonicalize(&Value::Object(o.clone())));
            assert_eq!(Event::decode(&ev.encode()).unwrap(), ev);
            // Another member order is not the fast path's layout; the general path reads it.
            let mut reordered = b"{\"t\":\"envelope\",\"at\":".to_vec();
            reordered.extend_from_slice(at.to_string().as_bytes());
            reordered.extend_from_slice(b",\"envelope\":");
            reordered.extend_from_slice(se.wire());
            reordered.push(b'}');
            assert_eq!(Event::decode(&reordered).unwrap(), ev);
            // Trailing members after the envelope are refused, as by the general path.
            let mut extra = ev.encode();
            extra.truncate(extra.len() - b",\"t\":\"envelope\"}".len());
            extra.extend_from_slice(b",\"x\":1,\"t\":\"envelope\"}");
            assert!(Event::decode(&extra).is_err());
        }
        // A leading zero in `at` is not canonical: not the fast path, and refused.
        let ev = Event::decode(b"{\"at\":01,\"envelope\":{},\"t\":\"envelope\"}");
        assert!(ev.is_err());
    }
}
