//! The signed relay descriptor (SPEC.md 15.1): served at `/.well-known/formica`, sent in peering
//! handshakes, and what a client checks before it trusts the relay's policy.

use super::Engine;
use formica_protocol::{canon, Domain, Object, Value};

impl Engine {
    /// The descriptor as of now, signed with the relay key.
    pub fn descriptor(&self) -> Value {
        let mut o = Object::new();
        o.insert("v", Value::Int(1));
        o.insert("relay", self.host.as_str().into());
        o.insert("key", self.relay_key.public().to_hex().into());
        o.insert("key_id", self.relay_key.public().key_id().to_hex().into());
        o.insert("versions", Value::Array(vec![Value::Int(1)]));
        o.insert(
            "software",
            concat!("formica-relay/", env!("CARGO_PKG_VERSION")).into(),
        );
        o.insert("ts", Value::Int(self.now()));
        self.policy.descriptor_members(&mut o);
        let sig = self.relay_key.sign(
            Domain::Descriptor,
            &canon::canonicalize(&Value::Object(o.clone())),
        );
        o.insert("sig", sig.to_hex().into());
        Value::Object(o)
    }
}
