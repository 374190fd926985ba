//! Key policies: one volume, many tenants, each under its own master key. Real mounts, with
//! moto standing for KMS (one key per tenant, reached through the fault proxy, which answers
//! for a key moto has disabled or scheduled for deletion as KMS would: moto records key
//! states but does not enforce them) and SoftHSM2 for a PKCS#11 tenant.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::services::{KEYS, Kms, PIN, hsm_key_args, kms, kms_env, softhsm};
use common::xattrs::{get_xattr, list_xattrs, set_xattr};
use common::{TestVolume, files_under, stderr};

#[path = "tenants/policy_changes.rs"]
mod policy_changes;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

crate::make_hsm_keys_helper!();

const EKEYREVOKED: i32 = 128;
/// The mounts here keep keys this long: the bound within which a disabled key bites.
const BOUND_SECS: u64 = 2;

fn ok(out: std::process::Output) -> String {
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A volume under a local key file, with tenants a and b under KMS keys of their own.
struct Tenants {
    kms: Kms,
    vol: TestVolume,
    key_a: String,
    key_b: String,
}

fn two_kms_tenants() -> Tenants {
    let kms = kms();
    let key_a = kms.key.clone();
    let key_b = kms.moto.create_key();
    let vol = TestVolume::with_env(&[], kms_env(&kms.proxy.endpoint()));
    for (path, key, label) in [
        ("/clients/a", &key_a, "acme"),
        ("/clients/b", &key_b, "beta"),
    ] {
        let out = ok(vol.run(&[
            "policy",
            "set",
            vol.cipher_str(),
            path,
            "--kms",
            key,
            "--label",
            label,
        ]));
        assert!(out.contains(label), "{out}");
    }
    Tenants {
        kms,
        vol,
        key_a,
        key_b,
    }
}

fn errno(result: std::io::Result<impl Sized>) -> i32 {
    match result {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

/// The backing directory carrying the marker of policy `id`.
fn policy_dir(cipher: &Path, id: u32) -> PathBuf {
    files_under(cipher)
        .into_iter()
        .find(|p| {
            p.file_name().is_some_and(|n| n == "sealfs.policy")
                && fs::read(p).unwrap()[8..] == id.to_be_bytes()
        })
        .unwrap_or_else(|| panic!("no marker of policy {id}"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The data files directly in backing directory `dir`.
fn data_files(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.is_file()
                && !p
                    .file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .starts_with("sealfs.")
        })
        .collect()
}

#[test]
fn a_disabled_tenant_key_stops_only_that_tenant_and_comes_back_without_a_remount() {
    let t = two_kms_tenants();
    let bound = BOUND_SECS.to_string();
    let mounted = std::time::Instant::now();
    let m = t.vol.mount_with(&["--key-cache-max-age", &bound]);
    fs::create_dir(m.p("plain")).unwrap();
    for (dir, n) in [("clients/a", 10), ("clients/b", 10), ("plain", 3)] {
        for i in 0..n {
            fs::write(m.p(&format!("{dir}/f{i}")), format!("{dir} {i}")).unwrap();
        }
    }
    symlink("../b/f0", m.p("clients/a/link")).unwrap();
    symlink("unread", m.p("clients/a/link2")).unwrap();
    assert_eq!(
        fs::read_link(m.p("clients/a/link")).unwrap(),
        Path::new("../b/f0")
    );

    // One KMS call per tenant (per cache bound, should the creates above outlast one), not
    // per file: every file of a tenant is under its KEK.
    let decrypts = t.kms.proxy.bodies("Decrypt");
    let bounds = 1 + mounted.elapsed().as_secs() / BOUND_SECS;
    assert!(
        decrypts.len() >= 2 && decrypts.len() as u64 <= 2 * bounds,
        "one unseal per tenant and cache bound ({bounds} bound(s)): {decrypts:?}"
    );
    let contexts: Vec<&serde_json::Value> =
        decrypts.iter().map(|b| &b["EncryptionContext"]).collect();
    for (context, (tenant, key)) in contexts.iter().zip([("1", &t.key_a), ("2", &t.key_b)]) {
        assert_eq!(context["sealfs:tenant"], tenant, "{context}");
        assert_eq!(context["sealfs:purpose"], "tenant-key", "{context}");
        assert_eq!(
            context["sealfs:volume-id"].as_str().unwrap().len(),
            32,
            "{context}"
        );
        assert!(
            decrypts
                .iter()
                .any(|b| b["KeyId"] == key.as_str() && b["EncryptionContext"] == **context),
            "tenant {tenant}'s unwrap goes to its own key"
        );
    }

    // Disable a's key: within the bound, a's files, names and creates fail; b and the
    // volume's own files carry on.
    assert_eq!(t.kms.moto.set_key_state(&t.key_a, "Disabled"), "Disabled");
    t.kms.proxy.key_state(&t.key_a, "Disabled");
    std::thread::sleep(Duration::from_millis(BOUND_SECS * 1000 + 700));
    let before = t.kms.proxy.refused("Decrypt");
    let requests = std::time::Instant::now();
    assert_eq!(errno(fs::read(m.p("clients/a/f1"))), EKEYREVOKED);
    assert_eq!(errno(fs::write(m.p("clients/a/new"), b"x")), EKEYREVOKED);
    for i in 0..20 {
        assert_eq!(
            errno(fs::read(m.p(&format!("clients/a/f{}", i % 10)))),
            EKEYREVOKED
        );
    }
    // A failed unseal is answered from memory for a second: not one KMS call per request,
    // at most one per second the requests took (and one more for the second they straddle).
    let calls = t.kms.proxy.refused("Decrypt") - before;
    let most = 2 + requests.elapsed().as_secs();
    assert!(
        calls >= 1 && calls as u64 <= most && calls < 22,
        "{calls} Decrypt calls for 22 requests (at most {most})"
    );
    assert_eq!(
        errno(fs::read_dir(m.p("clients/a/"))),
        0,
        "opendir needs no key"
    );
    let listing: Vec<std::io::Result<fs::DirEntry>> =
        fs::read_dir(m.p("clients/a")).unwrap().collect();
    assert!(
        listing.iter().all(|e| e.is_err()) && !listing.is_empty(),
        "a listing of a's directory is an error, not names: {listing:?}"
    );
    // (A target read before may be in the kernel's cache, as file pages are.)
    assert_eq!(errno(fs::read_link(m.p("clients/a/link2"))), EKEYREVOKED);
    assert_eq!(fs::read(m.p("clients/b/f3")).unwrap(), b"clients/b 3");
    fs::write(m.p("clients/b/new"), b"b goes on").unwrap();
    assert_eq!(fs::read(m.p("plain/f2")).unwrap(), b"plain 2");
    fs::write(m.p("plain/new"), b"so does the volume").unwrap();

    // Enable it again: a is back, same mount, once the failure is a second old.
    assert_eq!(t.kms.moto.set_key_state(&t.key_a, "Enabled"), "Enabled");
    t.kms.proxy.key_state(&t.key_a, "Enabled");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(fs::read(m.p("clients/a/f1")).unwrap(), b"clients/a 1");
    fs::write(m.p("clients/a/new"), b"a is back").unwrap();
    assert_eq!(fs::read_dir(m.p("clients/a")).unwrap().count(), 13);
    let log = m.unmount();
    assert!(
        log.contains("DisabledException"),
        "the failure is logged: {log}"
    );
    t.vol.assert_fsck_clean();

    // `policy list` counts each tenant's files; the audit log counts its unwraps.
    let list = ok(t.vol.run(&["policy", "list", t.vol.cipher_str(), "--json"]));
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["policies"][0]["files"], 11, "{list}");
    assert_eq!(list["policies"][1]["files"], 11, "{list}");
    assert_eq!(list["policies"][0]["directories"][0], "/clients/a");
    let audit = fs::read_to_string(t.vol.cipher.join("sealfs.audit")).unwrap();
    assert!(audit.contains("\"policy-set\""), "{audit}");
    assert!(audit.contains("by_policy"), "{audit}");
}

#[test]
fn a_deleted_tenant_key_shreds_that_tenant_and_fsck_clears_it_on_request() {
    let t = two_kms_tenants();
    let m = t.vol.mount();
    fs::create_dir(m.p("plain")).unwrap();
    for dir in ["clients/a", "clients/b", "plain"] {
        fs::create_dir(m.p(&format!("{dir}/sub"))).unwrap();
        fs::write(m.p(&format!("{dir}/sub/f")), dir).unwrap();
        symlink("t".repeat(3000), m.p(&format!("{dir}/long"))).unwrap();
    }
    m.unmount();

    assert_eq!(
        t.kms.moto.set_key_state(&t.key_b, "PendingDeletion"),
        "PendingDeletion"
    );
    t.kms.proxy.key_state(&t.key_b, "PendingDeletion");
    let m = t.vol.mount();
    assert_eq!(errno(fs::read(m.p("clients/b/sub/f"))), EKEYREVOKED);
    assert_eq!(fs::read(m.p("clients/a/sub/f")).unwrap(), b"clients/a");
    assert_eq!(fs::read(m.p("plain/sub/f")).unwrap(), b"plain");
    m.unmount();

    // fsck: b's key is unavailable (not corruption), the rest checks clean.
    let out = t.vol.run(&["fsck", t.vol.cipher_str(), "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{report}");
    assert_eq!(problems[0]["kind"], "key-unavailable");
    assert_eq!(problems[0]["path"], "/clients/b");
    assert_eq!(problems[0]["policy"], 2);
    assert_eq!(out.status.code(), Some(4));
    let headers_before = files_under(&t.vol.cipher.join("sealfs.headers")).len();

    // Repair leaves it alone unless asked; asked, it clears b away.
    let out = t.vol.run(&["fsck", t.vol.cipher_str(), "--repair"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let out = t.vol.run(&[
        "fsck",
        t.vol.cipher_str(),
        "--repair",
        "--clear-policy",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        files_under(&t.vol.cipher.join("sealfs.headers")).len(),
        headers_before - 1,
        "b's header went with its file"
    );
    t.vol.assert_fsck_clean();
    let config = fs::read_to_string(t.vol.cipher.join("sealfs.conf")).unwrap();
    assert!(!config.contains(&t.key_b), "b's sealed secret is gone");
    assert!(config.contains("\"retired_policies\""));

    let m = t.vol.mount();
    assert_eq!(fs::read_dir(m.p("clients/b")).unwrap().count(), 0);
    assert_eq!(fs::read(m.p("clients/a/sub/f")).unwrap(), b"clients/a");
    assert_eq!(
        fs::read_link(m.p("plain/long")).unwrap(),
        Path::new(&"t".repeat(3000))
    );
    fs::write(m.p("clients/b/again"), b"volume keys now").unwrap();
    m.unmount();
}

#[test]
fn files_and_names_moved_across_tenants_in_the_cipher_dir_fail_authentication() {
    let vol = TestVolume::new();
    for (path, key) in [("/a", "a.key"), ("/b", "b.key")] {
        let key = vol.dir.path().join(key);
        ok(vol.run(&[
            "policy",
            "set",
            vol.cipher_str(),
            path,
            "--keyfile",
            key.to_str().unwrap(),
        ]));
    }
    let m = vol.mount();
    fs::write(m.p("a/secret"), b"tenant a's").unwrap();
    fs::write(m.p("b/report"), b"tenant b's").unwrap();
    m.unmount();
    let (dir_a, dir_b) = (policy_dir(&vol.cipher, 1), policy_dir(&vol.cipher, 2));
    let (file_a, file_b) = (data_files(&dir_a).remove(0), data_files(&dir_b).remove(0));

    // a's data file (and so its header) put in place of b's file, under b's name.
    fs::copy(&file_a, &file_b).unwrap();
    // a's name moved into b's directory.
    fs::rename(&file_a, dir_b.join(file_a.file_name().unwrap())).unwrap();
    let m = vol.mount();
    assert_eq!(errno(fs::read(m.p("b/report"))), libc::EIO);
    let names: Vec<String> = fs::read_dir(m.p("b"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["report"], "a's name does not decrypt as b's");
    assert_eq!(errno(fs::read(m.p("a/secret"))), libc::ENOENT);
    let log = m.unmount();
    assert!(log.contains("belongs to key policy 1"), "{log}");
    let out = vol.run(&["fsck", vol.cipher_str()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4));
    assert!(
        text.contains("bad-header") && text.contains("bad-name"),
        "{text}"
    );
}

#[test]
fn rename_and_link_across_tenants_and_policy_changes_while_mounted() {
    let vol = TestVolume::new();
    let key = vol.dir.path().join("t.key");
    let m = vol.mount();
    fs::create_dir_all(m.p("clients/t")).unwrap();
    fs::write(m.p("outside"), b"volume's").unwrap();

    // Set while mounted: the next create under it is the tenant's, at once.
    ok(vol.run(&[
        "policy",
        "set",
        vol.cipher_str(),
        "/clients/t",
        "--keyfile",
        key.to_str().unwrap(),
        "--label",
        "t",
    ]));
    fs::write(m.p("clients/t/inside"), b"tenant's").unwrap();
    let header = files_under(&vol.cipher.join("sealfs.headers"))
        .into_iter()
        .map(|h| fs::read(h).unwrap())
        .filter(|h| h[7] == 3)
        .count();
    assert_eq!(header, 1, "one version-3 header: the tenant's file");

    // rename(2) and link(2) across tenants: EXDEV; mv falls back to a copy, which is the
    // tenant's.
    assert_eq!(
        errno(fs::rename(m.p("outside"), m.p("clients/t/moved"))),
        libc::EXDEV
    );
    assert_eq!(
        errno(fs::hard_link(m.p("clients/t/inside"), m.p("linked"))),
        libc::EXDEV
    );
    let mv = std::process::Command::new("mv")
        .arg(m.p("outside"))
        .arg(m.p("clients/t/moved"))
        .output()
        .unwrap();
    assert!(mv.status.success(), "{}", stderr(&mv));
    assert_eq!(fs::read(m.p("clients/t/moved")).unwrap(), b"volume's");
    // Within a tenant, and moving the tenant's own directory, rename works.
    fs::rename(m.p("clients/t/moved"), m.p("clients/t/moved2")).unwrap();
    fs::rename(m.p("clients/t"), m.p("t-moved")).unwrap();
    assert_eq!(fs::read(m.p("t-moved/inside")).unwrap(), b"tenant's");

    // Remove refuses a directory with files; --shred takes the secret.
    let out = vol.run(&["policy", "remove", vol.cipher_str(), "/t-moved"]);
    assert!(!out.status.success() && stderr(&out).contains("not empty"));
    ok(vol.run(&["policy", "remove", vol.cipher_str(), "/t-moved", "--shred"]));
    // The mount sees it at its next look at the config (every 2 s), however busy the machine.
    let revoked = common::wait_until(Duration::from_secs(60), || {
        errno(fs::read(m.p("t-moved/inside"))) == EKEYREVOKED
    });
    assert!(revoked, "a shredded tenant's file still reads after 60 s");
    m.unmount();
    let out = vol.run(&["fsck", vol.cipher_str()]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stdout).contains("key-unavailable"));
    let out = vol.run(&["fsck", vol.cipher_str(), "--repair", "--clear-policy", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    vol.assert_fsck_clean();

    // Killed between its config and its marker: the policy is there with no directory, its
    // id is never given out again, and the same command run again puts it on the directory
    // (whose entries, made meanwhile under the volume's keys, move under it).
    let set = |dir: &str, crash: Option<&str>| {
        let mut env = vol.env.clone();
        if let Some(point) = crash {
            env.push(("SEALFS_CRASH_AT".into(), point.into()));
        }
        let args = [
            "policy",
            "set",
            vol.cipher_str(),
            dir,
            "--keyfile",
            key.to_str().unwrap(),
        ];
        common::sealfs_env(&vol.keys, &env, &args)
    };
    let out = set("/k", Some("policy-config-written"));
    assert_eq!(out.status.code(), None, "killed: {}", stderr(&out));
    let m = vol.mount();
    fs::write(m.p("k/x"), b"made meanwhile").unwrap();
    m.unmount();
    let list = ok(vol.run(&["policy", "list", vol.cipher_str()]));
    assert!(
        list.contains("policy remove --id 2"),
        "no directory: {list}"
    );
    let other = set("/k2", None);
    assert!(stdout(&other).contains("policy 3"), "{}", stderr(&other));
    let again = set("/k", None);
    assert!(
        stdout(&again).contains("policy 2 (/k) put again on /k"),
        "{}{}",
        stdout(&again),
        stderr(&again)
    );
    // Killed after its marker, before its last config write: run again, it is done.
    let out = set("/k3", Some("policy-marker-written"));
    assert_eq!(out.status.code(), None, "killed: {}", stderr(&out));
    let again = set("/k3", None);
    assert!(stdout(&again).contains("policy 4"), "{}", stderr(&again));
    let m = vol.mount();
    assert_eq!(fs::read(m.p("k/x")).unwrap(), b"made meanwhile");
    fs::write(m.p("k/y"), b"tenant's").unwrap();
    fs::write(m.p("k3/y"), b"tenant's").unwrap();
    m.unmount();
    let shown = ok(vol.run(&["policy", "show", vol.cipher_str(), "/k"]));
    assert!(shown.contains("policy 2"), "{shown}");
    for dir in ["/k", "/k2", "/k3"] {
        ok(vol.run(&["policy", "remove", vol.cipher_str(), dir, "--shred"]));
    }

    // A policy on an empty directory comes off cleanly; the root never takes one.
    ok(vol.run(&[
        "policy",
        "set",
        vol.cipher_str(),
        "/e",
        "--keyfile",
        key.to_str().unwrap(),
    ]));
    let shown = ok(vol.run(&["policy", "show", vol.cipher_str(), "/e"]));
    assert!(shown.contains("policy 5"), "{shown}");
    ok(vol.run(&["policy", "remove", vol.cipher_str(), "/e"]));
    let shown = ok(vol.run(&["policy", "show", vol.cipher_str(), "/e"]));
    assert!(shown.contains("volume's own keys"), "{shown}");
    // A remove killed after its config, before its marker went: run again, it is done.
    let out = set("/r", None);
    assert!(stdout(&out).contains("policy 6"), "{}", stderr(&out));
    let mut env = vol.env.clone();
    env.push(("SEALFS_CRASH_AT".into(), "policy-remove-retired".into()));
    let remove = ["policy", "remove", vol.cipher_str(), "/r"];
    let out = common::sealfs_env(&vol.keys, &env, &remove);
    assert_eq!(out.status.code(), None, "killed: {}", stderr(&out));
    ok(vol.run(&remove));
    let shown = ok(vol.run(&["policy", "show", vol.cipher_str(), "/r"]));
    assert!(shown.contains("volume's own keys"), "{shown}");
    // An empty tenant directory can be removed (rm -r); its policy is then retired by id.
    ok(vol.run(&[
        "policy",
        "set",
        vol.cipher_str(),
        "/gone",
        "--keyfile",
        key.to_str().unwrap(),
    ]));
    let m = vol.mount();
    fs::create_dir(m.p("gone/sub")).unwrap();
    assert_eq!(errno(fs::remove_dir(m.p("gone"))), libc::ENOTEMPTY);
    let rm = std::process::Command::new("rm")
        .arg("-r")
        .arg(m.p("gone"))
        .output()
        .unwrap();
    assert!(rm.status.success(), "{}", stderr(&rm));
    m.unmount();
    let list = ok(vol.run(&["policy", "list", vol.cipher_str()]));
    assert!(list.contains("policy remove --id 7"), "{list}");
    ok(vol.run(&["policy", "remove", vol.cipher_str(), "--id", "7"]));
    let out = vol.run(&[
        "fsck",
        vol.cipher_str(),
        "--repair",
        "--clear-policy",
        "2",
        "--clear-policy",
        "3",
        "--clear-policy",
        "4",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    vol.assert_fsck_clean();
    let out = vol.run(&[
        "policy",
        "set",
        vol.cipher_str(),
        "/",
        "--keyfile",
        key.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
}

#[test]
fn a_tenant_on_a_pkcs11_token() {
    let hsm = softhsm();
    let mut env = hsm.env();
    env.push(("SEALFS_PKCS11_PIN".into(), PIN.into()));
    let vol = TestVolume::with_env(&[], env);
    ok(vol.run(
        &[
            &["policy", "set", vol.cipher_str(), "/hsm-tenant"][..],
            &hsm_key_args(KEYS[1]),
        ]
        .concat(),
    ));
    let m = vol.mount();
    fs::write(m.p("hsm-tenant/f"), b"under the token").unwrap();
    m.unmount();
    let m = vol.mount();
    assert_eq!(fs::read(m.p("hsm-tenant/f")).unwrap(), b"under the token");
    m.unmount();
    vol.assert_fsck_clean();
    // Without the PIN the tenant is unavailable here (ENOKEY); the rest mounts and works.
    let mut no_pin = TestVolume::existing(
        tempfile::tempdir().unwrap(),
        vol.cipher.clone(),
        vol.keys.clone(),
    );
    no_pin.env = hsm.env();
    let m = no_pin.mount();
    assert_eq!(errno(fs::read(m.p("hsm-tenant/f"))), libc::ENOKEY);
    fs::write(m.p("outside"), b"fine").unwrap();
    m.unmount();
    // An empty tenant directory comes off without its tenant's key.
    ok(vol.run(
        &[
            &["policy", "set", vol.cipher_str(), "/hsm-empty"][..],
            &hsm_key_args(KEYS[1]),
        ]
        .concat(),
    ));
    ok(no_pin.run(&["policy", "remove", vol.cipher_str(), "/hsm-empty"]));
    // A key out of reach is not a key gone: fsck will not clear the tenant away.
    let out = no_pin.run(&["fsck", vol.cipher_str(), "--repair", "--clear-policy", "1"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("out of reach here"),
        "{}",
        stderr(&out)
    );
    let m = vol.mount();
    assert_eq!(fs::read(m.p("hsm-tenant/f")).unwrap(), b"under the token");
    m.unmount();
}
