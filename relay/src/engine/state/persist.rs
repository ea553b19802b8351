//! Loading the projections held in memory from the store at start-up, and the rows the writer
//! commits for a batch.

use super::{codec, Db, State, Tracked};
use crate::store::{Changes, Row, Rows, Store, StoreError, Table};
use formica_protocol::pow::Challenge;
use formica_protocol::{Handle, RelayHost};
use std::collections::BTreeMap;
use std::sync::Arc;

pub(super) const COUNTERS: &[u8] = b"counters";

/// The `meta` row that says how the tables are laid out: [`FORMAT_VERSION`]. Tables of
/// another format are rebuilt from the log at start (once). Format 2: dedup ids of envelopes
/// only under their `ts` (`seen_by_ts`); format 1 (no row) kept them by id too.
pub const FORMAT: &[u8] = b"format";
pub const FORMAT_VERSION: &[u8] = b"2";

/// The change that records the tables' format (written by a rebuild, with the position).
pub fn format_change() -> Changes {
    let mut c = Changes::new();
    c.insert(
        (Table::Meta, FORMAT.to_vec()),
        Some(FORMAT_VERSION.to_vec()),
    );
    c
}

fn damaged(t: Table, what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        seq: 0,
        reason: format!("projection table {}: {what}", t.name()),
    }
}

fn rows(store: &dyn Store, t: Table) -> Result<Vec<Row>, StoreError> {
    let mut out = Vec::new();
    store.range(t, &[], None, &mut |k, v| {
        out.push((k.to_vec(), v.to_vec()));
        true
    })?;
    Ok(out)
}

impl State {
    /// The counters from their row.
    pub(super) fn read_counters(&mut self, v: &[u8]) -> Option<()> {
        let n = |i: usize| -> Option<u64> {
            Some(u64::from_be_bytes(
                v.get(i * 8..i * 8 + 8)?.try_into().ok()?,
            ))
        };
        self.events = n(0)?;
        self.dead_letters = n(1)?;
        self.messages_len = n(2)?;
        self.deadlines_len = n(3)?;
        Some(())
    }

    /// Whether a registration consumed this challenge.
    pub fn challenge_used(&self, c: &Challenge) -> bool {
        self.db
            .get(Table::UsedChallenges, c.to_hex().as_bytes())
            .is_some()
    }

    /// The projections committed in `store`, with the agent-level ones loaded into memory.
    /// Rows that do not decode are damage (a rebuild repairs them).
    pub fn load(host: RelayHost, store: Arc<dyn Store>) -> Result<State, StoreError> {
        State::load_after(host, store, None)
    }

    /// Like [`load`](Self::load), reusing the key logs of `before` (this node's state before
    /// other nodes appended, `writer::turn`) as far as the stored ones begin with them, so
    /// that only their new entries are checked.
    pub fn load_after(
        host: RelayHost,
        store: Arc<dyn Store>,
        before: Option<&State>,
    ) -> Result<State, StoreError> {
        let mut st = State::new(host, store.clone());
        let mut agents = BTreeMap::new();
        let known = |h: &Handle| before.and_then(|b| b.agents.get(h)).map(|a| &a.keylog);
        for (k, v) in rows(&*store, Table::Agents)? {
            let a = codec::agent_after(&v, known).ok_or_else(|| {
                damaged(
                    Table::Agents,
                    format!("the row of {} does not decode", String::from_utf8_lossy(&k)),
                )
            })?;
            agents.insert(a.handle.clone(), a);
        }
        let mut hot = Vec::new();
        let mut profiles = BTreeMap::new();
        let mut index = super::ProfileIndex::default();
        let mut statuses = BTreeMap::new();
        let mut conv_rows = BTreeMap::new();
        let mut conv_replicas = BTreeMap::new();
        let (mut peers, mut remote, mut vouches, mut reports) = (
            BTreeMap::new(),
            BTreeMap::new(),
            BTreeMap::new(),
            BTreeMap::new(),
        );
        let bad = |k: &[u8]| {
            damaged(
                Table::Small,
                format!("the row {:?} does not decode", String::from_utf8_lossy(k)),
            )
        };
        for (k, v) in rows(&*store, Table::Small)? {
            if k == COUNTERS {
                st.read_counters(&v).ok_or_else(|| bad(&k))?;
                continue;
            }
            let (kind, a, b) = codec::small_parts(&k).ok_or_else(|| bad(&k))?;
            let h = |s: &str| Handle::parse(s).ok();
            match (kind, b) {
                ("hot", None) => hot.push((h(a).ok_or_else(|| bad(&k))?, v.clone(), k.clone())),
                ("peer", None) => {
                    let host = RelayHost::parse(a).map_err(|_| bad(&k))?;
                    peers.insert(host, codec::peer(&v).ok_or_else(|| bad(&k))?);
                }
                ("status", None) => {
                    let s = formica_protocol::SignedStatus::parse(&v, super::profiles::limits())
                        .map_err(|_| bad(&k))?;
                    statuses.insert(h(a).ok_or_else(|| bad(&k))?, s);
                }
                ("profile", None) => {
                    let signed =
                        formica_protocol::SignedProfile::parse(&v, super::profiles::limits())
                            .map_err(|_| bad(&k))?;
                    let handle = h(a).ok_or_else(|| bad(&k))?;
                    index.add(&handle, signed.profile());
                    profiles.insert(handle, super::StoredProfile::new(&signed));
                }
                ("remote", None) => {
                    let r = codec::remote(&v).ok_or_else(|| bad(&k))?;
                    remote.insert(h(a).ok_or_else(|| bad(&k))?, r);
                }
                ("convr", None) => {
                    conv_replicas.insert(a.to_owned(), v);
                }
                ("conve", Some(seq)) => {
                    let seq = seq.parse::<u64>().map_err(|_| bad(&k))?;
                    conv_rows.insert((a.to_owned(), seq), v);
                }
                ("vouch", Some(b)) | ("report", Some(b)) => {
                    let t = i64::from_be_bytes(
                        v.get(..8)
                            .and_then(|x| x.try_into().ok())
                            .ok_or_else(|| bad(&k))?,
                    );
                    let key = (h(a).ok_or_else(|| bad(&k))?, h(b).ok_or_else(|| bad(&k))?);
                    if kind == "vouch" {
                        vouches.insert(key, t);
                    } else {
                        reports.insert(key, t);
                    }
                }
                _ => return Err(bad(&k)),
            }
        }
        for (h, v, k) in hot {
            let a = agents.get_mut(&h).ok_or_else(|| bad(&k))?;
            codec::read_hot(a, &v).ok_or_else(|| bad(&k))?;
        }
        st.agents = Tracked::loaded(agents);
        for (h, r) in &remote {
            *st.remote_logs_per_host.entry(h.host().clone()).or_default() += 1;
            st.remote_keylog_entries += r.log.entries().len() + r.conflicts.len();
        }
        st.peers = Tracked::loaded(peers);
        st.remote_logs = Tracked::loaded(remote);
        st.profiles = Tracked::loaded(profiles);
        st.statuses = Tracked::loaded(statuses);
        st.profile_index = index;
        st.vouches = Tracked::loaded(vouches);
        st.reports = Tracked::loaded(reports);
        st.checkpoints = super::checkpoints::load(&*store)?;
        st.load_convs(conv_rows, conv_replicas)
            .map_err(|why| damaged(Table::Small, why))?;
        // Queue lengths: the id index has one short row per queued envelope.
        store.range(Table::OutboundIds, &[], None, &mut |k, _| {
            if let Some(host) = codec::host_of_prefixed(k) {
                *st.outbound_len.entry(host).or_default() += 1;
            }
            true
        })?;
        Ok(st)
    }

    /// The rows to commit with the batch just applied: the table changes it made and the rows
    /// of every agent, peer, remote key log, vouch and report it changed, plus the counters.
    /// A store error met while applying fails the batch instead.
    pub fn take_changes(&mut self) -> Result<Arc<Changes>, StoreError> {
        if let Some(e) = self.db.take_error() {
            // What was applied is not what the store would hold: forget it.
            self.db.discard();
            return Err(e);
        }
        let mut put = |t: Table, k: Vec<u8>, v: Option<Vec<u8>>| match v {
            Some(v) => self.db.put(t, k, v),
            None => self.db.del(t, k),
        };
        for (h, a) in self.agents.take_hot() {
            put(
                Table::Small,
                codec::small_key("hot", h.as_str(), None),
                a.map(codec::hot_value),
            );
        }
        for (h, a) in self.agents.take_dirty() {
            put(
                Table::Agents,
                h.as_str().as_bytes().to_vec(),
                a.map(codec::agent_value),
            );
        }
        for (host, p) in self.peers.take_dirty() {
            put(
                Table::Small,
                codec::small_key("peer", host.as_str(), None),
                p.map(codec::peer_value),
            );
        }
        for (h, r) in self.remote_logs.take_dirty() {
            put(
                Table::Small,
                codec::small_key("remote", h.as_str(), None),
                r.map(codec::remote_value),
            );
        }
        for (h, p) in self.profiles.take_dirty() {
            put(
                Table::Small,
                codec::small_key("profile", h.as_str(), None),
                p.map(|p| p.wire().to_vec()),
            );
        }
        for (h, s) in self.statuses.take_dirty() {
            put(
                Table::Small,
                codec::small_key("status", h.as_str(), None),
                s.map(|s| s.wire().to_vec()),
            );
        }
        for ((a, b), t) in self.vouches.take_dirty() {
            put(
                Table::Small,
                codec::small_key("vouch", a.as_str(), Some(b.as_str())),
                t.map(|t| t.to_be_bytes().to_vec()),
            );
        }
        for ((a, b), t) in self.reports.take_dirty() {
            put(
                Table::Small,
                codec::small_key("report", a.as_str(), Some(b.as_str())),
                t.map(|t| t.to_be_bytes().to_vec()),
            );
        }
        if std::mem::take(&mut self.counters_dirty) {
            let mut v = Vec::with_capacity(32);
            for n in [
                self.events,
                self.dead_letters,
                self.messages_len,
                self.deadlines_len,
            ] {
                v.extend_from_slice(&n.to_be_bytes());
            }
            put(Table::Small, COUNTERS.to_vec(), Some(v));
        }
        Ok(self.db.take_changes())
    }

    /// Forgets changes applied and not committed (a batch whose commit failed); the state in
    /// memory must then be loaded again ([`State::load`]).
    pub fn discard_changes(&mut self) {
        self.db.discard();
        let _ = self.db.take_error();
    }

    /// The changes taken by [`take_changes`](Self::take_changes) are committed.
    pub fn committed(&self) {
        self.db.committed();
    }

    /// Rows applied and not yet taken.
    pub fn pending_rows(&self) -> usize {
        self.db.pending_len()
    }

    /// Reads the tables from `store` from now on (the same records, opened for writing after
    /// the state was loaded from a read-only view).
    pub fn rebind(&mut self, store: Arc<dyn Store>) {
        self.db = Db::new(store);
    }

    /// Whether what `self` holds in memory equals `other`'s (the tables are compared by
    /// `relay check`).
    pub fn memory_eq(&self, other: &State) -> bool {
        self.host == other.host
            && *self.agents == *other.agents
            && *self.vouches == *other.vouches
            && *self.reports == *other.reports
            && *self.peers == *other.peers
            && *self.remote_logs == *other.remote_logs
            && *self.profiles == *other.profiles
            && self.profile_index == other.profile_index
            && *self.statuses == *other.statuses
            && self.remote_logs_per_host == other.remote_logs_per_host
            && self.remote_keylog_entries == other.remote_keylog_entries
            && self.outbound_len == other.outbound_len
            && self.messages_len == other.messages_len
            && self.deadlines_len == other.deadlines_len
            && self.dead_letters == other.dead_letters
            && self.events == other.events
            && self.checkpoints == other.checkpoints
            && self.convs == other.convs
    }
}

impl Db {
    /// Every row of the projection tables, as committed (for comparisons: `relay check`, tests).
    pub fn dump(store: &dyn Store) -> Result<Rows, StoreError> {
        let mut out = BTreeMap::new();
        for t in Table::ALL.into_iter().filter(|t| t.is_projection()) {
            for (k, v) in rows(store, t)? {
                out.insert((t, k), v);
            }
        }
        Ok(out)
    }
}
