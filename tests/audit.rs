//! The audit log records every key event and `sealfs audit verify` catches an edited, a deleted
//! and a reordered record.

mod common;

use std::fs;

use common::{TestVolume, ok};

fn events(log: &str) -> Vec<String> {
    log.lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["event"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn key_events_are_chained_and_tampering_is_detected() {
    let vol = TestVolume::new();
    {
        let m = vol.mount();
        fs::write(m.p("a"), b"a").unwrap();
        ok(vol.run(&["rotate", vol.cipher_str()]));
    }
    let extra_key = vol.dir.path().join("extra.key");
    ok(vol.run(&[
        "key",
        "add",
        vol.cipher_str(),
        "--keyfile",
        extra_key.to_str().unwrap(),
    ]));
    ok(vol.run(&["rewrap", vol.cipher_str(), "--retire-kek", "1"]));
    ok(vol.run(&["key", "remove", vol.cipher_str(), "1"]));
    ok(vol.run(&["fsck", vol.cipher_str()]));

    let path = vol.cipher.join("sealfs.audit");
    let log = fs::read_to_string(&path).unwrap();
    let seen = events(&log);
    for expected in [
        "unlock",
        "mount",
        "kek-create",
        "unmount",
        "keyslot-add",
        "rewrap",
        "kek-retire",
        "keyslot-remove",
        "fsck",
    ] {
        assert!(seen.iter().any(|e| e == expected), "{expected} in {seen:?}");
    }
    let verified = ok(vol.run(&["audit", "verify", vol.cipher_str()]));
    assert!(verified.contains("chain intact"), "{verified}");
    // Key material never reaches the log.
    for key in fs::read_dir(&vol.keys).unwrap() {
        let bytes = fs::read(key.unwrap().path()).unwrap();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!log.contains(&hex));
    }

    let lines: Vec<&str> = log.lines().collect();
    let tampered = |new_lines: Vec<String>, what: &str| {
        fs::write(&path, new_lines.join("\n") + "\n").unwrap();
        let out = vol.run(&["audit", "verify", vol.cipher_str()]);
        assert!(!out.status.success(), "{what} went unnoticed");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("CHAIN BROKEN"), "{what}: {text}");
        text.into_owned()
    };
    let owned = || lines.iter().map(|l| l.to_string()).collect::<Vec<_>>();

    let mut edited = owned();
    edited[3] = edited[3].replacen("\"pid\":", "\"pid\":1", 1);
    assert!(tampered(edited, "an edited record").contains("line 4: record was modified"));

    let mut deleted = owned();
    deleted.remove(2);
    assert!(tampered(deleted, "a deleted record").contains("line 3: record"));

    let mut reordered = owned();
    reordered.swap(1, 2);
    tampered(reordered, "reordered records");

    // The intact log verifies again, and a record torn by a crash is not a break.
    let mut torn = owned();
    torn.push("{\"seq\":99,\"ti".into());
    fs::write(&path, torn.join("\n")).unwrap();
    let out = ok(vol.run(&["audit", "verify", vol.cipher_str()]));
    assert!(out.contains("cut short by a crash"), "{out}");
    // Appending after a torn record starts a new line and keeps the chain.
    ok(vol.run(&["rotate", vol.cipher_str()]));
    let out = ok(vol.run(&["audit", "verify", vol.cipher_str()]));
    assert!(out.contains("chain intact"), "{out}");
}
