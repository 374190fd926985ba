//! The TOML settings file for a mount (`sealfs mount --config FILE`, and the systemd unit's
//! /etc/sealfs/NAME.toml). Precedence: command line > settings file > systemd credentials >
//! built-in defaults. Unknown keys are refused, so a typo is an error, not a silent default.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsFile {
    pub cipher_dir: Option<PathBuf>,
    pub mountpoint: Option<PathBuf>,
    /// Mount options, as for `-o`.
    #[serde(default)]
    pub options: Vec<String>,
    pub threads: Option<usize>,
    pub writeback_cache: Option<bool>,
    /// One of several mounts of the cipher dir, on any number of hosts (`-o shared`).
    pub shared: Option<bool>,
    pub read_ahead_kb: Option<u32>,
    pub inode_cache: Option<usize>,
    /// Mount the encrypted view of a plaintext dir (`sealfs mount --reverse`).
    pub reverse: Option<bool>,
    /// Reverse mode: gitignore-style patterns left out of the view.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Serve Prometheus metrics at this address (`--metrics`).
    pub metrics: Option<std::net::SocketAddr>,
    /// Let `metrics` be an address other hosts can reach (`--metrics-allow-remote`).
    pub metrics_allow_remote: Option<bool>,
    /// Write the metrics to this file every 15 s (`--metrics-textfile`).
    pub metrics_textfile: Option<PathBuf>,
    #[serde(default)]
    pub keys: KeySettings,
    #[serde(default)]
    pub cache: CacheSettings,
    #[serde(default)]
    pub audit: AuditFileSettings,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySettings {
    pub keyfile: Option<PathBuf>,
    pub passfile: Option<PathBuf>,
    pub extpass: Option<String>,
    pub pin_file: Option<PathBuf>,
    pub kms_endpoint: Option<String>,
    pub pkcs11_module: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    pub entries: Option<usize>,
    pub max_age_secs: Option<u64>,
    pub idle_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditFileSettings {
    pub log: Option<PathBuf>,
    pub syslog: Option<bool>,
}

impl SettingsFile {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("settings file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("settings file {}", path.display()))
    }
}

/// Secrets systemd hands over with LoadCredential=, by credential name: `keyfile` (a key
/// file), `passphrase` (a passphrase file), `pin` (a PKCS#11 PIN file).
pub fn credential(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY")?;
    let path = Path::new(&dir).join(name);
    path.exists().then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_file_parses_and_typos_are_refused() {
        let full = r#"
            cipher_dir = "/srv/backup.enc"
            mountpoint = "/srv/backup"
            options = ["allow_other", "noatime"]
            threads = 8
            writeback_cache = false
            read_ahead_kb = 2048
            [keys]
            keyfile = "/etc/sealfs/backup.key"
            kms_endpoint = "https://kms.eu-west-1.amazonaws.com"
            [cache]
            entries = 100
            max_age_secs = 60
            idle_secs = 30
            [audit]
            log = "/var/log/sealfs/backup.audit"
            syslog = true
        "#;
        let s: SettingsFile = toml::from_str(full).unwrap();
        assert_eq!(s.threads, Some(8));
        assert_eq!(
            s.keys.keyfile.as_deref(),
            Some(Path::new("/etc/sealfs/backup.key"))
        );
        assert_eq!(s.cache.entries, Some(100));
        assert_eq!(s.audit.syslog, Some(true));
        assert!(toml::from_str::<SettingsFile>("thread = 8").is_err());
        assert!(toml::from_str::<SettingsFile>("[keys]\nkey_file = \"x\"").is_err());
        let empty: SettingsFile = toml::from_str("").unwrap();
        assert!(empty.cipher_dir.is_none() && empty.options.is_empty());
    }
}
