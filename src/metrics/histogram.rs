//! A latency histogram made of atomics: recording is a bucket search and three relaxed adds,
//! no lock and no allocation, so it can sit on every FUSE request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in microseconds (the last bucket, +Inf, is implicit). From a
/// page-cache round trip (tens of us) to a KMS call timing out (seconds).
pub const BOUNDS_US: [u64; 15] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    1_000_000, 5_000_000,
];

#[derive(Debug)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last one is +Inf.
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

/// A histogram read at one moment, cumulative as Prometheus wants it.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HistogramSnapshot {
    pub count: u64,
    pub sum_seconds: f64,
    /// (upper bound in seconds, observations at or below it), ascending, without +Inf.
    pub buckets: Vec<(f64, u64)>,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn record(&self, elapsed: Duration) {
        let us = elapsed.as_micros();
        let bucket = BOUNDS_US
            .iter()
            .position(|&bound| us <= u128::from(bound))
            .unwrap_or(BOUNDS_US.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let buckets = BOUNDS_US
            .iter()
            .zip(&self.buckets)
            .map(|(&bound, n)| {
                cumulative += n.load(Ordering::Relaxed);
                (bound as f64 / 1e6, cumulative)
            })
            .collect();
        // The count is read after the buckets, so it is never below their sum (+Inf's
        // bucket is derived from it by the exposition).
        HistogramSnapshot {
            count: self
                .count
                .load(Ordering::Relaxed)
                .max(cumulative + self.buckets[BOUNDS_US.len()].load(Ordering::Relaxed)),
            sum_seconds: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
            buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket_and_add_up() {
        let h = Histogram::default();
        h.record(Duration::from_micros(10));
        h.record(Duration::from_micros(25));
        h.record(Duration::from_micros(26));
        h.record(Duration::from_millis(3));
        h.record(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.count, 5);
        assert_eq!(s.buckets[0], (25e-6, 2));
        assert_eq!(s.buckets[1], (50e-6, 3));
        assert_eq!(s.buckets[6].1, 3, "2.5 ms");
        assert_eq!(s.buckets[7].1, 4, "5 ms");
        assert_eq!(s.buckets.last().unwrap().1, 4, "60 s is beyond every bound");
        assert!((s.sum_seconds - 60.003061).abs() < 1e-9);
    }
}
