use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use sealfs::admin::{rewrap, rotate};

use serde_json::json;

use super::audit;
use super::progress::Reporter;
use super::unlock::UnlockArgs;

#[derive(Args, Debug)]
pub struct RewrapArgs {
    pub cipher_dir: PathBuf,
    /// Once every header is current, retire KEK version N (repeatable): it is dropped from the
    /// volume and refused from then on.
    #[arg(long, value_name = "N")]
    pub retire_kek: Vec<u32>,
    /// Per-file key mode: wrap every file key afresh under its KMS or HSM key (KMS ReEncrypt;
    /// the key never leaves KMS), e.g. after KMS rotated the key's backing material.
    #[arg(long)]
    pub reencrypt: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub unlock: UnlockArgs,
}

pub fn run(args: RewrapArgs) -> Result<()> {
    let volume = args.unlock.open_volume(&args.cipher_dir)?;
    let log = audit::open(&args.cipher_dir, &volume.keys, "rewrap");
    let started = std::time::Instant::now();
    let progress = Reporter::new("rewrap");
    let report = rewrap::rewrap(
        &volume,
        rewrap::RewrapOptions {
            reencrypt: args.reencrypt,
        },
        &progress,
    )?;
    progress.finish();
    let seconds = started.elapsed().as_secs_f64();
    log.record(
        "rewrap",
        json!({
            "kek": report.kek,
            "headers": report.headers,
            "rewrapped": report.rewrapped,
            "current": report.current,
            "gone": report.gone,
            "failed": report.failed.len(),
            "reencrypt": args.reencrypt,
        }),
    );
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} headers in {seconds:.1} s: {} re-wrapped under KEK version {}, {} already current, {} deleted meanwhile, {} failed",
            report.headers,
            report.rewrapped,
            report.kek,
            report.current,
            report.gone,
            report.failed.len()
        );
        for failure in &report.failed {
            println!("  file {}: {}", failure.file_id, failure.reason);
        }
        print_moved(&report);
    }
    if let Some(moved) = &report.moved {
        log.record(
            "policy-move",
            json!({ "renamed": moved.renamed, "files": moved.files.len(), "failed": moved.failed.len() }),
        );
        if !moved.failed.is_empty() {
            bail!(
                "{} entries could not be moved under their policy; run `sealfs fsck`",
                moved.failed.len()
            );
        }
    }
    if !report.failed.is_empty() {
        bail!(
            "{} header(s) could not be re-wrapped; run `sealfs fsck`",
            report.failed.len()
        );
    }
    if !args.retire_kek.is_empty() {
        for version in &args.retire_kek {
            rotate::retire_kek(&args.cipher_dir, &volume.keys, &volume.backing, *version)?;
            log.record("kek-retire", json!({ "version": version }));
            println!("retired KEK version {version}");
        }
    }
    Ok(())
}

/// What a move under a key policy did (part of a rewrap).
pub fn print_moved(report: &rewrap::RewrapReport) {
    if let Some(moved) = &report.moved {
        println!(
            "moved under key policies: {} names, {} symlink targets, {} xattrs re-encrypted; {} files' keys",
            moved.renamed,
            moved.symlinks,
            moved.xattrs,
            moved.files.len()
        );
        for failure in &moved.failed {
            println!("  {failure}");
        }
    }
}
