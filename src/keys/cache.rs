//! The cache of unwrapped file keys: bounded in entries, every entry dropped after a maximum
//! age and after an idle time (these bound how long a key disabled in KMS stays usable here),
//! one load in flight per file (many threads opening one cold file make one KMS call),
//! failures never cached. Evicted keys are wiped as their last reference drops.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;

use super::{DataKeyMaterial, KeyError};
use crate::format::Id;

#[derive(Clone, Copy, Debug)]
pub struct CacheLimits {
    pub entries: NonZeroUsize,
    pub max_age: Duration,
    pub idle: Duration,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits {
            entries: NonZeroUsize::new(4096).expect("non-zero"),
            max_age: Duration::from_secs(3600),
            idle: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub evictions: AtomicU64,
    pub expirations: AtomicU64,
    pub failures: AtomicU64,
    /// Loads under way now.
    pub loading: AtomicU64,
}

impl std::fmt::Display for CacheStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        write!(
            f,
            "hits={} misses={} evictions={} expirations={} load_failures={}",
            get(&self.hits),
            get(&self.misses),
            get(&self.evictions),
            get(&self.expirations),
            get(&self.failures)
        )
    }
}

struct Entry {
    material: Arc<DataKeyMaterial>,
    created: Instant,
    used: Instant,
}

type Outcome = Result<Arc<DataKeyMaterial>, KeyError>;

#[derive(Default)]
struct Flight {
    outcome: Mutex<Option<Outcome>>,
    done: Condvar,
}

/// Ends a load in flight when its leader leaves `get_or_load`, whichever way: the in-flight
/// entry goes (so the next caller loads afresh) and every waiter wakes with the outcome, or
/// with an error if the leader never got one (it panicked).
struct Landing<'a> {
    cache: &'a KeyCache,
    id: Id,
    flight: Arc<Flight>,
    outcome: Option<Outcome>,
}

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        let outcome = self.outcome.take().unwrap_or(Err(KeyError::LoadPanicked));
        crate::sync::lock(&self.cache.in_flight).remove(&self.id);
        *crate::sync::lock(&self.flight.outcome) = Some(outcome);
        self.flight.done.notify_all();
    }
}

pub struct KeyCache {
    limits: CacheLimits,
    entries: Mutex<LruCache<Id, Entry>>,
    in_flight: Mutex<HashMap<Id, Arc<Flight>>>,
    /// When every entry was last checked against the max age (see `sweep`).
    last_full_sweep: Mutex<Instant>,
    full_sweeps: AtomicU64,
    pub stats: CacheStats,
}

/// Longest time between two scans of every entry for the max age.
const FULL_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

impl KeyCache {
    pub fn new(limits: CacheLimits) -> Self {
        KeyCache {
            limits,
            entries: Mutex::new(LruCache::new(limits.entries)),
            in_flight: Mutex::new(HashMap::new()),
            last_full_sweep: Mutex::new(Instant::now()),
            full_sweeps: AtomicU64::new(0),
            stats: CacheStats::default(),
        }
    }

    fn expired(&self, entry: &Entry, now: Instant) -> bool {
        now.duration_since(entry.created) >= self.limits.max_age
            || now.duration_since(entry.used) >= self.limits.idle
    }

    fn lookup(&self, id: &Id) -> Option<Arc<DataKeyMaterial>> {
        let now = Instant::now();
        let mut entries = crate::sync::lock(&self.entries);
        let expired = match entries.get_mut(id) {
            None => return None,
            Some(entry) if !self.expired(entry, now) => {
                entry.used = now;
                return Some(entry.material.clone());
            }
            Some(_) => true,
        };
        if expired {
            entries.pop(id);
            self.stats.expirations.fetch_add(1, Ordering::Relaxed);
        }
        None
    }

    /// Drops expired entries, so that keys do not outlive their limits in memory. Runs on every
    /// miss, so it must not scan the whole cache each time: a walk over more files than the
    /// cache holds misses on every open, and a scan of 4,096 entries under the lock per miss
    /// held reading back 10,000 small files to 2,200 files/s (4,500 without it). The least
    /// recently used entries sit at the LRU end, so idle ones are popped from there; an entry
    /// past its max age can be anywhere, so a full scan runs at most once per
    /// `FULL_SWEEP_INTERVAL` (or per max age, when that is shorter).
    fn sweep(&self) {
        let now = Instant::now();
        let mut entries = crate::sync::lock(&self.entries);
        while entries
            .peek_lru()
            .is_some_and(|(_, e)| self.expired(e, now))
        {
            entries.pop_lru();
            self.stats.expirations.fetch_add(1, Ordering::Relaxed);
        }
        {
            let mut last = crate::sync::lock(&self.last_full_sweep);
            if now.duration_since(*last) < FULL_SWEEP_INTERVAL.min(self.limits.max_age) {
                return;
            }
            *last = now;
        }
        self.full_sweeps.fetch_add(1, Ordering::Relaxed);
        let stale: Vec<Id> = entries
            .iter()
            .filter(|(_, e)| self.expired(e, now))
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            entries.pop(&id);
            self.stats.expirations.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn insert(&self, id: Id, material: Arc<DataKeyMaterial>) {
        let now = Instant::now();
        let entry = Entry {
            material,
            created: now,
            used: now,
        };
        if let Some((old_id, _)) = crate::sync::lock(&self.entries).push(id, entry)
            && old_id != id
        {
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The cached key of `id`, or the one `load` produces. Concurrent callers for the same id
    /// share one load and its outcome; a failed load is not remembered.
    pub fn get_or_load(
        &self,
        id: &Id,
        load: impl FnOnce() -> Result<DataKeyMaterial, KeyError>,
    ) -> Outcome {
        if let Some(material) = self.lookup(id) {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(material);
        }
        let (flight, leader) = {
            let mut in_flight = crate::sync::lock(&self.in_flight);
            match in_flight.get(id) {
                Some(flight) => (flight.clone(), false),
                None => {
                    let flight = Arc::new(Flight::default());
                    in_flight.insert(*id, flight.clone());
                    (flight, true)
                }
            }
        };
        if !leader {
            let mut outcome = crate::sync::lock(&flight.outcome);
            while outcome.is_none() {
                outcome = crate::sync::wait(&flight.done, outcome);
            }
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            return outcome.clone().expect("set before notify");
        }
        // From here on, however this thread leaves (an error, or a panic anywhere below), the
        // flight lands and wakes its waiters.
        let mut landing = Landing {
            cache: self,
            id: *id,
            flight,
            outcome: None,
        };
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        self.sweep();
        // Re-check: a load may have finished between our lookup and taking the lead.
        let outcome = match self.lookup(id) {
            Some(material) => Ok(material),
            // A loader that panics (inside the AWS SDK or a PKCS#11 library) fails this open
            // with an error instead of taking a FUSE worker thread down with it.
            None => {
                self.stats.loading.fetch_add(1, Ordering::Relaxed);
                let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(load))
                    .unwrap_or_else(|_| Err(KeyError::LoadPanicked))
                    .map(Arc::new);
                self.stats.loading.fetch_sub(1, Ordering::Relaxed);
                loaded
            }
        };
        match &outcome {
            Ok(material) => self.insert(*id, material.clone()),
            Err(_) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        landing.outcome = Some(outcome.clone());
        outcome
    }

    /// The bounds this cache keeps (its maximum key age bounds how long a key revoked at its
    /// key service keeps working for new opens).
    pub fn limits(&self) -> &CacheLimits {
        &self.limits
    }

    pub fn len(&self) -> usize {
        crate::sync::lock(&self.entries).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every key now (unmount).
    pub fn clear(&self) {
        crate::sync::lock(&self.entries).clear();
    }
}

impl crate::metrics::KeyCacheCounts for KeyCache {
    fn counts(&self) -> crate::metrics::snapshot::KeyCacheSnapshot {
        let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        crate::metrics::snapshot::KeyCacheSnapshot {
            entries: self.len() as u64,
            hits: get(&self.stats.hits),
            misses: get(&self.stats.misses),
            evictions: get(&self.stats.evictions),
            expirations: get(&self.stats.expirations),
            load_failures: get(&self.stats.failures),
            loads_in_flight: get(&self.stats.loading),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SecretKey;
    use std::sync::atomic::AtomicUsize;

    fn material() -> DataKeyMaterial {
        DataKeyMaterial::from_data_key(&SecretKey::from_array([1; 32]), &[0; 16])
    }

    fn limits(entries: usize, max_age: u64, idle: u64) -> CacheLimits {
        CacheLimits {
            entries: NonZeroUsize::new(entries).unwrap(),
            max_age: Duration::from_millis(max_age),
            idle: Duration::from_millis(idle),
        }
    }

    #[test]
    fn hits_misses_and_bounded_entries() {
        let cache = KeyCache::new(limits(2, 60_000, 60_000));
        let loads = AtomicUsize::new(0);
        let load = || {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok(material())
        };
        for id in [[1; 16], [1; 16], [2; 16], [3; 16], [1; 16]] {
            cache.get_or_load(&id, load).unwrap();
        }
        assert_eq!(
            loads.load(Ordering::SeqCst),
            4,
            "1 hit, then 1 evicted by 3 and reloaded"
        );
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.stats.evictions.load(Ordering::Relaxed), 2);
        assert_eq!(cache.stats.hits.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn max_age_and_idle_expire_entries() {
        let cache = KeyCache::new(limits(8, 150, 60_000));
        cache.get_or_load(&[1; 16], || Ok(material())).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let mut reloaded = false;
        cache
            .get_or_load(&[1; 16], || {
                reloaded = true;
                Ok(material())
            })
            .unwrap();
        assert!(reloaded, "max age forces a reload");
        let cache = KeyCache::new(limits(8, 60_000, 100));
        cache.get_or_load(&[1; 16], || Ok(material())).unwrap();
        cache.get_or_load(&[2; 16], || Ok(material())).unwrap();
        std::thread::sleep(Duration::from_millis(150));
        cache.get_or_load(&[3; 16], || Ok(material())).unwrap();
        assert_eq!(cache.len(), 1, "idle entries are swept on the next miss");
    }

    #[test]
    fn an_old_entry_kept_in_use_is_still_dropped_at_its_max_age() {
        let cache = KeyCache::new(limits(8, 150, 60_000));
        cache.get_or_load(&[1; 16], || Ok(material())).unwrap();
        cache.get_or_load(&[2; 16], || Ok(material())).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        // Entry 1 is used again (now the most recent, so not at the LRU end)...
        cache.get_or_load(&[1; 16], || Ok(material())).unwrap();
        cache.insert([2; 16], Arc::new(material()));
        std::thread::sleep(Duration::from_millis(100));
        // ...yet past its max age, so the next miss's sweep drops it without touching it.
        cache.get_or_load(&[3; 16], || Ok(material())).unwrap();
        assert_eq!(
            cache.len(),
            2,
            "entry 1 swept: only 2 (re-inserted) and 3 stay"
        );
        assert!(cache.entries.lock().unwrap().peek(&[1; 16]).is_none());
    }

    #[test]
    fn misses_beyond_capacity_do_not_scan_the_whole_cache_each_time() {
        let cache = KeyCache::new(limits(4096, 3_600_000, 600_000));
        for i in 0..20_000u32 {
            let mut id = [0; 16];
            id[..4].copy_from_slice(&i.to_le_bytes());
            cache.get_or_load(&id, || Ok(material())).unwrap();
        }
        assert_eq!(cache.len(), 4096);
        assert!(
            cache.full_sweeps.load(Ordering::Relaxed) <= 2,
            "20,000 misses made {} full scans",
            cache.full_sweeps.load(Ordering::Relaxed)
        );
    }

    #[test]
    fn failures_are_not_cached() {
        let cache = KeyCache::new(limits(8, 60_000, 60_000));
        let err = cache.get_or_load(&[1; 16], || Err(KeyError::NoProvider));
        assert!(err.is_err());
        assert!(cache.get_or_load(&[1; 16], || Ok(material())).is_ok());
        assert_eq!(cache.stats.failures.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn concurrent_cold_opens_share_one_load() {
        let cache = Arc::new(KeyCache::new(limits(8, 60_000, 60_000)));
        let loads = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (cache, loads) = (cache.clone(), loads.clone());
                std::thread::spawn(move || {
                    cache
                        .get_or_load(&[9; 16], || {
                            loads.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(100));
                            Ok(material())
                        })
                        .unwrap();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_panicking_loader_wakes_its_waiters_and_the_next_load_completes() {
        use std::sync::Barrier;
        let cache = Arc::new(KeyCache::new(limits(16, 60_000, 60_000)));
        let started = Arc::new(Barrier::new(2));
        let leader = {
            let (cache, started) = (cache.clone(), started.clone());
            std::thread::spawn(move || {
                cache.get_or_load(&[9; 16], || {
                    started.wait();
                    // Give the waiter time to queue behind this load.
                    std::thread::sleep(Duration::from_millis(200));
                    panic!("a key provider library panicked");
                })
            })
        };
        started.wait();
        let waiter = {
            let cache = cache.clone();
            std::thread::spawn(move || cache.get_or_load(&[9; 16], || Ok(material())))
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send((leader.join().unwrap(), waiter.join().unwrap()));
        });
        let (led, waited) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("a waiter behind a panicking loader must not wait forever");
        assert!(matches!(led, Err(KeyError::LoadPanicked)));
        // The waiter either shared the failed flight or, arriving after it landed, loaded.
        assert!(matches!(waited, Err(KeyError::LoadPanicked) | Ok(_)));
        // Nothing is left in flight: the next open of that file loads and completes.
        assert!(cache.get_or_load(&[9; 16], || Ok(material())).is_ok());
        assert_eq!(cache.len(), 1);
    }
}
