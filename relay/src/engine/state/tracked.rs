//! [`Tracked`]: a map held in memory whose changed keys are remembered, so that the writer can
//! write exactly those rows in the commit that makes the change durable.

use std::collections::{BTreeMap, BTreeSet};

/// A `BTreeMap` that records which keys were changed since the last [`take_dirty`].
/// Reading goes through `Deref`; every way to change it marks the key.
///
/// [`take_dirty`]: Tracked::take_dirty
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracked<K: Ord + Clone, V> {
    map: BTreeMap<K, V>,
    dirty: BTreeSet<K>,
    /// Keys changed only in their hot part (see [`get_mut_hot`](Self::get_mut_hot)).
    hot: BTreeSet<K>,
}

impl<K: Ord + Clone, V> Default for Tracked<K, V> {
    fn default() -> Self {
        Tracked {
            map: BTreeMap::new(),
            dirty: BTreeSet::new(),
            hot: BTreeSet::new(),
        }
    }
}

impl<K: Ord + Clone, V> std::ops::Deref for Tracked<K, V> {
    type Target = BTreeMap<K, V>;
    fn deref(&self) -> &BTreeMap<K, V> {
        &self.map
    }
}

impl<K: Ord + Clone, V> Tracked<K, V> {
    /// A map loaded from the store: nothing is dirty.
    pub fn loaded(map: BTreeMap<K, V>) -> Self {
        Tracked {
            map,
            dirty: BTreeSet::new(),
            hot: BTreeSet::new(),
        }
    }
    /// A row read again from the store, where another node of the relay changed it: the map
    /// takes it (`None`: removes the key) without marking it changed.
    pub fn reload(&mut self, k: K, v: Option<V>) {
        match v {
            Some(v) => {
                self.map.insert(k, v);
            }
            None => {
                self.map.remove(&k);
            }
        }
    }

    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        let v = self.map.get_mut(k)?;
        self.dirty.insert(k.clone());
        Some(v)
    }
    /// Like [`get_mut`](Self::get_mut) for a change to the value's small, often changed part
    /// only (an agent's cursors and counters), which is stored in a row of its own: the large
    /// row is not written again for it.
    pub fn get_mut_hot(&mut self, k: &K) -> Option<&mut V> {
        let v = self.map.get_mut(k)?;
        self.hot.insert(k.clone());
        Some(v)
    }
    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        self.dirty.insert(k.clone());
        self.map.insert(k, v)
    }
    pub fn remove(&mut self, k: &K) -> Option<V> {
        let v = self.map.remove(k)?;
        self.dirty.insert(k.clone());
        Some(v)
    }
    /// The keys whose hot part changed since the last call (the fully changed ones included),
    /// each with its value now (`None`: removed).
    pub fn take_hot(&mut self) -> Vec<(K, Option<&V>)> {
        let mut hot = std::mem::take(&mut self.hot);
        hot.extend(self.dirty.iter().cloned());
        hot.into_iter()
            .map(|k| {
                let v = self.map.get(&k);
                (k, v)
            })
            .collect()
    }
    /// The keys changed since the last call, each with its value now (`None`: removed).
    pub fn take_dirty(&mut self) -> Vec<(K, Option<&V>)> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .map(|k| {
                let v = self.map.get(&k);
                (k, v)
            })
            .collect()
    }
}
