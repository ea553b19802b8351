//! Peering (SPEC.md 16.1): checking a relay descriptor's signature (DESC-2), and this relay
//! asking another to peer (the operator's `peer add`, or `peer approve` answering back).

use super::client::answer_code;
use super::Federation;
use crate::engine::decide::{Command, Outcome};
use crate::engine::error::ApiError;
use crate::engine::events::PeerStatus;
use formica_protocol::{canon, Domain, ErrorCode, Object, PublicKey, RelayHost, Signature, Value};

/// DESC-2: a descriptor's signature checked against the key it names; returns host and key.
pub fn verify_descriptor(v: &Value) -> Result<(RelayHost, PublicKey), ApiError> {
    let bad = |why: &str| {
        ApiError::new(
            ErrorCode::Unauthorized,
            format!("the relay descriptor is not valid: {why}"),
        )
    };
    let o = v.as_object().ok_or_else(|| bad("not an object"))?;
    let s = |k: &str| o.get(k).and_then(Value::as_str).ok_or_else(|| bad(k));
    let key = PublicKey::parse_hex(s("key")?).map_err(|_| bad("key"))?;
    let sig = Signature::parse_hex(s("sig")?).map_err(|_| bad("sig"))?;
    let mut input = Domain::Descriptor.tag().to_vec();
    canon::write_object(o, Some(&["sig"]), &mut input);
    key.verify_input(&input, &sig)
        .map_err(|_| bad("its signature does not verify"))?;
    let host = RelayHost::parse(s("relay")?).map_err(|_| bad("relay"))?;
    Ok((host, key))
}

impl Federation {
    /// This relay asks `host` to peer (operator `peer add`, or `peer approve` answering back).
    pub(crate) async fn ask_to_peer(&self, host: &RelayHost) -> Result<Value, ApiError> {
        let (st, desc) = self
            .call("GET", host, "/.well-known/formica", vec![], false)
            .await?;
        if st != 200 {
            return Err(ApiError::new(
                ErrorCode::PeerUnavailable,
                format!("{host} did not serve its descriptor ({st})"),
            ));
        }
        let (h, key) = verify_descriptor(&desc)?;
        if &h != host {
            return Err(ApiError::new(
                ErrorCode::WrongRelay,
                format!("the relay at {host} calls itself {h}"),
            ));
        }
        let mut o = Object::new();
        o.insert("descriptor", self.engine.descriptor());
        let body = canon::canonicalize(&Value::Object(o));
        let (st, ans) = self
            .call("POST", host, "/v1/federation/peers", body, true)
            .await?;
        let status = match st {
            201 => {
                let d = ans
                    .as_object()
                    .and_then(|o| o.get("descriptor"))
                    .ok_or_else(|| ApiError::new(ErrorCode::PeerUnavailable, "no descriptor"))?;
                let (h2, k2) = verify_descriptor(d)?;
                if h2 != h || k2 != key {
                    return Err(ApiError::new(
                        ErrorCode::Unauthorized,
                        "the peer answered with another descriptor than it publishes",
                    ));
                }
                PeerStatus::Active
            }
            202 => PeerStatus::Requested,
            _ => {
                let code = answer_code(&ans).unwrap_or(ErrorCode::PeerUnavailable);
                return Err(ApiError::new(
                    code,
                    format!("{host} refused to peer ({st})"),
                ));
            }
        };
        match self
            .engine
            .writer
            .submit(Command::PeerSet {
                host: h,
                key,
                status,
                // The operator asked for this peering.
                stranger: false,
            })
            .await?
        {
            Outcome::Done(v) => Ok(v),
            other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
        }
    }
}
