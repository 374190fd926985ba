//! What a running mount counts, for `sealfs stats` and Prometheus: FUSE requests by
//! operation (errors by errno, latency), bytes and blocks, authentication failures, the key
//! cache, KMS and HSM calls, shared-storage lock waits. Everything on the hot path is a relaxed
//! atomic add into a fixed table: no lock, no allocation per request.
//!
//! One mount per process, so the counters are process-wide (`global()`), reachable from the
//! FUSE shell, the block I/O and the key providers without threading a handle through each.
//! `snapshot()` reads them all at once; `exposition` renders a snapshot for Prometheus and
//! `endpoint` serves it.

pub mod endpoint;
pub mod exposition;
mod histogram;
pub mod snapshot;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::{Duration, Instant, SystemTime};

pub use histogram::{Histogram, HistogramSnapshot};
pub use snapshot::Snapshot;

/// Why a KMS or HSM call failed, for the errno a caller gets and the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoteFailure {
    /// Down, slow, throttling, unreachable: worth retrying later.
    Unavailable,
    /// The key is disabled or pending deletion.
    KeyDisabled,
    /// Refused for lack of permission.
    Denied,
    /// The ciphertext, its context or the key it names does not match: damage or tampering.
    Rejected,
}

/// What a snapshot reads of the mount's key cache (`keys::KeyCache` is one): metrics knows
/// no key type.
pub trait KeyCacheCounts: Send + Sync {
    fn counts(&self) -> snapshot::KeyCacheSnapshot;
}

/// The FUSE operations a mount answers, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Lookup,
    Forget,
    Getattr,
    Setattr,
    Readlink,
    Mknod,
    Mkdir,
    Unlink,
    Rmdir,
    Symlink,
    Rename,
    Link,
    Open,
    Read,
    Write,
    Flush,
    Release,
    Fsync,
    Opendir,
    Readdir,
    Readdirplus,
    Releasedir,
    Fsyncdir,
    Statfs,
    Setxattr,
    Getxattr,
    Listxattr,
    Removexattr,
    Access,
    Create,
    Getlk,
    Setlk,
    Ioctl,
    Fallocate,
    Lseek,
    CopyFileRange,
}

impl Op {
    pub const ALL: [Op; 36] = [
        Op::Lookup,
        Op::Forget,
        Op::Getattr,
        Op::Setattr,
        Op::Readlink,
        Op::Mknod,
        Op::Mkdir,
        Op::Unlink,
        Op::Rmdir,
        Op::Symlink,
        Op::Rename,
        Op::Link,
        Op::Open,
        Op::Read,
        Op::Write,
        Op::Flush,
        Op::Release,
        Op::Fsync,
        Op::Opendir,
        Op::Readdir,
        Op::Readdirplus,
        Op::Releasedir,
        Op::Fsyncdir,
        Op::Statfs,
        Op::Setxattr,
        Op::Getxattr,
        Op::Listxattr,
        Op::Removexattr,
        Op::Access,
        Op::Create,
        Op::Getlk,
        Op::Setlk,
        Op::Ioctl,
        Op::Fallocate,
        Op::Lseek,
        Op::CopyFileRange,
    ];

    /// The name used in labels and in `errno::report` calls.
    pub const fn name(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Forget => "forget",
            Op::Getattr => "getattr",
            Op::Setattr => "setattr",
            Op::Readlink => "readlink",
            Op::Mknod => "mknod",
            Op::Mkdir => "mkdir",
            Op::Unlink => "unlink",
            Op::Rmdir => "rmdir",
            Op::Symlink => "symlink",
            Op::Rename => "rename",
            Op::Link => "link",
            Op::Open => "open",
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Release => "release",
            Op::Fsync => "fsync",
            Op::Opendir => "opendir",
            Op::Readdir => "readdir",
            Op::Readdirplus => "readdirplus",
            Op::Releasedir => "releasedir",
            Op::Fsyncdir => "fsyncdir",
            Op::Statfs => "statfs",
            Op::Setxattr => "setxattr",
            Op::Getxattr => "getxattr",
            Op::Listxattr => "listxattr",
            Op::Removexattr => "removexattr",
            Op::Access => "access",
            Op::Create => "create",
            Op::Getlk => "getlk",
            Op::Setlk => "setlk",
            Op::Ioctl => "ioctl",
            Op::Fallocate => "fallocate",
            Op::Lseek => "lseek",
            Op::CopyFileRange => "copy_file_range",
        }
    }

    /// The operation a request-failure report names (only on the error path).
    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == name)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What failed authentication: each is an EIO and an error line too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntegrityKind {
    /// A data block's tag did not verify.
    Block,
    /// An all-zero block its hole map does not record.
    Hole,
    /// A hole map sidecar.
    HoleMap,
    /// A data file's preamble (magic, version, file id).
    Preamble,
    /// A file header, or the key it yields.
    Header,
    /// A name, symlink target, extended attribute or long-name sidecar.
    Metadata,
}

impl IntegrityKind {
    pub const ALL: [IntegrityKind; 6] = [
        IntegrityKind::Block,
        IntegrityKind::Hole,
        IntegrityKind::HoleMap,
        IntegrityKind::Preamble,
        IntegrityKind::Header,
        IntegrityKind::Metadata,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            IntegrityKind::Block => "block",
            IntegrityKind::Hole => "hole",
            IntegrityKind::HoleMap => "hole_map",
            IntegrityKind::Preamble => "preamble",
            IntegrityKind::Header => "header",
            IntegrityKind::Metadata => "metadata",
        }
    }
}

/// Which key service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyService {
    AwsKms,
    Pkcs11,
}

impl KeyService {
    pub const ALL: [KeyService; 2] = [KeyService::AwsKms, KeyService::Pkcs11];

    pub const fn name(self) -> &'static str {
        match self {
            KeyService::AwsKms => "aws-kms",
            KeyService::Pkcs11 => "pkcs11",
        }
    }
}

/// A call to a key service: KMS's API names, and the PKCS#11 functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyCall {
    GenerateDataKey,
    Encrypt,
    Decrypt,
    ReEncrypt,
}

impl KeyCall {
    pub const ALL: [KeyCall; 4] = [
        KeyCall::GenerateDataKey,
        KeyCall::Encrypt,
        KeyCall::Decrypt,
        KeyCall::ReEncrypt,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            KeyCall::GenerateDataKey => "GenerateDataKey",
            KeyCall::Encrypt => "Encrypt",
            KeyCall::Decrypt => "Decrypt",
            KeyCall::ReEncrypt => "ReEncrypt",
        }
    }
}

const FAILURES: [RemoteFailure; 4] = [
    RemoteFailure::Unavailable,
    RemoteFailure::KeyDisabled,
    RemoteFailure::Denied,
    RemoteFailure::Rejected,
];

pub fn failure_name(failure: RemoteFailure) -> &'static str {
    match failure {
        RemoteFailure::Unavailable => "unavailable",
        RemoteFailure::KeyDisabled => "key_disabled",
        RemoteFailure::Denied => "denied",
        RemoteFailure::Rejected => "rejected",
    }
}

/// Errno values counted one by one (1..=133); anything else lands in slot 0, "other".
const ERRNO_SLOTS: usize = 134;

#[derive(Debug, Default)]
struct OpStats {
    /// Counted when a request starts, so a reply never goes out before its count.
    requests: AtomicU64,
    errors: AtomicU64,
    latency: Histogram,
}

#[derive(Debug, Default)]
struct CallStats {
    latency: Histogram,
    errors: [AtomicU64; 4],
}

/// Every counter of the process (see the module comment).
pub struct Metrics {
    ops: Vec<OpStats>,
    errnos: Vec<AtomicU64>,
    pub plain_read: AtomicU64,
    pub plain_written: AtomicU64,
    pub backing_read: AtomicU64,
    pub backing_written: AtomicU64,
    pub blocks_sealed: AtomicU64,
    pub blocks_opened: AtomicU64,
    integrity: [AtomicU64; 6],
    calls: Vec<CallStats>,
    /// Seconds since the Unix epoch: the last successful key service call, and the first
    /// failure since then (0: none).
    key_service_ok_at: AtomicU64,
    key_service_failing_since: AtomicU64,
    key_service_failed_at: AtomicU64,
    pub config_reloads: AtomicU64,
    pub kek_version: AtomicU64,
    lock_waits: Histogram,
    mount: OnceLock<MountInfo>,
}

/// What a mount tells the counters about itself when it starts.
#[derive(Clone)]
pub struct MountInfo {
    pub started: SystemTime,
    pub started_at: Instant,
    pub shared: bool,
    pub cipher_dir: String,
    pub key_cache: Arc<dyn KeyCacheCounts>,
    /// How long a key may be served from the cache without asking its key service again.
    pub cache_bound: Duration,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's counters.
pub fn global() -> &'static Metrics {
    &METRICS
}

/// Times one FUSE request from its handler's start to its end (the reply, for every handler
/// that replies before returning).
#[must_use = "the request is counted when this is dropped"]
pub struct RequestTimer {
    op: Op,
    started: Instant,
}

impl Drop for RequestTimer {
    fn drop(&mut self) {
        global().ops[self.op.index()]
            .latency
            .record(self.started.elapsed());
    }
}

/// Counts a FUSE request and starts timing it.
pub fn request(op: Op) -> RequestTimer {
    global().ops[op.index()]
        .requests
        .fetch_add(1, Ordering::Relaxed);
    RequestTimer {
        op,
        started: Instant::now(),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Metrics {
    fn new() -> Self {
        Metrics {
            ops: Op::ALL.iter().map(|_| OpStats::default()).collect(),
            errnos: (0..ERRNO_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            plain_read: AtomicU64::new(0),
            plain_written: AtomicU64::new(0),
            backing_read: AtomicU64::new(0),
            backing_written: AtomicU64::new(0),
            blocks_sealed: AtomicU64::new(0),
            blocks_opened: AtomicU64::new(0),
            integrity: std::array::from_fn(|_| AtomicU64::new(0)),
            calls: (0..KeyService::ALL.len() * KeyCall::ALL.len())
                .map(|_| CallStats::default())
                .collect(),
            key_service_ok_at: AtomicU64::new(0),
            key_service_failing_since: AtomicU64::new(0),
            key_service_failed_at: AtomicU64::new(0),
            config_reloads: AtomicU64::new(0),
            kek_version: AtomicU64::new(0),
            lock_waits: Histogram::default(),
            mount: OnceLock::new(),
        }
    }

    /// A mount has started (once per process).
    pub fn mounted(&self, info: MountInfo) {
        let _ = self.mount.set(info);
    }

    /// A FUSE request failed with `errno` (called from the one errno map).
    pub fn request_failed(&self, op: &str, errno: i32) {
        if let Some(op) = Op::from_name(op) {
            self.ops[op.index()].errors.fetch_add(1, Ordering::Relaxed);
        }
        let slot = usize::try_from(errno)
            .ok()
            .filter(|&e| e < ERRNO_SLOTS)
            .unwrap_or(0);
        self.errnos[slot].fetch_add(1, Ordering::Relaxed);
    }

    pub fn integrity_failure(&self, kind: IntegrityKind) {
        self.integrity[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// One call to a key service took `elapsed` and failed with `failure` (None: it worked).
    pub fn key_service_call(
        &self,
        service: KeyService,
        call: KeyCall,
        elapsed: Duration,
        failure: Option<RemoteFailure>,
    ) {
        let stats = &self.calls[service as usize * KeyCall::ALL.len() + call as usize];
        stats.latency.record(elapsed);
        match failure {
            None => {
                self.key_service_ok_at.store(unix_now(), Ordering::Relaxed);
                self.key_service_failing_since.store(0, Ordering::Relaxed);
            }
            Some(failure) => {
                let kind = FAILURES.iter().position(|f| *f == failure).unwrap_or(0);
                stats.errors[kind].fetch_add(1, Ordering::Relaxed);
                // Only an outage counts as the service failing; a refused key is the answer
                // of a service that works (and ends an outage).
                if failure == RemoteFailure::Unavailable {
                    self.key_service_failed_at
                        .store(unix_now(), Ordering::Relaxed);
                    let _ = self.key_service_failing_since.compare_exchange(
                        0,
                        unix_now(),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                } else {
                    self.key_service_failing_since.store(0, Ordering::Relaxed);
                }
            }
        }
    }

    /// A shared-storage block lock had to wait for another holder for `waited`.
    pub fn lock_waited(&self, waited: Duration) {
        self.lock_waits.record(waited);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_names_are_unique_and_round_trip() {
        for (i, op) in Op::ALL.iter().enumerate() {
            assert_eq!(op.index(), i, "{op:?} is out of order in Op::ALL");
            assert_eq!(Op::from_name(op.name()), Some(*op));
        }
        assert_eq!(Op::from_name("no-such-op"), None);
        for (i, kind) in IntegrityKind::ALL.iter().enumerate() {
            assert_eq!(*kind as usize, i);
        }
        for (i, call) in KeyCall::ALL.iter().enumerate() {
            assert_eq!(*call as usize, i);
        }
    }
}
