//! GlusterFS, as a backing store of shared mounts. Its client's caching translators
//! (write-behind, read-ahead, io-cache, quick-read, md-cache, open-behind, readdir-ahead)
//! serve one client what another changed before, even to a descriptor opened after a lock:
//! measured with two clients of one volume, shared mounts then met blocks that fail
//! authentication on every other append. With them off, every promise of docs/GUARANTEES.md
//! holds. A client shows which translators it runs in the virtual directory
//! `.meta/graphs/active` at its mount's root, named `VOLUME-TRANSLATOR`.

use std::path::{Path, PathBuf};

/// The translators that must be off, each with the volume option that turns it off.
const CACHES: [(&str, &str); 7] = [
    ("write-behind", "performance.write-behind"),
    ("read-ahead", "performance.read-ahead"),
    ("io-cache", "performance.io-cache"),
    ("quick-read", "performance.quick-read"),
    ("md-cache", "performance.stat-prefetch"),
    ("open-behind", "performance.open-behind"),
    ("readdir-ahead", "performance.readdir-ahead"),
];

/// The GlusterFS client graph of the mount holding `dir`: its `.meta/graphs/active`.
fn active_graph(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .map(|a| a.join(".meta/graphs/active"))
        .find(|graph| graph.is_dir())
}

/// For a cipher dir on GlusterFS: the volume and the options to turn off before `-o shared`
/// is safe (none if its client runs no caching translator). `None` if no client graph shows.
pub fn caches_to_turn_off(cipher_dir: &Path) -> Option<(String, Vec<&'static str>)> {
    let graph = active_graph(cipher_dir)?;
    let names: Vec<String> = std::fs::read_dir(&graph)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let mut volume = None;
    let mut on = Vec::new();
    for (translator, option) in CACHES {
        let suffix = format!("-{translator}");
        if let Some(name) = names.iter().find(|n| n.ends_with(&suffix)) {
            volume.get_or_insert_with(|| name[..name.len() - suffix.len()].to_string());
            on.push(option);
        }
    }
    let volume = volume
        .or_else(|| {
            names
                .iter()
                .find_map(|n| n.strip_suffix("-client-0").map(String::from))
        })
        .unwrap_or_else(|| "VOLUME".into());
    Some((volume, on))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_caching_translators_of_a_client_graph_name_their_options() {
        let dir = tempfile::tempdir().unwrap();
        let graph = dir.path().join(".meta/graphs/active");
        std::fs::create_dir_all(&graph).unwrap();
        for t in [
            "gv0",
            "gv0-client-0",
            "gv0-dht",
            "gv0-md-cache",
            "gv0-quick-read",
            "top",
        ] {
            std::fs::create_dir(graph.join(t)).unwrap();
        }
        let cipher = dir.path().join("vault/inner");
        std::fs::create_dir_all(&cipher).unwrap();
        let (volume, on) = caches_to_turn_off(&cipher).unwrap();
        assert_eq!(volume, "gv0");
        assert_eq!(on, ["performance.quick-read", "performance.stat-prefetch"]);
        std::fs::remove_dir(graph.join("gv0-md-cache")).unwrap();
        std::fs::remove_dir(graph.join("gv0-quick-read")).unwrap();
        assert_eq!(caches_to_turn_off(&cipher).unwrap(), ("gv0".into(), vec![]));
        assert!(caches_to_turn_off(Path::new("/proc/self")).is_none());
    }
}
