//! `formica-protocol`: the one place that knows the Formica wire format.
//!
//! Everything here is pure: no I/O, no clocks, no randomness, no async. Callers pass in the
//! current time, random seeds and nonces. The relay, keytool and the conformance suite all use
//! this crate, so there is exactly one strict JSON parser and one canonicalizer in the project.
//! The normative text is `protocol-spec/SPEC.md`; requirement ids in doc comments (`ENV-3`)
//! point into it, and the vectors under `protocol-spec/vectors/` drive this crate's tests.

pub mod auth;
pub mod canon;
pub mod conversation;
pub mod envelope;
pub mod error;
pub mod handle;
pub mod hex;
pub mod json;
pub mod keylog;
pub mod keys;
pub mod pow;
pub mod presence;
pub mod profile;
pub mod schema;
pub mod seal;
pub mod time;

pub use envelope::{
    AckStatus, ContactLevel, DeliveryState, Envelope, EnvelopeError, EnvelopeLimits, MessageId,
    MessageType, Payload, SignedEnvelope, VerifiedEnvelope,
};
pub use error::ErrorCode;
pub use handle::{Handle, LocalName, RelayHost};
pub use json::{JsonError, JsonLimits, Object, Value};
pub use keylog::{KeyLog, KeyLogEntry, KeyLogError, KeyOp, SignedKeyLogEntry};
pub use keys::{Domain, KeyId, PublicKey, SecretKey, Signature};
pub use presence::{Availability, SignedStatus, Status, StatusError};
pub use profile::{Capability, Profile, ProfileError, SignedProfile};
