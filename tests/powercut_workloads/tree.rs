//! The namespace workload of tests/powercut.rs: files made, written, renamed (over others,
//! across directories), linked and unlinked in two directories, half of them under names of
//! 180 to 255 bytes (kept under `sealfs.long.*` names with sidecars in the cipher dir). Each
//! step ends with fsyncs of the file and of the directories it touched, as an application that
//! wants its names durable does; then the whole tree counts as acknowledged.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::common::Rng;

/// Path (under the root) to content.
pub type Tree = BTreeMap<String, Vec<u8>>;

const DIRS: [&str; 2] = ["a", "b"];

fn sync_dir(dir: &Path) {
    File::open(dir).unwrap().sync_all().unwrap();
}

fn random_bytes(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.next() as u8).collect()
}

/// The files of the tree and what they hold, the model of a run.
#[derive(Default)]
struct Model {
    /// Path to inode number (links share one).
    paths: BTreeMap<String, usize>,
    content: BTreeMap<usize, Vec<u8>>,
    serial: usize,
}

impl Model {
    fn tree(&self) -> Tree {
        self.paths
            .iter()
            .map(|(p, ino)| (p.clone(), self.content[ino].clone()))
            .collect()
    }

    /// A fresh path in a random directory: short, or 180 to 255 bytes.
    fn fresh(&mut self, rng: &mut Rng) -> String {
        self.serial += 1;
        let dir = DIRS[rng.below(2) as usize];
        let mut name = format!("f{}-", self.serial);
        if rng.below(2) == 0 {
            let len = 180 + rng.below(76) as usize;
            while name.len() < len {
                name.push((b'a' + rng.below(26) as u8) as char);
            }
        }
        format!("{dir}/{name}")
    }

    fn pick(&self, rng: &mut Rng) -> Option<String> {
        let n = self.paths.len() as u64;
        (n > 0).then(|| {
            self.paths
                .keys()
                .nth(rng.below(n) as usize)
                .unwrap()
                .clone()
        })
    }
}

fn dir_of(path: &str) -> &str {
    path.split_once('/').unwrap().0
}

/// Runs `steps` steps in `root`; `ack` gets the tree after each step's fsyncs returned.
pub fn run(root: &Path, rng: &mut Rng, steps: usize, mut ack: impl FnMut(Tree)) {
    for dir in DIRS {
        fs::create_dir(root.join(dir)).unwrap();
        sync_dir(&root.join(dir));
    }
    sync_dir(root);
    let mut m = Model::default();
    ack(m.tree());
    for _ in 0..steps {
        let roll = rng.below(100);
        let existing = m.pick(rng);
        match existing {
            Some(src) if roll < 25 => {
                // A rename: to a fresh name or over another file.
                let dst = match m.pick(rng) {
                    Some(dst) if rng.below(2) == 0 && m.paths[&dst] != m.paths[&src] => dst,
                    _ => m.fresh(rng),
                };
                fs::rename(root.join(&src), root.join(&dst)).unwrap();
                let ino = m.paths.remove(&src).unwrap();
                if let Some(old) = m.paths.insert(dst.clone(), ino)
                    && !m.paths.values().any(|&i| i == old)
                {
                    m.content.remove(&old);
                }
                sync_dir(&root.join(dir_of(&src)));
                sync_dir(&root.join(dir_of(&dst)));
            }
            Some(path) if roll < 40 => {
                fs::remove_file(root.join(&path)).unwrap();
                let ino = m.paths.remove(&path).unwrap();
                if !m.paths.values().any(|&i| i == ino) {
                    m.content.remove(&ino);
                }
                sync_dir(&root.join(dir_of(&path)));
            }
            Some(path) if roll < 50 => {
                let to = m.fresh(rng);
                fs::hard_link(root.join(&path), root.join(&to)).unwrap();
                m.paths.insert(to.clone(), m.paths[&path]);
                sync_dir(&root.join(dir_of(&to)));
            }
            Some(path) if roll < 70 => {
                // An overwrite or an append, through one of the file's names.
                let ino = m.paths[&path];
                let data = m.content.get_mut(&ino).unwrap();
                let f = OpenOptions::new()
                    .write(true)
                    .open(root.join(&path))
                    .unwrap();
                let at = rng.below(data.len() as u64 + 1) as usize;
                let len = 1 + rng.below(6000) as usize;
                let bytes = random_bytes(rng, len);
                f.write_all_at(&bytes, at as u64).unwrap();
                f.sync_all().unwrap();
                data.resize(data.len().max(at + bytes.len()), 0);
                data[at..at + bytes.len()].copy_from_slice(&bytes);
            }
            _ => {
                let path = m.fresh(rng);
                let len = rng.below(9000) as usize;
                let bytes = random_bytes(rng, len);
                let mut f = File::create(root.join(&path)).unwrap();
                f.write_all(&bytes).unwrap();
                f.sync_all().unwrap();
                sync_dir(&root.join(dir_of(&path)));
                m.serial += 1;
                m.paths.insert(path, m.serial);
                m.content.insert(m.serial, bytes);
            }
        }
        ack(m.tree());
    }
}

/// The files of the tree at `root`, as read (an error where a read failed).
fn read_tree(root: &Path) -> BTreeMap<String, Result<Vec<u8>, String>> {
    let mut out = BTreeMap::new();
    for dir in DIRS {
        let Ok(entries) = fs::read_dir(root.join(dir)) else {
            continue;
        };
        for entry in entries {
            let name = match entry {
                Ok(e) => e.file_name().to_string_lossy().into_owned(),
                Err(e) => {
                    out.insert(format!("{dir}/<readdir>"), Err(e.to_string()));
                    continue;
                }
            };
            let path = format!("{dir}/{name}");
            out.insert(
                path.clone(),
                fs::read(root.join(&path)).map_err(|e| e.to_string()),
            );
        }
    }
    out
}

/// Checks the tree at `root` against the acknowledged one and the one the step in flight
/// would make: the names are one or the other (a step is atomic), and each acknowledged byte
/// reads back as it was or as the step in flight wrote it. Returns the acknowledged files
/// lost or wrong, each named on stderr.
pub fn check(root: &Path, acked: &Tree, next: Option<&Tree>) -> u64 {
    let found = read_tree(root);
    let names = |t: &Tree| t.keys().cloned().collect::<BTreeSet<_>>();
    let found_names: BTreeSet<String> = found.keys().cloned().collect();
    let mut wrong = 0;
    if found_names != names(acked) && next.is_none_or(|n| found_names != names(n)) {
        eprintln!(
            "tree: names neither acknowledged nor next: {:?} against {:?}",
            found_names
                .symmetric_difference(&names(acked))
                .collect::<Vec<_>>(),
            next.map(|n| found_names
                .symmetric_difference(&names(n))
                .cloned()
                .collect::<Vec<_>>())
        );
        wrong += 1;
    }
    for (path, got) in &found {
        let a = acked.get(path);
        let n = next.and_then(|t| t.get(path));
        let got = match got {
            Ok(got) => got,
            Err(e) => {
                eprintln!("tree: {path}: {e}");
                wrong += 1;
                continue;
            }
        };
        let Some(a) = a else { continue };
        // As acknowledged, or as the step in flight left it (a rename over it: all of it the
        // other file's, however short).
        let kept = (0..a.len())
            .all(|i| got.get(i) == a.get(i) || n.is_some_and(|n| got.get(i) == n.get(i)));
        if !kept {
            eprintln!(
                "tree: {path}: acknowledged bytes lost ({} of {} back)",
                got.len(),
                a.len()
            );
            wrong += 1;
        }
    }
    wrong
}
