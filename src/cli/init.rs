use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use sealfs::crypto::random_array;
use sealfs::format::Id;
use sealfs::volume::{InitOptions, Volume};

use super::unlock::{NewKeyArgs, RemoteArgs, describe_created};

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Directory that will hold the ciphertext (created if missing; must be empty).
    pub cipher_dir: PathBuf,
    /// The master keys, one keyslot each (default: a new key file under ~/.config/sealfs/keys).
    #[command(flatten)]
    pub keys: NewKeyArgs,
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Plaintext block size in bytes (power of two, 512 to 1 MiB).
    #[arg(long, default_value_t = 4096)]
    pub block_size: u32,
}

pub fn run(args: InitArgs) -> Result<()> {
    let volume_id: Id = random_array()?;
    let new = args.keys.build(&args.remote, &volume_id, true)?;
    let options = InitOptions {
        block_size: args.block_size,
    };
    let config = match Volume::init(&args.cipher_dir, &options, &new.providers, volume_id) {
        Ok(config) => config,
        Err(e) => {
            new.discard_created();
            return Err(e.into());
        }
    };
    println!(
        "created sealfs volume {} in {}",
        config.volume_id,
        args.cipher_dir.display()
    );
    for provider in &new.providers {
        println!("  keyslot: {}", provider.describe());
    }
    if let Some(path) = &new.created_keyfile {
        println!("{}", describe_created(path));
    }
    Ok(())
}
