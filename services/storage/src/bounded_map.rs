//! A shared map that forgets everything at once when it is full.
//!
//! Storage's caches (metrics already recorded, devices' keys for writes, devices as range reads
//! last found them) hold shortcuts that every user either checks in the database or can redo,
//! so forgetting costs one lookup again and never correctness. Clearing the whole map keeps the
//! hot path free of eviction bookkeeping.

use std::{
    borrow::Borrow,
    collections::HashMap,
    hash::Hash,
    sync::{Mutex, MutexGuard, PoisonError},
};

pub struct BoundedMap<K, V> {
    entries: Mutex<HashMap<K, V>>,
    capacity: usize,
}

impl<K: Eq + Hash, V: Clone> BoundedMap<K, V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// The map stays usable after a panic elsewhere: every update leaves it a valid cache.
    fn lock(&self) -> MutexGuard<'_, HashMap<K, V>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.lock().get(key).cloned()
    }

    /// Looks up many keys under one lock: `found(key, value)` for each key present.
    pub fn get_each<'k, Q>(
        &self,
        keys: impl IntoIterator<Item = &'k Q>,
        mut found: impl FnMut(&'k Q, V),
    ) where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + 'k,
    {
        let entries = self.lock();
        for key in keys {
            if let Some(value) = entries.get(key) {
                found(key, value.clone());
            }
        }
    }

    /// The keys of `keys` that are not in the map.
    pub fn missing<'k, Q>(&self, keys: impl IntoIterator<Item = &'k Q>) -> Vec<&'k Q>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + 'k,
    {
        let entries = self.lock();
        keys.into_iter()
            .filter(|key| !entries.contains_key(*key))
            .collect()
    }

    pub fn insert(&self, key: K, value: V) {
        self.extend([(key, value)]);
    }

    pub fn extend(&self, items: impl IntoIterator<Item = (K, V)>) {
        let mut entries = self.lock();
        for (key, value) in items {
            if entries.len() >= self.capacity && !entries.contains_key(&key) {
                entries.clear();
            }
            entries.insert(key, value);
        }
    }

    pub fn remove<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.lock().remove(key);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::BoundedMap;

    #[test]
    fn a_full_map_forgets_everything_before_taking_a_new_key() {
        let map = BoundedMap::new(2);
        map.insert("a".to_string(), 1);
        map.insert("b".to_string(), 2);
        // Replacing a present key is not growth.
        map.insert("b".to_string(), 3);
        assert_eq!((map.len(), map.get("b")), (2, Some(3)));
        map.insert("c".to_string(), 4);
        assert_eq!(map.len(), 1);
        assert_eq!((map.get("a"), map.get("c")), (None, Some(4)));
    }

    #[test]
    fn batch_lookups_report_what_is_present_and_what_is_missing() {
        let map = BoundedMap::new(10);
        map.extend([("x".to_string(), 1_u64), ("y".to_string(), 2)]);
        let mut found = Vec::new();
        map.get_each(["x", "z", "y"], |key, value| found.push((key, value)));
        assert_eq!(found, vec![("x", 1), ("y", 2)]);
        assert_eq!(map.missing(["x", "z", "w"]), vec!["z", "w"]);
        map.remove("x");
        assert_eq!(map.missing(["x"]), vec!["x"]);
    }
}
