//! `sealfs policy`: key policies, one per tenant: a directory and everything beneath it under
//! the tenant's own master key.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use serde_json::json;

use sealfs::admin::{census, policy};
use sealfs::volume::{Volume, policy_dirs};

use super::audit;
use super::key::ExistingKeyArgs;
use super::unlock::{NewKeyArgs, RemoteArgs, describe_created};

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Put a directory (made if missing, else empty) under a tenant's own master key.
    Set(SetArgs),
    /// List the policies, their keys, files and directories.
    List(ListArgs),
    /// Show which policy protects a directory.
    Show(ShowArgs),
    /// Take a policy away: from an empty directory, or with --shred from one with files,
    /// which then stay as ciphertext nothing can open.
    Remove(RemoveArgs),
}

/// The tenant's master key: exactly one.
#[derive(Args, Debug, Clone, Default)]
pub struct TenantKeyArgs {
    /// The tenant's AWS KMS key (ARN, key id or alias/NAME).
    #[arg(long, value_name = "KEY")]
    pub kms: Option<String>,
    /// The tenant's key is on the PKCS#11 token with this label (needs --pkcs11-key,
    /// --pkcs11-module and the PIN).
    #[arg(long, value_name = "LABEL", requires = "pkcs11_key")]
    pub pkcs11_token: Option<String>,
    /// Label of the tenant's AES-256 key on the token.
    #[arg(long, value_name = "LABEL", requires = "pkcs11_token")]
    pub pkcs11_key: Option<String>,
    /// The tenant's key file (32 bytes, mode 0600): created if missing.
    #[arg(long, value_name = "PATH")]
    pub keyfile: Option<PathBuf>,
}

/// Opening the volume itself: --unlock-* (so that --keyfile can name the tenant's key).
#[derive(Args, Debug)]
pub struct VolumeArgs {
    pub cipher_dir: PathBuf,
    #[command(flatten)]
    pub existing: ExistingKeyArgs,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

impl VolumeArgs {
    fn open(&self) -> Result<Volume> {
        self.existing
            .with_remote(&self.remote)
            .open_volume(&self.cipher_dir)
    }
}

#[derive(Args, Debug)]
pub struct SetArgs {
    #[command(flatten)]
    pub volume: VolumeArgs,
    /// The directory's path inside the volume, e.g. /clients/acme.
    pub path: PathBuf,
    /// A name for the tenant in listings, the audit log and errors (default: the path). A
    /// `policy set` with the label of a policy left with no directory (killed half way, or its
    /// directory removed) puts that policy on the directory, if the key given opens it.
    #[arg(long)]
    pub label: Option<String>,
    #[command(flatten)]
    pub key: TenantKeyArgs,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub volume: VolumeArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    #[command(flatten)]
    pub volume: VolumeArgs,
    pub path: PathBuf,
}

#[derive(Args, Debug)]
pub struct RemoveArgs {
    #[command(flatten)]
    pub volume: VolumeArgs,
    /// The directory carrying the policy.
    #[arg(required_unless_present = "id", conflicts_with = "id")]
    pub path: Option<PathBuf>,
    /// A policy whose directory was removed (`policy list` shows it with none).
    #[arg(long)]
    pub id: Option<u32>,
    /// Destroy the tenant's files: drop the policy's sealed secret from the config (with
    /// the tenant's KMS key deleted, nothing anywhere can open them again).
    #[arg(long)]
    pub shred: bool,
}

pub fn run(command: PolicyCommand) -> Result<()> {
    match command {
        PolicyCommand::Set(args) => set(args),
        PolicyCommand::List(args) => list(args),
        PolicyCommand::Show(args) => show(args),
        PolicyCommand::Remove(args) => remove(args),
    }
}

fn set(args: SetArgs) -> Result<()> {
    let given = [
        args.key.kms.is_some(),
        args.key.pkcs11_token.is_some(),
        args.key.keyfile.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        bail!(
            "give the tenant's master key: one of --kms KEY, --pkcs11-token/--pkcs11-key, --keyfile PATH"
        );
    }
    let volume = args.volume.open()?;
    let key_file = match &args.key.keyfile {
        Some(path) => Some(std::path::absolute(path)?),
        None => None,
    };
    let new = NewKeyArgs {
        keyfile: key_file.clone(),
        kms: args.key.kms.clone(),
        pkcs11_token: args.key.pkcs11_token.clone(),
        pkcs11_key: args.key.pkcs11_key.clone(),
        ..NewKeyArgs::default()
    }
    .build(&args.volume.remote, volume.keys.volume_id(), false)?;
    let provider = &new.providers[0];
    let set = policy::set_policy(
        &volume,
        &args.path,
        args.label.as_deref(),
        provider.as_ref(),
        key_file.map(|p| p.display().to_string()),
    );
    let set = match set {
        Ok(set) => set,
        Err(e) => {
            // A key file the config already names (the set failed after its first config
            // write) seals a live policy: it stays, whatever failed after.
            // When in doubt (the config unreadable), the key stays.
            let named = Volume::read_config(&args.volume.cipher_dir)
                .ok()
                .is_none_or(|config| {
                    config.policies.iter().any(|p| {
                        p.key_file.as_deref().map(std::path::Path::new)
                            == new.created_keyfile.as_deref()
                    })
                });
            if named {
                if let Some(path) = &new.created_keyfile {
                    eprintln!("{}", describe_created(path));
                }
            } else {
                new.discard_created();
            }
            return Err(e.into());
        }
    };
    let (id, label) = (set.id, &set.label);
    let log = audit::open(&args.volume.cipher_dir, &volume.keys, "policy set");
    log.record(
        "policy-set",
        json!({ "policy": id, "label": label, "key": provider.describe(), "reattached": set.reattached }),
    );
    println!(
        "policy {id} ({label}) {} {}: {}",
        if set.reattached {
            "put again on"
        } else {
            "set on"
        },
        args.path.display(),
        provider.describe()
    );
    if let Some(path) = &new.created_keyfile {
        println!("{}", describe_created(path));
    }
    if set.move_pending {
        println!(
            "{} held files: moving their names and keys under policy {id} (`sealfs rewrap` resumes this if interrupted; the volume does not mount until it is done)",
            args.path.display()
        );
        let progress = super::progress::Reporter::new("move");
        let report = sealfs::admin::rewrap::rewrap(&volume, Default::default(), &progress)?;
        progress.finish();
        super::rewrap::print_moved(&report);
        if !report.failed.is_empty() || report.moved.as_ref().is_some_and(|m| !m.failed.is_empty())
        {
            bail!(
                "some entries could not be moved (see above); run `sealfs fsck`, then `sealfs rewrap` again"
            );
        }
    }
    Ok(())
}

fn list(args: ListArgs) -> Result<()> {
    let volume = args.volume.open()?;
    let policy_dirs::PolicyDirs {
        marked: dirs,
        unreadable,
    } = policy_dirs::find_policy_dirs(&volume)?;
    let counts = census::census(&volume.headers)?;
    let config = Volume::read_config(&args.volume.cipher_dir)?;
    let rows: Vec<serde_json::Value> = config
        .policies
        .iter()
        .map(|p| {
            json!({
                "id": p.id,
                "label": p.label,
                "provider": p.slot.provider.kind(),
                "key": p.slot.provider.detail(),
                "key_file": p.key_file,
                "files": counts.by_policy.get(&p.id).copied().unwrap_or(0),
                "directories": dirs.iter().filter(|d| d.policy == p.id).map(|d| d.path.clone()).collect::<Vec<_>>(),
            })
        })
        .collect();
    let shredded: Vec<serde_json::Value> = config
        .retired_policies
        .iter()
        .map(|id| {
            json!({
                "id": id,
                "files": counts.by_policy.get(id).copied().unwrap_or(0),
                "directories": dirs.iter().filter(|d| d.policy == *id).map(|d| d.path.clone()).collect::<Vec<_>>(),
            })
        })
        .collect();
    if args.json {
        let out = json!({
            "policies": rows,
            "removed": shredded,
            "unreadable": unreadable.iter().map(|(p, e)| json!({"path": p, "error": e})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if rows.is_empty() && shredded.is_empty() {
        println!("no policies: every file is under the volume's own keys");
    }
    for row in &rows {
        println!(
            "{:>4}  {:<16} {:<10} {:>8} files  {}",
            row["id"],
            row["label"].as_str().unwrap_or(""),
            row["provider"].as_str().unwrap_or(""),
            row["files"],
            row["key"].as_str().unwrap_or("")
        );
        for dir in row["directories"].as_array().into_iter().flatten() {
            println!("      {}", dir.as_str().unwrap_or(""));
        }
        if row["directories"].as_array().is_some_and(|d| d.is_empty()) {
            println!(
                "      (no directory: removed; `sealfs policy remove --id {}` retires it)",
                row["id"]
            );
        }
    }
    for row in &shredded {
        println!(
            "{:>4}  (removed)        {:>19} files left, which no key opens",
            row["id"], row["files"]
        );
        for dir in row["directories"].as_array().into_iter().flatten() {
            println!("      {}", dir.as_str().unwrap_or(""));
        }
    }
    for (path, error) in &unreadable {
        println!("beneath {path}: not listed ({error})");
    }
    Ok(())
}

fn show(args: ShowArgs) -> Result<()> {
    let volume = args.volume.open()?;
    let dir = policy_dirs::find_dir(&volume, &args.path, false)?;
    if dir.policy == sealfs::format::policy::VOLUME_POLICY {
        println!("{}: the volume's own keys", args.path.display());
        return Ok(());
    }
    let how = if dir.own_marker {
        "its own"
    } else {
        "inherited from above"
    };
    match volume.config.policy(dir.policy) {
        Some(p) => println!(
            "{}: policy {} ({}), {how}: {} {}",
            args.path.display(),
            p.id,
            p.label,
            p.slot.provider.kind(),
            p.slot.provider.detail()
        ),
        None => println!(
            "{}: policy {} ({how}), removed: nothing can open its files",
            args.path.display(),
            dir.policy
        ),
    }
    Ok(())
}

fn remove(args: RemoveArgs) -> Result<()> {
    let volume = args.volume.open()?;
    let Some(path) = &args.path else {
        let id = args.id.expect("clap requires a path or an id");
        let label = policy::forget_policy(&volume, id)?;
        audit::open(&args.volume.cipher_dir, &volume.keys, "policy remove")
            .record("policy-remove", json!({ "policy": id, "label": label }));
        println!("policy {id} ({label}) removed; it had no directory left");
        return Ok(());
    };
    let removed = policy::remove_policy(&volume, path, args.shred)?;
    let log = audit::open(&args.volume.cipher_dir, &volume.keys, "policy remove");
    log.record(
        if removed.shredded {
            "policy-shred"
        } else {
            "policy-remove"
        },
        json!({ "policy": removed.policy, "label": removed.label }),
    );
    if removed.shredded {
        println!(
            "policy {} ({}) shredded: its sealed secret is gone from the config; the files of {} cannot be opened again (`sealfs fsck --repair --clear-policy {}` removes them). Older copies of sealfs.conf still hold the secret: delete the tenant's KMS key (or key file) too.",
            removed.policy,
            removed.label,
            path.display(),
            removed.policy
        );
    } else {
        println!(
            "policy {} ({}) removed from {}",
            removed.policy,
            removed.label,
            path.display()
        );
    }
    Ok(())
}
