use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use argon2::{Algorithm, Argon2, Params, Version};
use zeroize::Zeroizing;

use super::{KeyError, MasterKeyProvider, local};
use crate::crypto::{SecretKey, random_array};
use crate::format::Id;
use crate::format::config::{Argon2Params, ConfigKeyslot, SlotProvider};

/// Where a passphrase comes from.
#[derive(Clone, Debug)]
pub enum PassphraseSource {
    /// Ask on the terminal (twice when creating).
    Prompt,
    /// First line of a file.
    File(PathBuf),
    /// First line a shell command prints.
    Command(String),
}

/// A master key derived from a passphrase with Argon2id, per keyslot salt and parameters.
pub struct PassphraseProvider {
    passphrase: Zeroizing<Vec<u8>>,
    params: Argon2Params,
}

impl PassphraseProvider {
    pub fn from_source(source: &PassphraseSource, confirm: bool) -> Result<Self, KeyError> {
        let fail = |reason: String| KeyError::Passphrase(reason);
        let text: Zeroizing<String> = match source {
            PassphraseSource::Prompt => {
                let first = Zeroizing::new(
                    rpassword::prompt_password("Passphrase: ").map_err(|e| fail(e.to_string()))?,
                );
                if confirm {
                    let again = Zeroizing::new(
                        rpassword::prompt_password("Repeat passphrase: ")
                            .map_err(|e| fail(e.to_string()))?,
                    );
                    if *again != *first {
                        return Err(fail("the two passphrases differ".into()));
                    }
                }
                first
            }
            PassphraseSource::File(path) => {
                let mut text = Zeroizing::new(String::new());
                std::fs::File::open(path)
                    .and_then(|mut f| f.read_to_string(&mut text))
                    .map_err(|e| fail(format!("{}: {e}", path.display())))?;
                text
            }
            PassphraseSource::Command(cmd) => {
                let output = Command::new("/bin/sh")
                    .arg("-c")
                    .arg(cmd)
                    .stdin(Stdio::inherit())
                    .stderr(Stdio::inherit())
                    .output()
                    .map_err(|e| fail(format!("cannot run --extpass command: {e}")))?;
                let stdout = Zeroizing::new(output.stdout);
                if !output.status.success() {
                    return Err(fail(format!(
                        "--extpass command failed ({})",
                        output.status
                    )));
                }
                Zeroizing::new(
                    String::from_utf8(stdout.to_vec())
                        .map_err(|_| fail("--extpass output is not UTF-8".into()))?,
                )
            }
        };
        let line = text.lines().next().unwrap_or("");
        if line.is_empty() {
            return Err(fail("empty passphrase".into()));
        }
        Ok(PassphraseProvider {
            passphrase: Zeroizing::new(line.as_bytes().to_vec()),
            params: Argon2Params::DEFAULT,
        })
    }

    pub fn with_params(mut self, params: Argon2Params) -> Self {
        self.params = params;
        self
    }

    fn stretch(&self, params: &Argon2Params, salt: &[u8]) -> Result<SecretKey, KeyError> {
        let argon_params = Params::new(params.m_kib, params.t, params.p, Some(32))
            .map_err(|e| KeyError::Passphrase(format!("argon2id parameters: {e}")))?;
        let mut out = Zeroizing::new([0u8; 32]);
        Argon2::new(Algorithm::Argon2id, Version::V0x13, argon_params)
            .hash_password_into(&self.passphrase, salt, &mut out[..])
            .map_err(|e| KeyError::Passphrase(format!("argon2id: {e}")))?;
        Ok(SecretKey::from_array(*out))
    }
}

impl MasterKeyProvider for PassphraseProvider {
    fn describe(&self) -> String {
        "the passphrase".into()
    }

    fn create_slot(
        &self,
        slot_id: u32,
        volume_id: &Id,
        keyring: &[u8],
    ) -> Result<ConfigKeyslot, KeyError> {
        let salt: [u8; 16] = random_array()?;
        let material = self.stretch(&self.params, &salt)?;
        let provider = SlotProvider::Passphrase {
            argon2id: self.params,
            salt: ConfigKeyslot::encode_bytes(&salt),
        };
        local::seal_slot(&material, provider, slot_id, volume_id, keyring)
    }

    fn open_slot(
        &self,
        slot: &ConfigKeyslot,
        volume_id: &Id,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, KeyError> {
        let SlotProvider::Passphrase { argon2id, .. } = &slot.provider else {
            return Ok(None);
        };
        let material = self.stretch(argon2id, &slot.salt()?)?;
        local::open_slot(&material, slot, volume_id, || self.describe()).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Argon2Params = Argon2Params {
        m_kib: 64,
        t: 1,
        p: 1,
    };

    fn provider(text: &str) -> PassphraseProvider {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pass");
        std::fs::write(&path, format!("{text}\nignored second line\n")).unwrap();
        PassphraseProvider::from_source(&PassphraseSource::File(path), false)
            .unwrap()
            .with_params(FAST)
    }

    #[test]
    fn passphrase_slot_round_trip_and_wrong_passphrase() {
        let vid = [5; 16];
        let slot = provider("correct horse")
            .create_slot(3, &vid, b"ring")
            .unwrap();
        let opened = provider("correct horse")
            .open_slot(&slot, &vid)
            .unwrap()
            .unwrap();
        assert_eq!(&opened[..], b"ring");
        assert!(matches!(
            provider("wrong horse").open_slot(&slot, &vid),
            Err(KeyError::WrongKey(_))
        ));
    }

    #[test]
    fn extpass_command_and_failures() {
        let p = PassphraseProvider::from_source(
            &PassphraseSource::Command("echo s3cret".into()),
            false,
        )
        .unwrap();
        assert_eq!(&p.passphrase[..], b"s3cret");
        assert!(
            PassphraseProvider::from_source(&PassphraseSource::Command("false".into()), false)
                .is_err()
        );
        assert!(
            PassphraseProvider::from_source(&PassphraseSource::Command("true".into()), false)
                .is_err()
        );
    }
}
