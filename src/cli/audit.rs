use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use serde_json::json;

use sealfs::keys::VolumeKeys;
use sealfs::volume::Volume;
use sealfs::volume::audit::{self, AuditLog};

use super::unlock::UnlockArgs;

/// Where the audit log goes, for every command (global options).
#[derive(Args, Debug, Clone, Default)]
pub struct AuditSettings {
    /// Audit log file (default: sealfs.audit in the cipher dir).
    #[arg(long, global = true, value_name = "PATH", env = "SEALFS_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,
    /// Also send every audit record to syslog (authpriv.info; journald picks it up).
    #[arg(long, global = true)]
    pub audit_syslog: bool,
}

static SETTINGS: Mutex<Option<AuditSettings>> = Mutex::new(None);

pub fn configure(settings: AuditSettings) {
    *SETTINGS.lock().unwrap_or_else(|e| e.into_inner()) = Some(settings);
}

/// Settings-file values, used where the command line and environment said nothing.
pub fn default_to(log: Option<PathBuf>, syslog: bool) {
    let mut settings = SETTINGS.lock().unwrap_or_else(|e| e.into_inner());
    let current = settings.get_or_insert_with(AuditSettings::default);
    if current.audit_log.is_none() {
        current.audit_log = log;
    }
    current.audit_syslog |= syslog;
}

fn settings() -> AuditSettings {
    SETTINGS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_default()
}

fn path_for(cipher_dir: &Path) -> PathBuf {
    settings()
        .audit_log
        .unwrap_or_else(|| AuditLog::default_path(cipher_dir))
}

/// The audit log of an unlocked volume; records the unlock itself (a master-key unwrap).
pub fn open(cipher_dir: &Path, keys: &VolumeKeys, command: &str) -> AuditLog {
    let log = AuditLog::new(path_for(cipher_dir), keys, settings().audit_syslog);
    let (slot, provider) = keys.opened_by().unwrap_or((u32::MAX, "unknown"));
    log.record(
        "unlock",
        json!({ "command": command, "keyslot": slot, "provider": provider }),
    );
    log
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Check that the audit log is complete and untampered (needs a key of the volume).
    Verify(VerifyArgs),
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    pub cipher_dir: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub unlock: UnlockArgs,
}

pub fn run(command: AuditCommand) -> Result<()> {
    let AuditCommand::Verify(args) = command;
    let config = Volume::read_config(&args.cipher_dir)?;
    let keys = sealfs::keys::unlock(&config, &args.unlock.providers(&config)?)?;
    let path = path_for(&args.cipher_dir);
    let result = audit::verify(&path, &keys)
        .map_err(|e| anyhow::anyhow!("audit log {}: {e}", path.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        for (line, what) in &result.breaks {
            println!("line {line}: {what}");
        }
        for line in &result.torn {
            println!("line {line}: a record cut short by a crash (not a break in the chain)");
        }
        println!(
            "{}: {} records{}, {}",
            path.display(),
            result.records,
            match (&result.first, &result.last) {
                (Some(first), Some(last)) => format!(" from {first} to {last}"),
                _ => String::new(),
            },
            if result.intact() {
                "chain intact"
            } else {
                "CHAIN BROKEN"
            }
        );
    }
    if !result.intact() {
        bail!(
            "the audit log has been tampered with ({} break(s))",
            result.breaks.len()
        );
    }
    Ok(())
}
