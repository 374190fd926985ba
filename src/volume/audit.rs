//! Appending to and verifying a volume's audit log (format in format/audit.rs). Every process
//! that changes keys (mount, rotate, rewrap, key add/remove, passwd, fsck --repair) appends
//! under an exclusive flock, chaining to the last record in the file, and fsyncs each record.
//! A failure to write the log is logged and never stops the operation it records.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;

use super::Result;
use crate::crypto::{SecretKey, mac};
use crate::format::audit::{AuditRecord, ChainBreak, GENESIS, MAX_RECORD_LEN, verify_chain};
use crate::keys::{KeyError, VolumeKeys};

pub const AUDIT_FILE: &str = "sealfs.audit";
pub const REVERSE_AUDIT_FILE: &str = ".sealfs.reverse.audit";
/// `audit verify` reads at most this much (years of key events); a hostile huge file cannot
/// exhaust memory.
const MAX_VERIFIED_LOG: u64 = 1 << 30;
/// Per-file key unwraps are summarized, not logged one by one: at most one record this often.
const UNWRAP_SUMMARY_INTERVAL: Duration = Duration::from_secs(600);
/// A key service failing the same way is recorded at most once this often.
const FAILURE_INTERVAL: Duration = Duration::from_secs(60);

pub struct AuditLog {
    path: PathBuf,
    key: SecretKey,
    syslog: bool,
    unwraps: AtomicU64,
    /// File keys unwrapped under each key policy's tenant KEK since the last summary.
    tenant_unwraps: Mutex<std::collections::BTreeMap<u32, u64>>,
    last_summary: Mutex<Instant>,
    failures: Mutex<HashMap<(String, String), Instant>>,
}

impl AuditLog {
    /// The log of the volume whose keys are `keys`, at `path` (default: `sealfs.audit` in the
    /// cipher dir); `syslog` also sends each record to syslog (authpriv.info).
    pub fn new(path: PathBuf, keys: &VolumeKeys, syslog: bool) -> Self {
        AuditLog {
            path,
            key: keys.audit_key().clone(),
            syslog,
            unwraps: AtomicU64::new(0),
            tenant_unwraps: Mutex::default(),
            last_summary: Mutex::new(Instant::now()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// `sealfs.audit` in a cipher dir; `.sealfs.reverse.audit` (hidden from the view) in the
    /// plaintext dir of a reverse volume.
    pub fn default_path(cipher_dir: &Path) -> PathBuf {
        if super::is_reverse(cipher_dir) {
            cipher_dir.join(REVERSE_AUDIT_FILE)
        } else {
            cipher_dir.join(AUDIT_FILE)
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record. Errors are logged, not returned: the audit trail must never be the
    /// reason a mount or a key operation fails.
    pub fn record(&self, event: &str, details: serde_json::Value) {
        if let Err(e) = self.append(event, details) {
            tracing::error!(path = %self.path.display(), event, "cannot write the audit log: {e}");
        }
    }

    fn append(&self, event: &str, details: serde_json::Value) -> Result<()> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            // A symlink planted in the cipher dir must not redirect root's appends.
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.path)?;
        if !file.metadata()?.is_file() {
            return Err(std::io::Error::other("not a regular file").into());
        }
        let mut file = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| std::io::Error::from(e))?;
        let (prev, seq, torn) = last_link(&file)?;
        let mut record = AuditRecord {
            seq,
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            event: event.to_string(),
            pid: std::process::id(),
            details,
            prev: String::new(),
            mac: String::new(),
        };
        record.chain_to(&prev);
        record.set_mac(&mac(&self.key, &record.mac_input()));
        let line = record.to_line()?;
        let mut out = Vec::with_capacity(line.len() + 2);
        if torn {
            out.push(b'\n');
        }
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
        file.write_all(&out)?;
        file.sync_data()?;
        if self.syslog {
            to_syslog(&line);
        }
        Ok(())
    }

    /// Counts a per-file key unwrap (a cache miss served by KMS or the HSM); writes a summary
    /// record at most every 10 minutes.
    pub fn count_file_key_unwrap(&self) {
        self.unwraps.fetch_add(1, Ordering::Relaxed);
        self.summary_due();
    }

    /// Counts a file key unwrapped under key policy `policy` (a cache miss); summarized with
    /// the per-file unwraps, per tenant.
    pub fn count_tenant_unwrap(&self, policy: u32) {
        *crate::sync::lock(&self.tenant_unwraps)
            .entry(policy)
            .or_default() += 1;
        self.summary_due();
    }

    fn summary_due(&self) {
        let mut last = crate::sync::lock(&self.last_summary);
        if last.elapsed() >= UNWRAP_SUMMARY_INTERVAL {
            *last = Instant::now();
            drop(last);
            self.flush_unwrap_summary();
        }
    }

    /// Writes the unwraps counted since the last summary, if any (also at unmount).
    pub fn flush_unwrap_summary(&self) {
        let count = self.unwraps.swap(0, Ordering::Relaxed);
        let tenants = std::mem::take(&mut *crate::sync::lock(&self.tenant_unwraps));
        if count > 0 || !tenants.is_empty() {
            let by_policy: serde_json::Map<String, serde_json::Value> = tenants
                .iter()
                .map(|(policy, n)| (policy.to_string(), json!(n)))
                .collect();
            self.record(
                "file-key-unwraps",
                json!({ "count": count + tenants.values().sum::<u64>(), "by_policy": by_policy }),
            );
        }
    }

    /// Records a KMS or HSM failure, once a minute per provider and kind of failure.
    pub fn key_service_failure(&self, err: &KeyError) {
        let KeyError::Remote {
            provider, failure, ..
        } = err
        else {
            return;
        };
        let key = (provider.clone(), format!("{failure:?}"));
        {
            let mut seen = crate::sync::lock(&self.failures);
            match seen.get(&key) {
                Some(at) if at.elapsed() < FAILURE_INTERVAL => return,
                _ => {
                    seen.insert(key, Instant::now());
                }
            }
        }
        self.record(
            "key-service-failure",
            json!({ "provider": provider, "failure": format!("{failure:?}"), "error": err.to_string() }),
        );
    }
}

/// The MAC and next sequence number to chain to, and whether the file ends mid-line (a record
/// torn by a crash, which the next record starts after).
fn last_link(file: &File) -> Result<([u8; 32], u64, bool)> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok((GENESIS, 0, false));
    }
    let start = len.saturating_sub(2 * MAX_RECORD_LEN as u64 + 2);
    let mut tail = vec![0u8; (len - start) as usize];
    file.read_exact_at(&mut tail, start)?;
    let torn = tail.last() != Some(&b'\n');
    let text = String::from_utf8_lossy(&tail);
    for line in text.lines().rev() {
        if let Ok(record) = AuditRecord::parse(line) {
            return Ok((record.mac_bytes()?, record.seq.saturating_add(1), torn));
        }
    }
    Ok((GENESIS, 0, torn))
}

fn to_syslog(line: &str) {
    let Ok(message) = std::ffi::CString::new(format!("audit {line}")) else {
        return;
    };
    // SAFETY: a constant format string and a NUL-terminated argument.
    unsafe {
        libc::syslog(
            libc::LOG_AUTHPRIV | libc::LOG_INFO,
            c"%s".as_ptr(),
            message.as_ptr(),
        )
    };
}

/// The outcome of `verify`.
#[derive(Debug, serde::Serialize)]
pub struct AuditVerification {
    pub records: u64,
    pub first: Option<String>,
    pub last: Option<String>,
    /// Line number and what is wrong there.
    pub breaks: Vec<(usize, String)>,
    /// Lines that are no record: writes cut short by a crash. Not a break by themselves: a
    /// record replaced by garbage leaves the next record unchained, which is a break.
    pub torn: Vec<usize>,
}

impl AuditVerification {
    pub fn intact(&self) -> bool {
        self.breaks.is_empty()
    }
}

/// Checks that the log at `path` is one unbroken chain under this volume's audit key.
pub fn verify(path: &Path, keys: &VolumeKeys) -> Result<AuditVerification> {
    let mut text = String::new();
    File::open(path)?
        .take(MAX_VERIFIED_LOG)
        .read_to_string(&mut text)?;
    let key = keys.audit_key();
    let (records, breaks) = verify_chain(&text, |bytes| mac(key, bytes));
    let torn = breaks
        .iter()
        .filter(|(_, b)| *b == ChainBreak::Unparsable)
        .map(|(line, _)| *line)
        .collect();
    let times: Vec<String> = text
        .lines()
        .filter_map(|l| AuditRecord::parse(l).ok())
        .map(|r| r.time)
        .collect();
    Ok(AuditVerification {
        records,
        first: times.first().cloned(),
        last: times.last().cloned(),
        breaks: breaks
            .into_iter()
            .filter_map(|(line, b)| {
                let what = match b {
                    ChainBreak::Unparsable => return None,
                    ChainBreak::BadMac => "record was modified (MAC mismatch)".to_string(),
                    ChainBreak::BadLink {
                        expected_seq,
                        found_seq,
                    } => format!(
                        "record {found_seq} does not follow record {}: records deleted or reordered before it",
                        expected_seq.saturating_sub(1)
                    ),
                };
                Some((line, what))
            })
            .collect(),
        torn,
    })
}
