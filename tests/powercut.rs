//! Power cuts under sealfs (issue 29): sealfs runs over the interposer of
//! tests/common/powercut.rs, which keeps every unsynced change of the cipher dir in memory, and
//! snapshots are taken at random moments of a workload, many of them inside one FUSE write of
//! sealfs. Each snapshot gives a crash state (nothing unsynced kept, a prefix of it in order,
//! or a prefix and one write torn at a sector boundary), mounted and checked: every
//! acknowledged byte (or sqlite row) reads back, no read fails, sqlite opens its database, finds
//! it intact and takes a new row, and `sealfs fsck` finds nothing.
//!
//! A workload runs twice with the same seed: once to count its requests to the cipher dir,
//! then with snapshots at random counts. A step counts as acknowledged from the counter read
//! after its fsync (or commit) returned, so a state taken before that never expects it.
//!
//! States per workload: SEALFS_POWERCUT_STATES (default 12); seed: SEALFS_POWERCUT_SEED;
//! SEALFS_POWERCUT_DEBUG=1 prints each state's mount log. A long run:
//! `SEALFS_POWERCUT_STATES=1000 cargo test --release --test powercut -- --nocapture`.

mod common;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use common::powercut::{Powercut, Snapshot, Variant};
use common::{Mounted, Rng, TestVolume, files_under};
use workloads::sqlite::{Journal, Sqlite};
use workloads::tree::Tree;

#[path = "powercut_workloads"]
mod workloads {
    pub mod resize;
    pub mod restic;
    pub mod rewrite;
    pub mod shared;
    pub mod sqlite;
    pub mod tree;
}

/// sealfs mounted over the interposer, over a fresh volume. Fields drop in order: sealfs is
/// unmounted first, then the interposer, then the directories go.
struct Rig {
    sealfs: Mounted,
    powercut: Powercut,
    _upper: TestVolume,
    lower: TestVolume,
}

impl Rig {
    fn new(workload: Workload) -> Rig {
        let lower = TestVolume::new();
        let upper = lower.dir.path().join("upper");
        let scratch = lower.dir.path().join("snapshots");
        fs::create_dir(&upper).unwrap();
        fs::create_dir(&scratch).unwrap();
        let powercut = Powercut::mount(&lower.cipher, &upper, &scratch);
        let upper = TestVolume::existing(common::test_dir(), upper, lower.keys.clone());
        if let Workload::Tenant = workload {
            let key = lower.dir.path().join("tenant.key");
            let out = upper.run(
                &["policy", "set", upper.cipher_str(), "/t"]
                    .into_iter()
                    .chain(["--keyfile", key.to_str().unwrap()])
                    .collect::<Vec<_>>(),
            );
            assert!(out.status.success(), "{}", common::stderr(&out));
        }
        let sealfs = upper.mount_with(workload.mount_options());
        if let Workload::Shared = workload {
            // Made before the cuts: a shared mount leaves a file whose preamble never reached
            // the disk to fsck (another host may be making it).
            let f = File::create(sealfs.path.join("data")).unwrap();
            f.write_all_at(&workloads::shared::initial(), 0).unwrap();
            f.sync_all().unwrap();
            File::open(&sealfs.path).unwrap().sync_all().unwrap();
        }
        Rig {
            sealfs,
            powercut,
            _upper: upper,
            lower,
        }
    }
}

/// What must survive from the moment `counter` on.
struct Ack {
    counter: u64,
    expect: Expect,
}

enum Expect {
    /// File `name` holds `data`.
    File { name: &'static str, data: Vec<u8> },
    /// The sqlite database holds rows 1 to n.
    Rows(u64),
    /// The files of the namespace workload.
    Tree(Tree),
    /// The restic repository holds this many snapshots (`None`: not made yet).
    Restic(Option<u64>),
}

#[derive(Clone, Copy, Debug)]
enum Workload {
    /// One 37-byte line appended and fsynced, 40 times.
    Appender,
    /// A 256 KiB file, then 100-byte overwrites at random offsets, each fsynced.
    SmallOverwrites,
    /// A 256 KiB file, then aligned 4 KiB overwrites, each fsynced.
    BlockOverwrites,
    /// One INSERT per transaction, through Python's sqlite3.
    Sqlite(Journal),
    /// Files made, written, renamed, linked and unlinked, short and long names, with fsyncs
    /// of files and directories (workloads/tree.rs).
    Tree,
    /// Truncates, punched holes, zeroed ranges, fallocate past the end, writes, each fsynced
    /// (workloads/resize.rs).
    Resize,
    /// A 3 MiB file grown and rewritten whole in 256 KiB writes, fsynced, 6 times (rewrite.rs).
    Rewrite,
    /// The appender in a tenant's directory (a key policy of its own).
    Tenant,
    /// restic backups into a repository on the mount (workloads/restic.rs).
    Restic,
    /// On a shared mount (`-o shared`): a 64 KiB file made before the cuts, then 37-byte
    /// appends and 100-byte overwrites at random offsets, alternately, each fdatasynced.
    Shared,
}

const STEPS: usize = 40;
/// Backups of the restic workload (each a few hundred KiB).
const RESTIC_BACKUPS: u64 = 8;
const FILE_LEN: usize = 256 * 1024;

fn random_bytes(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.next() as u8).collect()
}

impl Workload {
    /// The options sealfs is mounted with, for the workload and for each crash state.
    fn mount_options(&self) -> &'static [&'static str] {
        match self {
            Workload::Shared => &["-o", "shared"],
            _ => &[],
        }
    }

    /// What holds before anything was acknowledged.
    fn initial(&self) -> Expect {
        match self {
            Workload::Shared => Expect::File {
                name: "data",
                data: workloads::shared::initial(),
            },
            Workload::Sqlite(_) => Expect::Rows(0),
            Workload::Tree => Expect::Tree(Tree::new()),
            Workload::Restic => Expect::Restic(None),
            _ => Expect::File {
                name: self.file_name(),
                data: Vec::new(),
            },
        }
    }

    /// The file the file workloads write.
    fn file_name(&self) -> &'static str {
        match self {
            Workload::Tenant => "t/data",
            _ => "data",
        }
    }

    /// Runs the workload in `root`, and returns what it acknowledged, in order.
    fn run(&self, root: &Path, powercut: &Powercut, rng: &mut Rng) -> Vec<Ack> {
        let mut acks = Vec::new();
        let mut ack = |expect| {
            acks.push(Ack {
                counter: powercut.counter(),
                expect,
            })
        };
        let mut model = Vec::new();
        let name = self.file_name();
        let file = |data: &[u8]| Expect::File {
            name,
            data: data.to_vec(),
        };
        let path = root.join(name);
        match self {
            Workload::Tree => workloads::tree::run(root, rng, STEPS, |t| ack(Expect::Tree(t))),
            Workload::Resize => workloads::resize::run(root, rng, STEPS, |d| ack(file(d))),
            Workload::Rewrite => workloads::rewrite::run(root, rng, 6, |d| ack(file(d))),
            Workload::Restic => {
                workloads::restic::run(root, rng, RESTIC_BACKUPS, |n| ack(Expect::Restic(Some(n))))
            }
            Workload::Appender | Workload::Tenant => {
                let mut f = OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(&path)
                    .unwrap();
                for i in 0..STEPS {
                    let text: String = (0..31)
                        .map(|_| (b'a' + rng.below(26) as u8) as char)
                        .collect();
                    let line = format!("{i:04} {text}\n");
                    assert_eq!(line.len(), 37);
                    f.write_all(line.as_bytes()).unwrap();
                    f.sync_all().unwrap();
                    model.extend_from_slice(line.as_bytes());
                    ack(file(&model));
                }
            }
            Workload::SmallOverwrites | Workload::BlockOverwrites => {
                let f = File::create(&path).unwrap();
                model = random_bytes(rng, FILE_LEN);
                f.write_all_at(&model, 0).unwrap();
                f.sync_all().unwrap();
                ack(file(&model));
                for _ in 0..STEPS {
                    let (offset, len) = match self {
                        Workload::SmallOverwrites => (rng.below((FILE_LEN - 100) as u64), 100),
                        _ => (4096 * rng.below((FILE_LEN / 4096) as u64), 4096),
                    };
                    let data = random_bytes(rng, len);
                    f.write_all_at(&data, offset).unwrap();
                    f.sync_data().unwrap();
                    model[offset as usize..][..len].copy_from_slice(&data);
                    ack(file(&model));
                }
            }
            Workload::Shared => workloads::shared::run(root, rng, STEPS, |d| ack(file(d))),
            Workload::Sqlite(journal) => {
                let mut db = Sqlite::start(&root.join("db"), *journal);
                ack(Expect::Rows(0));
                for n in 1..=STEPS as u64 {
                    db.insert(n);
                    ack(Expect::Rows(n));
                }
                db.finish();
            }
        }
        acks
    }

    /// Checks the crash state mounted at `root` against what was acknowledged (`acked`) and
    /// what the step in flight would make of it (`next`): the acknowledged bytes (or rows)
    /// lost, and whether the program failed on it.
    fn check(&self, root: &Path, acked: &Expect, next: Option<&Expect>) -> (u64, bool) {
        match acked {
            Expect::File { name, data } => {
                let (found, bad, _) = read_chunks(&root.join(name));
                let next = match next {
                    Some(Expect::File { data, .. }) => Some(data.as_slice()),
                    _ => None,
                };
                let readable = |i: usize| !bad.get(i / CHUNK).copied().unwrap_or(true);
                // A byte is as acknowledged, or as the step in flight made it (which may
                // have cut it off).
                let kept = |i: usize| match (found.get(i), next) {
                    (None, Some(next)) => next.get(i).is_none(),
                    (None, None) => false,
                    (Some(b), next) => {
                        readable(i)
                            && (Some(b) == data.get(i) || next.is_some_and(|n| n.get(i) == Some(b)))
                    }
                };
                ((0..data.len()).filter(|&i| !kept(i)).count() as u64, false)
            }
            Expect::Rows(n) => Sqlite::verify(&root.join("db"), *n),
            Expect::Restic(acked) => workloads::restic::check(root, *acked),
            Expect::Tree(tree) => {
                let next = match next {
                    Some(Expect::Tree(t)) => Some(t),
                    _ => None,
                };
                (workloads::tree::check(root, tree, next), false)
            }
        }
    }
}

const CHUNK: usize = 4096;

/// A file's bytes read in 4 KiB preads (zeros where a read failed), which reads failed, and
/// how many failed with EIO.
fn read_chunks(path: &Path) -> (Vec<u8>, Vec<bool>, u64) {
    let Ok(f) = File::open(path) else {
        return (Vec::new(), Vec::new(), 0);
    };
    let (mut data, mut bad, mut eio) = (Vec::new(), Vec::new(), 0);
    loop {
        let mut buf = vec![0u8; CHUNK];
        match f.read_at(&mut buf, data.len() as u64) {
            Ok(0) => break,
            Ok(n) => {
                data.extend_from_slice(&buf[..n]);
                bad.push(false);
            }
            Err(e) => {
                eio += u64::from(e.raw_os_error() == Some(libc::EIO));
                data.extend_from_slice(&buf);
                bad.push(true);
                if data.len() as u64 >= f.metadata().map_or(0, |m| m.len()) {
                    break;
                }
            }
        }
    }
    (data, bad, eio)
}

/// What one crash state showed.
#[derive(Default)]
struct Tally {
    states: u64,
    lost: u64,
    eio: u64,
    program_failures: u64,
    fsck_needed: u64,
    /// Of `fsck_needed`: states where fsck found more than crash leftovers (orphan headers,
    /// temp files of a create or a hole map write cut short).
    fsck_damage: u64,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.states += other.states;
        self.lost += other.lost;
        self.eio += other.eio;
        self.program_failures += other.program_failures;
        self.fsck_needed += other.fsck_needed;
        self.fsck_damage += other.fsck_damage;
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} states, {} acked lost, {} EIO reads, {} program failures, {} fsck needed ({} for \
             more than leftovers)",
            self.states,
            self.lost,
            self.eio,
            self.program_failures,
            self.fsck_needed,
            self.fsck_damage
        )
    }
}

/// What a state's mount logged at WARN or ERROR, and fsck's problem kinds, counted.
#[derive(Default)]
struct Findings(BTreeMap<String, u64>);

impl Findings {
    fn note(&mut self, what: String) {
        *self.0.entry(what).or_default() += 1;
    }
}

/// `text` with its ids (8 hex digits or more) and numbers taken out, and the 256 directories
/// of sealfs.headers made one: one entry per kind of finding.
fn shape(text: &str) -> String {
    let words = text.split_inclusive(|c: char| !c.is_ascii_alphanumeric());
    let mut out = String::new();
    for word in words {
        let body = word.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
        let hex = body.chars().all(|c| c.is_ascii_hexdigit());
        if hex && (body.len() >= 8 || out.ends_with("sealfs.headers/")) {
            out.push_str("<id>");
        } else if !body.is_empty() && body.chars().all(|c| c.is_ascii_digit()) {
            out.push('N');
        } else {
            out.push_str(body);
        }
        out.push_str(&word[body.len()..]);
    }
    out
}

/// Mounts crash state `variant` of `snapshot` and checks it.
fn check_state(
    workload: Workload,
    snapshot: &Snapshot,
    variant: Variant,
    keys: &Path,
    (acked, next): (&Expect, Option<&Expect>),
    findings: &mut Findings,
) -> Tally {
    let dir = common::test_dir();
    let cipher = dir.path().join("cipher");
    snapshot.materialize(variant, &cipher);
    let vol = TestVolume::existing(dir, cipher, keys.to_path_buf());
    let m = vol.mount_with(workload.mount_options());
    let eio: u64 = files_under(&m.path).iter().map(|f| read_chunks(f).2).sum();
    let (lost, failed) = workload.check(&m.path, acked, next);
    let log = m.unmount();
    if std::env::var_os("SEALFS_POWERCUT_DEBUG").is_some() {
        eprintln!("{log}");
    }
    for line in log.lines() {
        // fuser's own note when `sealfs umount` unmounted first is no finding.
        let noise = line.contains("Failed to umount filesystem");
        if (line.contains("WARN") || line.contains("ERROR")) && !noise {
            let text = line.split_once(' ').map_or(line, |(_, rest)| rest);
            findings.note(format!("log: {}", shape(text)));
        }
    }
    let fsck = vol.run(&["fsck", vol.cipher_str(), "--json"]);
    let mut damage = false;
    if let Ok(report) = serde_json::from_slice::<serde_json::Value>(&fsck.stdout) {
        for problem in report["problems"].as_array().into_iter().flatten() {
            let (kind, path) = (&problem["kind"], problem["path"].as_str().unwrap_or(""));
            findings.note(format!("fsck: {kind} {}", shape(path)));
            damage |= !matches!(kind.as_str(), Some("orphan-header" | "leftover"));
        }
    }
    Tally {
        states: 1,
        lost,
        eio,
        program_failures: u64::from(failed),
        fsck_needed: u64::from(!fsck.status.success()),
        fsck_damage: u64::from(damage),
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `workload` and checks SEALFS_POWERCUT_STATES crash states of it; fails on any loss,
/// failed read, failed program or fsck finding (the mount of each state must leave nothing for
/// fsck: what a crash left is mended or swept by it).
fn power_cuts(workload: Workload, salt: u64) {
    let started = Instant::now();
    let states = env_u64("SEALFS_POWERCUT_STATES", 12);
    let seed = env_u64("SEALFS_POWERCUT_SEED", 0x5eed_c0de) ^ salt;
    // The first run counts the workload's requests (after the mount's own).
    let (first, last) = {
        let rig = Rig::new(workload);
        let first = rig.powercut.counter() + 1;
        workload.run(&rig.sealfs.path, &rig.powercut, &mut Rng(seed | 1));
        (first, rig.powercut.counter())
    };
    let mut rng = Rng(seed.rotate_left(17) | 1);
    let moments: Vec<u64> = (0..states)
        .map(|_| first + rng.below(last - first + 1))
        .collect();
    let rig = Rig::new(workload);
    rig.powercut.set_triggers(moments.iter().copied());
    let acks = workload.run(&rig.sealfs.path, &rig.powercut, &mut Rng(seed | 1));
    let snapshots = rig.powercut.take_snapshots();
    let keys = rig.lower.keys.clone();
    // Unmounted before the checks (the volume's directory stays until `rig` goes).
    let Rig {
        sealfs, powercut, ..
    } = rig;
    drop(sealfs);
    drop(powercut);

    let initial = workload.initial();
    let mut by_variant: BTreeMap<&str, Tally> = BTreeMap::new();
    let mut findings = Findings::default();
    let mut failing = Vec::new();
    for moment in moments {
        let Some(snapshot) = snapshots.iter().find(|s| s.counter == moment) else {
            continue;
        };
        let variant = snapshot.pick_variant(&mut rng);
        let done = acks.iter().take_while(|a| a.counter <= moment).count();
        let acked = done.checked_sub(1).map_or(&initial, |i| &acks[i].expect);
        let next = acks.get(done).map(|a| &a.expect);
        let tally = check_state(
            workload,
            snapshot,
            variant,
            &keys,
            (acked, next),
            &mut findings,
        );
        if tally.lost + tally.eio + tally.program_failures + tally.fsck_needed > 0 {
            failing.push(format!(
                "counter {moment} ({} pending) {variant:?}: {tally}",
                snapshot.pending_len()
            ));
        }
        by_variant.entry(variant.kind()).or_default().add(&tally);
    }
    let mut total = Tally::default();
    for tally in by_variant.values() {
        total.add(tally);
    }
    eprintln!(
        "powercut {workload:?}: {total} (seed {seed}, {:.1}s)",
        started.elapsed().as_secs_f64()
    );
    for (kind, tally) in &by_variant {
        eprintln!("  {kind}: {tally}");
    }
    for (what, n) in &findings.0 {
        eprintln!("  {n}x {what}");
    }
    for state in &failing {
        eprintln!("  failing: {state}");
    }
    assert!(
        total.states * 2 >= states,
        "only {} of {states} crash states were taken",
        total.states
    );
    assert!(
        failing.is_empty(),
        "powercut {workload:?} (seed {seed}): {total}"
    );
}

#[test]
fn appended_lines_survive_power_cuts() {
    power_cuts(Workload::Appender, 1);
}

#[test]
fn small_overwrites_survive_power_cuts() {
    power_cuts(Workload::SmallOverwrites, 2);
}

#[test]
fn block_overwrites_survive_power_cuts() {
    power_cuts(Workload::BlockOverwrites, 3);
}

#[test]
fn sqlite_wal_survives_power_cuts() {
    power_cuts(Workload::Sqlite(Journal::Wal), 4);
}

#[test]
fn sqlite_rollback_journal_survives_power_cuts() {
    power_cuts(Workload::Sqlite(Journal::Rollback), 5);
}

#[test]
fn names_survive_power_cuts() {
    power_cuts(Workload::Tree, 6);
}

#[test]
fn truncates_and_fallocates_survive_power_cuts() {
    power_cuts(Workload::Resize, 7);
}

#[test]
fn sequential_rewrites_survive_power_cuts() {
    power_cuts(Workload::Rewrite, 11);
}

#[test]
fn a_tenant_directory_survives_power_cuts() {
    power_cuts(Workload::Tenant, 8);
}

#[test]
fn a_shared_mount_survives_power_cuts() {
    power_cuts(Workload::Shared, 10);
}

#[test]
fn restic_backups_survive_power_cuts() {
    power_cuts(Workload::Restic, 9);
}

/// The interposer alone: what was not fsynced stays in memory and is seen above it; a
/// snapshot gives each variant of it; a file that loses its last name takes its pending
/// operations along; triggers snapshot without the writer knowing.
#[test]
fn the_interposer_keeps_what_was_not_fsynced_in_memory() {
    let dir = common::test_dir();
    let [lower, upper, scratch] = ["lower", "upper", "scratch"].map(|d| dir.path().join(d));
    for d in [&lower, &upper, &scratch] {
        fs::create_dir(d).unwrap();
    }
    let powercut = Powercut::mount(&lower, &upper, &scratch);
    let f = File::create(upper.join("a")).unwrap();
    f.write_all_at(b"durable", 0).unwrap();
    f.sync_all().unwrap();
    f.write_all_at(&[1; 1024], 256).unwrap();
    f.set_len(2000).unwrap();
    fs::rename(upper.join("a"), upper.join("b")).unwrap();
    let mut seen = b"durable".to_vec();
    seen.resize(256, 0);
    seen.resize(1280, 1);
    assert_eq!(fs::read(upper.join("b")).unwrap()[..1280], seen);
    assert_eq!(fs::metadata(upper.join("b")).unwrap().len(), 2000);
    assert_eq!(fs::read(lower.join("b")).unwrap(), b"durable");

    let snapshot = powercut.snapshot();
    assert_eq!(snapshot.pending_len(), 2);
    let state = |variant: Variant| {
        let into = scratch.join(format!("{variant:?}"));
        snapshot.materialize(variant, &into);
        fs::read(into.join("b")).unwrap()
    };
    assert_eq!(state(Variant::Drop), b"durable");
    assert_eq!(state(Variant::Prefix(1)), seen);
    assert_eq!(state(Variant::Prefix(2))[..1280], seen);
    assert_eq!(state(Variant::Prefix(2)).len(), 2000);
    assert_eq!(state(Variant::Torn { op: 1, keep: 256 }), seen[..512]);
    assert_eq!(state(Variant::Torn { op: 1, keep: 768 }), seen[..1024]);

    drop(f);
    fs::remove_file(upper.join("b")).unwrap();
    assert_eq!(powercut.snapshot().pending_len(), 0);

    let f = File::create(upper.join("c")).unwrap();
    let at = powercut.counter() + 2;
    powercut.set_triggers([at]);
    f.write_all_at(b"one", 0).unwrap();
    f.write_all_at(b"two", 3).unwrap();
    f.write_all_at(b"three", 6).unwrap();
    let taken = powercut.take_snapshots();
    assert_eq!(taken.len(), 1);
    assert_eq!((taken[0].counter, taken[0].pending_len()), (at, 2));
}
