//! Per-handle key logs (SPEC.md section 8, LOG-1..12).
//!
//! A key log is a hash chain of signed entries: `register` first, then `rotate`, `revoke`,
//! `recover` and `move`. Anyone can check a log from its first entry without trusting the relay
//! that served it ([`KeyLog::verify`]), and then ask which key was valid at a given time
//! ([`KeyLog::key_at`]). Relays use [`KeyLog::append`] to accept one more entry; a second valid
//! entry at a position already taken is a fork, which relays keep as evidence.

use crate::error::ErrorCode;
use crate::handle::Handle;
use crate::keys::{KeyError, KeyId, PublicKey};
use crate::schema::SchemaError;
use crate::seal::EncPublicKey;
use std::collections::BTreeMap;

mod entry;

pub use entry::{
    EntryHash, EntryProofs, KeyLogEntry, KeyLogError, KeyOp, Proved, SignError, SignedKeyLogEntry,
};

/// Largest number of entries a key log may hold (LOG-11). A key rotated every day for a decade
/// stays well below it; the bound keeps a served log, and the work to check it, small.
pub const KEYLOG_ENTRIES_MAX: usize = 4096;

/// One key's validity period, `[from, until)` in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPeriod {
    pub key: PublicKey,
    pub from: i64,
    pub until: Option<i64>,
}

/// Why [`KeyLog::key_at`] found no key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyLookupError {
    #[error("key {0} is not a signing key of this handle")]
    Unknown(KeyId),
    #[error("key {kid} was not valid at {ts} (valid from {from}{})", until.map(|u| format!(" until {u}")).unwrap_or_default())]
    NotValid {
        kid: KeyId,
        ts: i64,
        from: i64,
        until: Option<i64>,
    },
}

impl KeyLookupError {
    pub fn code(&self) -> ErrorCode {
        match self {
            KeyLookupError::Unknown(_) => ErrorCode::UnknownKey,
            KeyLookupError::NotValid { .. } => ErrorCode::KeyNotValid,
        }
    }
}

/// One encryption key's validity (LOG-16): from the `ts` of its `enc` entry until `expires`, or
/// until `until`, the `ts` of the entry that ended it (the next `enc`, a `revoke`, `recover` or
/// `move`), whichever comes first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncPeriod {
    pub key: EncPublicKey,
    pub from: i64,
    pub expires: i64,
    pub until: Option<i64>,
}

impl EncPeriod {
    /// True if the key was the handle's encryption key at `ts`.
    pub fn valid_at(&self, ts: i64) -> bool {
        ts >= self.from && ts < self.expires && self.until.is_none_or(|u| ts < u)
    }
}

/// Why [`KeyLog::enc_key_at`] found no encryption key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncKeyLookupError {
    #[error("key {0} is not an encryption key of this handle")]
    Unknown(KeyId),
    #[error("encryption key {kid} expired at {expires}, before {ts}")]
    Expired { kid: KeyId, expires: i64, ts: i64 },
    #[error("encryption key {kid} was not valid at {ts} (valid from {from}{})", until.map(|u| format!(" until {u}")).unwrap_or_default())]
    NotValid {
        kid: KeyId,
        ts: i64,
        from: i64,
        until: Option<i64>,
    },
}

impl EncKeyLookupError {
    /// The word of LOG-16 and SEAL-11: `unknown_key_id`, `key_expired` or `key_not_valid`.
    pub fn word(&self) -> &'static str {
        match self {
            EncKeyLookupError::Unknown(_) => "unknown_key_id",
            EncKeyLookupError::Expired { .. } => "key_expired",
            EncKeyLookupError::NotValid { .. } => "key_not_valid",
        }
    }
}

/// A key log that has been checked from its first entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLog {
    handle: Handle,
    entries: Vec<SignedKeyLogEntry>,
    current: Option<PublicKey>,
    recovery: Option<PublicKey>,
    periods: Vec<KeyPeriod>,
    /// Every key this log has named (signing and recovery), by id: a key may not be named
    /// twice (LOG-9), and an entry offered at a taken position is checked against these.
    named: BTreeMap<KeyId, PublicKey>,
    moved_to: Option<Handle>,
    /// Encryption keys (LOG-16), in the order published; at most the last one is open.
    enc: Vec<EncPeriod>,
}

impl KeyLog {
    /// LOG-10: checks a whole log from its first entry.
    pub fn verify(
        entries: impl IntoIterator<Item = SignedKeyLogEntry>,
    ) -> Result<KeyLog, KeyLogError> {
        let mut it = entries.into_iter();
        let first = it.next().ok_or(KeyLogError::BrokenChain {
            seq: 0,
            reason: "a key log has at least one entry",
        })?;
        let mut log = KeyLog::start(first)?;
        for e in it {
            log.append(e)?;
        }
        Ok(log)
    }

    /// Starts a log from its `register` entry.
    pub fn start(first: SignedKeyLogEntry) -> Result<KeyLog, KeyLogError> {
        KeyLog::start_checked(first, true)
    }

    fn start_checked(first: SignedKeyLogEntry, check_sig: bool) -> Result<KeyLog, KeyLogError> {
        let e = &first.entry;
        if e.seq != 0 || e.prev.is_some() {
            return Err(KeyLogError::BrokenChain {
                seq: e.seq,
                reason: "the first entry has seq 0 and no prev",
            });
        }
        let KeyOp::Register { key, recovery } = &e.op else {
            return Err(KeyLogError::BrokenChain {
                seq: 0,
                reason: "the first entry must be a register",
            });
        };
        if e.signer != key.key_id() {
            return Err(KeyLogError::UnauthorizedSigner {
                seq: 0,
                op: "register",
                signer: e.signer,
            });
        }
        if check_sig {
            key.verify_input(&first.signing_input, &first.sig)
                .map_err(|_: KeyError| KeyLogError::BadSignature { seq: 0 })?;
            check_proofs(&first)?;
        }
        if recovery.is_some_and(|r| r == *key) {
            return Err(KeyLogError::KeyReused { seq: 0 });
        }
        let mut named = BTreeMap::from([(key.key_id(), *key)]);
        if let Some(r) = recovery {
            named.insert(r.key_id(), *r);
        }
        Ok(KeyLog {
            handle: e.handle.clone(),
            current: Some(*key),
            recovery: *recovery,
            periods: vec![KeyPeriod {
                key: *key,
                from: e.ts,
                until: None,
            }],
            named,
            moved_to: None,
            enc: Vec::new(),
            entries: vec![first],
        })
    }

    /// LOG-10 step 3: checks `next` against the head of this log and applies it. On error the
    /// log is unchanged.
    pub fn append(&mut self, next: SignedKeyLogEntry) -> Result<(), KeyLogError> {
        self.append_checked(next, true)
    }

    /// The log as it stood after its first `len` entries (`None` for 0 or more than it has).
    /// Its entries were verified when this log was built, so their signatures are not checked
    /// again: judging an entry offered at a taken position costs no cryptography for the
    /// prefix.
    pub fn prefix(&self, len: usize) -> Option<KeyLog> {
        let (first, rest) = self.entries.get(..len)?.split_first()?;
        let mut log = KeyLog::start_checked(first.clone(), false).ok()?;
        for e in rest {
            log.append_checked(e.clone(), false).ok()?;
        }
        Some(log)
    }

    /// True if `entry` carries a valid signature by a key this log has ever named (signing or
    /// recovery), whatever its position. One signature check: the cheap first test for an
    /// entry offered at a taken position, which only such a key can make valid.
    pub fn signed_by_one_of_its_keys(&self, entry: &SignedKeyLogEntry) -> bool {
        self.named
            .get(&entry.entry.signer)
            .is_some_and(|k| k.verify_input(&entry.signing_input, &entry.sig).is_ok())
    }

    /// True if `key` is the key that registered this log (the signer of entry 0).
    pub fn registered_with(&self, key: &KeyId) -> bool {
        self.entries.first().is_some_and(|e| e.entry.signer == *key)
    }

    /// LOG-10 step 3 for `next` against the head, without changing the log: what
    /// [`append`](Self::append) checks, so a caller can refuse an entry without copying the log.
    pub fn check_next(&self, next: &SignedKeyLogEntry) -> Result<(), KeyLogError> {
        self.check(next, true).map(|_| ())
    }

    fn append_checked(
        &mut self,
        next: SignedKeyLogEntry,
        check_sig: bool,
    ) -> Result<(), KeyLogError> {
        let new_keys = self.check(&next, check_sig)?;
        self.apply(next, new_keys);
        Ok(())
    }

    /// The checks of LOG-10 for `next`; the keys it introduces.
    fn check(
        &self,
        next: &SignedKeyLogEntry,
        check_sig: bool,
    ) -> Result<Vec<PublicKey>, KeyLogError> {
        let e = &next.entry;
        let seq = e.seq;
        if self.entries.len() >= KEYLOG_ENTRIES_MAX {
            return Err(KeyLogError::TooLong {
                max: KEYLOG_ENTRIES_MAX,
            });
        }
        if e.handle != self.handle {
            return Err(KeyLogError::HandleMismatch {
                seq,
                got: e.handle.to_string(),
                want: self.handle.to_string(),
            });
        }
        // The log is never empty: `start` makes it with one entry and nothing removes entries.
        let Some(head) = self.entries.last() else {
            return Err(KeyLogError::BrokenChain {
                seq,
                reason: "empty log",
            });
        };
        if self.moved_to.is_some() {
            return Err(KeyLogError::Closed { seq });
        }
        if seq != head.entry.seq + 1 {
            return Err(KeyLogError::BrokenChain {
                seq,
                reason: "seq is not one more than the head's",
            });
        }
        if e.prev != Some(head.hash) {
            return Err(KeyLogError::BrokenChain {
                seq,
                reason: "prev is not the hash of the head entry",
            });
        }
        if e.ts <= head.entry.ts {
            return Err(KeyLogError::TimeOrder {
                seq,
                ts: e.ts,
                prev_ts: head.entry.ts,
            });
        }
        let current_id = self.current.map(|k| k.key_id());
        let recovery_id = self.recovery.map(|k| k.key_id());
        let signer_key = match &e.op {
            KeyOp::Register { .. } => {
                return Err(KeyLogError::BrokenChain {
                    seq,
                    reason: "register is only the first entry",
                })
            }
            KeyOp::Move { to } if *to == self.handle => {
                return Err(KeyLogError::Schema(SchemaError::invalid(
                    "to",
                    "a move names another handle than the log's own",
                )))
            }
            KeyOp::Rotate { .. } | KeyOp::Move { .. } | KeyOp::Enc { .. } => {
                self.current.filter(|_| current_id == Some(e.signer))
            }
            KeyOp::Revoke => {
                if current_id.is_none() {
                    None // nothing left to revoke
                } else if current_id == Some(e.signer) {
                    self.current
                } else if recovery_id == Some(e.signer) {
                    self.recovery
                } else {
                    None
                }
            }
            KeyOp::Recover { .. } => self.recovery.filter(|_| recovery_id == Some(e.signer)),
        };
        let Some(signer_key) = signer_key else {
            return Err(KeyLogError::UnauthorizedSigner {
                seq,
                op: e.op.name(),
                signer: e.signer,
            });
        };
        if check_sig {
            signer_key
                .verify_input(&next.signing_input, &next.sig)
                .map_err(|_: KeyError| KeyLogError::BadSignature { seq })?;
            check_proofs(next)?;
        }
        let new_keys: Vec<PublicKey> = match &e.op {
            KeyOp::Rotate { key } => vec![*key],
            KeyOp::Recover { key, recovery } => std::iter::once(*key).chain(*recovery).collect(),
            _ => vec![],
        };
        for (i, k) in new_keys.iter().enumerate() {
            if self.named.contains_key(&k.key_id()) || new_keys[..i].contains(k) {
                return Err(KeyLogError::KeyReused { seq });
            }
        }
        if let KeyOp::Enc { enc, .. } = &e.op {
            if self.enc.iter().any(|p| p.key == *enc) {
                return Err(KeyLogError::KeyReused { seq });
            }
        }
        Ok(new_keys)
    }

    /// Applies an entry that [`check`](Self::check) accepted.
    fn apply(&mut self, next: SignedKeyLogEntry, new_keys: Vec<PublicKey>) {
        let e = &next.entry;
        let ts = e.ts;
        let end_current = |periods: &mut Vec<KeyPeriod>| {
            if let Some(p) = periods.last_mut() {
                if p.until.is_none() {
                    p.until = Some(ts);
                }
            }
        };
        // LOG-16: every entry but a `rotate` ends the open encryption key.
        if !matches!(e.op, KeyOp::Rotate { .. }) {
            if let Some(p) = self.enc.last_mut() {
                if p.until.is_none() {
                    p.until = Some(ts);
                }
            }
        }
        match &e.op {
            KeyOp::Register { .. } => {}
            KeyOp::Rotate { key } => {
                end_current(&mut self.periods);
                self.periods.push(KeyPeriod {
                    key: *key,
                    from: ts,
                    until: None,
                });
                self.current = Some(*key);
            }
            KeyOp::Revoke => {
                end_current(&mut self.periods);
                self.current = None;
            }
            KeyOp::Recover { key, recovery } => {
                end_current(&mut self.periods);
                self.periods.push(KeyPeriod {
                    key: *key,
                    from: ts,
                    until: None,
                });
                self.current = Some(*key);
                if let Some(r) = recovery {
                    self.recovery = Some(*r);
                }
            }
            KeyOp::Move { to } => {
                end_current(&mut self.periods);
                self.moved_to = Some(to.clone());
            }
            KeyOp::Enc { enc, expires } => self.enc.push(EncPeriod {
                key: *enc,
                from: ts,
                expires: *expires,
                until: None,
            }),
        }
        self.named.extend(new_keys.iter().map(|k| (k.key_id(), *k)));
        self.entries.push(next);
    }

    /// LOG-12: the key with id `kid` if it was the handle's valid signing key at `ts`.
    pub fn key_at(&self, kid: &KeyId, ts: i64) -> Result<&PublicKey, KeyLookupError> {
        let p = self
            .periods
            .iter()
            .find(|p| p.key.key_id() == *kid)
            .ok_or(KeyLookupError::Unknown(*kid))?;
        if ts >= p.from && p.until.is_none_or(|u| ts < u) {
            Ok(&p.key)
        } else {
            Err(KeyLookupError::NotValid {
                kid: *kid,
                ts,
                from: p.from,
                until: p.until,
            })
        }
    }

    /// LOG-16: the encryption key with id `kid` if it was the handle's encryption key at `ts`
    /// (what a recipient checks before it opens a payload sealed to it, SEAL-10).
    pub fn enc_key_at(&self, kid: &KeyId, ts: i64) -> Result<&EncPublicKey, EncKeyLookupError> {
        let p = self
            .enc
            .iter()
            .find(|p| p.key.key_id() == *kid)
            .ok_or(EncKeyLookupError::Unknown(*kid))?;
        if p.valid_at(ts) {
            Ok(&p.key)
        } else if ts >= p.expires && p.until.is_none_or(|u| u >= p.expires) {
            // Expired: nothing ended it before its `expires` (an entry at that very time
            // did not end it early).
            Err(EncKeyLookupError::Expired {
                kid: *kid,
                expires: p.expires,
                ts,
            })
        } else {
            Err(EncKeyLookupError::NotValid {
                kid: *kid,
                ts,
                from: p.from,
                until: p.until,
            })
        }
    }

    /// LOG-16: the handle's encryption key at `ts`, the one a sender seals to (SEAL-7), if any.
    pub fn enc_key_current(&self, ts: i64) -> Option<&EncPeriod> {
        self.enc.iter().rev().find(|p| p.valid_at(ts))
    }

    /// Every encryption key the log has published, oldest first.
    pub fn enc_periods(&self) -> &[EncPeriod] {
        &self.enc
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }
    pub fn entries(&self) -> &[SignedKeyLogEntry] {
        &self.entries
    }
    /// The key valid now, if any (none after a revoke or a move).
    pub fn current_key(&self) -> Option<&PublicKey> {
        if self.moved_to.is_some() {
            None
        } else {
            self.current.as_ref()
        }
    }
    pub fn recovery_key(&self) -> Option<&PublicKey> {
        self.recovery.as_ref()
    }
    pub fn periods(&self) -> &[KeyPeriod] {
        &self.periods
    }
    pub fn moved_to(&self) -> Option<&Handle> {
        self.moved_to.as_ref()
    }
    pub fn head(&self) -> &SignedKeyLogEntry {
        // Never empty, see `append`.
        &self.entries[self.entries.len() - 1]
    }
    /// The `seq` and `prev` that the next entry must carry.
    pub fn next_position(&self) -> (i64, EntryHash) {
        let head = self.head();
        (head.entry.seq + 1, head.hash)
    }
}

/// LOG-10 steps 2.5 and 3.10: every proof of possession of `entry` verifies (SIG-3) with the key
/// it proves, over the entry's proof input (LOG-2). Parsing guarantees that each proof is present;
/// an entry made with [`KeyLogEntry::sign_unchecked`] may lack one, which is `missing_field`.
fn check_proofs(entry: &SignedKeyLogEntry) -> Result<(), KeyLogError> {
    let needed = entry.entry.proved_keys();
    if needed.is_empty() {
        return Ok(());
    }
    let input = entry.proof_input();
    for (which, key) in needed {
        let Some(sig) = entry.proofs.get(which) else {
            return Err(KeyLogError::Schema(SchemaError::MissingField {
                path: which.field().to_owned(),
            }));
        };
        key.verify_input(&input, sig)
            .map_err(|_: KeyError| KeyLogError::BadProof {
                seq: entry.entry.seq,
                field: which.field(),
            })?;
    }
    Ok(())
}
