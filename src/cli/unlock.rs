use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use zeroize::Zeroizing;

use sealfs::format::Id;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sealfs::format::config::{SlotProvider, TenantPolicy, VolumeConfig};
use sealfs::keys::{
    KeyError, KeyfileProvider, KmsProvider, MasterKeyProvider, PassphraseProvider,
    PassphraseSource, Pkcs11Provider, Pkcs11Settings, TenantAccess, default_key_path,
    write_new_keyfile,
};

/// Settings for reaching remote key services, shared by every command.
#[derive(Args, Debug, Clone, Default)]
pub struct RemoteArgs {
    /// KMS endpoint URL (default: the AWS SDK's; also AWS_ENDPOINT_URL_KMS).
    #[arg(long, value_name = "URL")]
    pub kms_endpoint: Option<String>,
    /// PKCS#11 module (default: the one recorded in the keyslot).
    #[arg(long, value_name = "PATH")]
    pub pkcs11_module: Option<PathBuf>,
    /// File whose first line is the PKCS#11 user PIN (or set SEALFS_PKCS11_PIN).
    #[arg(long, value_name = "FILE")]
    pub pin_file: Option<PathBuf>,
    /// The key file of key policy ID, where it is not where `policy set` found it
    /// (repeatable).
    #[arg(long = "policy-keyfile", value_name = "ID=PATH", value_parser = parse_policy_keyfile)]
    pub policy_keyfiles: Vec<(u32, PathBuf)>,
}

fn parse_policy_keyfile(text: &str) -> std::result::Result<(u32, PathBuf), String> {
    let (id, path) = text
        .split_once('=')
        .ok_or_else(|| "expected ID=PATH, e.g. 3=/etc/sealfs/tenants/acme.key".to_string())?;
    let id = id
        .parse()
        .map_err(|_| format!("{id:?} is not a policy id (see `sealfs policy list`)"))?;
    Ok((id, PathBuf::from(path)))
}

impl RemoteArgs {
    fn endpoint(&self) -> Option<String> {
        self.kms_endpoint.clone()
    }

    /// How a volume reaches its key policies' master keys: KMS keys and PKCS#11 tokens as
    /// their slots name them (one provider per policy, kept, so a token's session and a KMS
    /// client live across unseals), key files read afresh at each unseal (so a tenant whose
    /// key file is gone is locked at the next one).
    pub fn tenant_access(&self) -> Box<TenantAccess> {
        let remote = self.clone();
        let made: Mutex<HashMap<u32, Arc<dyn MasterKeyProvider>>> = Mutex::default();
        Box::new(move |policy: &TenantPolicy| {
            let unavailable = |reason: String| KeyError::TenantKeyUnavailable {
                policy: policy.id,
                reason,
            };
            if let SlotProvider::Keyfile = &policy.slot.provider {
                let path = remote
                    .policy_keyfiles
                    .iter()
                    .rev()
                    .find(|(id, _)| *id == policy.id)
                    .map(|(_, path)| path.clone())
                    .or_else(|| policy.key_file.as_ref().map(PathBuf::from))
                    .ok_or_else(|| {
                        unavailable(format!(
                            "give its key file: --policy-keyfile {}=PATH",
                            policy.id
                        ))
                    })?;
                let provider =
                    KeyfileProvider::load(&path).map_err(|e| unavailable(e.to_string()))?;
                return Ok(Arc::new(provider) as Arc<dyn MasterKeyProvider>);
            }
            let mut made = made.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(provider) = made.get(&policy.id) {
                return Ok(provider.clone());
            }
            let provider: Arc<dyn MasterKeyProvider> = match &policy.slot.provider {
                SlotProvider::AwsKms { key_arn, .. } => {
                    Arc::new(KmsProvider::new(key_arn.clone(), remote.endpoint()))
                }
                SlotProvider::Pkcs11 {
                    token_label,
                    key_label,
                    module,
                    ..
                } => {
                    let pin = remote
                        .pin()
                        .map_err(|e| unavailable(e.to_string()))?
                        .ok_or_else(|| {
                            unavailable(
                                "a PKCS#11 policy needs the PIN: --pin-file FILE or SEALFS_PKCS11_PIN"
                                    .into(),
                            )
                        })?;
                    Arc::new(Pkcs11Provider::new(Pkcs11Settings {
                        module: remote
                            .pkcs11_module
                            .clone()
                            .unwrap_or_else(|| PathBuf::from(module)),
                        token_label: token_label.clone(),
                        key_label: key_label.clone(),
                        pin,
                    }))
                }
                SlotProvider::Keyfile | SlotProvider::Passphrase { .. } => {
                    return Err(unavailable("a policy cannot be under a passphrase".into()));
                }
            };
            made.insert(policy.id, provider.clone());
            Ok(provider)
        })
    }

    fn pin(&self) -> Result<Option<Zeroizing<String>>> {
        if let Some(path) = &self.pin_file {
            let text = Zeroizing::new(
                std::fs::read_to_string(path)
                    .with_context(|| format!("PIN file {}", path.display()))?,
            );
            let line = text.lines().next().unwrap_or("").to_string();
            if line.is_empty() {
                bail!("PIN file {} is empty", path.display());
            }
            return Ok(Some(Zeroizing::new(line)));
        }
        Ok(std::env::var("SEALFS_PKCS11_PIN").ok().map(Zeroizing::new))
    }
}

/// How to reach the master key of an existing volume; the same options for every command.
/// KMS keyslots need nothing more (credentials come from the AWS chain); PKCS#11 keyslots
/// need the PIN.
#[derive(Args, Debug, Clone, Default)]
pub struct UnlockArgs {
    /// Master key file (32 bytes). Default: the volume's file under ~/.config/sealfs/keys.
    #[arg(long, value_name = "PATH")]
    pub keyfile: Option<PathBuf>,
    /// Ask for the passphrase on the terminal.
    #[arg(long)]
    pub passphrase: bool,
    /// Read the passphrase from the first line of FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "extpass")]
    pub passfile: Option<PathBuf>,
    /// Run CMD (with /bin/sh) and use the first line it prints as the passphrase.
    #[arg(long, value_name = "CMD")]
    pub extpass: Option<String>,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

fn passphrase_source(
    prompt: bool,
    file: &Option<PathBuf>,
    cmd: &Option<String>,
) -> Option<PassphraseSource> {
    if let Some(file) = file {
        Some(PassphraseSource::File(file.clone()))
    } else if let Some(cmd) = cmd {
        Some(PassphraseSource::Command(cmd.clone()))
    } else if prompt {
        Some(PassphraseSource::Prompt)
    } else {
        None
    }
}

impl UnlockArgs {
    /// Opens the volume in `cipher_dir` for an offline command (fsck, rewrap, policy): unlocked
    /// with `providers`, reaching tenants' keys as `--policy-keyfile`, KMS and PKCS#11 allow.
    pub fn open_volume(&self, cipher_dir: &std::path::Path) -> Result<sealfs::volume::Volume> {
        let config = sealfs::volume::Volume::read_config(cipher_dir)?;
        let volume = sealfs::volume::Volume::open(
            cipher_dir,
            self.providers(&config)?,
            sealfs::keys::CacheLimits::default(),
        )?;
        volume.tenants.set_access(self.remote.tenant_access());
        Ok(volume)
    }

    /// Providers to try, in order: what was given, the default key file, then every KMS and
    /// PKCS#11 keyslot of the volume. Remote ones connect only when first used.
    pub fn providers(&self, config: &VolumeConfig) -> Result<Vec<Box<dyn MasterKeyProvider>>> {
        let mut providers: Vec<Box<dyn MasterKeyProvider>> = Vec::new();
        if let Some(path) = &self.keyfile {
            providers.push(Box::new(KeyfileProvider::load(path)?));
        }
        if let Some(source) = passphrase_source(self.passphrase, &self.passfile, &self.extpass) {
            providers.push(Box::new(PassphraseProvider::from_source(&source, false)?));
        }
        let default_key = default_key_path(&config.volume_id()?);
        if providers.is_empty()
            && let Some(path) = default_key.as_ref().filter(|p| p.exists())
        {
            providers.push(Box::new(KeyfileProvider::load(path)?));
        }
        let pin = self.remote.pin()?;
        for slot in &config.keyslots {
            match &slot.provider {
                SlotProvider::AwsKms { key_arn, .. } => {
                    providers.push(Box::new(KmsProvider::new(
                        key_arn.clone(),
                        self.remote.endpoint(),
                    )));
                }
                SlotProvider::Pkcs11 {
                    token_label,
                    key_label,
                    module,
                    ..
                } => {
                    if let Some(pin) = &pin {
                        providers.push(Box::new(Pkcs11Provider::new(Pkcs11Settings {
                            module: self
                                .remote
                                .pkcs11_module
                                .clone()
                                .unwrap_or_else(|| PathBuf::from(module)),
                            token_label: token_label.clone(),
                            key_label: key_label.clone(),
                            pin: pin.clone(),
                        })));
                    }
                }
                SlotProvider::Keyfile | SlotProvider::Passphrase { .. } => {}
            }
        }
        if providers.is_empty() {
            let kinds: Vec<&str> = config.keyslots.iter().map(|s| s.provider.kind()).collect();
            let where_ = default_key
                .map(|p| format!("no key file at {}, ", p.display()))
                .unwrap_or_default();
            bail!(
                "no key for this volume ({where_}keyslots: {}); give --keyfile PATH, --passfile FILE, --extpass CMD, --passphrase, or --pin-file for PKCS#11",
                kinds.join(", ")
            );
        }
        Ok(providers)
    }
}

/// A new master key for `init` or `key add`.
#[derive(Args, Debug, Clone, Default)]
pub struct NewKeyArgs {
    /// A key file (32 bytes, mode 0600): created if missing, used as it is if present.
    #[arg(long, value_name = "PATH")]
    pub keyfile: Option<PathBuf>,
    /// A passphrase keyslot, asked on the terminal (twice).
    #[arg(long)]
    pub passphrase: bool,
    /// A passphrase keyslot, passphrase read from the first line of FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "extpass")]
    pub passfile: Option<PathBuf>,
    /// A passphrase keyslot, passphrase printed by CMD.
    #[arg(long, value_name = "CMD")]
    pub extpass: Option<String>,
    /// An AWS KMS keyslot under this key (ARN, key id or alias/NAME).
    #[arg(long, value_name = "KEY")]
    pub kms: Option<String>,
    /// A PKCS#11 keyslot on the token with this label (needs --pkcs11-key, --pkcs11-module and
    /// the PIN).
    #[arg(long, value_name = "LABEL", requires = "pkcs11_key")]
    pub pkcs11_token: Option<String>,
    /// Label of the AES-256 key on the token.
    #[arg(long, value_name = "LABEL", requires = "pkcs11_token")]
    pub pkcs11_key: Option<String>,
}

pub struct NewKeys {
    pub providers: Vec<Box<dyn MasterKeyProvider>>,
    /// A key file this command created, to remove again if the command fails.
    pub created_keyfile: Option<PathBuf>,
}

impl NewKeyArgs {
    /// With nothing given and `default_keyfile`, a new key file in the default place.
    pub fn build(
        &self,
        remote: &RemoteArgs,
        volume_id: &Id,
        default_keyfile: bool,
    ) -> Result<NewKeys> {
        let mut providers: Vec<Box<dyn MasterKeyProvider>> = Vec::new();
        if let Some(source) = passphrase_source(self.passphrase, &self.passfile, &self.extpass) {
            providers.push(Box::new(PassphraseProvider::from_source(&source, true)?));
        }
        if let Some(key) = &self.kms {
            providers.push(Box::new(KmsProvider::new(key.clone(), remote.endpoint())));
        }
        if let (Some(token), Some(key)) = (&self.pkcs11_token, &self.pkcs11_key) {
            let module = remote
                .pkcs11_module
                .clone()
                .context("a PKCS#11 keyslot needs --pkcs11-module")?;
            let pin = remote
                .pin()?
                .context("a PKCS#11 keyslot needs the PIN: --pin-file FILE or SEALFS_PKCS11_PIN")?;
            providers.push(Box::new(Pkcs11Provider::new(Pkcs11Settings {
                module,
                token_label: token.clone(),
                key_label: key.clone(),
                pin,
            })));
        }
        let mut created_keyfile = None;
        let keyfile = match &self.keyfile {
            Some(path) => Some(path.clone()),
            None if providers.is_empty() && default_keyfile => Some(
                default_key_path(volume_id)
                    .context("no home directory for the default key file; use --keyfile")?,
            ),
            None => None,
        };
        if let Some(path) = keyfile {
            if !path.exists() {
                write_new_keyfile(&path)?;
                created_keyfile = Some(path.clone());
            }
            providers.insert(0, Box::new(KeyfileProvider::load(&path)?));
        }
        if providers.is_empty() {
            bail!(
                "say which key to add: --keyfile, --passphrase, --passfile, --extpass, --kms or --pkcs11-token"
            );
        }
        Ok(NewKeys {
            providers,
            created_keyfile,
        })
    }
}

impl NewKeys {
    pub fn discard_created(&self) {
        if let Some(path) = &self.created_keyfile {
            let _ = std::fs::remove_file(path);
        }
    }
}

pub fn describe_created(path: &Path) -> String {
    format!(
        "master key written to {} (mode 0600): back it up; without it the data is lost",
        path.display()
    )
}
