use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use sealfs::crypto::random_array;
use sealfs::format::Id;
use sealfs::keys::{
    KeyfileProvider, MasterKeyProvider, PassphraseProvider, default_key_path, write_new_keyfile,
};
use sealfs::volume::{InitOptions, Volume};

use super::unlock::UnlockArgs;

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Directory that will hold the ciphertext (created if missing; must be empty).
    pub cipher_dir: PathBuf,
    #[command(flatten)]
    pub unlock: UnlockArgs,
    /// Plaintext block size in bytes (power of two, 512 to 1 MiB).
    #[arg(long, default_value_t = 4096)]
    pub block_size: u32,
}

pub fn run(args: InitArgs) -> Result<()> {
    let volume_id: Id = random_array()?;
    let mut providers: Vec<Box<dyn MasterKeyProvider>> = Vec::new();
    let mut new_keyfile = None;
    if let Some(source) = args.unlock.passphrase_source() {
        providers.push(Box::new(PassphraseProvider::from_source(&source, true)?));
    }
    if args.unlock.keyfile.is_some() || providers.is_empty() {
        let path = match &args.unlock.keyfile {
            Some(path) => path.clone(),
            None => default_key_path(&volume_id)
                .context("no home directory for the default key file; use --keyfile")?,
        };
        if !path.exists() {
            write_new_keyfile(&path)?;
            new_keyfile = Some(path.clone());
        }
        providers.push(Box::new(KeyfileProvider::load(&path)?));
    }
    let options = InitOptions {
        block_size: args.block_size,
    };
    let created = Volume::init(&args.cipher_dir, &options, &providers, volume_id);
    if created.is_err()
        && let Some(path) = &new_keyfile
    {
        let _ = std::fs::remove_file(path);
    }
    let config = created?;
    println!(
        "created sealfs volume {} in {}",
        config.volume_id,
        args.cipher_dir.display()
    );
    for provider in &providers {
        println!("  keyslot: {}", provider.describe());
    }
    if let Some(path) = new_keyfile {
        println!(
            "master key written to {} (mode 0600): back it up; without it the data is lost",
            path.display()
        );
    }
    Ok(())
}
