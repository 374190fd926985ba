//! A PKCS#11 token (an HSM, or SoftHSM2) as a master-key provider: a sensitive,
//! non-extractable AES-256 key on the token encrypts slot keys with CKM_AES_GCM, binding the
//! keyslot context as associated data. The module is loaded and logged into on first use, so
//! the provider can be made before the mount daemon forks (PKCS#11 state does not survive
//! fork) and used after; one session is kept for the life of the process.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

use super::remote::{self, SlotContext};
use super::{FileKeyContext, KeyError, MasterKeyProvider, RemoteFailure};
use crate::crypto::{SecretKey, random_array};
use crate::format::Id;
use crate::format::config::{ConfigKeyslot, SlotProvider};
use crate::format::header::file_key_context;
use crate::metrics::{KeyCall, KeyService};

const IV_LEN: usize = 12;
const TAG_BITS: u64 = 128;

pub struct Pkcs11Settings {
    pub module: PathBuf,
    pub token_label: String,
    pub key_label: String,
    pub pin: Zeroizing<String>,
}

struct TokenSession {
    session: Session,
    key: ObjectHandle,
    _context: Pkcs11,
}

pub struct Pkcs11Provider {
    settings: Pkcs11Settings,
    /// Opened on first use; dropped when the token stops answering, so the next call
    /// reconnects and an HSM outage heals by itself.
    session: Mutex<Option<TokenSession>>,
}

impl Pkcs11Provider {
    pub fn new(settings: Pkcs11Settings) -> Self {
        Pkcs11Provider {
            settings,
            session: Mutex::new(None),
        }
    }

    fn connect(&self) -> Result<TokenSession, String> {
        let s = &self.settings;
        let context = Pkcs11::new(&s.module)
            .map_err(|e| format!("cannot load {}: {e}", s.module.display()))?;
        match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(())
            | Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::CryptokiAlreadyInitialized,
                _,
            )) => {}
            Err(e) => return Err(format!("C_Initialize: {e}")),
        }
        // Slot numbers change when tokens are added: find the token by its label.
        let slot = context
            .get_slots_with_token()
            .map_err(|e| format!("listing slots: {e}"))?
            .into_iter()
            .find(|slot| {
                context
                    .get_token_info(*slot)
                    .map(|info| info.label().trim_end() == s.token_label)
                    .unwrap_or(false)
            })
            .ok_or_else(|| format!("no token labelled {:?}", s.token_label))?;
        let session = context
            .open_ro_session(slot)
            .map_err(|e| format!("opening a session: {e}"))?;
        let pin = AuthPin::new(s.pin.as_str().into());
        session
            .login(UserType::User, Some(&pin))
            .map_err(|e| format!("login to token {:?}: {e}", s.token_label))?;
        let keys = session
            .find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Label(s.key_label.as_bytes().to_vec()),
            ])
            .map_err(|e| format!("finding key {:?}: {e}", s.key_label))?;
        let key = match keys.as_slice() {
            [key] => *key,
            [] => {
                return Err(format!(
                    "no secret key labelled {:?} on token {:?}",
                    s.key_label, s.token_label
                ));
            }
            _ => {
                return Err(format!(
                    "several keys labelled {:?}; labels must be unique",
                    s.key_label
                ));
            }
        };
        Ok(TokenSession {
            session,
            key,
            _context: context,
        })
    }

    fn with_session<T>(
        &self,
        op: impl FnOnce(&TokenSession) -> Result<T, KeyError>,
    ) -> Result<T, KeyError> {
        let mut guard = crate::sync::lock(&self.session);
        if guard.is_none() {
            *guard = Some(self.connect().map_err(|reason| KeyError::Remote {
                provider: self.describe(),
                failure: RemoteFailure::Unavailable,
                reason,
            })?);
        }
        let result = op(guard.as_ref().expect("just connected"));
        if let Err(KeyError::Remote {
            failure: RemoteFailure::Unavailable,
            ..
        }) = &result
        {
            *guard = None;
        }
        result
    }

    fn failure(&self, op: &str, err: cryptoki::error::Error) -> KeyError {
        use cryptoki::error::RvError;
        let failure = match &err {
            cryptoki::error::Error::Pkcs11(
                RvError::DeviceError
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent
                | RvError::SessionClosed,
                _,
            ) => RemoteFailure::Unavailable,
            cryptoki::error::Error::Pkcs11(
                RvError::KeyFunctionNotPermitted | RvError::UserNotLoggedIn,
                _,
            ) => RemoteFailure::Denied,
            // Integrity failures come back as CKR_GENERAL_ERROR or CKR_ENCRYPTED_DATA_INVALID.
            _ => RemoteFailure::Rejected,
        };
        KeyError::Remote {
            provider: self.describe(),
            failure,
            reason: format!("{op}: {err}"),
        }
    }

    fn rejected(&self, reason: &str) -> KeyError {
        KeyError::Remote {
            provider: self.describe(),
            failure: RemoteFailure::Rejected,
            reason: reason.into(),
        }
    }

    /// AES-GCM under the token key, `aad` bound: iv (12) || ciphertext || tag (16).
    fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut iv: [u8; IV_LEN] = random_array()?;
        let mut stored = iv.to_vec();
        let started = Instant::now();
        let sealed = self.with_session(|t| {
            let params = GcmParams::new(&mut iv, aad, TAG_BITS.into())
                .map_err(|e| self.failure("GCM parameters", e))?;
            t.session
                .encrypt(&Mechanism::AesGcm(params), t.key, plaintext)
                .map_err(|e| self.failure("C_Encrypt", e))
        });
        let sealed = record(KeyCall::Encrypt, started, sealed)?;
        stored.extend_from_slice(&sealed);
        Ok(stored)
    }

    fn open(&self, aad: &[u8], stored: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        if stored.len() < IV_LEN + 16 {
            return Err(self.rejected("wrapped key too short"));
        }
        let (iv, sealed) = stored.split_at(IV_LEN);
        let mut iv: [u8; IV_LEN] = iv.try_into().expect("split at IV_LEN");
        let started = Instant::now();
        let opened = self.with_session(|t| {
            let params = GcmParams::new(&mut iv, aad, TAG_BITS.into())
                .map_err(|e| self.failure("GCM parameters", e))?;
            t.session
                .decrypt(&Mechanism::AesGcm(params), t.key, sealed)
                .map(Zeroizing::new)
                .map_err(|e| self.failure("C_Decrypt", e))
        });
        record(KeyCall::Decrypt, started, opened)
    }
}

/// Counts a token call (metrics) and passes its outcome on.
fn record<T>(call: KeyCall, started: Instant, outcome: Result<T, KeyError>) -> Result<T, KeyError> {
    let failure = match &outcome {
        Ok(_) => None,
        Err(KeyError::Remote { failure, .. }) => Some(*failure),
        Err(_) => Some(RemoteFailure::Rejected),
    };
    crate::metrics::global().key_service_call(KeyService::Pkcs11, call, started.elapsed(), failure);
    outcome
}

impl MasterKeyProvider for Pkcs11Provider {
    fn describe(&self) -> String {
        format!(
            "PKCS#11 key {:?} on token {:?}",
            self.settings.key_label, self.settings.token_label
        )
    }

    fn create_slot(
        &self,
        slot_id: u32,
        volume_id: &Id,
        keyring: &[u8],
    ) -> Result<ConfigKeyslot, KeyError> {
        remote::create_slot(slot_id, volume_id, keyring, |context, slot_key| {
            let stored = self.seal(&context.aad(), slot_key)?;
            Ok(SlotProvider::Pkcs11 {
                token_label: self.settings.token_label.clone(),
                key_label: self.settings.key_label.clone(),
                module: self.settings.module.to_string_lossy().into_owned(),
                encrypted_slot_key: ConfigKeyslot::encode_bytes(&stored),
            })
        })
    }

    fn open_slot(
        &self,
        slot: &ConfigKeyslot,
        volume_id: &Id,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, KeyError> {
        if !self.serves(slot) {
            return Ok(None);
        }
        remote::open_slot(
            slot,
            volume_id,
            || self.describe(),
            |context: &SlotContext, stored| self.open(&context.aad(), stored),
        )
        .map(Some)
    }

    fn serves(&self, slot: &ConfigKeyslot) -> bool {
        matches!(&slot.provider, SlotProvider::Pkcs11 { token_label, key_label, .. }
            if *token_label == self.settings.token_label && *key_label == self.settings.key_label)
    }

    /// The data key comes from the OS and is wrapped by the token: every file key is an HSM
    /// operation, and the key never exists unwrapped outside this process.
    fn generate_file_key(
        &self,
        context: &FileKeyContext,
    ) -> Result<(SecretKey, Vec<u8>), KeyError> {
        let key = SecretKey::generate()?;
        let (_, aad) = file_key_context(&context.volume_id, &context.file_id);
        let wrapped = self.seal(&aad, key.as_bytes())?;
        Ok((key, wrapped))
    }

    fn unwrap_file_key(
        &self,
        context: &FileKeyContext,
        wrapped: &[u8],
    ) -> Result<SecretKey, KeyError> {
        let (_, aad) = file_key_context(&context.volume_id, &context.file_id);
        let plain = self.open(&aad, wrapped)?;
        SecretKey::from_slice(&plain).map_err(|_| self.rejected("unwrapped key has the wrong size"))
    }

    /// A token has no re-encrypt operation: unwrap and wrap again under a fresh IV (and, after
    /// a key change on the token, under the key the label now names).
    fn rewrap_file_key(
        &self,
        context: &FileKeyContext,
        wrapped: &[u8],
    ) -> Result<Vec<u8>, KeyError> {
        let key = self.unwrap_file_key(context, wrapped)?;
        let (_, aad) = file_key_context(&context.volume_id, &context.file_id);
        self.seal(&aad, key.as_bytes())
    }
}
