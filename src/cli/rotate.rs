use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use sealfs::admin::rotate;
use sealfs::volume::Volume;

use serde_json::json;

use super::audit;
use super::unlock::UnlockArgs;

#[derive(Args, Debug)]
pub struct RotateArgs {
    pub cipher_dir: PathBuf,
    #[command(flatten)]
    pub unlock: UnlockArgs,
}

pub fn run(args: RotateArgs) -> Result<()> {
    let config = Volume::read_config(&args.cipher_dir)?;
    let keys = sealfs::keys::unlock(&config, &args.unlock.providers(&config)?)?;
    let log = audit::open(&args.cipher_dir, &keys, "rotate");
    let rotated = rotate::rotate(&args.cipher_dir, &keys)?;
    log.record(
        "kek-create",
        json!({ "version": rotated.current, "previous": rotated.previous }),
    );
    println!(
        "KEK version {} is current (was {}); new files use it now, also in running mounts. \
         Run `sealfs rewrap` to move existing files to it.",
        rotated.current, rotated.previous
    );
    Ok(())
}
