use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use fuser::MountOption;

use sealfs::fs::Tuning;
use sealfs::fs::pruner::{self, PruneLimits};
use sealfs::fs::session::Session;
use sealfs::keys::CacheLimits;
use sealfs::metrics::endpoint;
use sealfs::reverse::{Excludes, ReverseView};
use sealfs::volume::{self, Volume};

use super::mount_options::{Parsed, parse_options};
use super::mount_table::{is_mount_point, mount_device};
use super::settings::{self, SettingsFile};
use super::unlock::UnlockArgs;
use super::{audit, logging};
use super::{hardening, notify};

#[derive(Args, Debug, Default)]
pub struct MountArgs {
    /// The cipher dir (or `cipher_dir` in the settings file).
    #[arg(required_unless_present = "config")]
    pub cipher_dir: Option<PathBuf>,
    /// Where to mount it (or `mountpoint` in the settings file).
    #[arg(required_unless_present = "config")]
    pub mountpoint: Option<PathBuf>,
    /// Settings file (TOML, see packaging/example.toml); options given here override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub unlock: UnlockArgs,
    /// Mount options, comma separated: ro, rw, allow_other, allow_root, default_permissions,
    /// nonempty, noexec, exec, nosuid, suid, nodev (the default), dev, noatime, atime, sync, async, dirsync,
    /// fsname=NAME, noacl (no POSIX ACLs, as ext4's noacl: one request fewer per create where
    /// only the mounting user reaches the mount), acl (the default). fstab-only options (defaults, noauto, auto, user, nofail, _netdev, x-*)
    /// are accepted and ignored.
    #[arg(short = 'o', value_delimiter = ',')]
    pub options: Vec<String>,
    /// Stay in the foreground (logs to stderr) instead of daemonizing once mounted.
    #[arg(short, long)]
    pub foreground: bool,
    /// Most unwrapped file keys kept in memory [default: 4096].
    #[arg(long, value_name = "N")]
    pub key_cache_entries: Option<usize>,
    /// Seconds an unwrapped file key may be used before it is unwrapped again; bounds how long
    /// a key disabled in KMS keeps working for files opened anew [default: 3600].
    #[arg(long, value_name = "SECONDS")]
    pub key_cache_max_age: Option<u64>,
    /// Seconds an unused file key stays cached [default: 600].
    #[arg(long, value_name = "SECONDS")]
    pub key_cache_idle: Option<u64>,
    /// Threads serving FUSE requests, each with its own /dev/fuse fd [default: 4].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Turn off the kernel's writeback cache (every write(2) reaches sealfs at once).
    #[arg(long)]
    pub no_writeback_cache: bool,
    /// Kernel readahead for this mount, in KiB, written to the mount's bdi as root
    /// [default: 16384].
    #[arg(long, value_name = "KIB")]
    pub read_ahead_kb: Option<u32>,
    /// Most inodes the daemon keeps (one descriptor and ~200 bytes each); past it the least
    /// recently used idle ones are forgotten, which bounds memory and fds in a walk of any
    /// size [default: 100000, and at most half the fd limit].
    #[arg(long, value_name = "N")]
    pub inode_cache: Option<usize>,
    /// Reverse mode: CIPHER_DIR is a plaintext directory made with `sealfs init --reverse`;
    /// mount a read-only, deterministic encrypted view of it (for rsync/restic/borg to
    /// storage that is not trusted). A forward mount of a copy of the view reads the files.
    #[arg(long)]
    pub reverse: bool,
    /// Reverse mode: leave paths matching PATTERN out of the view (gitignore syntax:
    /// `*.tmp`, `/cache` only at the top, `build/` only directories, `!keep.tmp`).
    /// Repeatable.
    #[arg(long, value_name = "PATTERN", requires = "reverse")]
    pub exclude: Vec<String>,
    /// Serve Prometheus metrics at ADDR, e.g. 127.0.0.1:9568 (GET /metrics). Loopback only,
    /// unless --metrics-allow-remote.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Let --metrics bind an address other hosts can reach (put a firewall or a proxy in front).
    #[arg(long)]
    pub metrics_allow_remote: bool,
    /// Also write the metrics to FILE every 15 s, for node_exporter's textfile collector.
    #[arg(long, value_name = "FILE")]
    pub metrics_textfile: Option<PathBuf>,
}

/// Everything a mount needs, after the command line, the settings file, systemd credentials
/// and defaults have been merged, in that order of precedence.
struct Resolved {
    cipher_dir: PathBuf,
    mountpoint: PathBuf,
    unlock: UnlockArgs,
    options: Vec<String>,
    foreground: bool,
    cache: CacheLimits,
    threads: usize,
    writeback_cache: bool,
    shared: bool,
    read_ahead_kb: u32,
    inode_cache: usize,
    reverse: bool,
    exclude: Vec<String>,
    metrics: Metrics,
}

/// Where the mount's metrics go.
struct Metrics {
    addr: Option<std::net::SocketAddr>,
    allow_remote: bool,
    textfile: Option<PathBuf>,
}

impl MountArgs {
    fn resolve(self) -> Result<Resolved> {
        let file = match &self.config {
            Some(path) => SettingsFile::load(path)?,
            None => SettingsFile::default(),
        };
        let cipher_dir = self.cipher_dir.or(file.cipher_dir).context(
            "no cipher dir: give it on the command line or as cipher_dir in the settings file",
        )?;
        let mountpoint = self.mountpoint.or(file.mountpoint).context(
            "no mount point: give it on the command line or as mountpoint in the settings file",
        )?;
        let keys = file.keys;
        let mut unlock = self.unlock;
        let given = unlock.keyfile.is_some()
            || unlock.passphrase
            || unlock.passfile.is_some()
            || unlock.extpass.is_some();
        if !given {
            unlock.keyfile = keys.keyfile.or_else(|| settings::credential("keyfile"));
            unlock.passfile = keys.passfile.or_else(|| settings::credential("passphrase"));
            unlock.extpass = keys.extpass;
        }
        let remote = &mut unlock.remote;
        remote.kms_endpoint = remote.kms_endpoint.take().or(keys.kms_endpoint);
        remote.pkcs11_module = remote.pkcs11_module.take().or(keys.pkcs11_module);
        remote.pin_file = remote
            .pin_file
            .take()
            .or(keys.pin_file)
            .or_else(|| settings::credential("pin"));
        audit::default_to(file.audit.log, file.audit.syslog.unwrap_or(false));
        let entries = self
            .key_cache_entries
            .or(file.cache.entries)
            .unwrap_or(4096);
        Ok(Resolved {
            cipher_dir,
            mountpoint,
            unlock,
            options: file.options.into_iter().chain(self.options).collect(),
            foreground: self.foreground,
            cache: CacheLimits {
                entries: std::num::NonZeroUsize::new(entries)
                    .context("the key cache needs at least 1 entry")?,
                max_age: Duration::from_secs(
                    self.key_cache_max_age
                        .or(file.cache.max_age_secs)
                        .unwrap_or(3600),
                ),
                idle: Duration::from_secs(
                    self.key_cache_idle.or(file.cache.idle_secs).unwrap_or(600),
                ),
            },
            threads: self.threads.or(file.threads).unwrap_or(4).max(1),
            writeback_cache: !self.no_writeback_cache && file.writeback_cache.unwrap_or(true),
            shared: file.shared.unwrap_or(false),
            read_ahead_kb: self
                .read_ahead_kb
                .or(file.read_ahead_kb)
                .unwrap_or(DEFAULT_READ_AHEAD_KB),
            inode_cache: self
                .inode_cache
                .or(file.inode_cache)
                .unwrap_or(PruneLimits::DEFAULT_BUDGET),
            reverse: self.reverse || file.reverse.unwrap_or(false),
            exclude: file.exclude.into_iter().chain(self.exclude).collect(),
            metrics: Metrics {
                addr: self.metrics.or(file.metrics),
                allow_remote: self.metrics_allow_remote
                    || file.metrics_allow_remote.unwrap_or(false),
                textfile: self.metrics_textfile.or(file.metrics_textfile),
            },
        })
    }
}

fn check_mountpoint(path: &Path, nonempty: bool) -> Result<PathBuf> {
    let canonical = std::fs::canonicalize(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            anyhow::anyhow!("mount point {} does not exist", path.display())
        }
        std::io::ErrorKind::NotConnected => anyhow::anyhow!(
            "mount point {} is a dead FUSE mount; run `sealfs umount {}` first",
            path.display(),
            path.display()
        ),
        _ => anyhow::anyhow!("mount point {}: {e}", path.display()),
    })?;
    if !canonical.is_dir() {
        bail!("mount point {} is not a directory", path.display());
    }
    if is_mount_point(&canonical) {
        bail!(
            "mount point {} is busy: something is already mounted there",
            path.display()
        );
    }
    if !nonempty && std::fs::read_dir(&canonical)?.next().is_some() {
        bail!(
            "mount point {} is not empty (use -o nonempty to mount over it anyway)",
            path.display()
        );
    }
    Ok(canonical)
}

pub fn run(args: MountArgs) -> Result<()> {
    let args = args.resolve()?;
    // The mount's source names the cipher dir as `findmnt -S` and `sealfs umount` look for it.
    let source = std::fs::canonicalize(&args.cipher_dir).unwrap_or(args.cipher_dir.clone());
    let mut parsed = parse_options(&args.options, &source)?;
    parsed.config.n_threads = Some(args.threads);
    parsed.config.clone_fd = true;
    parsed.shared |= args.shared;
    let mut tuning = Tuning::new(args.writeback_cache, parsed.shared);
    tuning.attr_ttl = parsed.attr_timeout.unwrap_or(tuning.attr_ttl);
    tuning.entry_ttl = parsed.entry_timeout.unwrap_or(tuning.entry_ttl);
    tuning.acl = parsed.acl;
    parsed.tuning = tuning;
    parsed.read_ahead_kb = args.read_ahead_kb;
    parsed.inode_cache = args.inode_cache;
    let mountpoint = check_mountpoint(&args.mountpoint, parsed.nonempty)?;
    let cipher_dir = std::fs::canonicalize(&args.cipher_dir)
        .with_context(|| format!("{} does not exist", args.cipher_dir.display()))?;
    let reverse = args.reverse;
    if reverse {
        if !volume::is_reverse(&cipher_dir) {
            bail!(
                "{} holds no reverse volume; create one with `sealfs init --reverse {}`",
                cipher_dir.display(),
                cipher_dir.display()
            );
        }
        // The view of a tree that holds the view would hold itself.
        if mountpoint.starts_with(&cipher_dir) {
            bail!(
                "mount point {} is inside the plaintext dir {}; mount the view elsewhere",
                mountpoint.display(),
                cipher_dir.display()
            );
        }
        parsed.read_only = true;
        parsed.config.mount_options.push(MountOption::RO);
        // The view answers access(2) without looking: the kernel checks modes.
        if !parsed
            .config
            .mount_options
            .contains(&MountOption::DefaultPermissions)
        {
            parsed
                .config
                .mount_options
                .push(MountOption::DefaultPermissions);
        }
    } else if volume::is_reverse(&cipher_dir) {
        bail!(
            "{} is the plaintext dir of a reverse volume: mount its encrypted view with `sealfs mount --reverse`",
            cipher_dir.display()
        );
    }
    let excludes = Excludes::new(&args.exclude)?;
    let config = Volume::read_config(&cipher_dir)?;
    // Local keys are read (and passphrases asked) here, on the terminal; KMS and PKCS#11
    // connect on first use, which is after the fork: neither survives fork().
    let providers = args.unlock.providers(&config)?;
    let tenant_access = args.unlock.remote.tenant_access();
    let limits = args.cache;
    let metrics = args.metrics;
    // Refused before anything is mounted (the bind itself happens in the daemon).
    if let Some(addr) = metrics.addr
        && !addr.ip().is_loopback()
        && !metrics.allow_remote
    {
        bail!("{}", endpoint::EndpointError::NotLoopback(addr));
    }
    launch(args.foreground, move |ready| {
        if reverse {
            let keys = sealfs::keys::unlock(&config, &providers)?;
            serve_reverse(
                keys,
                &cipher_dir,
                excludes,
                &mountpoint,
                parsed,
                &metrics,
                ready,
            )
        } else {
            let volume = Volume::open(&cipher_dir, providers, limits)?;
            if let Some((policy, _)) = sealfs::admin::migrate::pending(&volume.config).first() {
                bail!(
                    "files are moving under key policy {policy} (a `sealfs policy set` on a directory that held them was interrupted): run `sealfs rewrap {}` first",
                    cipher_dir.display()
                );
            }
            volume.tenants.set_access(tenant_access);
            for fallback in volume.backing.fallbacks() {
                tracing::warn!(fs_type = %volume.backing.fs_type, "backing store: {fallback}");
            }
            serve(volume, &mountpoint, parsed, &metrics, ready)
        }
    })
}

/// The daemon's way to tell the waiting parent that the volume is mounted, or why not.
struct Ready(Option<OwnedFd>);

impl Ready {
    fn mounted(&mut self) -> Result<()> {
        notify::notify("READY=1");
        if let Some(fd) = self.0.take() {
            std::fs::File::from(fd).write_all(b"ok")?;
            detach_stdio();
        }
        Ok(())
    }

    fn failed(&mut self, message: &str) {
        if let Some(fd) = self.0.take() {
            let _ = std::fs::File::from(fd).write_all(message.as_bytes());
        }
    }
}

/// Runs `start` in the foreground, or daemonized: forked before any thread exists, the
/// child unlocks and mounts and reports "ok" or its error through a pipe, so the parent
/// exits with the right status and message.
fn launch(foreground: bool, start: impl FnOnce(&mut Ready) -> Result<()>) -> Result<()> {
    if foreground {
        return start(&mut Ready(None));
    }
    let (read_end, write_end) = nix::unistd::pipe()?;
    match unsafe { nix::unistd::fork()? } {
        nix::unistd::ForkResult::Parent { .. } => {
            drop(write_end);
            let mut message = String::new();
            std::fs::File::from(read_end).read_to_string(&mut message)?;
            if message == "ok" {
                Ok(())
            } else if message.is_empty() {
                bail!("the mount daemon exited before mounting")
            } else {
                bail!("{message}")
            }
        }
        nix::unistd::ForkResult::Child => {
            drop(read_end);
            nix::unistd::setsid()?;
            logging::to_syslog();
            hardening::lock_memory();
            let mut ready = Ready(Some(write_end));
            match start(&mut ready) {
                Ok(()) => std::process::exit(0),
                Err(e) => {
                    ready.failed(&format!("{e:#}"));
                    tracing::error!(error = %e, "mount daemon failed");
                    std::process::exit(1);
                }
            }
        }
    }
}

fn serve(
    volume: Volume,
    mountpoint: &Path,
    parsed: Parsed,
    metrics: &Metrics,
    ready: &mut Ready,
) -> Result<()> {
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    raise_fd_limit();
    // A mount of this volume that umount(8) just took away may still be exiting: wait for it.
    let cipher_dir = volume.path.clone();
    let gone = || super::mount_table::mountpoint_of(&cipher_dir).is_none();
    let Session { fs, held: _held } =
        Session::open(volume, parsed.read_only, parsed.tuning, gone, |volume| {
            Some(audit::open(&volume.path, &volume.keys, "mount"))
        })?;
    let volume = &fs.volume;
    let audit_log = volume.audit.clone();
    let mounted_details = serde_json::json!({
        "mountpoint": mountpoint.display().to_string(),
        "read_only": parsed.read_only,
        "key_mode": volume.config.key_mode,
    });
    start_metrics(
        Watched {
            dir: cipher_dir_of(volume),
            shared: parsed.tuning.shared,
            key_cache: volume.key_cache.clone(),
            kek_version: volume.keys.current_kek(),
        },
        metrics,
    )?;
    let inodes = fs.inodes.clone();
    let notifier = fs.notifier.clone();
    let session = fuser::Session::new(fs, mountpoint, &parsed.config)
        .with_context(|| format!("cannot mount on {}", mountpoint.display()))?;
    let _ = notifier.set(session.notifier());
    tracing::info!(mountpoint = %mountpoint.display(), "mounted");
    pruner::spawn(
        inodes,
        session.notifier(),
        PruneLimits::from_fd_limit(parsed.inode_cache),
    );
    if let Some(log) = &audit_log {
        log.record("mount", mounted_details);
    }
    if sealfs::io::codec::IDENTITY_CODEC {
        tracing::error!("BENCHMARK BUILD: file contents are NOT encrypted on this mount");
    }
    set_read_ahead(mountpoint, parsed.read_ahead_kb);
    ready.mounted()?;
    let served = run_until_unmounted(session);
    // Tests: a daemon slow to exit after its unmount (a big flush) still holds its claim.
    sealfs::volume::slow_point("unmounted");
    stop_metrics(metrics);
    served
}

/// A textfile left behind would keep exporting the last numbers as if the mount still ran.
fn stop_metrics(metrics: &Metrics) {
    if let Some(path) = &metrics.textfile {
        let _ = std::fs::remove_file(path);
    }
}

/// What a mount's numbers describe.
struct Watched {
    /// The cipher dir, or a reverse view's plaintext dir.
    dir: String,
    shared: bool,
    key_cache: std::sync::Arc<sealfs::keys::KeyCache>,
    kek_version: u32,
}

fn cipher_dir_of(volume: &Volume) -> String {
    volume.path.display().to_string()
}

/// Tells the counters about the mount, and starts the endpoint and the textfile if asked for:
/// before the FUSE mount, so a port in use fails the mount instead of leaving it unwatched.
fn start_metrics(watched: Watched, metrics: &Metrics) -> Result<()> {
    let counters = sealfs::metrics::global();
    counters.kek_version.store(
        u64::from(watched.kek_version),
        std::sync::atomic::Ordering::Relaxed,
    );
    counters.mounted(sealfs::metrics::MountInfo {
        started: std::time::SystemTime::now(),
        started_at: std::time::Instant::now(),
        shared: watched.shared,
        cipher_dir: watched.dir,
        cache_bound: watched.key_cache.limits().max_age,
        key_cache: watched.key_cache,
    });
    if let Some(addr) = metrics.addr {
        endpoint::serve(addr, metrics.allow_remote)?;
    }
    if let Some(path) = &metrics.textfile {
        endpoint::keep_textfile(path.clone())?;
    }
    Ok(())
}

fn serve_reverse(
    keys: sealfs::keys::VolumeKeys,
    plain_dir: &Path,
    excludes: Excludes,
    mountpoint: &Path,
    parsed: Parsed,
    metrics: &Metrics,
    ready: &mut Ready,
) -> Result<()> {
    let audit_log = audit::open(plain_dir, &keys, "mount --reverse");
    // Requests, bytes and blocks sealed count as on a forward mount; a view unwraps no file
    // keys (its keys are derived), so its key cache stays empty.
    start_metrics(
        Watched {
            dir: plain_dir.display().to_string(),
            shared: false,
            key_cache: std::sync::Arc::new(sealfs::keys::KeyCache::new(Default::default())),
            kek_version: keys.current_kek(),
        },
        metrics,
    )?;
    let view = ReverseView::new(plain_dir, std::sync::Arc::new(keys), excludes)?;
    let session = fuser::Session::new(view, mountpoint, &parsed.config)
        .with_context(|| format!("cannot mount on {}", mountpoint.display()))?;
    tracing::info!(mountpoint = %mountpoint.display(), plain_dir = %plain_dir.display(), "reverse view mounted");
    audit_log.record(
        "mount",
        serde_json::json!({
            "mountpoint": mountpoint.display().to_string(),
            "read_only": true,
            "reverse": true,
        }),
    );
    set_read_ahead(mountpoint, parsed.read_ahead_kb);
    ready.mounted()?;
    let result = run_until_unmounted(session);
    audit_log.record("unmount", serde_json::json!({ "reverse": true }));
    stop_metrics(metrics);
    result
}

/// Serves until unmounted, unmounting on SIGTERM, SIGINT or SIGHUP.
fn run_until_unmounted<FS: fuser::Filesystem>(mut session: fuser::Session<FS>) -> Result<()> {
    let mut unmounter = session.unmount_callable();
    let mut signals =
        signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGINT, libc::SIGHUP])?;
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            tracing::info!(signal, "signal received; unmounting");
            if let Err(e) = unmounter.unmount() {
                tracing::error!(error = %e, "unmount on signal failed (busy?)");
            }
        }
    });
    session.run()?;
    Ok(())
}

/// The kernel offers FUSE only 128 KiB of readahead at INIT; as root the mount's bdi can be
/// raised afterwards, which turns 128 KiB read requests into 1 MiB ones and, past 1 MiB, keeps
/// several of them in flight so that both cores decrypt (bench/README.md). The kernel grows
/// the window only for sequential readers, so random and small reads do not pay for it.
const DEFAULT_READ_AHEAD_KB: u32 = 16 * 1024;

/// Raises the mount's readahead (see `DEFAULT_READ_AHEAD_KB`).
/// The device number comes from mountinfo: a stat of the mount point would be a FUSE request
/// to this very process, which is not serving yet.
fn set_read_ahead(mountpoint: &Path, kib: u32) {
    if kib == 0 || !nix::unistd::geteuid().is_root() {
        return;
    }
    let Some(dev) = mount_device(mountpoint) else {
        return;
    };
    let path = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    if let Err(e) = std::fs::write(&path, kib.to_string()) {
        tracing::debug!(%path, error = %e, "could not raise readahead");
    }
}

/// Every inode the kernel knows holds an O_PATH fd: allow as many as the hard limit permits.
/// As root the hard limit itself is raised, up to the kernel's fs.nr_open: a 20,000-fd
/// default runs out after 20,000 files the kernel keeps cached.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    if let Some(max) = nr_open
        && setrlimit(Resource::RLIMIT_NOFILE, max, max).is_ok()
    {
        return;
    }
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}
