//! The signed relay descriptor (SPEC.md 15.1): served at `/.well-known/formica`, sent in peering
//! handshakes, and what a client checks before it trusts the relay's policy.

use super::policy::Policy;
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

impl Policy {
    /// The `limits`, `time`, `pow`, `ack`, `tiers` and `trust` members of the descriptor.
    pub fn descriptor_members(&self, o: &mut Object) {
        let l = &self.limits;
        let int = |n: i64| Value::Int(n);
        let mut lim = Object::new();
        lim.insert("body_bytes_max", int(l.body_bytes_max as i64));
        lim.insert("envelope_bytes_max", int(l.envelope_bytes_max as i64));
        lim.insert("batch_bytes_max", int(l.batch_bytes_max as i64));
        lim.insert("batch_envelopes_max", int(l.batch_envelopes_max as i64));
        lim.insert("json_depth_max", int(l.json_depth_max as i64));
        lim.insert("recipients_max", int(l.recipients_max as i64));
        lim.insert("inbox_page_max", int(l.inbox_page_max as i64));
        lim.insert("inbox_pending_max", int(l.inbox_pending_max as i64));
        lim.insert(
            "contact_requests_pending_max",
            int(l.contact_requests_pending_max as i64),
        );
        lim.insert("connections_max", int(l.connections_max as i64));
        lim.insert(
            "connections_per_ip_max",
            int(l.connections_per_ip_max as i64),
        );
        lim.insert(
            "header_read_timeout_ms",
            int(l.header_read_timeout_ms as i64),
        );
        lim.insert("body_read_timeout_ms", int(l.body_read_timeout_ms as i64));
        lim.insert(
            "write_stall_timeout_ms",
            int(l.write_stall_timeout_ms as i64),
        );
        lim.insert("ip_requests_per_min", int(i64::from(l.ip_requests_per_min)));
        o.insert("limits", Value::Object(lim));
        let mut t = Object::new();
        t.insert("window_ms", int(self.time.window_ms));
        t.insert("skew_ms", int(self.time.skew_ms));
        t.insert("retention_ms", int(self.time.retention_ms()));
        o.insert("time", Value::Object(t));
        let mut p = Object::new();
        p.insert("difficulty", int(i64::from(self.pow_difficulty)));
        p.insert("challenge_ttl_ms", int(l.challenge_ttl_ms));
        o.insert("pow", Value::Object(p));
        let mut a = Object::new();
        a.insert(
            "window_ms_max",
            int(formica_protocol::envelope::ACK_WINDOW_MS_MAX),
        );
        a.insert("deadline_check_ms", int(l.deadline_check_ms as i64));
        o.insert("ack", Value::Object(a));
        o.insert(
            "tiers",
            Value::Array(
                self.tiers
                    .iter()
                    .enumerate()
                    .map(|(i, t)| t.to_value(i))
                    .collect(),
            ),
        );
        let tr = &self.trust;
        let mut tv = Object::new();
        tv.insert("vouch_ttl_ms", int(tr.vouch_ttl_ms));
        tv.insert("report_ttl_ms", int(tr.report_ttl_ms));
        tv.insert("reports_per_demotion", int(tr.reports_per_demotion as i64));
        tv.insert("report_min_tier", int(tr.report_min_tier as i64));
        tv.insert("vouch_min_tier", int(tr.vouch_min_tier as i64));
        o.insert("trust", Value::Object(tv));
        let f = &self.federation;
        let mut fed = Object::new();
        fed.insert("enabled", Value::Bool(f.enabled));
        fed.insert(
            "peering",
            if f.enabled {
                f.peering.as_str().into()
            } else {
                "none".into()
            },
        );
        if f.enabled {
            fed.insert("remote_tier", int(f.remote_tier as i64));
            fed.insert("dead_letter_ms", int(f.dead_letter_ms));
            fed.insert("attempts_max", int(i64::from(f.attempts_max)));
        }
        o.insert("federation", Value::Object(fed));
        let r = &self.retention;
        let mut rv = Object::new();
        rv.insert("delivered_ms", int(r.delivered_ms));
        rv.insert("max_ms", int(r.max_ms));
        rv.insert("dedup_ms", int(r.dedup_ms));
        o.insert("retention", Value::Object(rv));
        o.insert("directory", self.directory.to_value());
        o.insert("presence", self.presence.to_value());
        o.insert("conversations", self.conversations.to_value());
    }
}
