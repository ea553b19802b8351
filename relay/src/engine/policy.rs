//! Relay policy: every limit, the trust tiers and their thresholds. Each value here is named with
//! its unit last, documented with why it has its default, settable from the configuration file,
//! and published in the relay descriptor (SPEC.md section 15.1).

use formica_protocol::time::TimeWindow;
use formica_protocol::{MessageType, Object, Value};
use serde::Deserialize;

/// Size and count limits.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest body of any request except batches: 64 KiB, one envelope with room to spare.
    pub body_bytes_max: usize,
    /// Largest single envelope: 64 KiB. Payloads are capped lower per tier.
    pub envelope_bytes_max: usize,
    /// Largest batch body: 1 MiB, so a batch is verified in well under a second.
    pub batch_bytes_max: usize,
    /// Most envelopes in one batch: 100.
    pub batch_envelopes_max: usize,
    /// Deepest JSON nesting accepted: 32 (envelopes need 4 levels plus their payload).
    pub json_depth_max: usize,
    /// Most recipients of one envelope at any tier: 16.
    pub recipients_max: usize,
    /// Most items in one inbox page, and the most a stream sends before re-reading the inbox.
    pub inbox_page_max: usize,
    /// Most unread inbox items an agent may have; further senders get inbox_full (never an
    /// eviction of what is there).
    pub inbox_pending_max: usize,
    /// Most pending contact requests an agent may have: a flood from many new keys stops here.
    pub contact_requests_pending_max: usize,
    /// Most simultaneous connections; more are refused at accept time.
    pub connections_max: usize,
    /// Most simultaneous connections from one client address, so that one client holding idle
    /// or slow connections cannot take every slot (`/health` keeps answering others).
    pub connections_per_ip_max: usize,
    /// Behind a trusted proxy (`trusted_proxies`), count `connections_per_ip_max` against the
    /// forwarded client address instead of the proxy's: off by default. On, a connection from
    /// a trusted proxy is bounded only by `connections_max`, and each request on it holds a
    /// place of its forwarded client for as long as it is served (a stream, as long as it is
    /// open); a client over the cap gets 429 `rate_limited`. Off, every client shares the
    /// proxy's places, and one client holding slow connections can lock the others out. A
    /// client's connection still has to send its headers before its address is known, so the
    /// proxy should bound header time per client too. Not published.
    pub connections_per_ip_forwarded: bool,
    /// Time a client has to send its request headers.
    pub header_read_timeout_ms: u64,
    /// Time a client has, once its headers are in, to send the whole request body: 10 s, ample
    /// for the largest batch on a slow link. A body still incomplete then is answered 408
    /// `request_timeout` (HTTP-14), so a trickled body cannot hold a connection.
    pub body_read_timeout_ms: u64,
    /// Longest time the relay waits for a client to take any byte of what it is sending (a
    /// response, an SSE or WebSocket stream) before it closes the connection: 30 s, two SSE
    /// keep-alive intervals' worth of room for a client that is merely slow, while a consumer
    /// that stopped reading gives its connection slot and buffers back. Nothing is lost: the
    /// stream resumes from its cursor (`Last-Event-ID`) on the next connection (HTTP-12).
    pub write_stall_timeout_ms: u64,
    /// Unauthenticated requests (challenges, registrations) per client IP per minute.
    pub ip_requests_per_min: u32,
    /// Lifetime of a proof-of-work challenge: 10 minutes, ample for difficulty 24 on one core.
    pub challenge_ttl_ms: i64,
    /// Least free space, in bytes, on the store's file system for the writer to append: 64 MiB.
    /// Below it every write is refused with `storage_full` before anything is decided (and
    /// `/ready` answers 503), so that a commit does not meet a full disk halfway: a commit
    /// writes at most `writer::BATCH_RECORD_BYTES_MAX` (16 MiB) plus the events of one command
    /// (a transfer with the key logs it fetched: tens of MiB at most with the default limits).
    /// A store that failed a write is reopened once 1 MiB more than this is free. Not
    /// published.
    pub store_free_bytes_min: u64,
    /// Memory the store may use to cache pages of its file: 64 MiB. Inbox pages and message
    /// records are read from the store, and recent ones are what readers ask for; the engine's
    /// own default (1 GiB) would let a relay's memory grow by that much as it reads old
    /// records (a check, a backup). Not published.
    pub store_cache_bytes: usize,
    /// Every store commit also saves redb's allocator state, in two phases: true. A relay
    /// killed or crashed then starts in under a second (0.46 s at 1,000,000 records) instead of
    /// after a walk of the whole file (6.3 s there, growing with it), for about 15 % of
    /// single-envelope ingest (a second sync per commit). Not published.
    pub store_quick_repair: bool,
    /// Most open (issued, unused, unexpired) challenges: 100,000. Past it new challenges are
    /// refused with `unavailable` until the oldest expire; open ones are never dropped early,
    /// which would cancel registrations in progress. Not published.
    pub challenges_max: usize,
    /// Most open challenges of one client address: 32 (an agent needs one at a time; this
    /// leaves room for many agents behind one address). Past it that address gets
    /// `rate_limited`, so that one client cannot fill `challenges_max` for everyone. Not
    /// published.
    pub challenges_per_ip_max: usize,
    /// How often deadlines are checked; a timed_out receipt follows a deadline within this.
    pub deadline_check_ms: u64,
    /// Most request nonces remembered at once (AUTH-6, agent and relay requests together):
    /// 250,000, about 750 authenticated requests per second sustained over the 330 s
    /// retention, in roughly 50 MB. When every remembered nonce is still live, new
    /// authenticated requests are refused with `unavailable` (never is a live nonce forgotten,
    /// which would allow a replay). Not published: it is a capacity, not a rule for clients.
    pub nonces_max: usize,
    /// Most live request nonces of one handle (an agent, or a peer relay): 10,000, about 30
    /// authenticated requests per second sustained over the retention. Beyond it that handle's
    /// requests are refused with `rate_limited` until its nonces expire, so one registered agent
    /// cannot fill `nonces_max` for everyone. Not published.
    pub nonces_per_handle_max: usize,
    /// Most token buckets tracked by each rate limiter (per agent key, per client address):
    /// 100,000. Buckets that have refilled completely are dropped when the table is full; if
    /// it is still full, a key or address without a bucket is refused with `rate_limited`.
    /// Not published.
    pub rate_limit_keys_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            body_bytes_max: 64 * 1024,
            envelope_bytes_max: 64 * 1024,
            batch_bytes_max: 1024 * 1024,
            batch_envelopes_max: 100,
            json_depth_max: 32,
            recipients_max: 16,
            inbox_page_max: 100,
            inbox_pending_max: 10_000,
            contact_requests_pending_max: 100,
            connections_max: 4096,
            connections_per_ip_max: 256,
            connections_per_ip_forwarded: false,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 10_000,
            write_stall_timeout_ms: 30_000,
            ip_requests_per_min: 60,
            challenge_ttl_ms: 10 * 60 * 1000,
            store_free_bytes_min: 64 << 20,
            store_cache_bytes: 64 << 20,
            store_quick_repair: true,
            challenges_max: 100_000,
            challenges_per_ip_max: 32,
            deadline_check_ms: 250,
            nonces_max: 250_000,
            nonces_per_handle_max: 10_000,
            rate_limit_keys_max: 100_000,
        }
    }
}

/// One trust tier. An agent is at the highest tier whose thresholds it meets, lowered by reports.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    pub name: String,
    /// Time since registration.
    pub min_age_ms: i64,
    /// The agent's sent messages that recipients acked (received or processed).
    pub min_acked: u64,
    /// Active vouches from agents at `vouch_min_tier` or above.
    pub min_vouches: u64,
    /// Envelopes per minute per key (token bucket, burst of a quarter minute, at least 10).
    pub rate_per_min: u32,
    /// Largest payload in canonical bytes.
    pub payload_bytes_max: usize,
    /// Most recipients per envelope.
    pub recipients_max: usize,
    /// Contact requests per hour.
    pub contact_requests_per_hour: u32,
    /// Active vouches the agent may give.
    pub vouches_max: u32,
    /// Reports the agent may file per day.
    pub reports_per_day: u32,
    /// Directory searches per minute per agent (SPEC.md PROF-9; token bucket like
    /// `rate_per_min`). A configured tier without it gets 60.
    #[serde(default = "searches_per_min_default")]
    pub searches_per_min: u32,
    /// Message types the agent may send (`x-*` stands for every extension type).
    pub may_send: Vec<String>,
}

/// How vouches and reports move tiers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrustPolicy {
    /// Vouches lapse after 90 days unless given again.
    pub vouch_ttl_ms: i64,
    /// Reports lapse after 30 days.
    pub report_ttl_ms: i64,
    /// Active reports from distinct reporters that lower an agent one tier.
    pub reports_per_demotion: u64,
    /// Lowest tier (index) whose reports count.
    pub report_min_tier: usize,
    /// Lowest tier (index) whose vouches count.
    pub vouch_min_tier: usize,
}

impl Default for TrustPolicy {
    fn default() -> Self {
        TrustPolicy {
            vouch_ttl_ms: 90 * 24 * 3600 * 1000,
            report_ttl_ms: 30 * 24 * 3600 * 1000,
            reports_per_demotion: 3,
            report_min_tier: 1,
            vouch_min_tier: 1,
        }
    }
}

fn searches_per_min_default() -> u32 {
    60
}

fn all_types() -> Vec<String> {
    [
        "message",
        "task_request",
        "task_result",
        "ack",
        "contact_request",
        "vouch",
        "report",
        "call",
        "conv_action",
        "x-*",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// The default tiers: `new` can talk to contacts and ask strangers for contact at a low rate;
/// `member` (a day old, 10 acked messages) gets normal limits and may vouch; `trusted` (a week,
/// 100 acked, 2 vouches) gets more.
pub fn default_tiers() -> Vec<Tier> {
    vec![
        Tier {
            name: "new".into(),
            min_age_ms: 0,
            min_acked: 0,
            min_vouches: 0,
            rate_per_min: 60,
            payload_bytes_max: 8 * 1024,
            recipients_max: 4,
            contact_requests_per_hour: 10,
            vouches_max: 0,
            reports_per_day: 5,
            searches_per_min: 30,
            may_send: all_types().into_iter().filter(|t| t != "vouch").collect(),
        },
        Tier {
            name: "member".into(),
            min_age_ms: 24 * 3600 * 1000,
            min_acked: 10,
            min_vouches: 0,
            rate_per_min: 600,
            payload_bytes_max: 32 * 1024,
            recipients_max: 16,
            contact_requests_per_hour: 60,
            vouches_max: 3,
            reports_per_day: 20,
            searches_per_min: 120,
            may_send: all_types(),
        },
        Tier {
            name: "trusted".into(),
            min_age_ms: 7 * 24 * 3600 * 1000,
            min_acked: 100,
            min_vouches: 2,
            rate_per_min: 3000,
            payload_bytes_max: 32 * 1024,
            recipients_max: 16,
            contact_requests_per_hour: 120,
            vouches_max: 10,
            reports_per_day: 50,
            searches_per_min: 300,
            may_send: all_types(),
        },
    ]
}

/// Everything the relay enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub limits: Limits,
    pub time: TimeWindow,
    pub pow_difficulty: u32,
    pub tiers: Vec<Tier>,
    pub trust: TrustPolicy,
    pub federation: FederationPolicy,
    pub retention: RetentionPolicy,
    pub directory: super::directory::DirectoryPolicy,
    pub presence: super::presence::PresencePolicy,
    pub conversations: super::conversations::ConversationPolicy,
}

/// How long the relay keeps what it stored (SPEC.md RET-1..RET-4): inbox items, message
/// records and the ids that deduplicate envelopes. Published in the descriptor (`retention`).
/// What is removed is removed by a logged event, so the projections stay the replay of the
/// log, and the store stops growing with every message ever carried.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionPolicy {
    /// An inbox item handed to its reader, acked when its sender asked for an ack (or settled
    /// otherwise: timed out), and a message record whose deliveries are all settled, are
    /// removed once older than this: 7 days. A week lets an agent page back through what it
    /// read and a sender look up the status of what it sent, and keeps the store to about a
    /// week of traffic.
    pub delivered_ms: i64,
    /// Any inbox item and any message record, read or not, is removed once older than this:
    /// 30 days. An agent that has not read its inbox for a month gets `cursor_too_old` and
    /// knows it missed items; without this bound an abandoned inbox would keep its items (up
    /// to `limits.inbox_pending_max`) for ever.
    pub max_ms: i64,
    /// Envelope ids are kept for deduplication this long after their `ts`: 2 days. It must
    /// cover the freshness window (older envelopes are refused `stale` anyway) and the
    /// dead-letter age of a peer's queue (a peer retries a transfer until then); transferred
    /// envelopes older than this are refused `stale` (FED-7), so a replay can never be
    /// delivered twice.
    pub dedup_ms: i64,
    /// How often the relay looks for what to remove: 60 s.
    pub sweep_ms: u64,
    /// Most rows of each kind (inbox items, message records, ids) one sweep examines: 10,000,
    /// which bounds the size of one commit; a backlog is removed over several sweeps.
    pub sweep_max: usize,
    /// A checkpoint (a snapshot of the tables, then dropping the log records behind the one
    /// before) is made once this many records were logged since the last: 1,000,000. A
    /// snapshot costs a read of every table row, so not much more often than that; the log
    /// then holds about twice this, or from the oldest record a kept item points at.
    pub checkpoint_records: u64,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy {
            delivered_ms: 7 * 24 * 3600 * 1000,
            max_ms: 30 * 24 * 3600 * 1000,
            dedup_ms: 2 * 24 * 3600 * 1000,
            sweep_ms: 60_000,
            sweep_max: 10_000,
            checkpoint_records: 1_000_000,
        }
    }
}

/// Peering and forwarding (SPEC.md section 16). Off unless `enabled`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FederationPolicy {
    /// Federation on or off. Off: recipients on other hosts are `unknown_recipient`.
    pub enabled: bool,
    /// Scheme used to reach peers at `<scheme>://<host>`: https in production; tests on
    /// loopback use http.
    pub scheme: String,
    /// Who may peer (FED-2): `allowlist`, `open` or `manual`.
    pub peering: String,
    /// Hosts that may peer under `allowlist` (also accepted at once under `manual`).
    pub allowlist: Vec<String>,
    /// Whether a handshake from a host that is neither listed nor asked by this relay may make
    /// it fetch a descriptor from a loopback, private, link-local or otherwise non-public
    /// address (FED-15). Off: under `open` and `manual` peering a stranger cannot point the
    /// relay at internal services. Tests and private networks on loopback turn it on (or list
    /// their peers).
    pub allow_private_peers: bool,
    /// Most peering requests awaiting the operator's approval under `manual` peering: 100.
    /// Further strangers are refused `peer_unknown` before this relay fetches anything for
    /// them, until the operator approves or removes some (FED-15).
    pub pending_peers_max: usize,
    /// Most peers not on the allowlist under `open` peering: 1,000. A handshake from a new
    /// host beyond it is refused `peer_unknown` before anything is fetched for it (FED-15), so
    /// strangers cannot make the relay hold and serve an unbounded number of peers and workers.
    pub open_peers_max: usize,
    /// Most envelopes queued for one peer: 10,000 (with 64 KiB envelopes, at most 640 MiB held
    /// for a peer that is down). An envelope that would be queued for a peer whose queue is
    /// full is refused at ingest with `peer_unavailable` (FED-16); nothing queued is dropped.
    pub queue_depth_max: usize,
    /// Index into `tiers` of the tier remote senders get: the lowest (0) by default, since this
    /// relay knows nothing of their history.
    pub remote_tier: usize,
    /// Age after which a queued delivery is dead-lettered: 24 hours, long enough to ride out
    /// a peer's maintenance window, short enough that a sender learns of the failure the same day.
    pub dead_letter_ms: i64,
    /// Transfer attempts after which a queued delivery is dead-lettered: 1000 (with backoff
    /// capped at `retry_max_ms`, about the same order as `dead_letter_ms`).
    pub attempts_max: u32,
    /// First retry delay after a failed transfer: 250 ms; doubled per failure, with jitter.
    pub retry_base_ms: u64,
    /// Longest retry delay: 30 s, so a peer that comes back is found within half a minute.
    pub retry_max_ms: u64,
    /// Consecutive failures that open a peer's circuit breaker: 5.
    pub breaker_failures: u32,
    /// Time an open breaker waits before one trial transfer (half-open): 5 s.
    pub breaker_cooldown_ms: u64,
    /// Bound on one relay-to-relay request (connect, send, answer): 10 s.
    pub request_timeout_ms: u64,
    /// Most remote agents' key logs cached here, from all peers: 100,000. A log is cached only
    /// when an envelope its key verified is accepted (FED-8); past the cap, an envelope from a
    /// sender whose log is not cached is refused `storage_full` (retried by its relay) and
    /// nothing cached is evicted, since cached logs are the evidence forks are judged by.
    pub remote_keylogs_max: usize,
    /// Most cached key logs of agents homed on one peer: 10,000, so that one peer cannot take
    /// the whole of `remote_keylogs_max`.
    pub remote_keylogs_per_peer_max: usize,
    /// Most cached key log entries in all (entries and conflicting entries kept as evidence):
    /// 500,000, about 200 MB of entries at their usual size. A log may hold 4,096 entries
    /// (LOG-11), so the log count alone would allow far more.
    pub remote_keylog_entries_max: usize,
    /// Most key logs one transfer may make this relay fetch from the origin for senders whose
    /// log it has not cached: 16. Later envelopes from further unknown senders in that transfer
    /// are refused `unavailable` and come again in a later transfer, so one request cannot make
    /// the relay fetch and hold a hundred logs of up to 4,096 entries.
    pub keylog_fetches_per_transfer_max: usize,
    /// Most key logs fetched from peers at once for `GET /v1/keys/{handle}` of a remote handle
    /// whose log is not cached here (API-5): 16. Such a look-up needs no authentication, so
    /// this bounds the outbound requests (and their memory, up to a 4,096-entry log each) that
    /// callers can cause at any time; past it they get 503 `unavailable`. What is fetched this
    /// way is answered and forgotten, never cached (FED-8).
    pub keylog_lookups_max: usize,
}

impl Default for FederationPolicy {
    fn default() -> Self {
        FederationPolicy {
            enabled: false,
            scheme: "https".into(),
            peering: "allowlist".into(),
            allowlist: Vec::new(),
            allow_private_peers: false,
            pending_peers_max: 100,
            open_peers_max: 1000,
            queue_depth_max: 10_000,
            remote_tier: 0,
            dead_letter_ms: 24 * 3600 * 1000,
            attempts_max: 1000,
            retry_base_ms: 250,
            retry_max_ms: 30_000,
            breaker_failures: 5,
            breaker_cooldown_ms: 5_000,
            request_timeout_ms: 10_000,
            remote_keylogs_max: 100_000,
            remote_keylogs_per_peer_max: 10_000,
            remote_keylog_entries_max: 500_000,
            keylog_fetches_per_transfer_max: 16,
            keylog_lookups_max: 16,
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            limits: Limits::default(),
            time: TimeWindow::default(),
            pow_difficulty: 20,
            tiers: default_tiers(),
            trust: TrustPolicy::default(),
            federation: FederationPolicy::default(),
            retention: RetentionPolicy::default(),
            directory: Default::default(),
            presence: Default::default(),
            conversations: Default::default(),
        }
    }
}

impl Tier {
    pub fn may_send(&self, t: &MessageType) -> bool {
        match t {
            MessageType::Extension(_) => self.may_send.iter().any(|s| s == "x-*"),
            other => self.may_send.iter().any(|s| s == other.as_str()),
        }
    }

    pub(super) fn to_value(&self, level: usize) -> Value {
        let mut o = Object::new();
        let int = |n: i64| Value::Int(n);
        o.insert("name", self.name.clone().into());
        o.insert("level", int(level as i64));
        let mut th = Object::new();
        th.insert("min_age_ms", int(self.min_age_ms));
        th.insert("min_acked", int(self.min_acked as i64));
        th.insert("min_vouches", int(self.min_vouches as i64));
        o.insert("thresholds", Value::Object(th));
        o.insert("rate_per_min", int(i64::from(self.rate_per_min)));
        o.insert("payload_bytes_max", int(self.payload_bytes_max as i64));
        o.insert("recipients_max", int(self.recipients_max as i64));
        o.insert(
            "contact_requests_per_hour",
            int(i64::from(self.contact_requests_per_hour)),
        );
        o.insert("vouches_max", int(i64::from(self.vouches_max)));
        o.insert("reports_per_day", int(i64::from(self.reports_per_day)));
        o.insert("searches_per_min", int(i64::from(self.searches_per_min)));
        o.insert(
            "may_send",
            Value::Array(self.may_send.iter().map(|s| s.clone().into()).collect()),
        );
        Value::Object(o)
    }
}
