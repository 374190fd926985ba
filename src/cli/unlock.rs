use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use sealfs::format::Id;
use sealfs::keys::{
    KeyfileProvider, MasterKeyProvider, PassphraseProvider, PassphraseSource, default_key_path,
};

/// How to reach the master key; the same options for every command that needs it.
#[derive(Args, Debug, Clone, Default)]
pub struct UnlockArgs {
    /// Master key file (32 bytes). Default for init: created under ~/.config/sealfs/keys.
    #[arg(long, value_name = "PATH")]
    pub keyfile: Option<PathBuf>,
    /// Use a passphrase, asked on the terminal.
    #[arg(long)]
    pub passphrase: bool,
    /// Read the passphrase from the first line of FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "extpass")]
    pub passfile: Option<PathBuf>,
    /// Run CMD (with /bin/sh) and use the first line it prints as the passphrase.
    #[arg(long, value_name = "CMD")]
    pub extpass: Option<String>,
}

impl UnlockArgs {
    pub fn passphrase_source(&self) -> Option<PassphraseSource> {
        if let Some(file) = &self.passfile {
            Some(PassphraseSource::File(file.clone()))
        } else if let Some(cmd) = &self.extpass {
            Some(PassphraseSource::Command(cmd.clone()))
        } else if self.passphrase {
            Some(PassphraseSource::Prompt)
        } else {
            None
        }
    }

    /// Providers to try, in order, for an existing volume. With nothing given, the default
    /// key file of this volume id.
    pub fn providers(&self, volume_id: &Id) -> Result<Vec<Box<dyn MasterKeyProvider>>> {
        let mut providers: Vec<Box<dyn MasterKeyProvider>> = Vec::new();
        if let Some(path) = &self.keyfile {
            providers.push(Box::new(KeyfileProvider::load(path)?));
        }
        if let Some(source) = self.passphrase_source() {
            providers.push(Box::new(PassphraseProvider::from_source(&source, false)?));
        }
        if providers.is_empty() {
            let Some(path) = default_key_path(volume_id) else {
                bail!(
                    "no key given and no home directory to find the default key file in; use --keyfile or --passfile"
                );
            };
            if !path.exists() {
                bail!(
                    "no key file at {} (the default for this volume); give --keyfile PATH, --passfile FILE, --extpass CMD or --passphrase",
                    path.display()
                );
            }
            providers.push(Box::new(KeyfileProvider::load(&path)?));
        }
        Ok(providers)
    }
}
