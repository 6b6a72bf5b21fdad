//! A bounded concurrent cache whose entries live for a fixed time: the
//! lookups every predict makes (its key, its target, its grant, its rate
//! limit bucket).
//!
//! Why not moka here: a moka `get` reads the clock, records the read for its
//! eviction policy and now and then runs that policy's upkeep inline. With
//! four lookups per predict that was ~0.7 µs of warder's ~17 µs of CPU
//! (`bench/`, perf). A quick_cache `get` is a hash probe under a shard's
//! read lock and one atomic store; the expiry check here reads the coarse
//! monotonic clock (no TSC read; a few ms of resolution, plenty for TTLs of
//! seconds).

use crate::FastHash;
use quick_cache::sync::{Cache, DefaultLifecycle};
use quick_cache::{Equivalent, UnitWeighter};
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

/// Entries of at most `capacity` keys (about; the least used go first), each
/// for `ttl` after it was inserted. Clones share the entries.
pub(crate) struct TtlCache<K, V> {
    entries: Arc<Cache<K, (V, coarsetime::Instant), UnitWeighter, FastHash>>,
    ttl: Option<coarsetime::Duration>,
}

impl<K, V> Clone for TtlCache<K, V> {
    fn clone(&self) -> Self {
        TtlCache {
            entries: self.entries.clone(),
            ttl: self.ttl,
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    /// Entries expire `ttl` after their insertion.
    pub(crate) fn new(capacity: usize, ttl: Duration) -> Self {
        Self::build(capacity, Some(ttl))
    }

    /// Entries stay until evicted for room or invalidated.
    pub(crate) fn unexpiring(capacity: usize) -> Self {
        Self::build(capacity, None)
    }

    fn build(capacity: usize, ttl: Option<Duration>) -> Self {
        TtlCache {
            entries: Arc::new(Cache::with(
                capacity,
                capacity as u64,
                UnitWeighter,
                FastHash::new(),
                DefaultLifecycle::default(),
            )),
            ttl: ttl.map(coarsetime::Duration::from),
        }
    }

    /// The live entry of `key`.
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<V>
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        let (value, inserted) = self.entries.get(key)?;
        if let Some(ttl) = self.ttl {
            if now().duration_since(inserted) >= ttl {
                self.entries.remove(key);
                return None;
            }
        }
        Some(value)
    }

    /// The entry of `key`, inserting `make()` when there is none; callers
    /// that miss together get the one value the first of them made.
    pub(crate) fn get_or_insert_with<Q>(&self, key: &Q, make: impl FnOnce() -> V) -> V
    where
        Q: Hash + Equivalent<K> + ToOwned<Owned = K> + ?Sized,
    {
        if let Some(v) = self.get(key) {
            return v;
        }
        let made = self
            .entries
            .get_or_insert_with(key, || Ok::<_, std::convert::Infallible>((make(), now())))
            .map(|(v, _)| v);
        match made {
            Ok(v) => v,
            Err(never) => match never {},
        }
    }

    /// Sets `key`'s entry (its lifetime starts now).
    pub(crate) fn insert(&self, key: K, value: V) {
        self.entries.insert(key, (value, now()));
    }

    /// Drops `key`'s entry.
    pub(crate) fn invalidate<Q>(&self, key: &Q)
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        self.entries.remove(key);
    }

    /// Drops every entry.
    pub(crate) fn invalidate_all(&self) {
        self.entries.clear();
    }
}

/// The coarse monotonic clock, without coarsetime's process-wide "recent"
/// cache (one atomic store shared by every thread).
pub(crate) fn now() -> coarsetime::Instant {
    coarsetime::Instant::now_without_cache_update()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_after_their_ttl_and_can_be_dropped() {
        let cache: TtlCache<String, u32> = TtlCache::new(100, Duration::from_millis(200));
        cache.insert("a".to_owned(), 1);
        cache.insert("b".to_owned(), 2);
        assert_eq!(cache.get("a"), Some(1));
        cache.invalidate("a");
        assert_eq!(cache.get("a"), None);
        assert_eq!(cache.get("b"), Some(2));
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(cache.get("b"), None, "expired");
        cache.insert("c".to_owned(), 3);
        assert_eq!(
            cache.get_or_insert_with("c", || 9),
            3,
            "a live entry is kept"
        );
        assert_eq!(cache.get_or_insert_with("d", || 4), 4);
        cache.invalidate_all();
        assert_eq!(cache.get("c"), None);
        assert_eq!(cache.get("d"), None);
    }

    #[test]
    fn it_holds_about_its_capacity() {
        let cache: TtlCache<u32, u32> = TtlCache::unexpiring(1_000);
        for i in 0..10_000 {
            cache.insert(i, i);
        }
        let held = (0..10_000).filter(|i| cache.get(i).is_some()).count();
        assert!((500..=1_500).contains(&held), "{held}");
    }
}
