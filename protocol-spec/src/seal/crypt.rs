//! Sealing and opening (SEAL-5..SEAL-12). The cryptography is HPKE from `hpke` (RFC 9180) and
//! ChaCha20-Poly1305 from `chacha20poly1305` (RFC 8439); this module only arranges their inputs.

use super::{
    EncPublicKey, EncSecretKey, Sealed, SealedKey, CONTENT_KEY_BYTES, HPKE_INFO, PADDED_MIN,
    WRAPPED_BYTES,
};
use crate::canon;
use crate::envelope::{Envelope, MessageType, Payload};
use crate::handle::Handle;
use crate::json::{self, JsonLimits, Object, Value};
use crate::keylog::{EncKeyLookupError, KeyLog};
use crate::keys::{Domain, KeyId};
use chacha20poly1305::aead::{Aead as _, KeyInit as _};
use hpke::rand_core::{CryptoRng, RngCore};
use hpke::{Deserializable, OpModeR, OpModeS, Serializable};

type Kem = hpke::kem::X25519HkdfSha256;
type Kdf = hpke::kdf::HkdfSha256;
type Aead = hpke::aead::ChaCha20Poly1305;

/// SEAL-5: the associated data of both the content ciphertext and every sealed key, 32 bytes:
/// BLAKE3(`formica/v1/sealed\0` || JCS(routing header)), where the routing header is the object
/// of the envelope's `from`, `to`, `type`, `type_version`, `ts`, and `corr` and `conv` when
/// present. A relay that moves the ciphertext into another envelope changes it, and opening fails.
pub fn routing_aad(env: &Envelope) -> [u8; 32] {
    let mut o = Object::new();
    o.insert("from", env.from.as_str().into());
    o.insert(
        "to",
        Value::Array(env.to.iter().map(|h| h.as_str().into()).collect()),
    );
    o.insert("type", env.msg_type.as_str().into());
    o.insert("type_version", Value::Int(env.type_version));
    o.insert("ts", Value::Int(env.ts));
    if let Some(c) = &env.corr {
        o.insert("corr", c.as_str().into());
    }
    if let Some(c) = &env.conv {
        o.insert("conv", c.to_hex().into());
    }
    let input = Domain::Sealed.input(&canon::canonicalize(&Value::Object(o)));
    *blake3::hash(&input).as_bytes()
}

/// SEAL-6: the padded length for `n` bytes (the plaintext and its 0x80 marker): at least
/// [`PADDED_MIN`], then Padmé (Nikitin et al., "Reducing Metadata Leakage from Encrypted Files
/// and Communication with PURBs", 2019): keep the top `floor(log2 E) + 1` bits of `n`, where
/// `E = floor(log2 n)`, and round the rest up. The overhead is at most 12 %, and a length leaks
/// O(log log n) bits.
pub fn padded_len(n: usize) -> usize {
    if n <= PADDED_MIN {
        return PADDED_MIN;
    }
    let e = n.ilog2(); // >= 8 here
    let s = e.ilog2() + 1;
    let last_bits = e - s;
    let mask = (1usize << last_bits) - 1;
    (n + mask) & !mask
}

/// One recipient of [`seal`]: its handle, its encryption key valid at the envelope's `ts`, and
/// 32 random bytes for HPKE's ephemeral key (RFC 9180 DeriveKeyPair input `ikmE`).
#[derive(Debug, Clone)]
pub struct Recipient {
    pub handle: Handle,
    pub key: EncPublicKey,
    pub ephemeral: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("a {0} payload cannot be sealed: relays read it (SEAL-2)")]
    NotSealable(String),
    #[error("the payload is already sealed")]
    AlreadySealed,
    #[error("recipients: {0}")]
    Addressing(String),
    #[error("HPKE refused to seal: {0}")]
    Hpke(String),
}

/// Seals `env.payload` (SEAL-7): returns the sealed payload for the envelope's `to` (in that
/// order, then the sender's own copy if `recipients` has one more, for `env.from`). The routing
/// header is taken from `env`, so the envelope must be signed with exactly these members.
/// `content_key` and each recipient's `ephemeral` must be fresh random bytes.
pub fn seal(
    env: &Envelope,
    recipients: &[Recipient],
    content_key: [u8; CONTENT_KEY_BYTES],
) -> Result<Sealed, SealError> {
    if !sealable(&env.msg_type) {
        return Err(SealError::NotSealable(env.msg_type.as_str().to_owned()));
    }
    if matches!(env.payload, Payload::Sealed(_)) {
        return Err(SealError::AlreadySealed);
    }
    let aad = routing_aad(env);
    let plain = canon::canonicalize(&env.payload.to_value());
    let mut padded = plain;
    padded.push(0x80);
    padded.resize(padded_len(padded.len()), 0);
    let cipher = chacha20poly1305::ChaCha20Poly1305::new((&content_key).into());
    // A content key seals exactly one plaintext, so the all-zero nonce is used once per key.
    let ct = cipher
        .encrypt(
            &[0u8; 12].into(),
            chacha20poly1305::aead::Payload {
                msg: &padded,
                aad: &aad,
            },
        )
        .map_err(|_| SealError::Hpke("content encryption failed".into()))?;
    let mut keys = Vec::with_capacity(recipients.len());
    for r in recipients {
        let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(&r.key.to_bytes())
            .map_err(|e| SealError::Hpke(e.to_string()))?;
        let mut rng = Seeded::new(r.ephemeral);
        let (encapped, wrapped) = hpke::single_shot_seal::<Aead, Kdf, Kem, _>(
            &OpModeS::Base,
            &pk,
            HPKE_INFO,
            &content_key,
            &aad,
            &mut rng,
        )
        .map_err(|e| SealError::Hpke(e.to_string()))?;
        if rng.overdrawn {
            return Err(SealError::Hpke(
                "HPKE asked for more randomness than one ephemeral seed".into(),
            ));
        }
        let mut enc = [0u8; 32];
        enc.copy_from_slice(&encapped.to_bytes());
        let wrapped: [u8; WRAPPED_BYTES] = wrapped
            .as_slice()
            .try_into()
            .map_err(|_| SealError::Hpke("unexpected sealed key length".into()))?;
        keys.push(SealedKey {
            to: r.handle.clone(),
            kid: r.key.key_id(),
            enc,
            wrapped,
        });
    }
    let sealed = Sealed { keys, ct };
    sealed
        .check_addressing(&env.from, &env.to)
        .map_err(|e| SealError::Addressing(e.to_string()))?;
    Ok(sealed)
}

/// Types whose payload may be sealed (SEAL-2): those relays never read.
pub fn sealable(t: &MessageType) -> bool {
    matches!(
        t,
        MessageType::Message
            | MessageType::TaskRequest
            | MessageType::TaskResult
            | MessageType::Extension(_)
    )
}

/// Why a sealed payload could not be opened (SEAL-11). [`reason`](Self::reason) is the stable word
/// clients show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("the payload is not sealed")]
    NotSealed,
    #[error("no sealed key is addressed to {0}")]
    NotARecipient(Handle),
    #[error("sealed to key {kid}, {why}")]
    UnknownKeyId { kid: KeyId, why: &'static str },
    #[error("sealed to key {kid}, which expired at {expires} (the envelope's ts is {ts})")]
    KeyExpired { kid: KeyId, expires: i64, ts: i64 },
    #[error("sealed to key {kid}, which was not valid at the envelope's ts {ts}")]
    KeyNotValid { kid: KeyId, ts: i64 },
    #[error(
        "the {0} does not open: changed, moved to another envelope, or not sealed to this key"
    )]
    BadTag(&'static str),
    #[error("the plaintext's padding is not the one SEAL-6 gives")]
    BadPadding,
    #[error("the plaintext is not a valid payload: {0}")]
    BadPlaintext(String),
}

impl OpenError {
    pub fn reason(&self) -> &'static str {
        match self {
            OpenError::NotSealed => "not_sealed",
            OpenError::NotARecipient(_) => "not_a_recipient",
            OpenError::UnknownKeyId { .. } => "unknown_key_id",
            OpenError::KeyExpired { .. } => "key_expired",
            OpenError::KeyNotValid { .. } => "key_not_valid",
            OpenError::BadTag(_) => "bad_tag",
            OpenError::BadPadding => "bad_padding",
            OpenError::BadPlaintext(_) => "bad_plaintext",
        }
    }
}

/// Opens a sealed envelope addressed to `me` (SEAL-10 steps 1 to 6; step 0, the envelope's
/// signature by its sender, is the caller's: [`crate::SignedEnvelope::verify`]): `my_log` is `me`'s verified key log (the
/// encryption key must have been valid at the envelope's `ts`), `secret` gives the private key of
/// one of `me`'s encryption keys by id. Returns the payload of the envelope's type, checked
/// against that type's schema.
pub fn open(
    env: &Envelope,
    me: &Handle,
    my_log: &KeyLog,
    secret: impl Fn(&KeyId) -> Option<EncSecretKey>,
) -> Result<Payload, OpenError> {
    let Payload::Sealed(sealed) = &env.payload else {
        return Err(OpenError::NotSealed);
    };
    let k = sealed
        .keys
        .iter()
        .find(|k| k.to == *me)
        .ok_or_else(|| OpenError::NotARecipient(me.clone()))?;
    my_log.enc_key_at(&k.kid, env.ts).map_err(|e| match e {
        EncKeyLookupError::Unknown(kid) => OpenError::UnknownKeyId {
            kid,
            why: "which is not an encryption key of this handle",
        },
        EncKeyLookupError::Expired { kid, expires, ts } => {
            OpenError::KeyExpired { kid, expires, ts }
        }
        EncKeyLookupError::NotValid { kid, ts, .. } => OpenError::KeyNotValid { kid, ts },
    })?;
    let sk = secret(&k.kid).ok_or(OpenError::UnknownKeyId {
        kid: k.kid,
        why: "whose private key is not held here",
    })?;
    let sk = sk.hpke().ok_or(OpenError::UnknownKeyId {
        kid: k.kid,
        why: "whose private key is unusable",
    })?;
    let aad = routing_aad(env);
    let encapped = <Kem as hpke::Kem>::EncappedKey::from_bytes(&k.enc)
        .map_err(|_| OpenError::BadTag("sealed key"))?;
    let content_key = hpke::single_shot_open::<Aead, Kdf, Kem>(
        &OpModeR::Base,
        &sk,
        &encapped,
        HPKE_INFO,
        &k.wrapped,
        &aad,
    )
    .map_err(|_| OpenError::BadTag("sealed key"))?;
    let content_key: [u8; CONTENT_KEY_BYTES] = content_key
        .as_slice()
        .try_into()
        .map_err(|_| OpenError::BadTag("sealed key"))?;
    let cipher = chacha20poly1305::ChaCha20Poly1305::new((&content_key).into());
    let padded = cipher
        .decrypt(
            &[0u8; 12].into(),
            chacha20poly1305::aead::Payload {
                msg: &sealed.ct,
                aad: &aad,
            },
        )
        .map_err(|_| OpenError::BadTag("content ciphertext"))?;
    let plain = unpad(&padded).ok_or(OpenError::BadPadding)?;
    payload_of(&env.msg_type, plain)
}

/// SEAL-6 in reverse: the plaintext, if `padded` is it, one 0x80 and zeros up to exactly
/// [`padded_len`].
fn unpad(padded: &[u8]) -> Option<&[u8]> {
    let end = padded.iter().rposition(|b| *b != 0)?;
    (padded[end] == 0x80 && padded_len(end + 1) == padded.len()).then(|| &padded[..end])
}

/// SEAL-10 step 6: the plaintext is the canonical form of a payload valid for `t`, not sealed.
fn payload_of(t: &MessageType, plain: &[u8]) -> Result<Payload, OpenError> {
    let limits = JsonLimits {
        bytes_max: plain.len().max(1),
        ..JsonLimits::default()
    };
    let v = json::parse(plain, limits).map_err(|e| OpenError::BadPlaintext(e.to_string()))?;
    if canon::canonicalize(&v) != plain {
        return Err(OpenError::BadPlaintext(
            "not in canonical form (CANON-1)".into(),
        ));
    }
    if super::Sealed::is_sealed_value(&v) {
        return Err(OpenError::BadPlaintext("a sealed payload inside".into()));
    }
    Payload::from_value(t, &v).map_err(|e| OpenError::BadPlaintext(e.to_string()))
}

/// The caller's seed as the randomness HPKE asks for: RFC 9180's Encap draws exactly one
/// 32-byte `ikmE`. Asking for more marks it overdrawn (and [`seal`] refuses) rather than
/// repeating bytes.
struct Seeded {
    seed: [u8; 32],
    used: usize,
    overdrawn: bool,
}

impl Seeded {
    fn new(seed: [u8; 32]) -> Seeded {
        Seeded {
            seed,
            used: 0,
            overdrawn: false,
        }
    }
}

impl RngCore for Seeded {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        let n = dest.len().min(self.seed.len() - self.used);
        dest[..n].copy_from_slice(&self.seed[self.used..self.used + n]);
        self.used += n;
        if n < dest.len() {
            self.overdrawn = true;
            dest[n..].fill(0);
        }
    }
}

impl CryptoRng for Seeded {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padme_buckets() {
        assert_eq!(padded_len(1), 256);
        assert_eq!(padded_len(256), 256);
        assert_eq!(padded_len(257), 272);
        for n in 1..70_000 {
            let p = padded_len(n);
            assert!(p >= n && p >= PADDED_MIN);
            assert_eq!(padded_len(p), p, "{n} -> {p} is a bucket");
            if n > PADDED_MIN {
                assert!((p - n) * 100 <= n * 12, "{n} -> {p}: at most 12 %");
            }
        }
    }
}
