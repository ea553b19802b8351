//! Every case of the suite, by area. `all()` is the registry the runner and the coverage
//! table read; each module documents the requirements its cases check.

use crate::case::Case;
use crate::http::Resp;
use crate::target::{int, obj, s, sign_entry, sign_with, Agent, Signed, Target};
use crate::verdict::{Stop, R};
use crate::{ensure, fail, skip};
use formica_protocol::{canon, Domain, ErrorCode, Handle, Object, Value};

pub mod auth;
pub mod contacts;
pub mod conv;
pub mod conv_actions;
pub mod conv_fed;
pub mod conv_kit;
pub mod conv_live;
pub mod conv_posts;
pub mod conv_read;
pub mod conv_vectors;
pub mod delivery;
pub mod descriptor;
pub mod directory;
pub mod envelopes;
pub mod federated;
pub mod federation;
pub mod inbox;
pub mod keylog;
pub mod presence;
pub mod presence_access;
pub mod presence_kit;
pub mod presence_push;
pub mod presence_vectors;
pub mod profile_access;
pub mod profile_kit;
pub mod profile_vectors;
pub mod profiles;
pub mod proofs;
pub mod registration;
pub mod seal;
pub mod signatures;
pub mod tiers;
pub mod vectors;

/// Every case, in the order results are reported.
pub fn all() -> Vec<Case> {
    let mut v = Vec::new();
    v.extend(descriptor::cases());
    v.extend(vectors::cases());
    v.extend(registration::cases());
    v.extend(keylog::cases());
    v.extend(proofs::cases());
    v.extend(envelopes::cases());
    v.extend(signatures::cases());
    v.extend(auth::cases());
    v.extend(inbox::cases());
    v.extend(delivery::cases());
    v.extend(contacts::cases());
    v.extend(tiers::cases());
    v.extend(profiles::cases());
    v.extend(profile_access::cases());
    v.extend(directory::cases());
    v.extend(profile_vectors::cases());
    v.extend(federated::cases());
    v.extend(presence::cases());
    v.extend(presence_access::cases());
    v.extend(presence_push::cases());
    v.extend(presence_vectors::cases());
    v.extend(conv::cases());
    v.extend(conv_actions::cases());
    v.extend(conv_posts::cases());
    v.extend(conv_fed::cases());
    v.extend(conv_read::cases());
    v.extend(conv_live::cases());
    v.extend(conv_vectors::cases());
    v.extend(seal::cases());
    v.extend(federation::cases());
    v
}

/// Posts `wire` to `/v1/envelopes` and requires the error answer of `code`.
/// The params of an `Authorization` value of `scheme` (`Formica` or `Formica-Relay`), in order.
pub fn header_params(h: &str, scheme: &str) -> Vec<(String, String)> {
    h.strip_prefix(scheme)
        .and_then(|rest| rest.strip_prefix(' '))
        .unwrap_or("")
        .split(',')
        .filter_map(|p| p.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}

/// An `Authorization` value of `scheme` with the params `ps`, in order.
pub fn header_join(scheme: &str, ps: &[(String, String)]) -> String {
    let ps: Vec<String> = ps.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{scheme} {}", ps.join(","))
}

pub fn refuse(t: &Target, wire: &[u8], code: ErrorCode) -> R<Resp> {
    let r = t.post_envelope(wire)?;
    r.expect_error(code)?;
    Ok(r)
}

/// Like [`refuse`], with the `field` member.
pub fn refuse_field(t: &Target, wire: &[u8], code: ErrorCode, field: &str) -> R<Resp> {
    let r = t.post_envelope(wire)?;
    r.expect_error_field(code, field)?;
    Ok(r)
}

/// A `message` payload with a unique text.
pub fn text(t: &Target) -> Value {
    obj(vec![("text", s(&t.uniq("hello")))])
}

/// A message from `a` to `to`, signed.
pub fn msg(t: &Target, a: &Agent, to: &[&Handle]) -> Signed {
    t.message(a, to)
}

/// A message from `a` to `to` that asks for an ack within `ack_in_ms`.
pub fn msg_ack(t: &Target, a: &Agent, to: &[&Handle], ack_in_ms: i64) -> Signed {
    let mut o = t.envelope(a, "message", to, text(t));
    let ts = o.get("ts").and_then(Value::as_i64).unwrap_or(0);
    o.insert("ack_by", int(ts + ack_in_ms));
    t.sign(&o, &a.key)
}

/// An ack by `a` of message `id` sent by `to`.
pub fn ack(t: &Target, a: &Agent, to: &Handle, id: &str, status: &str) -> Signed {
    let o = t.envelope(
        a,
        "ack",
        &[to],
        obj(vec![("msg", s(id)), ("status", s(status))]),
    );
    t.sign(&o, &a.key)
}

/// Sets `o[key] = v` and returns the object.
pub fn with(mut o: Object, key: &str, v: Value) -> Object {
    o.insert(key, v);
    o
}

/// Re-signs `o` under `domain` with `sk`.
pub fn sign_as(o: &Object, sk: &formica_protocol::SecretKey, domain: Domain) -> Signed {
    sign_with(o, sk, domain)
}

/// Replaces `sig` in a signed envelope's value and returns the wire bytes (the id member
/// stays, so the relay must not be fooled by a changed signature).
pub fn with_sig(sg: &Signed, sig_hex: &str) -> Vec<u8> {
    let mut v = sg.value.clone();
    if let Value::Object(o) = &mut v {
        o.insert("sig", s(sig_hex));
    }
    canon::canonicalize(&v)
}

/// The `sig` of a signed envelope, as bytes.
pub fn sig_bytes(sg: &Signed) -> [u8; 64] {
    sg.value
        .as_object()
        .and_then(|o| o.get("sig"))
        .and_then(Value::as_str)
        .and_then(formica_protocol::hex::decode_array::<64>)
        .unwrap_or([0; 64])
}

/// The envelope in `items` with id `id`.
pub fn find<'a>(items: &'a [(String, Value)], id: &str) -> Option<&'a (String, Value)> {
    items
        .iter()
        .find(|(_, e)| crate::target::env_str(e, "id") == Some(id))
}

/// Fails unless `items` holds exactly one envelope with id `id`, equal to `sg` as sent
/// (ENV-18: nobody modifies a verified envelope; ENV-15: served canonical with id and sig).
pub fn expect_delivered_as_sent(items: &[(String, Value)], sg: &Signed, who: &Handle) -> R<()> {
    let n = items
        .iter()
        .filter(|(_, e)| crate::target::env_str(e, "id") == Some(sg.id.as_str()))
        .count();
    ensure!(
        n == 1,
        "{who}'s inbox holds {n} copies of envelope {}, expected exactly 1",
        sg.id
    );
    let (_, e) = find(items, &sg.id).ok_or_else(|| Stop::Fail("unreachable".into()))?;
    let served = canon::canonicalize(e);
    ensure!(
        served == sg.wire,
        "{who}'s inbox serves envelope {} as {}, not as it was signed and sent: {} (ENV-15, ENV-18)",
        sg.id,
        crate::http::quote(&served),
        crate::http::quote(&sg.wire)
    );
    Ok(())
}

/// Fails unless the raw body of `r` contains `canonical` byte for byte (HTTP-3: signed objects
/// inside answers are served in canonical form).
pub fn expect_raw_contains(r: &Resp, canonical: &[u8], what: &str) -> R<()> {
    if r.raw
        .windows(canonical.len().max(1))
        .any(|w| w == canonical)
    {
        return Ok(());
    }
    fail!(
        "{}: {what} is not served in canonical form (HTTP-3, ENV-15); expected the bytes {}",
        r.what,
        crate::http::quote(canonical)
    )
}

/// Sleeps `ms`.
pub fn sleep_ms(ms: u64) {
    std::thread::sleep(std::time::Duration::from_millis(ms));
}

/// The value at `path` in `v`.
pub fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut cur = v;
    for k in path {
        cur = cur.as_object()?.get(k)?;
    }
    Some(cur)
}
