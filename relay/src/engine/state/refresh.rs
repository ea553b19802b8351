//! A node of a relay on a shared store catching up with what other nodes committed
//! (`engine::nodes`): the rows the state holds in memory that their commits changed are read
//! again, instead of the whole state. Each commit of a node names those rows in a journal row
//! of the `meta` table ([`journal_row`]), in the same transaction; a node that finds the
//! journal covering every record after its own last one reads back just those rows
//! ([`State::refresh`]), and otherwise loads the whole state (`State::load`).

use super::{codec, State};
use crate::store::tables::prefix_end;
use crate::store::{Changes, Store, StoreError, Table};
use formica_protocol::envelope::MessageId;
use formica_protocol::{Handle, RelayHost};
use std::collections::{BTreeMap, BTreeSet};

/// Journal rows are `journal NUL` + the commit's first record (8 bytes, big-endian).
pub const JOURNAL: &[u8] = b"journal\0";

/// A node removes its own journal rows once it has written this many more: a node further
/// behind than that loads the whole state.
pub const JOURNAL_KEEP: usize = 1024;

/// A whole load also removes the journal rows of commits this many records behind the log's
/// end (those a node that stopped left behind).
pub const JOURNAL_SPAN: u64 = 1 << 20;

/// The key of the journal row of a commit whose first record is `first`.
pub fn journal_key(first: u64) -> Vec<u8> {
    let mut k = JOURNAL.to_vec();
    k.extend_from_slice(&first.to_be_bytes());
    k
}

/// Rows the state holds in memory (or counts): those a journal row names.
fn held(t: Table, k: &[u8]) -> bool {
    match t {
        Table::Agents | Table::Small | Table::OutboundIds => true,
        Table::Meta => k == super::checkpoints::ROW,
        _ => false,
    }
}

/// The journal row of a commit of records `first..=last` that changes `changes`: its last
/// record, then each changed row held in memory as table code (1 byte), key length (4 bytes,
/// big-endian) and key.
pub fn journal_row(first: u64, last: u64, changes: &[&Changes]) -> (Vec<u8>, Vec<u8>) {
    let mut v = last.to_be_bytes().to_vec();
    let keys: BTreeSet<(Table, &Vec<u8>)> = changes
        .iter()
        .flat_map(|c| c.keys())
        .filter(|(t, k)| held(*t, k))
        .map(|(t, k)| (*t, k))
        .collect();
    for (t, k) in keys {
        v.push(t.code());
        v.extend_from_slice(&(k.len() as u32).to_be_bytes());
        v.extend_from_slice(k);
    }
    (journal_key(first), v)
}

/// A journal row read back: the commit's last record and the rows it names.
type Named = (u64, Vec<(Table, Vec<u8>)>);

fn decode(v: &[u8]) -> Option<Named> {
    let last = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
    let mut keys = Vec::new();
    let mut rest = &v[8..];
    while !rest.is_empty() {
        let t = Table::from_code(*rest.first()?)?;
        let n = u32::from_be_bytes(rest.get(1..5)?.try_into().ok()?) as usize;
        keys.push((t, rest.get(5..5 + n)?.to_vec()));
        rest = &rest[5 + n..];
    }
    Some((last, keys))
}

fn damaged(t: Table, k: &[u8], what: &str) -> StoreError {
    StoreError::Corrupt {
        seq: 0,
        reason: format!(
            "projection table {}: the row {:?} {what}",
            t.name(),
            String::from_utf8_lossy(k)
        ),
    }
}

/// The journal rows of commits that ended more than [`JOURNAL_SPAN`] records before `stored`:
/// removals for the next commit.
pub fn stale_journal(store: &dyn Store, stored: u64) -> Result<Changes, StoreError> {
    let mut out = Changes::new();
    let end = prefix_end(JOURNAL);
    store.range(Table::Meta, JOURNAL, end.as_deref(), &mut |k, v| {
        let last = v
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes);
        if last.is_some_and(|l| l + JOURNAL_SPAN < stored) {
            out.insert((Table::Meta, k.to_vec()), None);
            true
        } else {
            false
        }
    })?;
    Ok(out)
}

impl State {
    /// Reads again from `store` the rows held in memory that the commits of records after
    /// `from` up to `to` changed, as their journal rows name them. `Ok(false)` when the journal
    /// does not cover every one of those records (rows removed, a commit without one): nothing
    /// was changed then, and the caller loads the whole state.
    pub fn refresh(&mut self, store: &dyn Store, from: u64, to: u64) -> Result<bool, StoreError> {
        let mut keys = BTreeSet::new();
        let mut next = from + 1;
        let mut whole = true;
        let end = prefix_end(JOURNAL);
        store.range(
            Table::Meta,
            &journal_key(next),
            end.as_deref(),
            &mut |k, v| {
                let first = k
                    .get(JOURNAL.len()..)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes);
                match (first, decode(v)) {
                    (Some(first), Some((last, ks))) if first == next && last >= first => {
                        keys.extend(ks);
                        next = last + 1;
                        next <= to
                    }
                    _ => {
                        whole = false;
                        false
                    }
                }
            },
        )?;
        if !whole || next != to + 1 {
            return Ok(false);
        }
        let mut convs = BTreeSet::new();
        let mut hosts = BTreeSet::new();
        let mut agents = BTreeSet::new();
        for (t, k) in keys {
            match t {
                Table::Agents => {
                    agents.insert(k);
                }
                Table::Small => self.refresh_small(store, &k, &mut agents, &mut convs)?,
                Table::Meta => self.checkpoints = super::checkpoints::load(store)?,
                Table::OutboundIds => {
                    if let Some(h) = codec::host_of_prefixed(&k) {
                        hosts.insert(h);
                    }
                }
                _ => {}
            }
        }
        for h in agents {
            self.refresh_agent(store, &h)?;
        }
        for h in hosts {
            self.recount_outbound(store, h)?;
        }
        for id in convs {
            self.reload_conv(store, &id)?;
        }
        Ok(true)
    }

    fn refresh_agent(&mut self, store: &dyn Store, k: &[u8]) -> Result<(), StoreError> {
        let bad = |what: &str| damaged(Table::Agents, k, what);
        let h = std::str::from_utf8(k)
            .ok()
            .and_then(|s| Handle::parse(s).ok())
            .ok_or_else(|| bad("is not a handle"))?;
        let a = match store.get(Table::Agents, k)? {
            None => None,
            Some(v) => {
                // Only the key log entries after those this node checked are checked again.
                let known = self.agents.get(&h).map(|a| &a.keylog);
                let mut a =
                    codec::agent_after(&v, |_| known).ok_or_else(|| bad("does not decode"))?;
                if let Some(hot) =
                    store.get(Table::Small, &codec::small_key("hot", h.as_str(), None))?
                {
                    codec::read_hot(&mut a, &hot)
                        .ok_or_else(|| bad("has a hot row that does not decode"))?;
                }
                Some(a)
            }
        };
        self.agents.reload(h, a);
        Ok(())
    }

    fn refresh_small(
        &mut self,
        store: &dyn Store,
        k: &[u8],
        agents: &mut BTreeSet<Vec<u8>>,
        convs: &mut BTreeSet<String>,
    ) -> Result<(), StoreError> {
        let bad = || damaged(Table::Small, k, "does not decode");
        let v = store.get(Table::Small, k)?;
        if k == super::persist::COUNTERS {
            if let Some(v) = v {
                self.read_counters(&v).ok_or_else(bad)?;
            }
            return Ok(());
        }
        let (kind, a, b) = codec::small_parts(k).ok_or_else(bad)?;
        let handle = || Handle::parse(a).map_err(|_| bad());
        match (kind, b) {
            ("hot", None) => {
                agents.insert(a.as_bytes().to_vec());
            }
            ("peer", None) => {
                let host = RelayHost::parse(a).map_err(|_| bad())?;
                let p = v.map(|v| codec::peer(&v).ok_or_else(bad)).transpose()?;
                self.peers.reload(host, p);
            }
            ("status", None) => {
                let s = v
                    .map(|v| {
                        formica_protocol::SignedStatus::parse(&v, super::profiles::limits())
                            .map_err(|_| bad())
                    })
                    .transpose()?;
                self.statuses.reload(handle()?, s);
            }
            ("profile", None) => {
                let h = handle()?;
                let signed = v
                    .map(|v| {
                        formica_protocol::SignedProfile::parse(&v, super::profiles::limits())
                            .map_err(|_| bad())
                    })
                    .transpose()?;
                self.reload_profile(h, signed);
            }
            ("remote", None) => {
                let h = handle()?;
                let r = v.map(|v| codec::remote(&v).ok_or_else(bad)).transpose()?;
                let count = |r: &super::RemoteLog| r.log.entries().len() + r.conflicts.len();
                if let Some(old) = self.remote_logs.get(&h) {
                    self.remote_keylog_entries -= count(old);
                    let n = self
                        .remote_logs_per_host
                        .entry(h.host().clone())
                        .or_default();
                    *n -= 1;
                    if *n == 0 {
                        self.remote_logs_per_host.remove(h.host());
                    }
                }
                if let Some(new) = &r {
                    self.remote_keylog_entries += count(new);
                    *self
                        .remote_logs_per_host
                        .entry(h.host().clone())
                        .or_default() += 1;
                }
                self.remote_logs.reload(h, r);
            }
            ("convr", None) | ("conve", Some(_)) => {
                convs.insert(a.to_owned());
            }
            ("vouch", Some(b)) | ("report", Some(b)) => {
                let key = (handle()?, Handle::parse(b).map_err(|_| bad())?);
                let t = v
                    .map(|v| {
                        v.get(..8)
                            .and_then(|x| x.try_into().ok())
                            .map(i64::from_be_bytes)
                            .ok_or_else(bad)
                    })
                    .transpose()?;
                if kind == "vouch" {
                    self.vouches.reload(key, t);
                } else {
                    self.reports.reload(key, t);
                }
            }
            _ => return Err(bad()),
        }
        Ok(())
    }

    fn reload_profile(&mut self, h: Handle, signed: Option<formica_protocol::SignedProfile>) {
        if let Some(old) = self.profiles.get(&h).and_then(super::StoredProfile::signed) {
            self.profile_index.remove(&h, old.profile());
        }
        let stored = signed.map(|s| {
            self.profile_index.add(&h, s.profile());
            super::StoredProfile::new(&s)
        });
        self.profiles.reload(h, stored);
    }

    fn recount_outbound(&mut self, store: &dyn Store, h: RelayHost) -> Result<(), StoreError> {
        let mut prefix = h.as_str().as_bytes().to_vec();
        prefix.push(0);
        let end = prefix_end(&prefix);
        let mut n = 0usize;
        store.range(Table::OutboundIds, &prefix, end.as_deref(), &mut |_, _| {
            n += 1;
            true
        })?;
        if n == 0 {
            self.outbound_len.remove(&h);
        } else {
            self.outbound_len.insert(h, n);
        }
        Ok(())
    }

    /// One conversation read again from its rows (or gone, when it has none left).
    fn reload_conv(&mut self, store: &dyn Store, id: &str) -> Result<(), StoreError> {
        let bad = |what: &str| damaged(Table::Small, id.as_bytes(), what);
        let mid = MessageId::parse_hex(id).ok_or_else(|| bad("names no conversation"))?;
        self.convs.forget(&mid);
        let prefix = codec::small_key("conve", id, Some(""));
        let end = prefix_end(&prefix);
        let mut rows = BTreeMap::new();
        let mut err = None;
        store.range(
            Table::Small,
            &prefix,
            end.as_deref(),
            &mut |k, v| match codec::small_parts(k).and_then(|(_, _, s)| s?.parse::<u64>().ok()) {
                Some(seq) => {
                    rows.insert((id.to_owned(), seq), v.to_vec());
                    true
                }
                None => {
                    err = Some(bad("has an entry row that does not decode"));
                    false
                }
            },
        )?;
        if let Some(e) = err {
            return Err(e);
        }
        let mut replicas = BTreeMap::new();
        if let Some(v) = store.get(Table::Small, &codec::small_key("convr", id, None))? {
            replicas.insert(id.to_owned(), v);
        }
        self.load_convs(rows, replicas).map_err(|why| bad(&why))
    }
}
