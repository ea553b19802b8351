//! Trust tiers computed from the projections (TRUST-1..5): age, acks, vouches and reports.

use super::State;
use crate::engine::policy::Policy;
use formica_protocol::Handle;

impl State {
    /// The agent's tier index at `now` (TRUST-1..5): the highest tier whose thresholds hold,
    /// lowered one step per `reports_per_demotion` active reports from reporters at
    /// `report_min_tier` or above (computed without demotion, so reports cannot cascade).
    pub fn tier_of(&self, handle: &Handle, now: i64, policy: &Policy) -> usize {
        let base = self.base_tier(handle, now, policy);
        let tr = &policy.trust;
        let reports = self
            .reports
            .iter()
            .filter(|((s, reporter), at)| {
                s == handle
                    && now - **at < tr.report_ttl_ms
                    && self.base_tier(reporter, now, policy) >= tr.report_min_tier
            })
            .count() as u64;
        let demotion = reports.checked_div(tr.reports_per_demotion).unwrap_or(0) as usize;
        base.saturating_sub(demotion)
    }

    fn base_tier(&self, handle: &Handle, now: i64, policy: &Policy) -> usize {
        let Some(a) = self.agents.get(handle) else {
            return 0;
        };
        let age = now - a.registered_at;
        let vouches = self
            .vouches
            .iter()
            .filter(|((voucher, subject), at)| {
                subject == handle
                    && now - **at < policy.trust.vouch_ttl_ms
                    // A voucher's own tier is judged by age and acks alone, so vouches cannot
                    // bootstrap each other in a cycle.
                    && self.tier_without_vouches(voucher, now, policy) >= policy.trust.vouch_min_tier
            })
            .count() as u64;
        policy
            .tiers
            .iter()
            .enumerate()
            .rev()
            .find(|(_, t)| {
                age >= t.min_age_ms && a.acked_sent >= t.min_acked && vouches >= t.min_vouches
            })
            .map(|(i, _)| i)
            .unwrap_or(0)
    }

    fn tier_without_vouches(&self, handle: &Handle, now: i64, policy: &Policy) -> usize {
        let Some(a) = self.agents.get(handle) else {
            return 0;
        };
        let age = now - a.registered_at;
        policy
            .tiers
            .iter()
            .enumerate()
            .rev()
            .find(|(_, t)| age >= t.min_age_ms && a.acked_sent >= t.min_acked && t.min_vouches == 0)
            .map(|(i, _)| i)
            .unwrap_or(0)
    }

    /// Active vouches given by `voucher`.
    pub fn vouches_given(&self, voucher: &Handle, now: i64, policy: &Policy) -> usize {
        self.vouches
            .iter()
            .filter(|((v, _), at)| v == voucher && now - **at < policy.trust.vouch_ttl_ms)
            .count()
    }
}
