//! Sealed payloads (SPEC.md section 20) on keytool's side: sealing what `send` and `conv send`
//! post ([`Sealer`]), and opening what `inbox`, `watch` and the conversation reads show
//! ([`Opener`]).
//!
//! Sealing: the recipients' key logs are fetched through the home relay and verified from their
//! first entry (as `resolve` does); the payload is sealed when every recipient's log has an
//! encryption key current at the envelope's `ts`, with one more copy for the sender when it
//! holds the private key of its own current encryption key (so its own posts read back in
//! conversation history). Otherwise it goes unsealed, and the caller says so. The content key
//! and each recipient's HPKE ephemeral seed are fresh bytes from the OS's CSPRNG.
//!
//! Opening: with the agent's own verified key log and the private keys it holds
//! (`enckeys`). An item that does not open is shown with the reason word of
//! [`OpenError::reason`], never dropped or shown empty.

use super::{fetch_log, Session};
use crate::enckeys;
use crate::output::{Exit, Fail};
use formica_protocol::envelope::EnvelopeLimits;
use formica_protocol::seal::{self, EncSecretKey, OpenError, Recipient};
use formica_protocol::{
    canon, ErrorCode, Handle, KeyId, KeyLog, MessageType, Payload, SignedEnvelope, Value,
};
use rand::RngCore;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Why a payload went unsealed (`unsealed_reason` in the output).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsealed {
    /// `--plain` (or the MCP argument `plain`).
    Asked,
    /// A type relays read (SEAL-2): acks, contact requests, conversation actions, ...
    Type,
    /// These recipients publish no encryption key current at the envelope's time.
    NoEncKey(Vec<Handle>),
}

impl Unsealed {
    pub fn word(&self) -> &'static str {
        match self {
            Unsealed::Asked => "plain_requested",
            Unsealed::Type => "type_not_sealable",
            Unsealed::NoEncKey(_) => "no_enc_key",
        }
    }
}

/// How a posted payload went: sealed (with the sender's own copy or not) or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sealing {
    Sealed { recipients: usize, own_copy: bool },
    Plain(Unsealed),
}

impl Sealing {
    /// The members `send` and `conv send` add to their JSON: `sealed`, and when it is false
    /// `unsealed_reason` (and `no_enc_key`, the recipients without a current key).
    pub fn members(&self) -> Vec<(&'static str, Value)> {
        match self {
            Sealing::Sealed { own_copy, .. } => vec![
                ("sealed", Value::Bool(true)),
                ("own_copy", Value::Bool(*own_copy)),
            ],
            Sealing::Plain(u) => {
                let mut m = vec![
                    ("sealed", Value::Bool(false)),
                    ("unsealed_reason", u.word().into()),
                ];
                if let Unsealed::NoEncKey(hs) = u {
                    m.push((
                        "no_enc_key",
                        Value::Array(hs.iter().map(|h| h.as_str().into()).collect()),
                    ));
                }
                m
            }
        }
    }

    /// One line for people.
    pub fn note(&self) -> String {
        match self {
            Sealing::Sealed { recipients, own_copy } => format!(
                "\n  sealed (end-to-end encrypted) for {recipients} recipient{}{}",
                if *recipients == 1 { "" } else { "s" },
                if *own_copy { " and your own copy" } else { "" }
            ),
            Sealing::Plain(Unsealed::Asked) => "\n  not sealed (--plain): relays can read it".into(),
            Sealing::Plain(Unsealed::Type) => String::new(),
            Sealing::Plain(Unsealed::NoEncKey(hs)) => format!(
                "\n  NOT sealed: {} publish{} no current encryption key, so it was sent readable by relays",
                hs.iter().map(Handle::as_str).collect::<Vec<_>>().join(", "),
                if hs.len() == 1 { "es" } else { "" }
            ),
        }
    }
}

/// The key logs a sealed post needs, fetched and verified before it is signed.
#[derive(Debug)]
pub struct Sealer {
    recipients: Vec<(Handle, KeyLog)>,
    /// The sender's own log, for its own copy.
    own: Option<KeyLog>,
    /// The payload limit of the sender's tier, when the relay reports the tier and publishes
    /// its limits (a sealed payload is larger than the plain one: it must fit this too).
    tier_payload_max: Option<usize>,
    home: PathBuf,
    identity: String,
    /// `--sealed`: fail rather than send unsealed.
    require: bool,
}

impl Sealer {
    /// Fetches and verifies the logs of `to` and of the sender. A log that cannot be fetched
    /// (other than not found) or does not verify fails the post: sending unsealed silently
    /// would be a downgrade. A recipient without a log counts as one without a key.
    pub fn prepare(s: &Session, home: &std::path::Path, to: &[Handle]) -> Result<Sealer, Fail> {
        let mut recipients = Vec::with_capacity(to.len());
        for h in to {
            match fetch_log(&s.client, h) {
                Ok((log, _)) => recipients.push((h.clone(), log)),
                // No log: no key to seal to. The relay refuses an unknown recipient itself
                // (unknown_recipient), as it does for a plain post.
                Err(f) if f.code == Some(ErrorCode::NotFound) => {}
                Err(f) => {
                    let hint = match &f.hint {
                        Some(h) => format!("{h}; "),
                        None => String::new(),
                    };
                    let why = format!(
                        "{hint}keytool fetches each recipient's key log to seal the message to its encryption key; --plain sends it unsealed"
                    );
                    return Err(f.hint(why));
                }
            }
        }
        let (own_log, a) = fetch_log(&s.client, &s.me)?;
        let tier_payload_max = a.str("tier").and_then(|t| {
            let tiers = s.desc.value.as_object()?.get("tiers")?.as_array()?;
            tiers
                .iter()
                .filter_map(Value::as_object)
                .find(|o| o.get("name").and_then(Value::as_str) == Some(t))?
                .get("payload_bytes_max")?
                .as_i64()
                .and_then(|n| usize::try_from(n).ok())
        });
        Ok(Sealer {
            recipients,
            own: (!to.contains(&s.me)).then_some(own_log),
            tier_payload_max,
            home: home.to_owned(),
            identity: s.id.name.clone(),
            require: false,
        })
    }

    /// Seals `env`'s payload for its `to` (and the sender) at its `ts`, or says why not;
    /// `payload_bytes_max` is the relay's limit, which the sealed form must fit.
    pub fn seal(
        &self,
        env: &mut formica_protocol::Envelope,
        payload_bytes_max: usize,
    ) -> Result<Sealing, Fail> {
        let payload_bytes_max = payload_bytes_max.min(self.tier_payload_max.unwrap_or(usize::MAX));
        if !seal::sealable(&env.msg_type) {
            return Ok(Sealing::Plain(Unsealed::Type));
        }
        let mut rs = Vec::with_capacity(env.to.len() + 1);
        let mut lacking = Vec::new();
        for h in &env.to {
            match self
                .recipients
                .iter()
                .find(|(r, _)| r == h)
                .and_then(|(_, log)| log.enc_key_current(env.ts))
            {
                Some(p) => rs.push(recipient(h, p.key)),
                None => lacking.push(h.clone()),
            }
        }
        if !lacking.is_empty() && self.require {
            let who = lacking
                .iter()
                .map(Handle::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Fail::new(
                Exit::Input,
                format!("not sent: {who} publish no current encryption key, and --sealed refuses to send unsealed"),
            )
            .hint("they publish one with keytool enc-key rotate; without --sealed it is sent readable by relays"));
        }
        if !lacking.is_empty() {
            return Ok(Sealing::Plain(Unsealed::NoEncKey(lacking)));
        }
        let own = self
            .own
            .as_ref()
            .and_then(|log| log.enc_key_current(env.ts))
            .filter(|p| enckeys::held(&self.home, &self.identity, &p.key.key_id()));
        if let Some(p) = own {
            rs.push(recipient(&env.from, p.key));
        }
        let plain_len = canon::canonical_len(&env.payload.to_value());
        let mut content_key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut content_key);
        let sealed = seal::seal(env, &rs, content_key).map_err(|e| match e {
            // A recipient named twice, for example: the envelope is refused either way.
            seal::SealError::Addressing(_) => Fail::code(ErrorCode::InvalidField, e.to_string()),
            _ => Fail::new(Exit::Failure, format!("sealing failed: {e}")),
        })?;
        let sealed_len = canon::canonical_len(&sealed.to_payload_value());
        if sealed_len > payload_bytes_max {
            let mut f = Fail::code(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the sealed payload is {sealed_len} bytes; the relay allows at most {payload_bytes_max} (sealing adds padding, a third for base64 and about 250 bytes per recipient)"
                ),
            );
            if plain_len <= payload_bytes_max {
                f = f.hint(format!(
                    "unsealed it is {plain_len} bytes and fits: --plain sends it unsealed (relays can read it), or send less"
                ));
            }
            return Err(f);
        }
        env.payload = Payload::Sealed(sealed);
        Ok(Sealing::Sealed {
            recipients: env.to.len(),
            own_copy: own.is_some(),
        })
    }
}

fn recipient(h: &Handle, key: seal::EncPublicKey) -> Recipient {
    let mut ephemeral = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut ephemeral);
    Recipient {
        handle: h.clone(),
        key,
        ephemeral,
    }
}

/// Why a sealed payload was not opened: the reason word and a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenFailure {
    pub reason: String,
    pub message: String,
}

impl From<&OpenError> for OpenFailure {
    fn from(e: &OpenError) -> Self {
        OpenFailure {
            reason: e.reason().to_owned(),
            message: e.to_string(),
        }
    }
}

/// What opening gave: `None` for a payload that is not sealed.
pub type Opened = Option<Result<Payload, OpenFailure>>;

/// A cached own key log older than this is fetched again before a sealed payload to a key it
/// does not know is reported (a long `watch` outlives `enc-key rotate`).
const OWN_LOG_FRESH: Duration = Duration::from_secs(10);

/// Opens sealed payloads addressed to the session's agent.
#[derive(Debug)]
pub struct Opener {
    home: PathBuf,
    identity: String,
    me: Handle,
    limits: EnvelopeLimits,
    log: Option<(KeyLog, Instant)>,
    keys: BTreeMap<KeyId, Result<EncSecretKey, String>>,
    /// The senders' key logs, for the signature check before a payload is shown as theirs.
    senders: super::Logs,
}

impl Opener {
    pub fn new(s: &Session, home: &std::path::Path) -> Opener {
        Opener {
            home: home.to_owned(),
            identity: s.id.name.clone(),
            me: s.me.clone(),
            limits: s.desc.envelope_limits(),
            log: None,
            keys: BTreeMap::new(),
            senders: super::Logs::default(),
        }
    }

    /// Opens an envelope as a relay served it (JSON), if its payload is sealed.
    pub fn open_value(&mut self, s: &Session, env: &Value) -> Result<Opened, Fail> {
        let sealed = env
            .as_object()
            .and_then(|o| o.get("payload"))
            .is_some_and(seal::Sealed::is_sealed_value);
        if !sealed {
            return Ok(None);
        }
        match SignedEnvelope::from_value(env.clone(), &self.limits) {
            Ok(se) => self.open(s, &se),
            Err(e) => Ok(Some(Err(OpenFailure {
                reason: "malformed".into(),
                message: format!("the sealed envelope is malformed: {e}"),
            }))),
        }
    }

    /// Opens `se`'s payload, if it is sealed. What keeps it from opening, even the agent's own
    /// key log out of reach, is the item's `open_error`, never a failure of the whole read
    /// (SEAL-11). The envelope must verify with its sender's key valid at
    /// its `ts` first (SEAL-10): otherwise the item is shown with the word `bad_sender` and
    /// nothing of its payload, since a relay can seal anything to a public key.
    pub fn open(&mut self, s: &Session, se: &SignedEnvelope) -> Result<Opened, Fail> {
        let env = se.envelope();
        let Payload::Sealed(sealed) = &env.payload else {
            return Ok(None);
        };
        if let Err(f) = self.check_sender(s, se) {
            return Ok(Some(Err(f)));
        }
        let kid = sealed.keys.iter().find(|k| k.to == self.me).map(|k| k.kid);
        if let Some(kid) = kid {
            self.load_key(&kid);
        }
        // The agent's own key log is needed to open: when it cannot be had, this item says so
        // and the others are still shown (SEAL-11).
        let first = match self.try_open(s, env) {
            Ok(r) => r,
            Err(f) => {
                return Ok(Some(Err(OpenFailure {
                    reason: "unknown_key_id".into(),
                    message: format!("your own key log could not be checked: {}", f.message),
                })))
            }
        };
        // A key this log does not know yet: the log may be older than a rotation.
        let stale = self
            .log
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() > OWN_LOG_FRESH);
        let result = match first {
            Err(OpenError::UnknownKeyId { .. } | OpenError::KeyNotValid { .. }) if stale => {
                self.log = None;
                match self.try_open(s, env) {
                    Ok(r) => r,
                    Err(f) => {
                        return Ok(Some(Err(OpenFailure {
                            reason: "unknown_key_id".into(),
                            message: format!(
                                "your own key log could not be checked again: {}",
                                f.message
                            ),
                        })))
                    }
                }
            }
            r => r,
        };
        Ok(Some(result.map_err(|e| {
            let mut f = OpenFailure::from(&e);
            if let Some(Err(why)) = kid.and_then(|k| self.keys.get(&k)) {
                f.message.push_str(&format!(" ({why})"));
            }
            f
        })))
    }

    /// ENV-17 with the sender's key valid at the envelope's `ts` (LOG-12), from its key log
    /// verified from the first entry (fetched again once if the cached one is older than a
    /// rotation could be).
    fn check_sender(&mut self, s: &Session, se: &SignedEnvelope) -> Result<(), OpenFailure> {
        let env = se.envelope();
        let bad = |message: String| OpenFailure {
            reason: "bad_sender".into(),
            message,
        };
        let mut retried = false;
        loop {
            let log = self.senders.get(&s.client, &env.from).map_err(|f| {
                bad(format!(
                    "the key log of the sender {} could not be checked: {}",
                    env.from, f.message
                ))
            })?;
            let checked = log
                .key_at(&env.key, env.ts)
                .map_err(|e| e.to_string())
                .and_then(|k| se.clone().verify(k).map_err(|e| e.to_string()));
            match checked {
                Ok(_) => return Ok(()),
                Err(_) if !retried && self.senders.forget_old(&env.from) => retried = true,
                Err(why) => {
                    return Err(bad(format!(
                        "the envelope does not verify as {}'s: {why}",
                        env.from
                    )))
                }
            }
        }
    }

    fn try_open(
        &mut self,
        s: &Session,
        env: &formica_protocol::Envelope,
    ) -> Result<Result<Payload, OpenError>, Fail> {
        if self.log.is_none() {
            self.log = Some((fetch_log(&s.client, &self.me)?.0, Instant::now()));
        }
        let Some((log, _)) = &self.log else {
            return Err(Fail::new(Exit::Failure, "the own key log went missing"));
        };
        let keys = &self.keys;
        Ok(seal::open(env, &self.me, log, |kid| {
            keys.get(kid).and_then(|k| k.as_ref().ok()).cloned()
        }))
    }

    /// Loads the private key of `kid` once (a file that does not load is remembered with why).
    fn load_key(&mut self, kid: &KeyId) {
        if matches!(self.keys.get(kid), Some(Ok(_))) {
            return;
        }
        match enckeys::load(&self.home, &self.identity, kid) {
            Ok(Some(k)) => {
                self.keys.insert(*kid, Ok(k));
            }
            Ok(None) => {}
            Err(f) => {
                self.keys.insert(*kid, Err(f.message));
            }
        }
    }
}

/// The JSON members that show an opened (or unopenable) sealed payload next to the envelope as
/// served: `sealed: true` and either `payload` (the opened payload) or `open_error` (`reason`,
/// `message`). Nothing for a payload that was not sealed.
pub fn opened_members(o: &Opened) -> Vec<(&'static str, Value)> {
    match o {
        None => Vec::new(),
        Some(Ok(p)) => vec![("sealed", Value::Bool(true)), ("payload", p.to_value())],
        Some(Err(f)) => vec![
            ("sealed", Value::Bool(true)),
            (
                "open_error",
                super::obj(vec![
                    ("reason", f.reason.as_str().into()),
                    ("message", f.message.as_str().into()),
                ]),
            ),
        ],
    }
}

/// `v` (an object) with `members` added at its end.
pub fn with_members(v: &Value, members: Vec<(&'static str, Value)>) -> Value {
    let mut v = v.clone();
    if let Value::Object(o) = &mut v {
        for (k, x) in members {
            o.insert(k, x);
        }
    }
    v
}

/// The mark readable lines carry for a sealed payload: `[sealed]`, or why it did not open.
pub fn mark(o: &Opened) -> String {
    match o {
        None => String::new(),
        Some(Ok(_)) => "  [sealed]".into(),
        Some(Err(f)) => format!("  [sealed: cannot open: {}]", f.reason),
    }
}

/// The sealing of a post of type `t`: `None` when it is not to be sealed (with why), else the
/// prepared [`Sealer`].
pub fn sealer_for(
    s: &Session,
    home: &std::path::Path,
    t: &MessageType,
    to: &[Handle],
    plain: bool,
    require: bool,
) -> Result<Result<Sealer, Unsealed>, Fail> {
    if plain && require {
        return Err(Fail::new(
            Exit::Usage,
            "plain and sealed together: choose one",
        ));
    }
    if plain {
        return Ok(Err(Unsealed::Asked));
    }
    if !seal::sealable(t) {
        if require {
            return Err(Fail::new(
                Exit::Input,
                format!("a {t} cannot be sealed (relays read it, SEAL-2), and --sealed refuses to send unsealed"),
            ));
        }
        return Ok(Err(Unsealed::Type));
    }
    let mut sealer = Sealer::prepare(s, home, to)?;
    sealer.require = require;
    Ok(Ok(sealer))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use formica_protocol::keylog::{KeyLogEntry, KeyOp};
    use formica_protocol::{Envelope, SecretKey};

    fn h(name: &str) -> Handle {
        Handle::parse(&format!("@{name}@relay.example")).unwrap()
    }

    /// `name`'s verified log: registered, then an encryption key from `ts` 2 000 for a day.
    fn agent(name: &str, seed: u8) -> (SecretKey, KeyLog, EncSecretKey) {
        let sk = SecretKey::from_seed(&[seed; 32]);
        let reg = KeyLogEntry {
            handle: h(name),
            seq: 0,
            prev: None,
            ts: 1_000,
            op: KeyOp::Register {
                key: sk.public(),
                recovery: None,
            },
            signer: sk.public().key_id(),
        }
        .sign(&sk, &[])
        .unwrap();
        let mut log = KeyLog::verify(vec![reg]).unwrap();
        let enc = EncSecretKey::derive(&[seed ^ 0x55; 32]);
        let (seq, prev) = log.next_position();
        let e = KeyLogEntry {
            handle: h(name),
            seq,
            prev: Some(prev),
            ts: 2_000,
            op: KeyOp::Enc {
                enc: enc.public().unwrap(),
                expires: 2_000 + 86_400_000,
            },
            signer: sk.public().key_id(),
        }
        .sign(&sk, &[])
        .unwrap();
        log.append(e).unwrap();
        (sk, log, enc)
    }

    /// What the opener shows for a sealed message from alice to bob: opened, tampered with,
    /// and read by someone it was not sealed to.
    #[test]
    fn an_unopenable_sealed_message_is_shown_with_its_reason_never_empty() {
        let (alice, _, _) = agent("alice", 1);
        let (_, bob_log, bob_enc) = agent("bob", 2);
        let (_, carol_log, carol_enc) = agent("carol", 3);
        let mut env = Envelope {
            msg_type: MessageType::Message,
            type_version: 1,
            from: h("alice"),
            key: alice.public().key_id(),
            to: vec![h("bob")],
            ts: 5_000,
            corr: None,
            ack_by: None,
            conv: None,
            payload: Payload::Message {
                text: "meet at noon".into(),
                data: None,
            },
        };
        let bob_key = bob_log.enc_key_current(env.ts).unwrap().key;
        let sealed = seal::seal(&env, &[recipient(&h("bob"), bob_key)], [9; 32]).unwrap();
        env.payload = Payload::Sealed(sealed);
        let open_as = |env: &Envelope, me: &str, log: &KeyLog, k: &EncSecretKey| -> Opened {
            let k = k.clone();
            Some(seal::open(env, &h(me), log, |_| Some(k.clone())).map_err(|e| (&e).into()))
        };
        let show = |env: &Envelope, o: &Opened| {
            let v = env.sign(&alice).unwrap().value().clone();
            let item = super::super::obj(vec![("cursor", "7".into()), ("envelope", v.clone())]);
            (
                super::super::inbox::shown_line("7", &v, None, o),
                with_members(&item, opened_members(o)),
            )
        };

        let ok = open_as(&env, "bob", &bob_log, &bob_enc);
        let (line, v) = show(&env, &ok);
        assert!(line.contains("\"meet at noon\"  [sealed]"), "{line}");
        let o = v.as_object().unwrap();
        assert_eq!(o.get("sealed"), Some(&Value::Bool(true)));
        assert_eq!(
            o.get("payload")
                .and_then(|p| p.as_object()?.get("text")?.as_str()),
            Some("meet at noon")
        );

        // A relay that changes one byte of the ciphertext: bad_tag, shown as such.
        let mut tampered = env.clone();
        if let Payload::Sealed(s) = &mut tampered.payload {
            s.ct[0] ^= 1;
        }
        let bad = open_as(&tampered, "bob", &bob_log, &bob_enc);
        assert_eq!(
            bad.as_ref().unwrap().as_ref().unwrap_err().reason,
            "bad_tag"
        );
        let (line, v) = show(&tampered, &bad);
        assert!(line.ends_with("[sealed: cannot open: bad_tag]"), "{line}");
        assert!(!line.contains("noon"), "{line}");
        let o = v.as_object().unwrap();
        assert_eq!(o.get("sealed"), Some(&Value::Bool(true)));
        assert!(o.get("payload").is_none());
        let err = o.get("open_error").and_then(Value::as_object).unwrap();
        assert_eq!(err.get("reason").and_then(Value::as_str), Some("bad_tag"));
        assert!(err
            .get("message")
            .and_then(Value::as_str)
            .is_some_and(|m| !m.is_empty()));

        // Someone it was not sealed to.
        let other = open_as(&env, "carol", &carol_log, &carol_enc);
        let (line, _) = show(&env, &other);
        assert!(
            line.ends_with("[sealed: cannot open: not_a_recipient]"),
            "{line}"
        );

        // The marks and members of a payload that was not sealed: none.
        assert_eq!(mark(&None), "");
        assert!(opened_members(&None).is_empty());
    }

    #[test]
    fn unsealed_posts_say_why() {
        let p = Sealing::Plain(Unsealed::NoEncKey(vec![h("carol")]));
        let m = p.members();
        assert_eq!(m[0], ("sealed", Value::Bool(false)));
        assert_eq!(m[1], ("unsealed_reason", "no_enc_key".into()));
        assert!(p.note().contains("NOT sealed: @carol@relay.example"));
        assert_eq!(Unsealed::Asked.word(), "plain_requested");
    }
}
