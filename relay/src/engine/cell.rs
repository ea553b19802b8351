//! The relay's state behind two locks: the *durability gate*, which the writer holds from its
//! first decision of a batch until the batch is on disk, and the state's own lock, which it
//! holds only while it decides and applies. [`StateCell::read`] takes both, so whatever answers
//! a request or feeds a stream never sees an event that is not durable; only the writer (in
//! this layer) can take the write side.

use super::state::State;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The relay's state and the gate that keeps events that are not yet durable out of sight.
#[derive(Debug)]
pub struct StateCell {
    gate: RwLock<()>,
    state: RwLock<State>,
}

/// A read view of the state holding only durable events (see [`StateCell::read`]).
pub struct Durable<'a> {
    // Field order: the state guard is released before the gate.
    state: RwLockReadGuard<'a, State>,
    _gate: RwLockReadGuard<'a, ()>,
}

impl std::fmt::Debug for Durable<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Durable(..)")
    }
}

impl std::ops::Deref for Durable<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.state
    }
}

impl StateCell {
    pub fn new(state: State) -> StateCell {
        StateCell {
            gate: RwLock::new(()),
            state: RwLock::new(state),
        }
    }

    /// The state as it is on disk: waits while the writer has a batch between its first decision
    /// and its fsync. Never poisoned (a panicking writer leaves the last applied state).
    pub fn read(&self) -> Durable<'_> {
        let gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        Durable { state, _gate: gate }
    }

    /// The state including a batch the writer has applied but not yet made durable. Only for
    /// checks whose result the writer decides again, and whose refusals are re-read through
    /// [`read`](Self::read) before they are answered.
    pub fn read_unsettled(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The writer closes the gate from its first decision of a batch until the batch is on disk.
    pub(super) fn close_gate(&self) -> RwLockWriteGuard<'_, ()> {
        self.gate.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The writer's write access, only while it decides and applies (or rebuilds after a failed
    /// append).
    pub(super) fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }
}
