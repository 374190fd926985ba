//! Running sequences on both sides, comparing, shrinking a failing one, and the two shapes of
//! a run: one process (seed after seed, each in a fresh pair of roots) and many workers.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::apply::apply;
use crate::common::{Mounted, Rng, TestVolume};
use crate::ops::{Op, Pool, generate};
use crate::tree::{Tree, differences, snapshot};

#[derive(Default)]
pub struct Options {
    /// Extra `sealfs mount` arguments.
    pub mount: Vec<String>,
    /// Where under the mount the work happens (a tenant directory); the volume root if empty.
    pub under: String,
}

struct Sides {
    ours: PathBuf,
    reference: PathBuf,
}

impl Sides {
    fn sub(&self, name: &str) -> Sides {
        let s = Sides {
            ours: self.ours.join(name),
            reference: self.reference.join(name),
        };
        std::fs::create_dir(&s.ours).unwrap();
        std::fs::create_dir(&s.reference).unwrap();
        s
    }
}

fn mount(vol: &TestVolume, opts: &Options) -> Mounted {
    let mut args = vec!["-o", "allow_other"];
    args.extend(opts.mount.iter().map(String::as_str));
    vol.mount_with(&args)
}

fn compare_trees(sides: &Sides, when: &str) -> Result<(), String> {
    let ours = snapshot(&sides.ours, false).map_err(|e| format!("{when}: sealfs: {e}"))?;
    let reference = snapshot(&sides.reference, false).expect("reference tree");
    let diff = differences(&ours, &reference);
    if diff.is_empty() {
        Ok(())
    } else {
        Err(format!("{when}: trees differ:\n  {}", diff.join("\n  ")))
    }
}

/// Applies `ops` to both sides; the first divergence, with the step it happened at. Counts
/// the operations that succeeded in `succeeded`.
fn run_sequence(sides: &Sides, ops: &[Op]) -> Result<usize, (usize, String)> {
    let mut succeeded = 0;
    for (i, op) in ops.iter().enumerate() {
        let ours = apply(&sides.ours, op);
        let reference = apply(&sides.reference, op);
        succeeded += usize::from(!matches!(ours, crate::apply::Outcome::Errno(_)));
        if ours != reference {
            return Err((
                i,
                format!("step {i} {op:?}: sealfs {ours:?}, reference {reference:?}"),
            ));
        }
        if (i + 1) % 100 == 0 || i + 1 == ops.len() {
            compare_trees(sides, &format!("after step {i}")).map_err(|e| (i, e))?;
        }
    }
    Ok(succeeded)
}

/// The shortest sequence found (delta debugging, bounded attempts) that still diverges, each
/// attempt in a fresh pair of roots under `scratch`.
fn shrink(scratch: &Sides, mut ops: Vec<Op>) -> Vec<Op> {
    let mut attempt = 0;
    let mut fails = |ops: &[Op]| {
        attempt += 1;
        let sides = scratch.sub(&format!("shrink-{attempt}"));
        run_sequence(&sides, ops).is_err()
    };
    let mut chunk = ops.len() / 2;
    let started = Instant::now();
    while chunk >= 1 && started.elapsed().as_secs() < 120 {
        let mut i = 0;
        let mut removed = false;
        while i < ops.len() && started.elapsed().as_secs() < 120 {
            let end = (i + chunk).min(ops.len());
            let candidate: Vec<Op> = ops[..i].iter().chain(&ops[end..]).cloned().collect();
            if !candidate.is_empty() && fails(&candidate) {
                ops = candidate;
                removed = true;
            } else {
                i += chunk;
            }
        }
        if !removed {
            chunk /= 2;
        }
    }
    ops
}

fn fail_with_shrunk(scratch: &Sides, label: &str, ops: &[Op], step: usize, why: String) -> ! {
    let shrunk = shrink(scratch, ops[..=step].to_vec());
    let lines: Vec<String> = shrunk.iter().map(|op| format!("  {op:?}")).collect();
    let again = run_sequence(&scratch.sub("shrunk"), &shrunk)
        .err()
        .map(|e| e.1);
    panic!(
        "{label}: {why}\nshrunk to {} operations:\n{}\nwhich give: {}",
        shrunk.len(),
        lines.join("\n"),
        again.unwrap_or_default()
    );
}

fn work_root(m: &Mounted, opts: &Options, reference: &Path) -> Sides {
    Sides {
        ours: m.path.join(&opts.under),
        reference: reference.to_path_buf(),
    }
}

/// After a remount: every tree reads back the same, times included, and still matches.
fn survives_remount(vol: &TestVolume, opts: &Options, reference: &Path, names: &[String]) {
    let before: Vec<Tree> = {
        let m = mount(vol, opts);
        let root = work_root(&m, opts, reference);
        names
            .iter()
            .map(|n| snapshot(&root.ours.join(n), true).unwrap())
            .collect()
    };
    vol.assert_fsck_clean();
    let m = mount(vol, opts);
    let root = work_root(&m, opts, reference);
    for (name, before) in names.iter().zip(before) {
        let after = snapshot(&root.ours.join(name), true).unwrap();
        let diff = differences(&after, &before);
        assert!(
            diff.is_empty(),
            "{name} after remount:\n  {}",
            diff.join("\n  ")
        );
        let sides = Sides {
            ours: root.ours.join(name),
            reference: root.reference.join(name),
        };
        compare_trees(&sides, &format!("{name} after remount")).unwrap();
        std::fs::remove_dir_all(&sides.ours)
            .unwrap_or_else(|e| panic!("rm -rf {name} on sealfs: {e}"));
    }
    drop(m);
    vol.assert_fsck_clean();
}

/// Seeds per mount: every seed's tree stays until the remount check, and a mount holds a
/// descriptor per directory the kernel keeps (its fd limit bounds one session, not a soak).
const SEEDS_PER_MOUNT: u64 = 250;

pub fn one_process(vol: &TestVolume, opts: &Options, seeds: std::ops::Range<u64>, count: usize) {
    let mut start = seeds.start;
    while start < seeds.end {
        let end = (start + SEEDS_PER_MOUNT).min(seeds.end);
        one_session(vol, opts, start..end, count);
        start = end;
    }
}

fn one_session(vol: &TestVolume, opts: &Options, seeds: std::ops::Range<u64>, count: usize) {
    let reference = tempfile::tempdir_in(vol.dir.path()).unwrap();
    let started = Instant::now();
    let (mut names, mut succeeded) = (Vec::new(), 0);
    {
        let m = mount(vol, opts);
        let root = work_root(&m, opts, reference.path());
        let scratch = root.sub("scratch");
        for seed in seeds.clone() {
            let name = format!("seed-{seed}");
            let sides = root.sub(&name);
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let pool = Pool::new(&mut rng);
            let ops = generate(&mut rng, &pool, count);
            match run_sequence(&sides, &ops) {
                Ok(n) => succeeded += n,
                Err((step, why)) => {
                    fail_with_shrunk(&scratch, &format!("seed {seed}"), &ops, step, why)
                }
            }
            names.push(name);
        }
        std::fs::remove_dir_all(&scratch.ours).unwrap();
    }
    eprintln!(
        "differential: {} seeds of {count} operations ({succeeded} succeeded) in {:.1} s",
        seeds.end - seeds.start,
        started.elapsed().as_secs_f64()
    );
    survives_remount(vol, opts, reference.path(), &names);
}

/// `workers` threads at once, each its own sequence in its own subtree (compared), and about
/// one operation in ten in a subtree they all share (results not compared: invariants only).
pub fn many_workers(
    vol: &TestVolume,
    opts: &Options,
    seeds: std::ops::Range<u64>,
    workers: u64,
    count: usize,
) {
    for seed in seeds {
        let reference = tempfile::tempdir_in(vol.dir.path()).unwrap();
        let m = mount(vol, opts);
        let root = work_root(&m, opts, reference.path());
        let shared = root.ours.join(format!("shared-{seed}"));
        std::fs::create_dir(&shared).unwrap();
        let shared_pool = std::sync::Arc::new(Pool::new(&mut Rng(seed | 1)));
        let names: Vec<String> = (0..workers).map(|w| format!("w{seed}-{w}")).collect();
        let threads: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(w, name)| {
                let sides = root.sub(name);
                let (shared, shared_pool) = (shared.clone(), shared_pool.clone());
                let mut rng = Rng((seed * 1000 + w as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
                std::thread::spawn(move || {
                    let pool = Pool::new(&mut rng);
                    let ops = generate(&mut rng, &pool, count);
                    for (i, op) in ops.iter().enumerate() {
                        if rng.below(10) == 0 {
                            let mine = generate(&mut rng, &shared_pool, 1).remove(0);
                            apply(&shared, &mine);
                        }
                        let (ours, reference) =
                            (apply(&sides.ours, op), apply(&sides.reference, op));
                        if ours != reference {
                            return Err(format!(
                                "step {i} {op:?}: sealfs {ours:?}, reference {reference:?}"
                            ));
                        }
                    }
                    compare_trees(&sides, "at the end")
                })
            })
            .collect();
        for (name, t) in names.iter().zip(threads) {
            if let Err(why) = t.join().unwrap() {
                panic!("worker seed {seed}, {name}: {why}");
            }
        }
        let listed = snapshot(&shared, false)
            .unwrap_or_else(|e| panic!("shared subtree of seed {seed}: {e}"));
        eprintln!(
            "differential: {workers} workers, seed {seed}: {} entries left in the shared subtree",
            listed.len()
        );
        drop(m);
        let mut all = names.clone();
        all.push(format!("shared-{seed}"));
        std::fs::create_dir(reference.path().join(format!("shared-{seed}"))).unwrap();
        copy_reference_of_shared(vol, opts, reference.path(), seed);
        survives_remount(vol, opts, reference.path(), &all);
    }
}

/// The shared subtree has no reference of its own: after the run, a copy of what the mount
/// shows becomes its reference, so the remount check compares it with itself.
fn copy_reference_of_shared(vol: &TestVolume, opts: &Options, reference: &Path, seed: u64) {
    let m = mount(vol, opts);
    let root = work_root(&m, opts, reference);
    let name = format!("shared-{seed}");
    let status = std::process::Command::new("cp")
        .args(["-a", "--no-preserve=timestamps", "-T"])
        .arg(root.ours.join(&name))
        .arg(reference.join(&name))
        .status()
        .unwrap();
    assert!(status.success(), "cp -a of the shared subtree");
}
