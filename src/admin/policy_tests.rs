//! Unit tests of `admin::policy`, on a scratch volume without a mount.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::Path;

use super::*;
use crate::keys::{KeyfileProvider, write_new_keyfile};
use crate::volume::names;
use crate::volume::policy_dirs::{find_dir, find_policy_dirs};
use crate::volume::scratch::Scratch;

/// Lets `volume` reach the key file `key` for any tenant.
fn reach(volume: &Volume, key: &Path) {
    let key = key.to_path_buf();
    volume.tenants.set_access(Box::new(move |_| {
        Ok(std::sync::Arc::new(KeyfileProvider::load(&key)?)
            as std::sync::Arc<dyn crate::keys::MasterKeyProvider>)
    }));
}

/// A tenant directory `/t` under a policy of its own key file, holding `files` data files
/// and a subdirectory with one more.
fn tenant(scratch: &Scratch, volume: &Volume, files: usize) -> (u32, String) {
    let key = scratch.dir.path().join("t.key");
    write_new_keyfile(&key).unwrap();
    let provider = KeyfileProvider::load(&key).unwrap();
    reach(volume, &key);
    let key_file = Some(key.display().to_string());
    let set = set_policy(volume, Path::new("/t"), Some("t"), &provider, key_file).unwrap();
    assert!(!set.reattached && !set.move_pending);
    let dir = find_dir(volume, Path::new("/t"), false).unwrap();
    assert_eq!((dir.policy, dir.own_marker), (set.id, true));
    let keys = volume.name_keys(set.id).unwrap();
    for i in 0..files {
        let name = names::encrypt_name(&keys, OsStr::new(&format!("f{i}"))).unwrap();
        volume
            .create_data_file(dir.fd.as_fd(), &name, 0o644, set.id)
            .unwrap();
    }
    let sub = names::encrypt_name(&keys, OsStr::new("sub")).unwrap();
    nix::sys::stat::mkdirat(dir.fd.as_fd(), sub.entry(), Mode::from_bits_truncate(0o755)).unwrap();
    let subfd = open_dir_at(dir.fd.as_fd(), sub.entry()).unwrap();
    let inner = names::encrypt_name(&keys, OsStr::new("g")).unwrap();
    volume
        .create_data_file(subfd.as_fd(), &inner, 0o644, set.id)
        .unwrap();
    let backing = volume.encrypt_name(OsStr::new("t")).unwrap();
    (set.id, backing.entry().to_string())
}

#[test]
fn a_policy_set_is_found_and_its_files_counted_under_it() {
    let scratch = Scratch::new();
    let volume = scratch.open();
    let (id, _) = tenant(&scratch, &volume, 3);
    let dirs = find_policy_dirs(&volume).unwrap();
    assert_eq!(dirs.marked.len(), 1);
    assert_eq!(
        (dirs.marked[0].path.as_str(), dirs.marked[0].policy),
        ("/t", id)
    );
    let census = crate::admin::census::census(&volume.headers).unwrap();
    assert_eq!(census.by_policy.get(&id), Some(&4));
    // Not empty: a plain remove is refused and names the way out.
    let err = remove_policy(&volume, Path::new("/t"), false)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("--shred"), "{err}");
}

#[test]
fn a_clear_is_refused_while_the_key_opens_the_policy_and_empties_the_tree_once_shredded() {
    let scratch = Scratch::new();
    let volume = scratch.open();
    let (id, backing) = tenant(&scratch, &volume, 2);
    let refused = |r: Result<u64>| match r {
        Err(VolumeError::Usage(why)) => why,
        other => panic!("not refused: {:?}", other.map_err(|e| e.to_string())),
    };
    assert!(refused(clear_policy_tree(&volume, "", id)).contains("root"));
    assert!(refused(clear_policy_tree(&volume, &backing, id)).contains("opens it"));
    assert!(refused(clear_policy_tree(&volume, &backing, id + 1)).contains("marker"));
    let removed = remove_policy(&volume, Path::new("/t"), true).unwrap();
    assert!(removed.shredded);
    // Shredded: the tree's entries (two files, the subdirectory and its file) and their
    // headers go; the directory stays, without its marker.
    assert_eq!(clear_policy_tree(&volume, &backing, id).unwrap(), 4);
    let top = open_dir_at(volume.root.as_fd(), &backing).unwrap();
    assert!(
        crate::volume::headers::read_names(top.as_fd())
            .unwrap()
            .is_empty()
    );
    let census = crate::admin::census::census(&volume.headers).unwrap();
    assert_eq!(census.by_policy.get(&id), None);
    assert!(find_policy_dirs(&volume).unwrap().marked.is_empty());
}

#[test]
fn a_policy_set_on_a_directory_with_entries_moves_their_names_under_the_tenant() {
    let scratch = Scratch::new();
    let volume = scratch.open();
    let d = find_dir(&volume, Path::new("/d"), true).unwrap();
    let root_keys = volume.name_keys(VOLUME_POLICY).unwrap();
    let long = "n".repeat(240);
    for plain in ["a", long.as_str()] {
        let name = names::encrypt_name(&root_keys, OsStr::new(plain)).unwrap();
        names::write_long_sidecar(d.fd.as_fd(), &name).unwrap();
        volume
            .create_data_file(d.fd.as_fd(), &name, 0o644, VOLUME_POLICY)
            .unwrap();
    }
    let key = scratch.dir.path().join("d.key");
    write_new_keyfile(&key).unwrap();
    reach(&volume, &key);
    let provider = KeyfileProvider::load(&key).unwrap();
    let set = set_policy(&volume, Path::new("/d"), None, &provider, None).unwrap();
    assert!(set.move_pending);
    let moved = crate::admin::migrate::move_names(&volume).unwrap();
    assert_eq!(
        (moved.renamed, moved.files.len()),
        (2, 2),
        "{:?}",
        moved.failed
    );
    assert!(moved.files.values().all(|p| *p == set.id));
    // The names now open under the tenant's keys only.
    let tenant_keys = volume.name_keys(set.id).unwrap();
    let mut found = Vec::new();
    for entry in crate::volume::headers::read_names(d.fd.as_fd()).unwrap() {
        if let Ok(Some(plain)) =
            names::decrypt_entry(&tenant_keys, d.fd.as_fd(), OsStr::new(&entry))
        {
            found.push(plain.to_string_lossy().into_owned());
        }
    }
    found.sort();
    assert_eq!(found, ["a".to_string(), long]);
    // Run again (a resumed rewrap), nothing more moves.
    assert_eq!(
        crate::admin::migrate::move_names(&volume).unwrap().renamed,
        0
    );
}
