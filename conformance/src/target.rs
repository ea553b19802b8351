//! The relay under test as the suite sees it: its URL, its signed descriptor and the policy it
//! publishes there, the offset of its clock, and the client-side operations every case builds
//! on: registering agents through the relay's own flow (challenge, proof-of-work, register),
//! signing envelopes, key log entries and `Authorization` headers with the protocol crate, and
//! reading the inbox.

use crate::http::{quote, Body, Http, Resp};
use crate::verdict::{Stop, R};
use crate::{ensure, fail};
use formica_protocol::auth::{Nonce, RequestAuth, RequestTarget};
use formica_protocol::keylog::{KeyLogEntry, KeyOp, SignedKeyLogEntry};
use formica_protocol::pow::{self, Challenge, PowProof};
use formica_protocol::{
    canon, Domain, ErrorCode, Handle, Object, PublicKey, RelayHost, SecretKey, Signature, Value,
};
use rand::RngCore;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Longest wait for a per-IP rate limit on the unauthenticated endpoints before giving up.
pub const IP_WAIT_TOTAL_MS_MAX: u64 = 180_000;
/// Longest single wait on a `Retry-After`.
pub const RETRY_WAIT_S_MAX: i64 = 65;

/// Builds an object from members, in order.
pub fn obj(members: Vec<(&str, Value)>) -> Value {
    let mut o = Object::new();
    for (k, v) in members {
        o.insert(k, v);
    }
    Value::Object(o)
}

pub fn s(x: &str) -> Value {
    Value::String(x.to_owned())
}

pub fn int(n: i64) -> Value {
    Value::Int(n)
}

/// The suite's clock, in ms since the epoch.
pub fn local_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A fresh key from the operating system's random source.
/// Signs `entry` with `signer` and the proofs of possession of `holders`, the secret keys of the
/// keys it introduces (LOG-2). The suite passes them all; a refusal is a bug of the suite.
pub fn sign_entry(
    entry: &KeyLogEntry,
    signer: &SecretKey,
    holders: &[&SecretKey],
) -> R<SignedKeyLogEntry> {
    entry
        .sign(signer, holders)
        .map_err(|err| Stop::Fail(format!("suite bug: {err}")))
}

pub fn random_key() -> SecretKey {
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    SecretKey::from_seed(&seed)
}

pub fn random_nonce() -> Nonce {
    let mut n = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut n);
    Nonce(n)
}

/// How long to wait before sending a request to `path` again when `r` is a per-IP
/// `rate_limited` answer (HTTP-10): its `retry_after_s`, within 1 to [`RETRY_WAIT_S_MAX`]
/// seconds. None when `r` is not such an answer, or when the wait would take the time since
/// `start` past [`IP_WAIT_TOTAL_MS_MAX`] (the answer then stands).
fn ip_wait(r: &Resp, start: Instant, path: &str) -> Option<Duration> {
    if r.status != 429 || r.code() != Some("rate_limited") {
        return None;
    }
    let wait = r
        .error_member("retry_after_s")
        .and_then(Value::as_i64)
        .unwrap_or(1)
        .clamp(1, RETRY_WAIT_S_MAX);
    let wait = Duration::from_secs(wait as u64);
    if start.elapsed() + wait > Duration::from_millis(IP_WAIT_TOTAL_MS_MAX) {
        return None;
    }
    eprintln!("conformance: {path} is rate limited per IP; waiting {} s (run the relay with a higher limits.ip_requests_per_min to avoid this)", wait.as_secs());
    Some(wait)
}

/// One tier as published (TRUST-1).
#[derive(Debug, Clone, Default)]
pub struct Tier {
    pub name: String,
    pub level: i64,
    pub min_age_ms: i64,
    pub min_acked: i64,
    pub min_vouches: i64,
    pub rate_per_min: i64,
    pub payload_bytes_max: i64,
    pub recipients_max: i64,
    pub contact_requests_per_hour: i64,
    pub vouches_max: i64,
    pub reports_per_day: i64,
    pub may_send: Vec<String>,
}

impl Tier {
    /// Whether `ty` is in `may_send` (`x-*` stands for every extension type).
    pub fn may_send(&self, ty: &str) -> bool {
        if ty.starts_with("x-") {
            return self.may_send.iter().any(|t| t == "x-*");
        }
        self.may_send.iter().any(|t| t == ty)
    }
}

/// What the descriptor publishes, with the spec's defaults where a member is missing (the
/// descriptor cases report the missing member; the other cases still get a usable value).
#[derive(Debug, Clone)]
pub struct Published {
    pub body_bytes_max: i64,
    pub envelope_bytes_max: i64,
    pub batch_bytes_max: i64,
    pub batch_envelopes_max: i64,
    pub json_depth_max: i64,
    pub recipients_max: i64,
    pub inbox_page_max: i64,
    pub inbox_pending_max: i64,
    pub contact_requests_pending_max: i64,
    pub ip_requests_per_min: Option<i64>,
    pub window_ms: i64,
    pub skew_ms: i64,
    pub retention_ms: i64,
    pub pow_difficulty: u32,
    pub challenge_ttl_ms: i64,
    pub ack_window_ms_max: i64,
    pub deadline_check_ms: Option<i64>,
    pub tiers: Vec<Tier>,
    pub federation_enabled: bool,
    pub peering: String,
}

fn path_int(v: &Value, path: &[&str]) -> Option<i64> {
    let mut cur = v;
    for k in path {
        cur = cur.as_object()?.get(k)?;
    }
    cur.as_i64()
}

impl Published {
    pub fn from_descriptor(d: &Value) -> Published {
        let g = |p: &[&str], def: i64| path_int(d, p).unwrap_or(def);
        let l = |k: &str, def: i64| g(&["limits", k], def);
        let tiers = d
            .as_object()
            .and_then(|o| o.get("tiers"))
            .and_then(Value::as_array)
            .unwrap_or(&[])
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let n = |k: &str| path_int(t, &[k]).unwrap_or(0);
                let th = |k: &str| path_int(t, &["thresholds", k]).unwrap_or(0);
                Tier {
                    name: t
                        .as_object()
                        .and_then(|o| o.get("name"))
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    level: path_int(t, &["level"]).unwrap_or(i as i64),
                    min_age_ms: th("min_age_ms"),
                    min_acked: th("min_acked"),
                    min_vouches: th("min_vouches"),
                    rate_per_min: n("rate_per_min"),
                    payload_bytes_max: n("payload_bytes_max"),
                    recipients_max: n("recipients_max"),
                    contact_requests_per_hour: n("contact_requests_per_hour"),
                    vouches_max: n("vouches_max"),
                    reports_per_day: n("reports_per_day"),
                    may_send: t
                        .as_object()
                        .and_then(|o| o.get("may_send"))
                        .and_then(Value::as_array)
                        .unwrap_or(&[])
                        .iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect(),
                }
            })
            .collect();
        let fed = d
            .as_object()
            .and_then(|o| o.get("federation"))
            .and_then(Value::as_object);
        Published {
            body_bytes_max: l("body_bytes_max", 65536),
            envelope_bytes_max: l("envelope_bytes_max", 65536),
            batch_bytes_max: l("batch_bytes_max", 1 << 20),
            batch_envelopes_max: l("batch_envelopes_max", 100),
            json_depth_max: l("json_depth_max", 32),
            recipients_max: l("recipients_max", 16),
            inbox_page_max: l("inbox_page_max", 100),
            inbox_pending_max: l("inbox_pending_max", 10_000),
            contact_requests_pending_max: l("contact_requests_pending_max", 100),
            ip_requests_per_min: path_int(d, &["limits", "ip_requests_per_min"]),
            window_ms: g(&["time", "window_ms"], 300_000),
            skew_ms: g(&["time", "skew_ms"], 30_000),
            retention_ms: g(&["time", "retention_ms"], 330_000),
            pow_difficulty: u32::try_from(g(&["pow", "difficulty"], 20)).unwrap_or(20),
            challenge_ttl_ms: g(&["pow", "challenge_ttl_ms"], 600_000),
            ack_window_ms_max: g(&["ack", "window_ms_max"], 604_800_000),
            deadline_check_ms: path_int(d, &["ack", "deadline_check_ms"]),
            tiers,
            federation_enabled: fed
                .and_then(|f| f.get("enabled"))
                .and_then(Value::as_bool)
                .unwrap_or(false),
            peering: fed
                .and_then(|f| f.get("peering"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
        }
    }

    /// The tier a newly registered agent starts at (TRUST-1: level 0).
    pub fn tier0(&self) -> Tier {
        self.tiers.first().cloned().unwrap_or_default()
    }
}

/// An agent the suite registered.
#[derive(Debug, Clone)]
pub struct Agent {
    pub handle: Handle,
    pub key: SecretKey,
    pub recovery: Option<SecretKey>,
    /// `ts` of the register entry.
    pub reg_ts: i64,
    /// Hash of the register entry, as computed by the suite.
    pub head: String,
}

/// An envelope signed by the suite: the value with `id` and `sig`, its canonical wire bytes,
/// and the id the suite computed (ENV-11).
#[derive(Debug, Clone)]
pub struct Signed {
    pub value: Value,
    pub id: String,
    pub wire: Vec<u8>,
    pub signing_input: Vec<u8>,
}

/// Signs `o` (its `id` and `sig`, if any, are left out of the signing input and replaced).
pub fn sign_with(o: &Object, sk: &SecretKey, domain: Domain) -> Signed {
    let mut input = domain.tag().to_vec();
    canon::write_object(o, Some(&["id", "sig"]), &mut input);
    let id = formica_protocol::hex::encode(blake3::hash(&input).as_bytes());
    let sig = sk.sign_input(&input);
    let mut full = o.clone();
    full.insert("id", id.clone().into());
    full.insert("sig", sig.to_hex().into());
    let value = Value::Object(full);
    let wire = canon::canonicalize(&value);
    Signed {
        value,
        id,
        wire,
        signing_input: input,
    }
}

/// The wire bytes of an object as is (for envelopes the case breaks on purpose).
pub fn wire_of(v: &Value) -> Vec<u8> {
    canon::canonicalize(v)
}

/// The relay under test.
#[derive(Debug)]
pub struct Target {
    pub http: Http,
    pub host: RelayHost,
    /// The descriptor as served, or why it could not be read.
    pub descriptor: Result<Value, String>,
    pub relay_key: Option<PublicKey>,
    pub published: Published,
    /// Relay clock minus the suite's clock, in ms.
    pub offset_ms: i64,
    /// Distinguishes this run's handles from earlier runs against the same relay.
    pub run_id: String,
    counter: AtomicU64,
}

/// A challenge as issued (API-3).
#[derive(Debug, Clone)]
pub struct Issued {
    pub challenge: Challenge,
    pub difficulty: u32,
    pub expires: i64,
    pub relay: String,
}

impl Target {
    /// Reads the descriptor, learns the relay's host and clock offset. Fails only when the
    /// relay cannot be reached at all.
    pub fn connect(url: &str) -> Result<Target, String> {
        let http = Http::new(url)?;
        let d = http.get("/.well-known/formica").map_err(|e| match e {
            Stop::Fail(m) | Stop::Skip(m) => format!("cannot read the descriptor of {url}: {m}"),
        })?;
        let descriptor = if d.status == 200 {
            d.json.clone()
        } else {
            Err(format!("GET /.well-known/formica answered {}", d.brief()))
        };
        let dv = descriptor.clone().unwrap_or(Value::Null);
        let published = Published::from_descriptor(&dv);
        let dobj = dv.as_object();
        let relay_key = dobj
            .and_then(|o| o.get("key"))
            .and_then(Value::as_str)
            .and_then(|k| PublicKey::parse_hex(k).ok());
        let host = dobj
            .and_then(|o| o.get("relay"))
            .and_then(Value::as_str)
            .and_then(|h| RelayHost::parse(h).ok())
            .or_else(|| RelayHost::parse(http.authority()).ok())
            .ok_or_else(|| {
                format!("neither the descriptor nor the URL {url} names a valid relay host")
            })?;
        let mut run = [0u8; 4];
        rand::rngs::OsRng.fill_bytes(&mut run);
        let run_id: String = run
            .iter()
            .map(|b| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[usize::from(*b) % 36]))
            .collect();
        let mut t = Target {
            http,
            host,
            descriptor,
            relay_key,
            published,
            offset_ms: 0,
            run_id,
            counter: AtomicU64::new(0),
        };
        t.offset_ms = t.measure_offset();
        Ok(t)
    }

    /// The relay's clock offset, from the `server_time` of a deliberately stale envelope
    /// (TIME-5); 0 when the relay gives none.
    fn measure_offset(&self) -> i64 {
        let k = random_key();
        let from = format!("@clock-probe@{}", self.host);
        let o = obj(vec![
            ("v", int(1)),
            ("type", s("message")),
            ("type_version", int(1)),
            ("from", s(&from)),
            ("key", s(&k.public().key_id().to_hex())),
            ("to", Value::Array(vec![s(&from)])),
            ("ts", int(1)),
            ("payload", obj(vec![("text", s("clock"))])),
        ]);
        let Value::Object(o) = o else { return 0 };
        let sg = sign_with(&o, &k, Domain::Envelope);
        let t0 = local_now();
        let Ok(r) = self.http.post("/v1/envelopes", &sg.wire) else {
            return 0;
        };
        let t1 = local_now();
        match r.error_member("server_time").and_then(Value::as_i64) {
            Some(st) => st - (t0 + t1) / 2,
            None => 0,
        }
    }

    /// The relay's clock as estimated by the suite.
    pub fn now(&self) -> i64 {
        local_now() + self.offset_ms
    }

    /// A number unique within this run.
    pub fn next(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    /// A text unique within this run (so that no two envelopes of a run share an id by
    /// accident).
    pub fn uniq(&self, what: &str) -> String {
        format!("{what} #{} ({})", self.next(), self.run_id)
    }

    /// A fresh handle on this relay: `@<tag>-<run id><n>@host`.
    pub fn fresh_handle(&self, tag: &str) -> Handle {
        let n = self.next();
        let name = format!("{tag}-{}{n}", self.run_id);
        Handle::parse(&format!("@{name}@{}", self.host)).unwrap_or_else(|_| {
            // Tags are fixed lower-case words; only an absurd counter could break the grammar.
            Handle::parse(&format!("@x{n}@{}", self.host))
                .unwrap_or_else(|_| Handle::relay(&self.host))
        })
    }

    // ------------------------------------------------------------ unauthenticated endpoints

    /// POSTs to an endpoint with a per-IP limit (HTTP-10), waiting out `rate_limited`
    /// answers (bounded by [`IP_WAIT_TOTAL_MS_MAX`]) as a well-behaved client does.
    pub fn post_ip_limited(&self, path: &str, body: &[u8]) -> R<Resp> {
        self.send_ip_limited(
            "POST",
            path,
            &[("content-type", "application/json".into())],
            body,
        )
    }

    /// Like [`post_ip_limited`](Self::post_ip_limited), with any method and headers. The same
    /// headers are sent again after each wait, so a signed header must stay fresh that long:
    /// the waits add up to at most [`IP_WAIT_TOTAL_MS_MAX`] (3 minutes, inside the default
    /// 5-minute window of TIME-1).
    pub fn send_ip_limited(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> R<Resp> {
        let start = Instant::now();
        loop {
            let r = self.http.send(method, path, headers, Body::Bytes(body))?;
            match ip_wait(&r, start, path) {
                Some(wait) => std::thread::sleep(wait),
                None => return Ok(r),
            }
        }
    }

    /// `POST /v1/challenges` (API-3).
    pub fn challenge(&self) -> R<Issued> {
        let r = self.post_ip_limited("/v1/challenges", b"{}")?;
        r.expect_json(201)?;
        let c = r.str_member("challenge")?;
        let challenge = Challenge::parse_hex(c)
            .ok_or_else(|| Stop::Fail(format!("POST /v1/challenges: challenge {c:?} is not 32 lower-case hex characters (POW-1, ENC-2)")))?;
        let d = r.int_member("difficulty")?;
        let difficulty = u32::try_from(d)
            .map_err(|_| Stop::Fail(format!("POST /v1/challenges: difficulty {d} out of range")))?;
        Ok(Issued {
            challenge,
            difficulty,
            expires: r.int_member("expires")?,
            relay: r.str_member("relay")?.to_owned(),
        })
    }

    /// A register entry (LOG-5), signed by `signer`, naming `recovery` with its proof (LOG-2).
    pub fn register_entry(
        &self,
        handle: &Handle,
        key: &SecretKey,
        recovery: Option<&SecretKey>,
        ts: i64,
        signer: &SecretKey,
    ) -> R<SignedKeyLogEntry> {
        let entry = KeyLogEntry {
            handle: handle.clone(),
            seq: 0,
            prev: None,
            ts,
            op: KeyOp::Register {
                key: key.public(),
                recovery: recovery.map(SecretKey::public),
            },
            signer: signer.public().key_id(),
        };
        sign_entry(&entry, signer, recovery.as_slice())
    }

    /// Finds a nonce meeting `difficulty` for the preimage `prefix` (POW-3, POW-4), on two
    /// threads when the work is large. Bounded: gives up after 2^(d+8) tries.
    pub fn mine(prefix: &[u8], difficulty: u32) -> R<u64> {
        let tries = 1u64 << (difficulty + 8).min(40);
        if difficulty <= 14 {
            return pow::mine(prefix, difficulty, 0, 1, tries)
                .ok_or_else(|| Stop::Fail(format!("no nonce found for difficulty {difficulty}")));
        }
        let found = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..2u64)
                .map(|i| sc.spawn(move || pow::mine(prefix, difficulty, i, 2, tries / 2)))
                .collect();
            hs.into_iter().filter_map(|h| h.join().ok().flatten()).min()
        });
        found.ok_or_else(|| Stop::Fail(format!("no nonce found for difficulty {difficulty}")))
    }

    /// The proof-of-work preimage prefix for this relay (POW-3).
    pub fn pow_prefix(&self, handle: &Handle, key: &PublicKey, c: &Challenge, d: u32) -> Vec<u8> {
        pow::preimage_prefix(&self.host, handle, key, c, d)
    }

    /// A complete registration body: a fresh challenge and a proof for the required
    /// difficulty.
    pub fn register_body(
        &self,
        handle: &Handle,
        key: &SecretKey,
        recovery: Option<&SecretKey>,
    ) -> R<Value> {
        self.register_body_at(handle, key, recovery, self.now())
    }

    pub fn register_body_at(
        &self,
        handle: &Handle,
        key: &SecretKey,
        recovery: Option<&SecretKey>,
        ts: i64,
    ) -> R<Value> {
        let ch = self.challenge()?;
        let entry = self.register_entry(handle, key, recovery, ts, key)?;
        let prefix = self.pow_prefix(handle, &key.public(), &ch.challenge, ch.difficulty);
        let nonce = Self::mine(&prefix, ch.difficulty)?;
        let proof = PowProof {
            challenge: ch.challenge,
            difficulty: ch.difficulty,
            nonce,
        };
        Ok(obj(vec![
            ("entry", entry.value().clone()),
            ("pow", proof.to_value()),
        ]))
    }

    /// Registers a new agent named after `tag`, with a recovery key.
    pub fn register(&self, tag: &str) -> R<Agent> {
        self.register_opts(tag, true)
    }

    pub fn register_opts(&self, tag: &str, with_recovery: bool) -> R<Agent> {
        self.register_at(tag, with_recovery, 0)
    }

    /// Registers with the register entry stamped `back_ms` before the relay's now (still
    /// inside the window), so that the key is valid for envelopes stamped that early (LOG-12).
    /// The entry is signed again, with a fresh `ts`, each time the per-IP limit makes the suite
    /// wait (the proof-of-work does not cover `ts`, POW-3).
    pub fn register_at(&self, tag: &str, with_recovery: bool, back_ms: i64) -> R<Agent> {
        let handle = self.fresh_handle(tag);
        let key = random_key();
        let recovery = with_recovery.then(random_key);
        let ch = self.challenge()?;
        let nonce = Self::mine(
            &self.pow_prefix(&handle, &key.public(), &ch.challenge, ch.difficulty),
            ch.difficulty,
        )?;
        let proof = PowProof {
            challenge: ch.challenge,
            difficulty: ch.difficulty,
            nonce,
        }
        .to_value();
        let start = Instant::now();
        loop {
            let ts = self.now() - back_ms;
            let entry = self.register_entry(&handle, &key, recovery.as_ref(), ts, &key)?;
            let body = obj(vec![
                ("entry", entry.value().clone()),
                ("pow", proof.clone()),
            ]);
            let r = self
                .http
                .post("/v1/register", &canon::canonicalize(&body))?;
            if let Some(wait) = ip_wait(&r, start, "/v1/register") {
                std::thread::sleep(wait);
                continue;
            }
            if r.status != 201 {
                fail!(
                    "registering {handle} through POST /v1/register: expected 201, got {} (API-4)",
                    r.brief()
                );
            }
            return Ok(Agent {
                handle,
                key,
                recovery,
                reg_ts: ts,
                head: entry.hash().to_hex(),
            });
        }
    }

    /// Registers `n` agents.
    pub fn register_n(&self, tag: &str, n: usize) -> R<Vec<Agent>> {
        (0..n).map(|_| self.register(tag)).collect()
    }

    // ------------------------------------------------------------ envelopes

    /// An envelope object from `from` (without `id` and `sig`), stamped with the relay's time.
    pub fn envelope(&self, from: &Agent, ty: &str, to: &[&Handle], payload: Value) -> Object {
        self.envelope_at(from, ty, to, payload, self.now())
    }

    pub fn envelope_at(
        &self,
        from: &Agent,
        ty: &str,
        to: &[&Handle],
        payload: Value,
        ts: i64,
    ) -> Object {
        let mut o = Object::new();
        o.insert("v", int(1));
        o.insert("type", s(ty));
        o.insert("type_version", int(1));
        o.insert("from", s(from.handle.as_str()));
        o.insert("key", s(&from.key.public().key_id().to_hex()));
        o.insert(
            "to",
            Value::Array(to.iter().map(|h| s(h.as_str())).collect()),
        );
        o.insert("ts", int(ts));
        o.insert("payload", payload);
        o
    }

    /// A `message` with a unique text.
    pub fn message(&self, from: &Agent, to: &[&Handle]) -> Signed {
        let o = self.envelope(
            from,
            "message",
            to,
            obj(vec![("text", s(&self.uniq("hello")))]),
        );
        self.sign(&o, &from.key)
    }

    /// Signs an envelope under the tag its type calls for (ENV-10).
    pub fn sign(&self, o: &Object, sk: &SecretKey) -> Signed {
        let domain = if o.get("type").and_then(Value::as_str) == Some("receipt") {
            Domain::Receipt
        } else {
            Domain::Envelope
        };
        sign_with(o, sk, domain)
    }

    /// `POST /v1/envelopes` with exactly these bytes.
    pub fn post_envelope(&self, wire: &[u8]) -> R<Resp> {
        self.http.post("/v1/envelopes", wire)
    }

    /// Posts a signed envelope and requires `201 accepted` with the suite's id (API-7, ENV-11).
    pub fn send_ok(&self, sg: &Signed) -> R<()> {
        let r = self.post_envelope(&sg.wire)?;
        let b = r.expect_json(201)?;
        let _ = b;
        ensure!(
            r.str_member("result")? == "accepted",
            "{}: result is not \"accepted\": {}",
            r.what,
            r.brief()
        );
        ensure!(
            r.str_member("id")? == sg.id,
            "{}: the relay's id {} differs from the id computed per ENV-11, {}",
            r.what,
            r.str_member("id")?,
            sg.id
        );
        Ok(())
    }

    // ------------------------------------------------------------ authenticated requests

    /// An `Authorization: Formica` header value (AUTH-1, AUTH-2) for `method path body`.
    pub fn auth_header(&self, a: &Agent, method: &str, path: &str, body: &[u8]) -> String {
        self.auth_header_with(
            &a.key,
            &a.handle,
            method,
            path,
            body,
            self.now(),
            random_nonce(),
            &self.host,
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub fn auth_header_with(
        &self,
        sk: &SecretKey,
        handle: &Handle,
        method: &str,
        path: &str,
        body: &[u8],
        ts: i64,
        nonce: Nonce,
        aud: &RelayHost,
    ) -> String {
        RequestAuth::sign(
            sk,
            handle,
            ts,
            nonce,
            &RequestTarget { method, path, body },
            aud,
        )
    }

    /// An authenticated request.
    pub fn authed(&self, a: &Agent, method: &str, path: &str, body: &[u8]) -> R<Resp> {
        let h = self.auth_header(a, method, path, body);
        let mut headers = vec![("authorization", h)];
        if !body.is_empty() {
            headers.push(("content-type", "application/json".into()));
        }
        let b = if body.is_empty() && method == "GET" {
            Body::None
        } else {
            Body::Bytes(body)
        };
        self.http.send(method, path, &headers, b)
    }

    /// `PUT /v1/contacts/{who}`: `owner` lets `who` send at `level` (API-14).
    pub fn grant(&self, owner: &Agent, who: &Handle, level: &str) -> R<()> {
        let body = canon::canonicalize(&obj(vec![("level", s(level))]));
        let r = self.authed(owner, "PUT", &format!("/v1/contacts/{who}"), &body)?;
        r.expect_json(200)?;
        Ok(())
    }

    /// Every inbox item of `a` after `after`: (cursor, envelope), following `next` (API-9).
    pub fn inbox_after(&self, a: &Agent, after: &str) -> R<Vec<(String, Value)>> {
        let mut out = Vec::new();
        let mut after = after.to_owned();
        for _ in 0..1000 {
            let r = self.authed(a, "GET", &format!("/v1/inbox?after={after}"), b"")?;
            r.expect_json(200)?;
            let items = r
                .member("items")?
                .as_array()
                .ok_or_else(|| Stop::Fail(format!("{}: `items` is not an array", r.what)))?
                .to_vec();
            if items.is_empty() {
                return Ok(out);
            }
            for it in items {
                let o = it
                    .as_object()
                    .ok_or_else(|| Stop::Fail(format!("{}: an item is not an object", r.what)))?;
                let cursor = o.get("cursor").and_then(Value::as_str).ok_or_else(|| {
                    Stop::Fail(format!(
                        "{}: an item has no string `cursor` (API-9)",
                        r.what
                    ))
                })?;
                let env = o.get("envelope").cloned().ok_or_else(|| {
                    Stop::Fail(format!("{}: an item has no `envelope` (API-9)", r.what))
                })?;
                after = cursor.to_owned();
                out.push((after.clone(), env));
            }
        }
        fail!("GET /v1/inbox: more than 1000 pages")
    }

    /// Every inbox item of `a` (from the start).
    pub fn inbox(&self, a: &Agent) -> R<Vec<(String, Value)>> {
        self.inbox_after(a, "0")
    }

    /// `GET /v1/messages/{id}` as `a` (API-13).
    pub fn status(&self, a: &Agent, id: &str) -> R<Resp> {
        self.authed(a, "GET", &format!("/v1/messages/{id}"), b"")
    }

    /// The delivery state of `id` to `recipient`, as its sender sees it.
    pub fn delivery(&self, sender: &Agent, id: &str, recipient: &Handle) -> R<(String, Value)> {
        let r = self.status(sender, id)?;
        r.expect_json(200)?;
        let list = r.member("recipients")?.as_array().unwrap_or(&[]).to_vec();
        for x in list {
            if x.as_object()
                .and_then(|o| o.get("handle"))
                .and_then(Value::as_str)
                == Some(recipient.as_str())
            {
                let st = x
                    .as_object()
                    .and_then(|o| o.get("status"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                return Ok((st, x));
            }
        }
        fail!(
            "{}: no delivery to {recipient} listed: {}",
            r.what,
            r.brief()
        )
    }

    /// Polls the delivery of `id` to `recipient` until its state is `want`, for at most
    /// `within_ms`. Returns the last recipient object.
    pub fn wait_delivery(
        &self,
        sender: &Agent,
        id: &str,
        recipient: &Handle,
        want: &str,
        within_ms: u64,
    ) -> R<Value> {
        let end = Instant::now() + Duration::from_millis(within_ms);
        loop {
            let (st, v) = self.delivery(sender, id, recipient)?;
            if st == want {
                return Ok(v);
            }
            if Instant::now() >= end {
                fail!("GET /v1/messages/{id}: delivery to {recipient} is {st:?}, not {want:?} within {within_ms} ms");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `a`'s inbox holds an envelope matching `pred`, for at most `within_ms`.
    pub fn wait_inbox(
        &self,
        a: &Agent,
        within_ms: u64,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> R<Value> {
        let end = Instant::now() + Duration::from_millis(within_ms);
        loop {
            if let Some((_, e)) = self.inbox(a)?.into_iter().find(|(_, e)| pred(e)) {
                return Ok(e);
            }
            if Instant::now() >= end {
                fail!("{} never received {what} within {within_ms} ms", a.handle);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The longest a `timed_out` receipt may lag its deadline, plus a margin for a loaded
    /// machine (ACK-4).
    pub fn deadline_lag_ms(&self) -> u64 {
        u64::try_from(self.published.deadline_check_ms.unwrap_or(1000)).unwrap_or(1000) + 3000
    }

    /// Verifies a receipt with the relay key from the descriptor (RCPT-4, SIG-1: receipt tag).
    pub fn verify_receipt(&self, env: &Value) -> R<()> {
        let o = env
            .as_object()
            .ok_or_else(|| Stop::Fail("a receipt is not an object".into()))?;
        let key = self.relay_key.ok_or_else(|| {
            Stop::Fail(
                "the descriptor has no valid relay key to verify receipts with (DESC-1)".into(),
            )
        })?;
        let kid = o.get("key").and_then(Value::as_str).unwrap_or("");
        ensure!(kid == key.key_id().to_hex(), "receipt `key` {kid:?} is not the key id of the descriptor's relay key {} (RCPT-1, RCPT-4)", key.key_id().to_hex());
        let sig = o
            .get("sig")
            .and_then(Value::as_str)
            .and_then(|x| Signature::parse_hex(x).ok())
            .ok_or_else(|| Stop::Fail("receipt has no valid `sig` (ENV-13)".into()))?;
        let mut input = Domain::Receipt.tag().to_vec();
        canon::write_object(o, Some(&["id", "sig"]), &mut input);
        ensure!(key.verify_input(&input, &sig).is_ok(), "receipt signature does not verify with the relay key under the receipt tag (RCPT-1, SIG-1): {}", quote(&canon::canonicalize(env)));
        let id = formica_protocol::hex::encode(blake3::hash(&input).as_bytes());
        ensure!(
            o.get("id").and_then(Value::as_str) == Some(id.as_str()),
            "receipt `id` is not BLAKE3 of its signing input (ENV-11)"
        );
        Ok(())
    }
}

/// A member of an envelope's payload, as a string.
pub fn payload_str<'a>(env: &'a Value, key: &str) -> Option<&'a str> {
    env.as_object()?
        .get("payload")?
        .as_object()?
        .get(key)?
        .as_str()
}

/// A top-level member of an envelope, as a string.
pub fn env_str<'a>(env: &'a Value, key: &str) -> Option<&'a str> {
    env.as_object()?.get(key)?.as_str()
}

/// Whether `env` is a receipt about `msg` with `status`.
pub fn is_receipt(env: &Value, msg: &str, status: &str) -> bool {
    env_str(env, "type") == Some("receipt")
        && payload_str(env, "msg") == Some(msg)
        && payload_str(env, "status") == Some(status)
}

/// Whether a response answered an expected refusal with some other error, for reasons.
pub fn code_of(r: &Resp) -> ErrorCode {
    r.code()
        .and_then(ErrorCode::from_wire)
        .unwrap_or(ErrorCode::Internal)
}
