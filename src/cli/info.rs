use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use sealfs::admin::info::{VolumeInfo, info};
use sealfs::admin::rotate::list;

#[derive(Args, Debug)]
pub struct InfoArgs {
    pub cipher_dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: InfoArgs) -> Result<()> {
    let info = info(&args.cipher_dir)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        print_text(&info);
    }
    Ok(())
}

fn print_text(info: &VolumeInfo) {
    let mode = match info.key_mode {
        sealfs::format::config::KeyMode::Volume => {
            "volume (file keys under a volume KEK)".to_string()
        }
        sealfs::format::config::KeyMode::PerFile => format!(
            "per-file (file keys under keyslot {})",
            info.file_key_slot.unwrap_or_default()
        ),
    };
    println!("volume        {}", info.path);
    println!("id            {}", info.volume_id);
    println!("format        config version {}", info.format_version);
    println!(
        "cipher        {}, {}-byte blocks",
        info.cipher, info.block_size
    );
    println!("key mode      {mode}");
    println!("current KEK   version {}", info.current_kek);
    if !info.rotated_keks.is_empty() {
        println!("rotated KEKs  {}", list(&info.rotated_keks));
    }
    if !info.retired_keks.is_empty() {
        println!("retired KEKs  {}", list(&info.retired_keks));
    }
    if info.reverse {
        println!(
            "reverse       yes: a plaintext tree, encrypted on read by `sealfs mount --reverse`"
        );
    }
    if let Some(backing) = &info.backing {
        println!("backing store {}", backing.fs_type);
        for fallback in backing.fallbacks() {
            println!("  fallback    {fallback}");
        }
    }
    println!("keyslots      {}", info.keyslots.len());
    for slot in &info.keyslots {
        println!("  {:>4}  {:<10}  {}", slot.id, slot.provider, slot.detail);
    }
    let files = &info.files;
    if !info.policies.is_empty() || !info.retired_policies.is_empty() {
        println!("key policies  {}", info.policies.len());
        for p in &info.policies {
            println!(
                "  {:>4}  {:<16} {:<10}  {}",
                p.id, p.label, p.provider, p.detail
            );
        }
        if !info.retired_policies.is_empty() {
            println!("  removed     {}", list(&info.retired_policies));
        }
    }
    if info.reverse {
        return;
    }
    println!("files         {} (one header each)", files.headers);
    for (version, count) in &files.by_kek {
        println!("  {count:>10}  under KEK version {version}");
    }
    for (slot, count) in &files.by_master_slot {
        println!("  {count:>10}  under the master key of keyslot {slot}");
    }
    for (policy, count) in &files.by_policy {
        let label = info
            .policies
            .iter()
            .find(|p| p.id == *policy)
            .map_or("removed: no key opens them".to_string(), |p| {
                p.label.clone()
            });
        println!("  {count:>10}  under key policy {policy} ({label})");
    }
    if files.unreadable > 0 {
        println!(
            "  {:>10}  unreadable headers (run sealfs fsck)",
            files.unreadable
        );
    }
    if files.temps + files.strays > 0 {
        println!(
            "  {:>10}  leftovers in sealfs.headers (run sealfs fsck --repair)",
            files.temps + files.strays
        );
    }
}
