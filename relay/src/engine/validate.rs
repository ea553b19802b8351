//! Checking a [`Policy`] at start: a configuration the relay cannot serve is refused with a
//! message that names the setting.

use super::policy::Policy;

impl Policy {
    /// Checks the policy is usable; a bad configuration is refused at start.
    pub fn validate(&self) -> Result<(), String> {
        let r = &self.retention;
        if r.delivered_ms <= 0 || r.max_ms < r.delivered_ms {
            return Err(
                "retention.delivered_ms must be positive and retention.max_ms at least as long"
                    .into(),
            );
        }
        let covers = self.time.retention_ms() + self.time.skew_ms;
        if r.dedup_ms < covers || r.dedup_ms < self.federation.dead_letter_ms + self.time.skew_ms {
            return Err(format!(
                "retention.dedup_ms {} must cover the freshness window ({covers} ms) and federation.dead_letter_ms plus time.skew_ms ({} ms)",
                r.dedup_ms,
                self.federation.dead_letter_ms + self.time.skew_ms
            ));
        }
        if r.sweep_ms < 10 || !(1..=100_000).contains(&r.sweep_max) || r.checkpoint_records < 100 {
            return Err("retention.sweep_ms must be at least 10, retention.sweep_max within 1..=100000 and retention.checkpoint_records at least 100".into());
        }
        if !(1..=1024).contains(&self.federation.keylog_lookups_max) {
            return Err(format!(
                "federation.keylog_lookups_max {} is not within 1..=1024",
                self.federation.keylog_lookups_max
            ));
        }
        // Everything the relay logs is read back at start with fixed limits (events.rs); a
        // policy beyond them could accept what it cannot replay.
        if self.limits.json_depth_max > 60 {
            return Err(format!(
                "limits.json_depth_max {} is above 60",
                self.limits.json_depth_max
            ));
        }
        if self.limits.envelope_bytes_max > 8 << 20 || self.limits.batch_bytes_max > 8 << 20 {
            return Err(
                "limits.envelope_bytes_max and limits.batch_bytes_max are at most 8 MiB".into(),
            );
        }
        if !(1..=600_000).contains(&self.limits.body_read_timeout_ms) {
            return Err(format!(
                "limits.body_read_timeout_ms {} is not in 1..=600000",
                self.limits.body_read_timeout_ms
            ));
        }
        if !(1..=600_000).contains(&self.limits.write_stall_timeout_ms) {
            return Err(format!(
                "limits.write_stall_timeout_ms {} is not in 1..=600000",
                self.limits.write_stall_timeout_ms
            ));
        }
        if self.limits.nonces_max == 0
            || self.limits.nonces_per_handle_max == 0
            || self.limits.rate_limit_keys_max == 0
            || self.limits.challenges_max == 0
            || self.limits.challenges_per_ip_max == 0
        {
            return Err("limits.nonces_max, limits.nonces_per_handle_max, limits.rate_limit_keys_max, limits.challenges_max and limits.challenges_per_ip_max must be positive".into());
        }
        self.directory.validate()?;
        self.presence.validate()?;
        self.conversations.validate()?;
        if self.tiers.is_empty() {
            return Err("at least one tier is required".into());
        }
        if self.pow_difficulty > 40 {
            return Err(format!(
                "pow_difficulty {} is above 40 (years of work per registration)",
                self.pow_difficulty
            ));
        }
        let f = &self.federation;
        if !matches!(f.peering.as_str(), "allowlist" | "open" | "manual") {
            return Err(format!(
                "federation.peering {:?}: expected allowlist, open or manual",
                f.peering
            ));
        }
        if !matches!(f.scheme.as_str(), "http" | "https") {
            return Err(format!(
                "federation.scheme {:?}: expected https or http",
                f.scheme
            ));
        }
        if f.remote_tier >= self.tiers.len() {
            return Err("federation.remote_tier is not an index into tiers".into());
        }
        if !(1..=100_000).contains(&f.pending_peers_max) {
            return Err(format!(
                "federation.pending_peers_max {} is not in 1..=100000",
                f.pending_peers_max
            ));
        }
        if !(1..=100_000).contains(&f.open_peers_max) {
            return Err(format!(
                "federation.open_peers_max {} is not in 1..=100000",
                f.open_peers_max
            ));
        }
        if !(1..=10_000_000).contains(&f.queue_depth_max) {
            return Err(format!(
                "federation.queue_depth_max {} is not in 1..=10000000",
                f.queue_depth_max
            ));
        }
        if f.dead_letter_ms <= 0 || f.attempts_max == 0 {
            return Err("federation.dead_letter_ms and attempts_max must be positive".into());
        }
        for t in &self.tiers {
            if t.recipients_max > self.limits.recipients_max {
                return Err(format!(
                    "tier {}: recipients_max above limits.recipients_max",
                    t.name
                ));
            }
            if t.payload_bytes_max > self.limits.envelope_bytes_max {
                return Err(format!(
                    "tier {}: payload_bytes_max above limits.envelope_bytes_max",
                    t.name
                ));
            }
        }
        Ok(())
    }
}
