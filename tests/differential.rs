//! The differential stress harness: seeded sequences of every namespace, data and attribute
//! operation (names of every length class, around the long-name boundary and at 255 bytes;
//! symlink targets up to 4,095 bytes; sizes crossing block boundaries; hard links; renames
//! with RENAME_NOREPLACE, EXCHANGE and WHITEOUT; xattrs; every fallocate mode sealfs keeps;
//! writes by a user without CAP_FSETID) applied at once to a sealfs mount and to a plain
//! directory on the same filesystem as the cipher dir.
//!
//! One process: each operation's result (or errno) must match the reference, and so must the
//! whole tree (names, types, modes, owners, link counts, sizes, content hashes, targets,
//! xattrs, which names share an inode) every 100 operations, at the end and after a remount;
//! modification times must survive the remount. A failing seed is shrunk to a short sequence
//! and printed. Many workers: each in a subtree of its own, compared the same way, plus a
//! shared subtree where all of them work at once, checked by invariants (every listed entry
//! can be looked at and read, `rm -rf` succeeds, fsck finds nothing).
//!
//! CI runs a fixed sample of seeds. A soak is one command (README, "The two commands"):
//!   SEALFS_DIFF_SEEDS=0..10000 SEALFS_DIFF_WORKER_SEEDS=0..1000 \
//!     cargo test --release --test differential -- --nocapture --test-threads 1 \
//!     one_process many_workers

mod common;

#[path = "differential/apply.rs"]
mod apply;
#[path = "differential/ops.rs"]
mod ops;
#[path = "differential/run.rs"]
mod run;
#[path = "differential/tree.rs"]
mod tree;

use std::ops::Range;

use common::TestVolume;
use run::{Options, many_workers, one_process};

fn seeds(var: &str, default: Range<u64>) -> Range<u64> {
    match std::env::var(var) {
        Ok(text) => {
            let (a, b) = text.split_once("..").expect("SEEDS as START..END");
            a.parse().unwrap()..b.parse().unwrap()
        }
        Err(_) => default,
    }
}

fn op_count() -> usize {
    std::env::var("SEALFS_DIFF_OPS").map_or(1000, |n| n.parse().unwrap())
}

#[test]
fn one_process_matches_a_plain_directory() {
    common::require_root("allow_other, chown, mknod of a device, writes as another user");
    let vol = TestVolume::new();
    one_process(
        &vol,
        &Options::default(),
        seeds("SEALFS_DIFF_SEEDS", 0..100),
        op_count(),
    );
}

#[test]
fn many_workers_match_and_keep_a_shared_subtree_whole() {
    common::require_root("allow_other, chown, mknod of a device, writes as another user");
    let vol = TestVolume::new();
    many_workers(
        &vol,
        &Options::default(),
        seeds("SEALFS_DIFF_WORKER_SEEDS", 0..4),
        20,
        op_count() / 2,
    );
}

#[test]
fn without_the_writeback_cache() {
    common::require_root("allow_other, chown, mknod of a device, writes as another user");
    let vol = TestVolume::new();
    let opts = Options {
        mount: vec!["--no-writeback-cache".into()],
        ..Options::default()
    };
    one_process(
        &vol,
        &opts,
        seeds("SEALFS_DIFF_SEEDS", 1000..1020),
        op_count(),
    );
}

#[test]
fn on_a_shared_mount() {
    common::require_root("allow_other, chown, mknod of a device, writes as another user");
    let vol = TestVolume::new();
    let opts = Options {
        mount: vec!["-o".into(), "shared".into()],
        ..Options::default()
    };
    one_process(
        &vol,
        &opts,
        seeds("SEALFS_DIFF_SEEDS", 2000..2020),
        op_count(),
    );
    many_workers(&vol, &opts, 2000..2002, 8, op_count() / 2);
}

#[test]
fn in_a_tenant_directory() {
    common::require_root("allow_other, chown, mknod of a device, writes as another user");
    let vol = TestVolume::new();
    let key = vol.dir.path().join("tenant.key");
    {
        let m = vol.mount();
        std::fs::create_dir(m.p("tenant")).unwrap();
    }
    common::set_keyfile_policy(&vol, "/tenant", &key, "tenant");
    let opts = Options {
        under: "tenant".into(),
        ..Options::default()
    };
    one_process(
        &vol,
        &opts,
        seeds("SEALFS_DIFF_SEEDS", 3000..3020),
        op_count(),
    );
}
