//! The operations of the differential harness and their seeded generator. An operation names
//! paths relative to a work root, so one sequence can be applied to a sealfs mount and to a
//! plain reference directory alike (and replayed, shrunk, in a fresh root).

use crate::common::Rng;

/// Names of every length class: short, around the length where a sealed name stops fitting
/// in a backing entry (a long name with a `.name` sidecar), and at the 255-byte limit.
pub struct Pool {
    names: Vec<String>,
    dirs: Vec<String>,
}

const NAME_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789._-";

fn name(rng: &mut Rng, len: usize) -> String {
    let mut s: String = (0..len)
        .map(|_| NAME_CHARS[rng.below(NAME_CHARS.len() as u64) as usize] as char)
        .collect();
    if s.starts_with('.') {
        s.replace_range(0..1, "n");
    }
    s
}

impl Pool {
    pub fn new(rng: &mut Rng) -> Pool {
        let mut names = Vec::new();
        for class in 0..6u64 {
            let len = match class {
                0 | 1 | 4 => 1 + rng.below(8) as usize,
                2 | 5 => 140 + rng.below(45) as usize,
                _ => 250 + rng.below(6) as usize,
            };
            names.push(name(rng, len));
        }
        // Directories: the work root, one and two levels below it, one under a long name.
        let dirs = vec![
            String::new(),
            names[0].clone(),
            format!("{}/{}", names[0], names[1]),
            names[3].clone(),
        ];
        Pool { names, dirs }
    }

    pub fn path(&self, rng: &mut Rng) -> String {
        // Half the paths are in the work root, where most entries are.
        let dir = match rng.below(6) {
            0..=2 => &self.dirs[0],
            n => &self.dirs[n as usize - 2],
        };
        let name = &self.names[rng.below(self.names.len() as u64) as usize];
        if dir.is_empty() {
            name.clone()
        } else {
            format!("{dir}/{name}")
        }
    }
}

#[derive(Clone, Debug)]
pub enum Op {
    Create {
        path: String,
        mode: u32,
    },
    /// `as_user`: written by uid 1000 without CAP_FSETID (set-id bits must go).
    Write {
        path: String,
        offset: u64,
        len: usize,
        fill: u8,
        append: bool,
        as_user: bool,
    },
    Truncate {
        path: String,
        size: u64,
    },
    Fallocate {
        path: String,
        mode: i32,
        offset: u64,
        len: u64,
    },
    Rename {
        from: String,
        to: String,
        flags: u32,
    },
    Link {
        from: String,
        to: String,
    },
    Unlink {
        path: String,
    },
    Mkdir {
        path: String,
    },
    Rmdir {
        path: String,
    },
    Symlink {
        target: String,
        path: String,
    },
    Mknod {
        path: String,
        fifo: bool,
    },
    SetXattr {
        path: String,
        name: u8,
        len: usize,
        fill: u8,
        flags: i32,
    },
    RemoveXattr {
        path: String,
        name: u8,
    },
    Chown {
        path: String,
        uid: u32,
        gid: u32,
    },
    Chmod {
        path: String,
        mode: u32,
    },
    Utimes {
        path: String,
        secs: i64,
        nanos: i64,
    },
    Read {
        path: String,
    },
    /// Read as `cp` reads a sparse file (SEEK_DATA, SEEK_HOLE).
    SparseRead {
        path: String,
    },
    Fsync {
        path: String,
    },
    /// setfacl: an access or default ACL of owner, group and other permissions, named users
    /// and groups (1000, 1001) with their mask; or its removal (`perms` empty).
    SetAcl {
        path: String,
        default: bool,
        /// owner, group, other, mask.
        perms: Vec<u16>,
        named: Vec<(bool, u32, u16)>,
    },
}

const MODES: [u32; 9] = [
    0o644, 0o755, 0o4755, 0o6777, 0o2757, 0o2745, 0o1777, 0o600, 0o4777,
];
const BLOCK: u64 = 4096;

/// An offset or length that often falls on or beside a block boundary.
fn around_blocks(rng: &mut Rng, blocks: u64) -> u64 {
    let base = rng.below(blocks) * BLOCK;
    match rng.below(4) {
        0 => base,
        1 => base.saturating_sub(1 + rng.below(16)),
        2 => base + 1 + rng.below(16),
        _ => base + rng.below(BLOCK),
    }
}

/// A symlink target that never resolves (relative, its first component starts with a
/// character no pool name has), of any length up to PATH_MAX - 1, so following it fails alike
/// on both sides and never leaves the tree.
fn target(rng: &mut Rng) -> String {
    let len = match rng.below(4) {
        0 => 1 + rng.below(40) as usize,
        1 => 100 + rng.below(200) as usize,
        2 => 1000 + rng.below(1000) as usize,
        _ => 4095 - rng.below(8) as usize,
    };
    let mut t = String::from("~nowhere/");
    while t.len() < len {
        let len = 1 + rng.below(60) as usize;
        let part = name(rng, len);
        t.push_str(&part);
        t.push('/');
    }
    t.truncate(len);
    t
}

/// `count` operations; a sequence of more than a few starts by making the pool's directories
/// (they may go again later, like anything else).
pub fn generate(rng: &mut Rng, pool: &Pool, count: usize) -> Vec<Op> {
    let dirs = pool.dirs[1..].iter().map(|d| Op::Mkdir { path: d.clone() });
    let made = if count > 10 {
        dirs.collect()
    } else {
        Vec::new()
    };
    let rest = count - made.len();
    made.into_iter()
        .chain((0..rest).map(|_| one(rng, pool)))
        .collect()
}

fn one(rng: &mut Rng, pool: &Pool) -> Op {
    let path = pool.path(rng);
    match rng.below(104) {
        0..=7 => Op::Create {
            path,
            mode: MODES[rng.below(MODES.len() as u64) as usize],
        },
        8..=24 => Op::Write {
            path,
            offset: if rng.below(10) == 0 {
                around_blocks(rng, 256)
            } else {
                around_blocks(rng, 8)
            },
            len: 1 + around_blocks(rng, 3) as usize,
            fill: rng.next() as u8,
            append: rng.below(5) == 0,
            as_user: rng.below(5) == 0,
        },
        25..=30 => Op::Truncate {
            path,
            size: around_blocks(rng, 10),
        },
        31..=35 => Op::Fallocate {
            path,
            mode: [
                0,
                libc::FALLOC_FL_KEEP_SIZE,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                libc::FALLOC_FL_ZERO_RANGE,
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            ][rng.below(5) as usize],
            offset: around_blocks(rng, 8),
            len: 1 + around_blocks(rng, 4),
        },
        36..=48 => Op::Rename {
            from: path,
            to: pool.path(rng),
            flags: match rng.below(10) {
                0..=5 => 0,
                6 => libc::RENAME_NOREPLACE,
                7 | 8 => libc::RENAME_EXCHANGE,
                _ => libc::RENAME_WHITEOUT,
            },
        },
        49..=54 => Op::Link {
            from: path,
            to: pool.path(rng),
        },
        55..=62 => Op::Unlink { path },
        63..=69 => Op::Mkdir { path },
        70..=73 => Op::Rmdir { path },
        74..=78 => Op::Symlink {
            target: target(rng),
            path,
        },
        79..=80 => Op::Mknod {
            path,
            fifo: rng.below(4) != 0,
        },
        81..=85 => Op::SetXattr {
            path,
            name: rng.below(4) as u8,
            len: rng.below(300) as usize,
            fill: rng.next() as u8,
            flags: [0, 0, libc::XATTR_CREATE, libc::XATTR_REPLACE][rng.below(4) as usize],
        },
        86..=87 => Op::RemoveXattr {
            path,
            name: rng.below(4) as u8,
        },
        88 => Op::Chown {
            path,
            uid: [0, 1000, 1001][rng.below(3) as usize],
            gid: [0, 1000, 1001][rng.below(3) as usize],
        },
        89..=91 => Op::Chmod {
            path,
            mode: MODES[rng.below(MODES.len() as u64) as usize],
        },
        92..=93 => Op::Utimes {
            path,
            secs: match rng.below(3) {
                0 => -(rng.below(2_000_000_000) as i64),
                _ => rng.below(4_000_000_000) as i64,
            },
            nanos: rng.below(1_000_000_000) as i64,
        },
        94..=95 => Op::Read { path },
        96..=97 => Op::SparseRead { path },
        98..=99 => Op::Fsync { path },
        _ => Op::SetAcl {
            path,
            default: rng.below(3) == 0,
            perms: if rng.below(6) == 0 {
                Vec::new()
            } else {
                (0..4).map(|_| rng.below(8) as u16).collect()
            },
            named: {
                let mut named = Vec::new();
                for (user, id) in [(true, 1000), (true, 1001), (false, 1000), (false, 1001)] {
                    if rng.below(3) == 0 {
                        named.push((user, id, rng.below(8) as u16));
                    }
                }
                named
            },
        },
    }
}
