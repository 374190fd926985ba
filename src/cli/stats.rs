//! `sealfs stats MNT`: a running mount's numbers, read from the mount itself (an attribute of
//! its root that the daemon answers; no key needed, only the right to reach the mount), as a
//! table, as JSON, or as a health check for monitoring.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::{Deserialize, Serialize};

use sealfs::fs::STATS_ATTRIBUTE;
use sealfs::metrics::snapshot::{Snapshot, now_unix};
use sealfs::metrics::{HistogramSnapshot, snapshot::SNAPSHOT_VERSION};

use super::settings::SettingsFile;

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Where the volume is mounted (or `mountpoint` in the settings file).
    #[arg(required_unless_present = "config")]
    pub mountpoint: Option<PathBuf>,
    /// Settings file of the mount (as for `sealfs mount --config`), for its mount point.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the numbers as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Print again every SECONDS until interrupted.
    #[arg(long, value_name = "SECONDS")]
    pub watch: Option<u64>,
    /// Health check for a timer or a monitoring probe: exits 1 with one line saying why when
    /// the mount is gone, its key service has been failing for longer than the key cache
    /// bound, or blocks, headers or names failed authentication since the last check; else
    /// prints one OK line and exits 0.
    #[arg(long, conflicts_with_all = ["json", "watch"])]
    pub check: bool,
    /// Where --check remembers the failures it has seen [default: /run/sealfs/check/MOUNT.json
    /// as root, else under $XDG_RUNTIME_DIR].
    #[arg(long, value_name = "FILE", requires = "check")]
    pub state: Option<PathBuf>,
}

pub fn run(args: StatsArgs) -> Result<()> {
    let mountpoint = match (&args.mountpoint, &args.config) {
        (Some(path), _) => path.clone(),
        (None, Some(config)) => SettingsFile::load(config)?
            .mountpoint
            .with_context(|| format!("{}: no mountpoint in it", config.display()))?,
        (None, None) => bail!("give the mount point or --config"),
    };
    if args.check {
        let (healthy, line) = check(&mountpoint, args.state.as_deref())?;
        println!("{line}");
        std::process::exit(if healthy { 0 } else { 1 });
    }
    loop {
        let snapshot = read(&mountpoint)?;
        let mut out = std::io::stdout().lock();
        if args.json {
            serde_json::to_writer_pretty(&mut out, &snapshot)?;
            writeln!(out)?;
        } else {
            write!(out, "{}", table(&mountpoint, &snapshot))?;
        }
        out.flush()?;
        match args.watch {
            Some(secs) => {
                std::thread::sleep(Duration::from_secs(secs.max(1)));
                if !args.json {
                    writeln!(std::io::stdout())?;
                }
            }
            None => return Ok(()),
        }
    }
}

/// The mount's numbers, from the attribute its daemon answers on the root.
pub fn read(mountpoint: &Path) -> Result<Snapshot> {
    let path = CString::new(mountpoint.as_os_str().as_bytes()).context("mount point path")?;
    let name = CString::new(STATS_ATTRIBUTE).expect("no NUL");
    // Larger than any snapshot (the kernel's cap for one attribute value is 64 KiB).
    let mut buf = vec![0u8; 64 * 1024];
    let got = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if got < 0 {
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ENOTCONN) => bail!(
                "{}: the mount's daemon is gone (a dead mount: `sealfs umount {}`)",
                mountpoint.display(),
                mountpoint.display()
            ),
            Some(libc::ENODATA | libc::ENOTSUP | libc::ENOSYS) => bail!(
                "{}: not a sealfs mount (or a reverse view, or a mount started by a sealfs without stats)",
                mountpoint.display()
            ),
            _ => bail!("{}: {err}", mountpoint.display()),
        }
    }
    buf.truncate(got as usize);
    let snapshot: Snapshot = serde_json::from_slice(&buf).context("the mount's stats")?;
    if snapshot.version > SNAPSHOT_VERSION {
        bail!(
            "{}: the mount speaks stats version {}; this sealfs reads up to {SNAPSHOT_VERSION}",
            mountpoint.display(),
            snapshot.version
        );
    }
    Ok(snapshot)
}

/// What `--check` keeps between runs: the mount it saw, and the failures counted then.
#[derive(Default, Serialize, Deserialize)]
struct CheckState {
    pid: u32,
    started_unix: u64,
    integrity_failures: u64,
}

/// The state file of a mount point: its path, escaped one-to-one (letters and digits kept,
/// every other byte as `_` and two hex digits), in a directory only this user can write.
fn default_state_path(mountpoint: &Path) -> Result<PathBuf> {
    let mut name = String::new();
    for &b in mountpoint.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() {
            name.push(b as char);
        } else {
            name.push_str(&format!("_{b:02x}"));
        }
    }
    let dir = if nix::unistd::geteuid().is_root() {
        PathBuf::from("/run/sealfs/check")
    } else if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR") {
        PathBuf::from(runtime).join("sealfs-check")
    } else if let Some(home) = std::env::var_os("HOME") {
        PathBuf::from(home).join(".local/state/sealfs/check")
    } else {
        bail!("--check: no place for its state (no XDG_RUNTIME_DIR or HOME); give --state FILE")
    };
    Ok(dir.join(format!("{name}.json")))
}

/// Replaces `path` whole (a temp file renamed over it), so a check running at the same time
/// never reads half a state.
fn write_state(path: &Path, state: &CheckState) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("--check state directory {}", dir.display()))?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec(state)?)
        .and_then(|()| std::fs::rename(&tmp, path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
        .with_context(|| format!("--check state {}", path.display()))
}

/// (healthy, the line to print).
fn check(mountpoint: &Path, state: Option<&Path>) -> Result<(bool, String)> {
    let snapshot = match read(mountpoint) {
        Ok(s) => s,
        Err(e) => return Ok((false, format!("sealfs CRITICAL: {e:#}"))),
    };
    let state_path = match state {
        Some(path) => path.to_path_buf(),
        None => default_state_path(mountpoint)?,
    };
    let before: CheckState = std::fs::read(&state_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    // A mount started since the last check counts from zero.
    let seen_before =
        if before.pid == snapshot.mount.pid && before.started_unix == snapshot.mount.started_unix {
            before.integrity_failures
        } else {
            0
        };
    let failures = snapshot.integrity_failures_total();
    let now = CheckState {
        pid: snapshot.mount.pid,
        started_unix: snapshot.mount.started_unix,
        integrity_failures: failures,
    };
    write_state(&state_path, &now)?;
    let mut problems = Vec::new();
    let bound = snapshot.mount.cache_bound_seconds;
    if let Some(failing) = snapshot.key_service_failing_for(now_unix())
        && failing > bound
    {
        problems.push(format!(
            "the key service has been failing for {failing} s, longer than the key cache bound of {bound} s"
        ));
    }
    if failures > seen_before {
        let kinds: Vec<String> = snapshot
            .integrity_failures
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        problems.push(format!(
            "{} authentication failure(s) since the last check (in all: {})",
            failures - seen_before,
            kinds.join(", ")
        ));
    }
    if problems.is_empty() {
        Ok((
            true,
            format!(
                "sealfs OK: {} mounted for {}, {} requests",
                mountpoint.display(),
                human_duration(snapshot.mount.uptime_seconds),
                snapshot.requests.values().map(|r| r.count).sum::<u64>()
            ),
        ))
    } else {
        Ok((
            false,
            format!(
                "sealfs CRITICAL: {}: {}",
                mountpoint.display(),
                problems.join("; ")
            ),
        ))
    }
}

fn human_duration(secs: f64) -> String {
    let s = secs as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The upper bound of the bucket holding quantile `q`, as text ("<= 250us").
fn quantile(h: &HistogramSnapshot, q: f64) -> String {
    if h.count == 0 {
        return "-".into();
    }
    let rank = (q * h.count as f64).ceil() as u64;
    match h.buckets.iter().find(|(_, n)| *n >= rank) {
        Some((bound, _)) if *bound < 1e-3 => format!("<={:.0}us", bound * 1e6),
        Some((bound, _)) if *bound < 1.0 => format!("<={:.1}ms", bound * 1e3),
        Some((bound, _)) => format!("<={bound:.0}s"),
        None => format!(">{:.0}s", h.buckets.last().map_or(0.0, |b| b.0)),
    }
}

fn mean(h: &HistogramSnapshot) -> String {
    if h.count == 0 {
        return "-".into();
    }
    let us = h.sum_seconds / h.count as f64 * 1e6;
    if us < 1000.0 {
        format!("{us:.0}us")
    } else {
        format!("{:.1}ms", us / 1000.0)
    }
}

fn table(mountpoint: &Path, s: &Snapshot) -> String {
    let mut out = String::new();
    let m = &s.mount;
    out += &format!(
        "{} ({}), pid {}, up {}, {}, KEK version {}, config reloads {}\n\n",
        mountpoint.display(),
        m.cipher_dir,
        m.pid,
        human_duration(m.uptime_seconds),
        if m.shared { "shared" } else { "exclusive" },
        m.kek_version,
        m.config_reloads
    );
    out += &format!(
        "{:<16} {:>12} {:>9} {:>9} {:>10} {:>10}\n",
        "request", "count", "errors", "mean", "p50", "p99"
    );
    let mut requests: Vec<_> = s.requests.iter().collect();
    requests.sort_by_key(|r| std::cmp::Reverse(r.1.count));
    for (op, r) in requests {
        out += &format!(
            "{:<16} {:>12} {:>9} {:>9} {:>10} {:>10}\n",
            op,
            r.count,
            r.errors,
            mean(&r.latency),
            quantile(&r.latency, 0.5),
            quantile(&r.latency, 0.99)
        );
    }
    if !s.errors_by_errno.is_empty() {
        let errors: Vec<String> = s
            .errors_by_errno
            .iter()
            .map(|(e, n)| format!("{e} {n}"))
            .collect();
        out += &format!("errors by errno: {}\n", errors.join(", "));
    }
    let b = &s.bytes;
    out += &format!(
        "\nplaintext  read {}  written {}\nbacking    read {}  written {}\nblocks     opened {}  sealed {}\n",
        human_bytes(b.plaintext_read),
        human_bytes(b.plaintext_written),
        human_bytes(b.backing_read),
        human_bytes(b.backing_written),
        s.blocks_opened,
        s.blocks_sealed
    );
    let failures: Vec<String> = s
        .integrity_failures
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    out += &format!(
        "authentication failures: {} ({})\n",
        s.integrity_failures_total(),
        failures.join(", ")
    );
    let c = &s.key_cache;
    out += &format!(
        "key cache  {} keys, hits {}, misses {}, evictions {}, expirations {}, load failures {}, loading {} (keys kept at most {} s)\n",
        c.entries,
        c.hits,
        c.misses,
        c.evictions,
        c.expirations,
        c.load_failures,
        c.loads_in_flight,
        m.cache_bound_seconds
    );
    if s.key_service.calls.is_empty() {
        out += "key service: no calls\n";
    } else {
        for (call, c) in &s.key_service.calls {
            let errors: Vec<String> = c.errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
            out += &format!(
                "key service {call}: {} calls, mean {}, p99 {}{}\n",
                c.count,
                mean(&c.latency),
                quantile(&c.latency, 0.99),
                if errors.is_empty() {
                    String::new()
                } else {
                    format!(", errors: {}", errors.join(", "))
                }
            );
        }
    }
    if let Some(failing) = s.key_service_failing_for(now_unix()) {
        out += &format!("key service FAILING for {failing} s\n");
    }
    if s.lock_waits.count > 0 {
        out += &format!(
            "shared-storage lock waits: {}, mean {}, p99 {}\n",
            s.lock_waits.count,
            mean(&s.lock_waits),
            quantile(&s.lock_waits, 0.99)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_name_the_bucket_bound() {
        let h = HistogramSnapshot {
            count: 100,
            sum_seconds: 0.01,
            buckets: vec![(25e-6, 50), (50e-6, 98), (1e-3, 99), (1.0, 100)],
        };
        assert_eq!(quantile(&h, 0.5), "<=25us");
        assert_eq!(quantile(&h, 0.99), "<=1.0ms");
        assert_eq!(quantile(&h, 1.0), "<=1s");
        assert_eq!(mean(&h), "100us");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_duration(3700.0), "1h1m");
    }

    #[test]
    fn state_files_are_named_one_to_one_after_the_mount() {
        let name = |p: &str| default_state_path(Path::new(p)).unwrap();
        let spaced = name("/srv/a b");
        assert!(
            spaced.to_string_lossy().ends_with("_2fsrv_2fa_20b.json"),
            "{spaced:?}"
        );
        let names = ["/srv/a-b", "/srv/a/b", "/srv/a.b", "/srv/a_b", "/srv/a_2fb"].map(name);
        for (i, a) in names.iter().enumerate() {
            for b in &names[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
