//! AWS KMS as a master-key provider, through aws-sdk-kms on a private single-threaded tokio
//! runtime. The client is built on first use, so a provider can be made before the mount
//! daemon forks and used after.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_kms::Client;
use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_kms::primitives::Blob;
use zeroize::Zeroizing;

use super::remote::{self, SlotContext};
use super::{FileKeyContext, KeyError, MasterKeyProvider, RemoteFailure};
use crate::crypto::SecretKey;
use crate::format::Id;
use crate::format::config::{ConfigKeyslot, SlotProvider};
use crate::format::header::file_key_context;
use crate::metrics::{KeyCall, KeyService};

/// Bounds every KMS call: a few attempts with backoff (the SDK's standard retry mode retries
/// throttling, 5xx and connection errors), each attempt and the whole call time-limited.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
const MAX_ATTEMPTS: u32 = 3;

struct Connection {
    runtime: tokio::runtime::Runtime,
    client: Client,
}

pub struct KmsProvider {
    /// As the user named it (ARN, id or alias); for opening, the slot's key ARN.
    key_id: String,
    endpoint: Option<String>,
    connection: OnceLock<Result<Connection, String>>,
}

impl KmsProvider {
    pub fn new(key_id: impl Into<String>, endpoint: Option<String>) -> Self {
        KmsProvider {
            key_id: key_id.into(),
            endpoint,
            connection: OnceLock::new(),
        }
    }

    fn connection(&self) -> Result<&Connection, KeyError> {
        let made = self.connection.get_or_init(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the KMS client runtime: {e}"))?;
            let mut loader = aws_config::defaults(BehaviorVersion::latest())
                .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
                .timeout_config(
                    TimeoutConfig::builder()
                        .connect_timeout(CONNECT_TIMEOUT)
                        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                        .operation_timeout(CALL_TIMEOUT)
                        .build(),
                );
            if let Some(endpoint) = &self.endpoint {
                loader = loader.endpoint_url(endpoint);
            }
            let config = runtime.block_on(loader.load());
            if config.region().is_none() {
                return Err("no AWS region configured (set AWS_REGION or a profile region)".into());
            }
            let client = Client::new(&config);
            Ok(Connection { runtime, client })
        });
        made.as_ref().map_err(|reason| KeyError::Remote {
            provider: self.describe(),
            failure: RemoteFailure::Unavailable,
            reason: reason.clone(),
        })
    }

    fn failure<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
        &self,
        op: &str,
        err: aws_sdk_kms::error::SdkError<E, R>,
    ) -> KeyError {
        let failure = match err.code() {
            Some("DisabledException" | "KMSInvalidStateException" | "KeyUnavailableException") => {
                RemoteFailure::KeyDisabled
            }
            Some("AccessDeniedException" | "NotFoundException" | "InvalidKeyUsageException") => {
                RemoteFailure::Denied
            }
            Some("IncorrectKeyException" | "InvalidCiphertextException") => RemoteFailure::Rejected,
            _ => RemoteFailure::Unavailable,
        };
        KeyError::Remote {
            provider: self.describe(),
            failure,
            reason: format!("{op}: {}", DisplayErrorContext(&err)),
        }
    }

    /// `generate_unrecorded`, counted (metrics) with its final outcome, answer checks included.
    fn generate(&self, context: &[(String, String)]) -> Result<(SecretKey, Vec<u8>), KeyError> {
        let started = Instant::now();
        let outcome = self.generate_unrecorded(context);
        self.record(KeyCall::GenerateDataKey, started, outcome)
    }

    fn generate_unrecorded(
        &self,
        context: &[(String, String)],
    ) -> Result<(SecretKey, Vec<u8>), KeyError> {
        let conn = self.connection()?;
        let mut request = conn
            .client
            .generate_data_key()
            .key_id(&self.key_id)
            .number_of_bytes(32);
        for (k, v) in context {
            request = request.encryption_context(k, v);
        }
        let response = conn
            .runtime
            .block_on(request.send())
            .map_err(|e| self.failure("GenerateDataKey", e))?;
        if self.key_id.starts_with("arn:") && response.key_id() != Some(self.key_id.as_str()) {
            return Err(self.malformed("GenerateDataKey answered with a different key"));
        }
        let blob = response
            .ciphertext_blob()
            .ok_or_else(|| self.malformed("GenerateDataKey returned no ciphertext"))?
            .as_ref()
            .to_vec();
        let plaintext = Zeroizing::new(
            response
                .plaintext
                .ok_or_else(|| self.malformed("GenerateDataKey returned no plaintext"))?
                .into_inner(),
        );
        let key = SecretKey::from_slice(&plaintext)
            .map_err(|_| self.malformed("GenerateDataKey returned a key of the wrong size"))?;
        Ok((key, blob))
    }

    /// `encrypt_unrecorded`, counted (metrics) with its final outcome, answer checks included.
    fn encrypt(
        &self,
        context: &SlotContext,
        plaintext: &[u8],
    ) -> Result<(Vec<u8>, String), KeyError> {
        let started = Instant::now();
        let outcome = self.encrypt_unrecorded(context, plaintext);
        self.record(KeyCall::Encrypt, started, outcome)
    }

    fn encrypt_unrecorded(
        &self,
        context: &SlotContext,
        plaintext: &[u8],
    ) -> Result<(Vec<u8>, String), KeyError> {
        let conn = self.connection()?;
        let mut request = conn
            .client
            .encrypt()
            .key_id(&self.key_id)
            .plaintext(Blob::new(plaintext.to_vec()));
        for (k, v) in context.pairs() {
            request = request.encryption_context(k, v);
        }
        let response = conn
            .runtime
            .block_on(request.send())
            .map_err(|e| self.failure("Encrypt", e))?;
        let blob = response
            .ciphertext_blob()
            .ok_or_else(|| self.malformed("Encrypt returned no ciphertext"))?;
        let arn = response
            .key_id()
            .ok_or_else(|| self.malformed("Encrypt returned no key id"))?;
        Ok((blob.as_ref().to_vec(), arn.to_string()))
    }

    /// `decrypt_unrecorded`, counted (metrics) with its final outcome, answer checks included.
    fn decrypt(
        &self,
        context: &[(String, String)],
        key_arn: &str,
        blob: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let started = Instant::now();
        let outcome = self.decrypt_unrecorded(context, key_arn, blob);
        self.record(KeyCall::Decrypt, started, outcome)
    }

    fn decrypt_unrecorded(
        &self,
        context: &[(String, String)],
        key_arn: &str,
        blob: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let conn = self.connection()?;
        let mut request = conn
            .client
            .decrypt()
            .key_id(key_arn)
            .ciphertext_blob(Blob::new(blob.to_vec()));
        for (k, v) in context {
            request = request.encryption_context(k, v);
        }
        let response = conn
            .runtime
            .block_on(request.send())
            .map_err(|e| self.failure("Decrypt", e))?;
        // The answer must come from the key the slot names, not merely from some key.
        if response.key_id() != Some(key_arn) {
            return Err(
                self.malformed("Decrypt answered with a different key than the keyslot names")
            );
        }
        let plaintext = response
            .plaintext
            .ok_or_else(|| self.malformed("Decrypt returned no plaintext"))?;
        Ok(Zeroizing::new(plaintext.into_inner()))
    }

    /// ReEncrypt under the same key: KMS decrypts and encrypts inside the service, under the
    /// key's current backing version (after KMS key rotation), with the same context.
    /// `reencrypt_unrecorded`, counted (metrics) with its final outcome, answer checks included.
    fn reencrypt(&self, context: &[(String, String)], blob: &[u8]) -> Result<Vec<u8>, KeyError> {
        let started = Instant::now();
        let outcome = self.reencrypt_unrecorded(context, blob);
        self.record(KeyCall::ReEncrypt, started, outcome)
    }

    fn reencrypt_unrecorded(
        &self,
        context: &[(String, String)],
        blob: &[u8],
    ) -> Result<Vec<u8>, KeyError> {
        let conn = self.connection()?;
        let mut request = conn
            .client
            .re_encrypt()
            .source_key_id(&self.key_id)
            .destination_key_id(&self.key_id)
            .ciphertext_blob(Blob::new(blob.to_vec()));
        for (k, v) in context {
            request = request
                .source_encryption_context(k, v)
                .destination_encryption_context(k, v);
        }
        let response = conn
            .runtime
            .block_on(request.send())
            .map_err(|e| self.failure("ReEncrypt", e))?;
        if self.key_id.starts_with("arn:")
            && (response.key_id() != Some(self.key_id.as_str())
                || response.source_key_id() != Some(self.key_id.as_str()))
        {
            return Err(self.malformed("ReEncrypt answered with a different key"));
        }
        Ok(response
            .ciphertext_blob()
            .ok_or_else(|| self.malformed("ReEncrypt returned no ciphertext"))?
            .as_ref()
            .to_vec())
    }

    /// Counts a call (metrics) and passes its outcome on.
    fn record<T>(
        &self,
        call: KeyCall,
        started: Instant,
        outcome: Result<T, KeyError>,
    ) -> Result<T, KeyError> {
        let failure = match &outcome {
            Ok(_) => None,
            Err(KeyError::Remote { failure, .. }) => Some(*failure),
            Err(_) => Some(RemoteFailure::Rejected),
        };
        crate::metrics::global().key_service_call(
            KeyService::AwsKms,
            call,
            started.elapsed(),
            failure,
        );
        outcome
    }

    fn malformed(&self, reason: &str) -> KeyError {
        KeyError::Remote {
            provider: self.describe(),
            failure: RemoteFailure::Rejected,
            reason: reason.into(),
        }
    }
}

impl MasterKeyProvider for KmsProvider {
    fn describe(&self) -> String {
        format!("AWS KMS key {}", self.key_id)
    }

    fn create_slot(
        &self,
        slot_id: u32,
        volume_id: &Id,
        keyring: &[u8],
    ) -> Result<ConfigKeyslot, KeyError> {
        remote::create_slot(slot_id, volume_id, keyring, |context, slot_key| {
            let (blob, key_arn) = self.encrypt(context, slot_key)?;
            Ok(SlotProvider::AwsKms {
                key_id: self.key_id.clone(),
                key_arn,
                encrypted_slot_key: ConfigKeyslot::encode_bytes(&blob),
            })
        })
    }

    fn open_slot(
        &self,
        slot: &ConfigKeyslot,
        volume_id: &Id,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, KeyError> {
        let SlotProvider::AwsKms {
            key_id, key_arn, ..
        } = &slot.provider
        else {
            return Ok(None);
        };
        if self.key_id != *key_id && self.key_id != *key_arn {
            return Ok(None);
        }
        remote::open_slot(
            slot,
            volume_id,
            || self.describe(),
            |context, blob| self.decrypt(&context.pairs(), key_arn, blob),
        )
        .map(Some)
    }

    fn serves(&self, slot: &ConfigKeyslot) -> bool {
        matches!(&slot.provider, SlotProvider::AwsKms { key_id, key_arn, .. }
            if self.key_id == *key_id || self.key_id == *key_arn)
    }

    fn generate_file_key(
        &self,
        context: &FileKeyContext,
    ) -> Result<(SecretKey, Vec<u8>), KeyError> {
        let (pairs, _) = file_key_context(&context.volume_id, &context.file_id);
        self.generate(&pairs)
    }

    fn unwrap_file_key(
        &self,
        context: &FileKeyContext,
        wrapped: &[u8],
    ) -> Result<SecretKey, KeyError> {
        let (pairs, _) = file_key_context(&context.volume_id, &context.file_id);
        let plain = self.decrypt(&pairs, &self.key_id, wrapped)?;
        SecretKey::from_slice(&plain)
            .map_err(|_| self.malformed("Decrypt returned a key of the wrong size"))
    }

    fn rewrap_file_key(
        &self,
        context: &FileKeyContext,
        wrapped: &[u8],
    ) -> Result<Vec<u8>, KeyError> {
        let (pairs, _) = file_key_context(&context.volume_id, &context.file_id);
        self.reencrypt(&pairs, wrapped)
    }
}
