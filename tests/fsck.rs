//! fsck against every class of damage a user can inflict on a cipher dir, then --repair, then
//! a clean fsck and a mount that shows every intact file unchanged.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use common::xattrs::{get_xattr, list_xattrs, remove_xattr, set_xattr};
use common::{TestVolume, backing, open_volume};
use sealfs::volume::Volume;

fn header_of(volume: &Volume, plain: &str) -> PathBuf {
    let file = fs::File::open(backing(volume, plain)).unwrap();
    let id = sealfs::format::id_to_hex(&sealfs::io::read_file_id(&file).unwrap());
    volume.path.join("sealfs.headers").join(&id[..2]).join(&id)
}

fn fsck(vol: &TestVolume, repair: bool) -> (i32, serde_json::Value) {
    let mut args = vec!["fsck", vol.cipher_str(), "--json"];
    if repair {
        args.push("--repair");
    }
    let out = vol.run(&args);
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "no JSON report: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap(), report)
}

fn problems(report: &serde_json::Value) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in report["problems"].as_array().unwrap() {
        out.entry(p["kind"].as_str().unwrap().to_string())
            .or_default()
            .push(p["path"].as_str().unwrap().to_string());
    }
    out
}

fn content(name: &str) -> Vec<u8> {
    format!("{name} ").repeat(3000).into_bytes()
}

const INTACT: [&str; 4] = [
    "keep1",
    "dir/keep2",
    "dir/sub/keep3",
    "long-LLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLL",
];
const DAMAGED: [&str; 4] = ["dir/flipped", "dir/no-header", "badname", "dup-source"];

#[test]
fn fsck_finds_each_kind_of_damage_and_repair_loses_no_intact_data() {
    let vol = TestVolume::new();
    {
        let m = vol.mount();
        fs::create_dir_all(m.p("dir/sub")).unwrap();
        for name in INTACT
            .iter()
            .chain(DAMAGED.iter())
            .chain(["dup-victim"].iter())
        {
            fs::write(m.p(name), content(name)).unwrap();
        }
        std::os::unix::fs::symlink("keep1", m.p("link")).unwrap();
        set_xattr(&m.p("dup-source"), "user.tag", b"source");
        set_xattr(&m.p("dup-victim"), "user.tag", b"victim");
    }
    let (code, report) = fsck(&vol, false);
    assert_eq!(code, 0, "a fresh volume is clean: {report}");

    let volume = open_volume(&vol);
    // A flipped bit in the second block.
    let flipped = backing(&volume, "dir/flipped");
    let mut bytes = fs::read(&flipped).unwrap();
    bytes[24 + 4124 + 100] ^= 0x40;
    fs::write(&flipped, bytes).unwrap();
    // A deleted header.
    fs::remove_file(header_of(&volume, "dir/no-header")).unwrap();
    // An orphan header: a copy under an id no data file has.
    let orphan = volume
        .path
        .join("sealfs.headers/ab/ab000000000000000000000000000000");
    fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    fs::copy(header_of(&volume, "keep1"), &orphan).unwrap();
    // A duplicated file id: dup-victim's data file replaced by a copy of dup-source's (the
    // victim's own header becomes an orphan too).
    let victim_header = header_of(&volume, "dup-victim");
    fs::copy(
        backing(&volume, "dup-source"),
        backing(&volume, "dup-victim"),
    )
    .unwrap();
    // A name that no longer decrypts.
    let badname = backing(&volume, "badname");
    let mut broken = badname.file_name().unwrap().to_str().unwrap().to_string();
    broken.replace_range(0..1, if broken.starts_with('A') { "B" } else { "A" });
    fs::rename(&badname, badname.with_file_name(&broken)).unwrap();
    // A header write cut short by a crash.
    fs::write(
        volume
            .path
            .join("sealfs.headers/ab/ab000000000000000000000000000001.tmp"),
        b"x",
    )
    .unwrap();
    drop(volume);

    let (code, report) = fsck(&vol, false);
    assert_eq!(code, 4, "errors left uncorrected: {report}");
    let found = problems(&report);
    assert_eq!(found["bad-block"], vec!["/dir/flipped"]);
    assert_eq!(found["missing-header"], vec!["/dir/no-header"]);
    assert_eq!(found["duplicate-file-id"].len(), 1);
    assert!(found["duplicate-file-id"][0].starts_with("/dup-"));
    assert_eq!(found["orphan-header"].len(), 2, "{found:?}");
    assert!(
        found["orphan-header"]
            .iter()
            .any(|p| victim_header.ends_with(p))
    );
    assert_eq!(found["bad-name"].len(), 1);
    assert!(found["bad-name"][0].starts_with("/?"));
    assert_eq!(found["leftover"].len(), 1);
    assert_eq!(found.len(), 6, "nothing else reported: {found:?}");

    // Repair refuses a mounted volume.
    {
        let _m = vol.mount();
        let out = vol.run(&["fsck", vol.cipher_str(), "--repair"]);
        assert_eq!(out.status.code(), Some(8));
    }
    let (code, report) = fsck(&vol, true);
    assert_eq!(code, 1, "every error corrected: {report}");
    let (code, report) = fsck(&vol, false);
    assert_eq!(code, 0, "clean after repair: {report}");
    assert_eq!(report["quarantined"], 3);

    let m = vol.mount();
    for name in INTACT {
        assert_eq!(fs::read(m.p(name)).unwrap(), content(name), "{name}");
    }
    assert_eq!(fs::read_link(m.p("link")).unwrap().as_os_str(), "keep1");
    // Both files that shared an id read as before, and survive each other's deletion.
    assert_eq!(fs::read(m.p("dup-source")).unwrap(), content("dup-source"));
    assert_eq!(fs::read(m.p("dup-victim")).unwrap(), content("dup-source"));
    // The one re-encrypted under a new id kept its xattrs.
    assert_eq!(
        get_xattr(&m.p("dup-source"), "user.tag").unwrap(),
        b"source"
    );
    assert_eq!(
        get_xattr(&m.p("dup-victim"), "user.tag").unwrap(),
        b"victim"
    );
    fs::remove_file(m.p("dup-source")).unwrap();
    assert_eq!(fs::read(m.p("dup-victim")).unwrap(), content("dup-source"));
    // What could not be read was moved, not deleted.
    let mut lost: Vec<String> = fs::read_dir(m.p("lost+found"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    lost.sort();
    assert_eq!(lost.len(), 3, "{lost:?}");
    assert!(lost.contains(&"flipped".to_string()));
    assert!(lost.contains(&"no-header".to_string()));
    let unnamed = lost.iter().find(|n| n.starts_with("unnamed-")).unwrap();
    assert_eq!(
        fs::read(m.p(&format!("lost+found/{unnamed}"))).unwrap(),
        content("badname"),
        "a file whose name was lost keeps its contents"
    );
    assert!(!m.p("dir/flipped").exists());
}

/// Extended attributes that do not open are found where they sit (a directory, a file);
/// --repair removes those and nothing else: another program's attribute in the cipher dir is
/// reported and left alone, and every other attribute reads as before.
#[test]
fn damaged_xattrs_are_found_and_repair_removes_only_them() {
    let vol = TestVolume::new();
    let backing_xattrs = |plain: &str| list_xattrs(&backing(&open_volume(&vol), plain));
    {
        let m = vol.mount();
        fs::create_dir(m.p("d")).unwrap();
        fs::write(m.p("d/f"), b"data").unwrap();
        fs::hard_link(m.p("d/f"), m.p("d/f-link")).unwrap();
        set_xattr(&m.p(""), "user.keep", b"root");
        set_xattr(&m.p("d"), "user.keep", b"dir");
        set_xattr(&m.p("d/f"), "user.keep", b"file");
    }
    let (kept_dir, kept_file) = (backing_xattrs("d"), backing_xattrs("d/f"));
    {
        let m = vol.mount();
        set_xattr(&m.p("d"), "user.renamed", b"x");
        set_xattr(&m.p("d/f"), "user.forged", b"y");
    }
    let (code, report) = fsck(&vol, false);
    assert_eq!(code, 0, "sealed attributes are clean: {report}");

    let volume = open_volume(&vol);
    let (dir, file) = (backing(&volume, "d"), backing(&volume, "d/f"));
    let renamed = list_xattrs(&dir)
        .into_iter()
        .find(|n| !kept_dir.contains(n));
    let forged = list_xattrs(&file)
        .into_iter()
        .find(|n| !kept_file.contains(n));
    let (renamed, forged) = (renamed.unwrap(), forged.unwrap());
    // The directory's attribute under a name with one character changed (the first after
    // "user.": the last may carry bits base64 ignores).
    let value = get_xattr(&dir, &renamed).unwrap();
    remove_xattr(&dir, &renamed);
    let mut other = renamed.clone().into_bytes();
    other[5] = if other[5] == b'A' { b'B' } else { b'A' };
    set_xattr(&dir, std::str::from_utf8(&other).unwrap(), &value);
    // The file's attribute with a forged value.
    set_xattr(&file, &forged, b"garbage, not a sealed value");
    // What rsync --fake-super leaves on a copy of the cipher dir, and a name that is base64
    // but too short to be sealed.
    set_xattr(&volume.path, "user.rsync.%stat", b"40755 0,0 0:0");
    set_xattr(&volume.path, "user.test", b"1");
    drop(volume);

    let (code, report) = fsck(&vol, false);
    assert_eq!(code, 4, "{report}");
    let found = problems(&report);
    // The file's forged value is reported once, under whichever of its two links came first.
    let bad = &found["bad-xattr"];
    assert_eq!(bad.len(), 2, "{report}");
    assert!(bad.contains(&"/d".to_string()), "{report}");
    assert!(bad.iter().any(|p| p.starts_with("/d/f")), "{report}");
    assert_eq!(found["stray"], vec!["/", "/"], "{report}");
    assert_eq!(found.len(), 2, "nothing else reported: {found:?}");
    let (code, report) = fsck(&vol, true);
    assert_eq!(code, 1, "every error corrected: {report}");
    let (code, report) = fsck(&vol, false);
    assert_eq!(
        code, 0,
        "clean after repair (the stray is no error): {report}"
    );
    let volume = open_volume(&vol);
    assert_eq!(
        get_xattr(&volume.path, "user.rsync.%stat").unwrap(),
        b"40755 0,0 0:0",
        "another program's attribute is never touched"
    );
    assert_eq!(get_xattr(&volume.path, "user.test").unwrap(), b"1");
    drop(volume);

    let m = vol.mount();
    assert_eq!(get_xattr(&m.p(""), "user.keep").unwrap(), b"root");
    assert_eq!(
        list_xattrs(&m.p("")),
        vec!["user.keep"],
        "the foreign attribute is not the mount's to list"
    );
    for (path, value) in [("d", &b"dir"[..]), ("d/f", b"file"), ("d/f-link", b"file")] {
        assert_eq!(list_xattrs(&m.p(path)), vec!["user.keep"], "{path}");
        assert_eq!(get_xattr(&m.p(path), "user.keep").unwrap(), value);
    }
}

/// What a crash can leave of a create under a temporary name (backing stores without a kept
/// O_TMPFILE) and of a backing-store probe: fsck reports both as leftovers, repair removes them.
#[test]
fn leftovers_of_temporary_creates_and_probes_are_removed() {
    let vol = TestVolume::new();
    {
        let m = vol.mount();
        fs::create_dir(m.p("d")).unwrap();
        fs::write(m.p("d/f"), b"kept").unwrap();
    }
    let volume = open_volume(&vol);
    let data = backing(&volume, "d/f");
    let temp = data.with_file_name("sealfs.new.00112233445566ff");
    fs::copy(&data, &temp).unwrap();
    let probe = volume.path.join("sealfs.probe.0123456789abcdef");
    fs::create_dir(&probe).unwrap();
    fs::write(probe.join("excl"), b"1").unwrap();
    fs::write(probe.join("r3"), b"r1").unwrap();
    drop(volume);

    let (code, report) = fsck(&vol, false);
    assert_eq!(code, 4, "{report}");
    let found = problems(&report);
    assert_eq!(found["leftover"].len(), 2, "{found:?}");
    assert_eq!(found.len(), 1, "nothing else reported: {found:?}");
    let (code, report) = fsck(&vol, true);
    assert_eq!(code, 1, "every error corrected: {report}");
    assert!(!temp.exists() && !probe.exists());
    let (code, report) = fsck(&vol, false);
    assert_eq!(code, 0, "clean after repair: {report}");
    let m = vol.mount();
    assert_eq!(fs::read(m.p("d/f")).unwrap(), b"kept");
}
