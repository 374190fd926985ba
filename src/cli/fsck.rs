use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use sealfs::admin::fsck::{FsckOptions, FsckReport, fsck};
use sealfs::volume::Volume;

use serde_json::json;

use super::audit;
use super::progress::Reporter;
use super::unlock::UnlockArgs;

/// fsck(8): operational error (the volume could not be checked at all).
const EXIT_OPERATIONAL: i32 = 8;

#[derive(Args, Debug)]
pub struct FsckArgs {
    pub cipher_dir: PathBuf,
    /// Fix what can be fixed: remove crash leftovers and orphan headers, move unreadable
    /// entries to /lost+found, give files that share an id their own. Needs the volume
    /// unmounted.
    #[arg(long)]
    pub repair: bool,
    /// With --repair: remove what key policy ID left behind once its key is gone for good
    /// (deleted in KMS, or the policy shredded); its directories stay, empty. Repeatable.
    #[arg(long, value_name = "ID", requires = "repair")]
    pub clear_policy: Vec<u32>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub unlock: UnlockArgs,
}

/// Runs fsck and returns its exit code: 0 clean, 1 errors corrected, 4 errors left, 8 the
/// volume could not be checked.
pub fn run(args: FsckArgs) -> Result<i32> {
    let volume = match open(&args) {
        Ok(volume) => volume,
        Err(e) => {
            eprintln!("sealfs fsck: {e:#}");
            return Ok(EXIT_OPERATIONAL);
        }
    };
    let log = audit::open(&args.cipher_dir, &volume.keys, "fsck");
    let progress = Reporter::new("fsck");
    let report = fsck(
        &volume,
        FsckOptions {
            repair: args.repair,
            clear_policies: args.clear_policy.clone(),
        },
        &progress,
    );
    progress.finish();
    let report = match report {
        Ok(report) => report,
        Err(e) => {
            eprintln!("sealfs fsck: {e}");
            return Ok(EXIT_OPERATIONAL);
        }
    };
    log.record(
        if args.repair { "fsck-repair" } else { "fsck" },
        json!({
            "files": report.files,
            "problems": report.problems.len(),
            "repaired": report.problems.iter().filter(|p| p.repaired.is_some()).count(),
            "exit": report.exit_code(),
        }),
    );
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    Ok(report.exit_code())
}

fn open(args: &FsckArgs) -> Result<Volume> {
    args.unlock.open_volume(&args.cipher_dir)
}

fn print_text(report: &FsckReport) {
    for problem in &report.problems {
        let repaired = problem
            .repaired
            .as_deref()
            .map(|r| format!(" [repaired: {r}]"))
            .unwrap_or_default();
        println!(
            "{}: {}: {}{repaired}",
            serde_json::to_value(problem.kind)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            problem.path,
            problem.detail
        );
    }
    let mib = report.bytes_checked as f64 / (1 << 20) as f64;
    println!(
        "{} files, {} directories, {} symlinks, {} other, {} headers; {mib:.1} MiB checked in {:.1} s ({:.0} files/s, {:.0} MiB/s); {} problem(s), {} repaired{}",
        report.files,
        report.dirs,
        report.symlinks,
        report.others,
        report.headers,
        report.seconds,
        report.files as f64 / report.seconds.max(1e-9),
        mib / report.seconds.max(1e-9),
        report.problems.len(),
        report
            .problems
            .iter()
            .filter(|p| p.repaired.is_some())
            .count(),
        if report.quarantined > 0 {
            format!(
                "; {} entries in /lost+found (not checked)",
                report.quarantined
            )
        } else {
            String::new()
        }
    );
}
