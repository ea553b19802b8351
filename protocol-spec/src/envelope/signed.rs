//! Signed envelopes: [`SignedEnvelope`] (parsed, id computed, signature not yet checked) and
//! [`VerifiedEnvelope`] (signature checked; only [`SignedEnvelope::verify`] makes one).

use super::{Envelope, EnvelopeError, EnvelopeLimits, MessageId};
use crate::canon;
use crate::json::{self, JsonError, Value};
use crate::keys::{KeyError, PublicKey, Signature};
use std::sync::Arc;

/// An envelope that has been parsed and whose id has been computed, but whose signature has not
/// been checked yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedEnvelope {
    pub(super) envelope: Envelope,
    pub(super) id: MessageId,
    pub(super) sig: Signature,
    pub(super) signing_input: Vec<u8>,
    /// The full object as received, with `id` set.
    pub(super) value: Value,
    /// The canonical bytes of `value`, made once (in the same pass as the signing input when
    /// the envelope carried its id) and shared with whoever stores or serves them.
    pub(super) wire: Arc<Vec<u8>>,
    /// The canonical length of the payload as received.
    pub(super) payload_len: usize,
}

impl SignedEnvelope {
    /// Parses bytes under the strict profile and the envelope schema (steps 1-5 of ingest).
    pub fn parse(bytes: &[u8], limits: &EnvelopeLimits) -> Result<SignedEnvelope, EnvelopeError> {
        let v = json::parse(bytes, limits.json)?;
        SignedEnvelope::from_value(v, limits)
    }

    /// Like [`parse`](Self::parse), for a value that has already passed the strict parser (one
    /// element of a batch). The value's depth is checked against the limits again.
    pub fn from_value(v: Value, limits: &EnvelopeLimits) -> Result<SignedEnvelope, EnvelopeError> {
        SignedEnvelope::from_value_with(v, limits, None)
    }

    /// Like [`parse`](Self::parse) for bytes the caller guarantees to be the canonical form of
    /// a full envelope (with `id` and `sig`), such as bytes a relay wrote to its own log after
    /// checking them: the bytes are kept as the wire form instead of being written again.
    /// Every check of `parse` still runs (schema, id against the signing input). Do not use it
    /// for bytes from the network.
    pub fn parse_stored_canonical(
        bytes: &[u8],
        limits: &EnvelopeLimits,
    ) -> Result<SignedEnvelope, EnvelopeError> {
        let v = json::parse(bytes, limits.json)?;
        SignedEnvelope::from_value_with(v, limits, Some(bytes))
    }

    fn from_value_with(
        mut v: Value,
        limits: &EnvelopeLimits,
        canonical: Option<&[u8]>,
    ) -> Result<SignedEnvelope, EnvelopeError> {
        if v.depth() > limits.json.depth_max {
            return Err(JsonError::TooDeep {
                offset: 0,
                max: limits.json.depth_max,
            }
            .into());
        }
        let (envelope, given_id, sig, payload_len) = Envelope::from_value(&v, limits)?;
        let Value::Object(obj) = &mut v else {
            unreachable!("Envelope::from_value accepted only an object")
        };
        // ENV-10: the signing input is the tag and the canonical form of the object as received,
        // without `id` and `sig`. The wire form (with both) is written in the same pass.
        let mut input = envelope.domain().tag().to_vec();
        let mut wire = Vec::new();
        match canonical {
            Some(bytes) if given_id.is_some() => {
                canon::write_object(obj, Some(&["id", "sig"]), &mut input);
                wire.extend_from_slice(bytes);
                debug_assert_eq!(wire, canon::canonicalize(&Value::Object(obj.clone())));
            }
            _ => canon::write_object_split(obj, &["id", "sig"], &mut wire, &mut input),
        }
        let id = MessageId::of_input(&input);
        if let Some(given) = given_id {
            if given != id.to_hex() {
                return Err(EnvelopeError::IdMismatch {
                    given: given.chars().take(64).collect(),
                    computed: id.to_hex(),
                });
            }
        } else {
            // The id was left out (ENV-14 allows it): the wire form gains it.
            obj.insert("id", id.to_hex().into());
            wire.clear();
            canon::write_object(obj, None, &mut wire);
        }
        Ok(SignedEnvelope {
            envelope,
            id,
            sig,
            signing_input: input,
            value: v,
            wire: Arc::new(wire),
            payload_len,
        })
    }

    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }
    pub fn id(&self) -> MessageId {
        self.id
    }
    pub fn signature(&self) -> &Signature {
        &self.sig
    }
    /// `tag || JCS(envelope without id and sig)`: exactly the bytes that were signed.
    pub fn signing_input(&self) -> &[u8] {
        &self.signing_input
    }
    /// The envelope with `id` and `sig`, as a value.
    pub fn value(&self) -> &Value {
        &self.value
    }
    /// The canonical bytes of the full envelope (with `id` and `sig`), the form relays store
    /// and serve.
    pub fn wire_bytes(&self) -> Vec<u8> {
        self.wire.as_ref().clone()
    }
    /// The same bytes as [`wire_bytes`](Self::wire_bytes), shared rather than copied.
    pub fn wire(&self) -> &Arc<Vec<u8>> {
        &self.wire
    }
    /// The length of the canonical bytes of the payload as received (ENV-8).
    pub fn payload_len(&self) -> usize {
        self.payload_len
    }

    /// SIG-3: strict verification with the sender's key, which must be the key the envelope names.
    pub fn verify(self, key: &PublicKey) -> Result<VerifiedEnvelope, EnvelopeError> {
        let given = key.key_id();
        if given != self.envelope.key {
            return Err(EnvelopeError::KeyMismatch {
                given,
                named: self.envelope.key,
            });
        }
        key.verify_input(&self.signing_input, &self.sig)
            .map_err(|_: KeyError| EnvelopeError::BadSignature)?;
        Ok(VerifiedEnvelope(self))
    }
}

/// An envelope whose signature has been verified with the key it names. Only
/// [`SignedEnvelope::verify`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedEnvelope(SignedEnvelope);

impl VerifiedEnvelope {
    pub fn envelope(&self) -> &Envelope {
        &self.0.envelope
    }
    pub fn id(&self) -> MessageId {
        self.0.id
    }
    pub fn signed(&self) -> &SignedEnvelope {
        &self.0
    }
    pub fn wire_bytes(&self) -> Vec<u8> {
        self.0.wire_bytes()
    }
}
