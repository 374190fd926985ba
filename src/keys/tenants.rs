//! Key policies ("tenants"): a directory tree under its own master key. Each policy's tenant
//! secret is sealed in the config under the tenant's master key (a keyslot of its own, with a
//! context naming volume and tenant); from it derive the tenant KEK, which wraps the data key
//! of every file created under the policy, and the tenant's name keys.
//!
//! A running volume unseals a tenant's secret at first use and again once it is older than the
//! key cache's maximum age, so a tenant key disabled, scheduled for deletion or denied in KMS
//! stops the tenant's files within that bound (one KMS call per tenant per bound, not one per
//! file), and a key enabled again works again at the next unseal, without a remount.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::{KeyError, MasterKeyProvider, NameKeys};
use crate::crypto::{Label, Sealer, SecretKey, derive_key};
use crate::format::Id;
use crate::format::config::{TenantPolicy, VolumeConfig, tenant_slot_id};
use crate::format::header::{HeaderSlot, SlotKind, tenant_wrap_aad};

/// The working keys of one policy, derived from its tenant secret.
pub struct TenantKeys {
    pub policy: u32,
    kek: Sealer,
    pub names: Arc<NameKeys>,
}

impl TenantKeys {
    pub fn from_secret(policy: u32, secret: &SecretKey) -> Self {
        TenantKeys {
            policy,
            kek: Sealer::new(&derive_key(Label::TenantKek, &[secret.as_bytes()])),
            names: Arc::new(NameKeys::derive(secret.as_bytes())),
        }
    }

    /// A header keyslot holding `data_key` under this tenant's KEK, bound to volume, file and
    /// policy.
    pub fn wrap(
        &self,
        volume_id: &Id,
        file_id: &Id,
        data_key: &SecretKey,
    ) -> Result<HeaderSlot, KeyError> {
        let wrapped = self.kek.seal(
            &tenant_wrap_aad(volume_id, file_id, self.policy),
            data_key.as_bytes(),
        )?;
        Ok(HeaderSlot {
            kind: SlotKind::TenantKek,
            key_version: self.policy,
            wrapped,
        })
    }

    pub fn unwrap(
        &self,
        volume_id: &Id,
        file_id: &Id,
        slot: &HeaderSlot,
    ) -> Result<SecretKey, &'static str> {
        let aad = tenant_wrap_aad(volume_id, file_id, self.policy);
        let bytes = self
            .kek
            .open(&aad, &slot.wrapped)
            .map(Zeroizing::new)
            .map_err(|_| "tenant keyslot fails authentication")?;
        SecretKey::from_slice(&bytes).map_err(|_| "tenant keyslot holds a key of the wrong length")
    }
}

/// How a volume reaches a policy's master key: given the policy, the provider that opens its
/// slot (the command line decides: KMS endpoint, PKCS#11 PIN, key file overrides).
pub type TenantAccess =
    dyn Fn(&TenantPolicy) -> Result<Arc<dyn MasterKeyProvider>, KeyError> + Send + Sync;

/// How long a failed unseal is answered from memory before the master key is tried again:
/// while a tenant's key is disabled or its KMS is down, each of the tenant's requests would
/// otherwise make a KMS call of its own (and wait for its timeout).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// What is known of one policy's keys: unsealed (when), or failing (since when).
#[derive(Default)]
enum UnsealState {
    #[default]
    None,
    Ready(Arc<TenantKeys>, Instant),
    Failed(KeyError, Instant),
}

/// One policy's unseal state; one unseal at a time per policy.
#[derive(Default)]
struct Unsealed {
    keys: Mutex<UnsealState>,
}

#[derive(Default)]
struct Known {
    policies: BTreeMap<u32, TenantPolicy>,
    retired: BTreeSet<u32>,
}

/// The key policies of an open volume, following its config.
pub struct Tenants {
    volume_id: Id,
    max_age: Duration,
    access: OnceLock<Box<TenantAccess>>,
    known: Mutex<Known>,
    unsealed: Mutex<HashMap<u32, Arc<Unsealed>>>,
    /// Moves whenever the set of policies changes, so that whoever caches which policy a
    /// directory has knows to look again.
    generation: AtomicU64,
}

impl Tenants {
    /// `max_age`: how long an unsealed tenant secret is used before it is unsealed again.
    pub fn new(volume_id: Id, max_age: Duration) -> Self {
        Tenants {
            volume_id,
            max_age,
            access: OnceLock::new(),
            known: Mutex::default(),
            unsealed: Mutex::default(),
            generation: AtomicU64::new(1),
        }
    }

    /// Says how to reach tenants' master keys; without it every policy is "key unavailable".
    pub fn set_access(&self, access: Box<TenantAccess>) {
        let _ = self.access.set(access);
    }

    /// Takes the policies of a config (its MAC already checked). Keys of a policy that is gone
    /// or whose sealed secret changed are dropped at once.
    pub fn apply_config(&self, config: &VolumeConfig) {
        let mut known = crate::sync::lock(&self.known);
        let policies: BTreeMap<u32, TenantPolicy> =
            config.policies.iter().map(|p| (p.id, p.clone())).collect();
        let retired: BTreeSet<u32> = config.retired_policies.iter().copied().collect();
        if policies == known.policies && retired == known.retired {
            return;
        }
        let mut unsealed = crate::sync::lock(&self.unsealed);
        unsealed.retain(|id, _| policies.get(id) == known.policies.get(id));
        known.policies = policies;
        known.retired = retired;
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Makes whoever caches directories' policies look at their markers again: the config was
    /// rewritten, maybe to say a marker was written since (`policy set` rewrites it after
    /// writing its marker, for mounts that looked at the directory in between).
    pub fn markers_may_have_changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The live policy `id`, or why it cannot be used.
    pub fn policy(&self, id: u32) -> Result<TenantPolicy, KeyError> {
        let known = crate::sync::lock(&self.known);
        match known.policies.get(&id) {
            Some(policy) => Ok(policy.clone()),
            None if known.retired.contains(&id) => Err(KeyError::PolicyRemoved(id)),
            None => Err(KeyError::UnknownPolicy(id)),
        }
    }

    pub fn policies(&self) -> Vec<TenantPolicy> {
        crate::sync::lock(&self.known)
            .policies
            .values()
            .cloned()
            .collect()
    }

    /// The keys of policy `id`: unsealed at first use and again once older than the bound.
    /// A failure drops what was unsealed before, so a disabled key stops its tenant, and is
    /// given again without asking for `RETRY_AFTER_FAILURE` (or the bound, if shorter).
    pub fn keys(&self, id: u32) -> Result<Arc<TenantKeys>, KeyError> {
        let state = crate::sync::lock(&self.unsealed)
            .entry(id)
            .or_default()
            .clone();
        let mut keys = crate::sync::lock(&state.keys);
        match &*keys {
            UnsealState::Ready(unsealed, at) if at.elapsed() < self.max_age => {
                return Ok(unsealed.clone());
            }
            UnsealState::Failed(error, at)
                if at.elapsed() < RETRY_AFTER_FAILURE.min(self.max_age) =>
            {
                return Err(error.clone());
            }
            _ => {}
        }
        let unsealed = self.unseal(id).map(Arc::new);
        *keys = match &unsealed {
            Ok(fresh) => UnsealState::Ready(fresh.clone(), Instant::now()),
            Err(e) => UnsealState::Failed(e.clone(), Instant::now()),
        };
        unsealed
    }

    fn unseal(&self, id: u32) -> Result<TenantKeys, KeyError> {
        let policy = self.policy(id)?;
        let access = self
            .access
            .get()
            .ok_or_else(|| KeyError::TenantKeyUnavailable {
                policy: id,
                reason: "this command was given no way to reach tenant keys".into(),
            })?;
        let provider = access(&policy)?;
        let secret = provider
            .open_slot(&policy.slot, &self.volume_id)?
            .ok_or_else(|| KeyError::TenantKeyUnavailable {
                policy: id,
                reason: format!(
                    "{} does not open this policy's keyslot",
                    provider.describe()
                ),
            })?;
        let secret = SecretKey::from_slice(&secret)
            .map_err(|_| KeyError::SlotDamaged(tenant_slot_id(id)))?;
        Ok(TenantKeys::from_secret(id, &secret))
    }
}

/// A new policy's sealed secret: a random tenant secret sealed by `provider` into the slot of
/// policy `id`, with the tenant keys it yields.
pub fn seal_new_policy(
    provider: &dyn MasterKeyProvider,
    volume_id: &Id,
    id: u32,
) -> Result<(crate::format::config::ConfigKeyslot, TenantKeys), KeyError> {
    let secret = SecretKey::generate()?;
    let slot = provider.create_slot(tenant_slot_id(id), volume_id, secret.as_bytes())?;
    Ok((slot, TenantKeys::from_secret(id, &secret)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_wraps_are_bound_to_policy_volume_and_file() {
        let secret = SecretKey::from_array([7; 32]);
        let a = TenantKeys::from_secret(1, &secret);
        let data_key = SecretKey::from_array([9; 32]);
        let slot = a.wrap(&[1; 16], &[2; 16], &data_key).unwrap();
        assert_eq!(a.unwrap(&[1; 16], &[2; 16], &slot).unwrap(), data_key);
        assert!(a.unwrap(&[1; 16], &[3; 16], &slot).is_err(), "other file");
        assert!(a.unwrap(&[4; 16], &[2; 16], &slot).is_err(), "other volume");
        // The same secret under another policy id is another tenant: it does not open.
        let b = TenantKeys::from_secret(2, &secret);
        assert!(b.unwrap(&[1; 16], &[2; 16], &slot).is_err());
        let other = TenantKeys::from_secret(1, &SecretKey::from_array([8; 32]));
        assert!(other.unwrap(&[1; 16], &[2; 16], &slot).is_err());
    }
}
