//! Volumes whose master key lives in AWS KMS, against moto's KMS server through a
//! fault-injecting proxy. Nothing here mocks KMS.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::services::{Fault, Kms, kms, kms_env};
use common::{TestVolume, files_under, stderr};

fn kms_volume(kms: &Kms) -> TestVolume {
    TestVolume::with_env(&["--kms", &kms.key], kms_env(&kms.proxy.endpoint()))
}

#[test]
fn kms_volume_round_trip_needs_no_local_key() {
    let kms = kms();
    let vol = kms_volume(&kms);
    assert!(!vol.keys.exists(), "a KMS volume writes no key file");
    let config = fs::read_to_string(vol.cipher.join("sealfs.conf")).unwrap();
    assert!(
        config.contains("\"provider\": \"aws-kms\"") && config.contains("\"format_version\": 2"),
        "{config}"
    );
    assert!(config.contains(&kms.key), "the slot records the key ARN");
    let m = vol.mount();
    fs::write(m.p("backup.tar"), b"nightly backup").unwrap();
    m.unmount();
    let before = kms.proxy.count("Decrypt");
    let m = vol.mount();
    assert_eq!(fs::read(m.p("backup.tar")).unwrap(), b"nightly backup");
    m.unmount();
    assert_eq!(
        kms.proxy.count("Decrypt") - before,
        1,
        "volume mode: one KMS call per mount"
    );
    let listed = vol.run(&["key", "list", vol.cipher_str()]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("aws-kms"));
}

#[test]
fn kms_and_recovery_keyfile_each_mount_alone() {
    let kms = kms();
    let vol = kms_volume(&kms);
    let recovery = vol.dir.path().join("recovery.key");
    let out = vol.run(&[
        "key",
        "add",
        vol.cipher_str(),
        "--keyfile",
        recovery.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let m = vol.mount();
    fs::write(m.p("f"), b"both keys").unwrap();
    m.unmount();
    // KMS down: the recovery key still mounts.
    kms.proxy.set(Fault::Down);
    let m = vol.mount_with(&["--keyfile", recovery.to_str().unwrap()]);
    assert_eq!(fs::read(m.p("f")).unwrap(), b"both keys");
    m.unmount();
    kms.proxy.set(Fault::Pass);
    // Remove the KMS slot with the recovery key; the last slot cannot go.
    let out = vol.run(&[
        "key",
        "remove",
        vol.cipher_str(),
        "0",
        "--unlock-keyfile",
        recovery.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = vol.run(&[
        "key",
        "remove",
        vol.cipher_str(),
        "1",
        "--unlock-keyfile",
        recovery.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("last one"), "{}", stderr(&out));
    let config = fs::read_to_string(vol.cipher.join("sealfs.conf")).unwrap();
    assert!(
        config.contains("\"format_version\": 1"),
        "without KMS slots the config is v1 again"
    );
}

#[test]
fn swapped_keyslots_and_foreign_contexts_are_refused() {
    let kms = kms();
    let a = kms_volume(&kms);
    let b = kms_volume(&kms);
    common::transplant_slot_key(&a, &b);
    let out = b.run(&["mount", b.cipher_str(), b.mnt.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("Decrypt"), "{}", stderr(&out));
    assert_eq!(stderr(&out).trim().lines().count(), 1);
}

#[test]
fn kms_outage_keeps_a_mounted_volume_working_and_mounts_fail_promptly() {
    let kms = kms();
    let vol = kms_volume(&kms);
    let m = vol.mount();
    fs::write(m.p("before"), b"1").unwrap();
    kms.proxy.set(Fault::Down);
    fs::write(m.p("during"), b"2").unwrap();
    assert_eq!(fs::read(m.p("before")).unwrap(), b"1");
    // A second mount cannot unlock: a clear error, bounded in time.
    let other = vol.dir.path().join("other");
    fs::create_dir(&other).unwrap();
    let started = Instant::now();
    let out = vol.run(&["mount", vol.cipher_str(), other.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    assert!(stderr(&out).contains("AWS KMS key"), "{}", stderr(&out));
    kms.proxy.set(Fault::Pass);
    m.unmount();
    let m = vol.mount();
    assert_eq!(fs::read(m.p("during")).unwrap(), b"2");
    m.unmount();
}

#[test]
fn throttling_and_disabled_keys_give_clear_errors_and_recover() {
    let kms = kms();
    let vol = kms_volume(&kms);
    for (fault, expect) in [
        (
            Fault::Error(400, "ThrottlingException"),
            "ThrottlingException",
        ),
        (Fault::Error(400, "DisabledException"), "DisabledException"),
        (
            Fault::Error(503, "KMSInternalException"),
            "KMSInternalException",
        ),
    ] {
        kms.proxy.set(fault);
        let out = vol.run(&["mount", vol.cipher_str(), vol.mnt.to_str().unwrap()]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains(expect), "{expect}: {}", stderr(&out));
    }
    kms.proxy.set(Fault::Pass);
    let m = vol.mount();
    fs::write(m.p("ok"), b"recovered").unwrap();
    m.unmount();
    assert!(files_under(&vol.cipher).len() >= 2);
}

/// A backup server's day: the plaintext tree's key in KMS, its encrypted view copied off, and
/// restored from the copy by KMS alone. One KMS call per mount of the view; a KMS outage at
/// mount time is a clear error and the next mount works once KMS is back.
#[test]
fn reverse_view_with_a_kms_key() {
    let kms = kms();
    let dir = common::test_dir();
    let plain = dir.path().join("plain");
    fs::create_dir_all(plain.join("etc")).unwrap();
    fs::write(plain.join("etc/hosts"), b"127.0.0.1 localhost\n").unwrap();
    let env = kms_env(&kms.proxy.endpoint());
    let keys = dir.path().join("keys");
    let init = common::sealfs_env(
        &keys,
        &env,
        &[
            "init",
            "--reverse",
            plain.to_str().unwrap(),
            "--kms",
            &kms.key,
        ],
    );
    assert!(init.status.success(), "{}", stderr(&init));
    let mut vol = TestVolume::existing(dir, plain, keys);
    vol.env = env;

    kms.proxy.set(Fault::Down);
    let mnt = vol.mnt.to_str().unwrap().to_string();
    let down = vol.run(&["mount", "--reverse", vol.cipher_str(), &mnt]);
    assert!(!down.status.success(), "mounted without KMS");
    kms.proxy.set(Fault::Pass);

    let before = kms.proxy.count("Decrypt");
    let view = vol.mount_with(&["--reverse"]);
    let copy = vol.dir.path().join("copy");
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", view.path.display()))
        .arg(&copy)
        .output()
        .unwrap();
    assert!(cp.status.success(), "{}", stderr(&cp));
    drop(view);
    assert_eq!(
        kms.proxy.count("Decrypt") - before,
        1,
        "one KMS call per view mount"
    );

    let mut restore = TestVolume::existing(common::test_dir(), copy, vol.keys.clone());
    restore.env = vol.env.clone();
    let m = restore.mount();
    assert_eq!(
        fs::read(m.p("etc/hosts")).unwrap(),
        b"127.0.0.1 localhost\n"
    );
}
