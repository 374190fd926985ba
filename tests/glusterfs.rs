//! sealfs on GlusterFS (Debian's glusterfs-server, installed by .ci/setup): one brick, two
//! FUSE clients standing for two hosts. With the volume's default options its client caches
//! serve one host what the other changed, so `-o shared` is refused naming the options to
//! turn off; with them off, two hosts appending to one file keep every line, authentication
//! never fails, and programs' locks are exact.

mod common;

use std::time::Duration;

use common::gluster::{CACHES_OFF, GlusterFs};
use common::lock_counters::run_counters;
use common::{Mounted, TestVolume, ok, sealfs};

/// A new volume on the first client, and the host of each client.
fn hosts(gluster: &GlusterFs) -> Vec<TestVolume> {
    let keys = gluster.dir.path().join("keys");
    let cipher = gluster.mounts[0].join("vault");
    ok(sealfs(&keys, &["init", cipher.to_str().unwrap()]));
    gluster
        .mounts
        .iter()
        .map(|m| TestVolume::existing(tempfile::tempdir().unwrap(), m.join("vault"), keys.clone()))
        .collect()
}

fn authentication_failures(vol: &TestVolume, m: &Mounted) -> u64 {
    let out = vol.run(&["stats", m.path.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "stats: {}", common::stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["integrity_failures"]
        .as_object()
        .map_or(0, |kinds| kinds.values().filter_map(|n| n.as_u64()).sum())
}

#[test]
fn default_options_refuse_shared_mounts_naming_the_options() {
    common::require_root("glusterd and mount -t glusterfs");
    let gluster = GlusterFs::start(1, &[]);
    let host = hosts(&gluster).remove(0);
    let mountpoint = host.dir.path().join("m");
    std::fs::create_dir(&mountpoint).unwrap();
    let out = host.run(&[
        "mount",
        host.cipher_str(),
        mountpoint.to_str().unwrap(),
        "-o",
        "shared",
    ]);
    let err = common::stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "gluster volume set {} performance.quick-read off",
            gluster.volume
        )),
        "{err}"
    );
    // A lone mount (one host) is fine.
    let m = host.mount();
    std::fs::write(m.p("f"), b"lone").unwrap();
    assert_eq!(std::fs::read(m.p("f")).unwrap(), b"lone");
}

#[test]
fn with_caches_off_two_hosts_keep_every_append_and_lock() {
    common::require_root("glusterd and mount -t glusterfs");
    const LINES: usize = 300;
    let gluster = GlusterFs::start(2, &CACHES_OFF);
    let mut both = hosts(&gluster);
    let host_b = both.pop().unwrap();
    let host_a = both.pop().unwrap();
    let a = host_a.mount_with(&["-o", "shared"]);
    let b = host_b.mount_with(&["-o", "shared"]);
    std::fs::write(a.p("log"), b"").unwrap();
    let writers: Vec<_> = [(a.p("log"), 'A'), (b.p("log"), 'B')]
        .into_iter()
        .map(|(log, tag)| {
            move || {
                for i in 0..LINES {
                    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
                    std::io::Write::write_all(&mut f, format!("{tag} {i:04}\n").as_bytes())
                        .unwrap_or_else(|e| panic!("{tag} line {i}: {e}"));
                }
            }
        })
        .collect();
    common::run_together(Duration::from_secs(300), writers);
    let text = String::from_utf8(std::fs::read(b.p("log")).unwrap()).unwrap();
    for tag in ['A', 'B'] {
        let mine: Vec<&str> = text.lines().filter(|l| l.starts_with(tag)).collect();
        assert_eq!(mine.len(), LINES, "{tag}'s lines");
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "{tag}'s lines in order"
        );
    }
    for kind in ["flock", "lockf"] {
        std::fs::write(a.p(kind), format!("{:020}", 0)).unwrap();
        run_counters(&[&a.p(kind), &b.p(kind)], kind, 40);
        let count: usize = std::fs::read_to_string(b.p(kind)).unwrap().parse().unwrap();
        assert_eq!(count, 80, "{kind}");
    }
    assert_eq!(authentication_failures(&host_a, &a), 0);
    assert_eq!(authentication_failures(&host_b, &b), 0);
    drop((a, b));
    host_a.assert_fsck_clean();
}
