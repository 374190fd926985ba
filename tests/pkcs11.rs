//! Volumes whose master key is an AES-256 key on a PKCS#11 token (SoftHSM2, a token the test
//! makes). Nothing here mocks PKCS#11.

mod common;

use std::fs;

use common::services::{KEYS, PIN, SoftHsm, hsm_key_args, softhsm};
use common::{TestVolume, stderr};

crate::make_hsm_keys_helper!();

fn pin_file(vol: &TestVolume, pin: &str) -> String {
    let path = vol.dir.path().join(format!("pin-{}", pin.len()));
    fs::write(&path, format!("{pin}\n")).unwrap();
    path.to_string_lossy().into_owned()
}

/// A volume under `key` on `hsm` (each test has a token of its own: `softhsm`).
fn hsm_volume(hsm: &SoftHsm, key: &str) -> (TestVolume, String) {
    let dir = tempfile::tempdir().unwrap();
    let pin = dir.path().join("pin");
    fs::write(&pin, format!("{PIN}\n")).unwrap();
    let pin = pin.to_string_lossy().into_owned();
    let vol = TestVolume::with_env(
        &[&hsm_key_args(key)[..], &["--pin-file", &pin]].concat(),
        hsm.env(),
    );
    // Keep the PIN file alive with the volume.
    let kept = vol.dir.path().join("pin");
    fs::copy(&pin, &kept).unwrap();
    (vol, kept.to_string_lossy().into_owned())
}

#[test]
fn hsm_volume_round_trip() {
    let hsm = softhsm();
    let (vol, pin) = hsm_volume(&hsm, KEYS[0]);
    let config = fs::read_to_string(vol.cipher.join("sealfs.conf")).unwrap();
    assert!(config.contains("\"provider\": \"pkcs11\""), "{config}");
    assert!(!config.contains(PIN), "the PIN is never stored");
    let m = vol.mount_with(&["--pin-file", &pin]);
    fs::write(m.p("x"), b"sealed by the token").unwrap();
    m.unmount();
    let m = vol.mount_with(&["--pin-file", &pin]);
    assert_eq!(fs::read(m.p("x")).unwrap(), b"sealed by the token");
    m.unmount();
    // The PIN may also come from the environment; daemon mode initializes after the fork.
    let mut env = vol.env.clone();
    env.push(("SEALFS_PKCS11_PIN".into(), PIN.into()));
    let mnt = fs::canonicalize(&vol.mnt).unwrap();
    let out = common::sealfs_env(
        &vol.keys,
        &env,
        &["mount", vol.cipher_str(), mnt.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fs::read(mnt.join("x")).unwrap(), b"sealed by the token");
    let out = vol.run(&["umount", mnt.to_str().unwrap()]);
    assert!(out.status.success());
}

#[test]
fn wrong_pin_and_missing_pin_are_clear_errors() {
    let hsm = softhsm();
    let (vol, pin) = hsm_volume(&hsm, KEYS[0]);
    let bad = pin_file(&vol, "0000");
    let out = vol.run(&[
        "mount",
        vol.cipher_str(),
        vol.mnt.to_str().unwrap(),
        "--pin-file",
        &bad,
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("login"), "{}", stderr(&out));
    let out = vol.run(&["mount", vol.cipher_str(), vol.mnt.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--pin-file"), "{}", stderr(&out));
    // The right PIN still opens the token after a wrong one.
    let m = vol.mount_with(&["--pin-file", &pin]);
    m.unmount();
}

#[test]
fn hsm_and_keyfile_slots_and_swapped_slots() {
    let hsm = softhsm();
    let (a, pin) = hsm_volume(&hsm, KEYS[0]);
    let recovery = a.dir.path().join("recovery.key");
    let out = a.run(&[
        "key",
        "add",
        a.cipher_str(),
        "--keyfile",
        recovery.to_str().unwrap(),
        "--pin-file",
        &pin,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let m = a.mount_with(&["--keyfile", recovery.to_str().unwrap()]);
    fs::write(m.p("f"), b"two keys").unwrap();
    m.unmount();
    // Another volume's HSM slot key under this volume's context: the token refuses it.
    let (b, _) = hsm_volume(&hsm, KEYS[0]);
    common::transplant_slot_key(&a, &b);
    let out = b.run(&[
        "mount",
        b.cipher_str(),
        b.mnt.to_str().unwrap(),
        "--pin-file",
        &pin,
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("C_Decrypt"), "{}", stderr(&out));
}
