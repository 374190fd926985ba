//! Every counter read at one moment: what `sealfs stats` prints (it travels from the mount as
//! JSON) and what the Prometheus exposition renders. Labels are operation names, errno names
//! and fixed kinds: never a file name, a path or key material.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::{
    ERRNO_SLOTS, FAILURES, HistogramSnapshot, IntegrityKind, KeyCall, KeyService, Metrics, Op,
    failure_name, unix_now,
};

/// The layout version of the JSON, so a newer `sealfs stats` can read an older mount.
pub const SNAPSHOT_VERSION: u32 = 1;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    pub mount: MountSnapshot,
    /// By operation name; operations never requested are left out.
    pub requests: BTreeMap<String, RequestSnapshot>,
    /// Failed requests by errno name ("ENOENT").
    pub errors_by_errno: BTreeMap<String, u64>,
    pub bytes: BytesSnapshot,
    pub blocks_sealed: u64,
    pub blocks_opened: u64,
    /// Authentication failures by kind (every kind present, zeros included).
    pub integrity_failures: BTreeMap<String, u64>,
    pub key_cache: KeyCacheSnapshot,
    pub key_service: KeyServiceSnapshot,
    pub lock_waits: HistogramSnapshot,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MountSnapshot {
    pub pid: u32,
    pub cipher_dir: String,
    pub shared: bool,
    pub started_unix: u64,
    pub uptime_seconds: f64,
    pub kek_version: u64,
    pub config_reloads: u64,
    /// How long a key is served from the cache without its key service (`--key-cache-max-age`).
    pub cache_bound_seconds: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestSnapshot {
    pub count: u64,
    pub errors: u64,
    pub latency: HistogramSnapshot,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BytesSnapshot {
    pub plaintext_read: u64,
    pub plaintext_written: u64,
    pub backing_read: u64,
    pub backing_written: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyCacheSnapshot {
    pub entries: u64,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub expirations: u64,
    pub load_failures: u64,
    pub loads_in_flight: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyServiceSnapshot {
    /// "aws-kms/Decrypt" -> its calls; calls never made are left out.
    pub calls: BTreeMap<String, CallSnapshot>,
    pub last_success_unix: Option<u64>,
    /// Since when the service has been unreachable (no answer since), if it is.
    pub failing_since_unix: Option<u64>,
    /// The last time it was found unreachable.
    pub last_failure_unix: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CallSnapshot {
    pub count: u64,
    /// By kind: unavailable, key_disabled, denied, rejected (zeros left out).
    pub errors: BTreeMap<String, u64>,
    pub latency: HistogramSnapshot,
}

impl Snapshot {
    /// Seconds the key service has been failing at `now`, if it is: unreachable at every
    /// call since `failing_since`, the last time within the key cache bound or the last
    /// minute, whichever is longer (an outage nobody has run into for longer than that is not
    /// known to go on).
    pub fn key_service_failing_for(&self, now_unix: u64) -> Option<u64> {
        let since = self.key_service.failing_since_unix?;
        let last = self.key_service.last_failure_unix.unwrap_or(since);
        (now_unix.saturating_sub(last) <= self.mount.cache_bound_seconds.max(60))
            .then(|| now_unix.saturating_sub(since))
    }

    pub fn integrity_failures_total(&self) -> u64 {
        self.integrity_failures.values().sum()
    }
}

/// The name of errno `code` ("ENOENT"), or its number.
pub fn errno_name(code: i32) -> String {
    let name = format!("{:?}", nix::errno::Errno::from_raw(code));
    if name.starts_with('E') {
        name
    } else {
        format!("errno {code}")
    }
}

impl Metrics {
    pub fn snapshot(&self) -> Snapshot {
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let mut requests = BTreeMap::new();
        for op in Op::ALL {
            let stats = &self.ops[op.index()];
            let count = get(&stats.requests);
            if count > 0 {
                requests.insert(
                    op.name().to_string(),
                    RequestSnapshot {
                        count,
                        errors: get(&stats.errors),
                        latency: stats.latency.snapshot(),
                    },
                );
            }
        }
        let errors_by_errno = (0..ERRNO_SLOTS)
            .filter_map(|code| {
                let n = get(&self.errnos[code]);
                let name = if code == 0 {
                    "other".to_string()
                } else {
                    errno_name(code as i32)
                };
                (n > 0).then_some((name, n))
            })
            .collect();
        let integrity_failures = IntegrityKind::ALL
            .iter()
            .map(|kind| {
                (
                    kind.name().to_string(),
                    get(&self.integrity[*kind as usize]),
                )
            })
            .collect();
        let mut calls = BTreeMap::new();
        for service in KeyService::ALL {
            for call in KeyCall::ALL {
                let stats = &self.calls[service as usize * KeyCall::ALL.len() + call as usize];
                let latency = stats.latency.snapshot();
                if latency.count == 0 {
                    continue;
                }
                let errors = FAILURES
                    .iter()
                    .zip(&stats.errors)
                    .filter_map(|(f, n)| {
                        let n = get(n);
                        (n > 0).then(|| (failure_name(*f).to_string(), n))
                    })
                    .collect();
                calls.insert(
                    format!("{}/{}", service.name(), call.name()),
                    CallSnapshot {
                        count: latency.count,
                        errors,
                        latency,
                    },
                );
            }
        }
        let nonzero = |v: u64| (v != 0).then_some(v);
        let (mount, key_cache) = match self.mount.get() {
            Some(info) => (
                MountSnapshot {
                    pid: std::process::id(),
                    cipher_dir: info.cipher_dir.clone(),
                    shared: info.shared,
                    started_unix: info
                        .started
                        .duration_since(std::time::SystemTime::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0),
                    uptime_seconds: info.started_at.elapsed().as_secs_f64(),
                    kek_version: get(&self.kek_version),
                    config_reloads: get(&self.config_reloads),
                    cache_bound_seconds: info.cache_bound.as_secs(),
                },
                info.key_cache.counts(),
            ),
            // Not mounted (a test process): counters only.
            None => (
                MountSnapshot {
                    pid: std::process::id(),
                    ..Default::default()
                },
                KeyCacheSnapshot::default(),
            ),
        };
        Snapshot {
            version: SNAPSHOT_VERSION,
            mount,
            requests,
            errors_by_errno,
            bytes: BytesSnapshot {
                plaintext_read: get(&self.plain_read),
                plaintext_written: get(&self.plain_written),
                backing_read: get(&self.backing_read),
                backing_written: get(&self.backing_written),
            },
            blocks_sealed: get(&self.blocks_sealed),
            blocks_opened: get(&self.blocks_opened),
            integrity_failures,
            key_cache,
            key_service: KeyServiceSnapshot {
                calls,
                last_success_unix: nonzero(get(&self.key_service_ok_at)),
                failing_since_unix: nonzero(get(&self.key_service_failing_since)),
                last_failure_unix: nonzero(get(&self.key_service_failed_at)),
            },
            lock_waits: self.lock_waits.snapshot(),
        }
    }
}

/// For `stats --check`: the time now, as the snapshot counts it.
pub fn now_unix() -> u64 {
    unix_now()
}
