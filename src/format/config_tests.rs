//! Unit tests of `format::config` (beside it, so config.rs stays readable).

use super::*;
use proptest::prelude::*;

pub(crate) fn sample() -> VolumeConfig {
    VolumeConfig {
        format_version: 1,
        volume_id: id_to_hex(&[1; 16]),
        block_size: 4096,
        cipher: CIPHER.into(),
        key_mode: KeyMode::Volume,
        current_kek: 1,
        file_key_slot: None,
        keks: vec![],
        retired_keks: vec![],
        policies: vec![],
        retired_policies: vec![],
        keyslots: vec![
            ConfigKeyslot {
                id: 0,
                provider: SlotProvider::Keyfile,
                key_check: hex(&[2; 32]),
                wrapped_keyring: B64.encode([3; 60]),
            },
            ConfigKeyslot {
                id: 1,
                provider: SlotProvider::Passphrase {
                    argon2id: Argon2Params::DEFAULT,
                    salt: B64.encode([4; 16]),
                },
                key_check: hex(&[5; 32]),
                wrapped_keyring: B64.encode([6; 60]),
            },
        ],
        mac: hex(&[7; 32]),
    }
}

fn with_policy(id: u32) -> VolumeConfig {
    let mut c = sample();
    c.format_version = 4;
    c.policies.push(TenantPolicy {
        id,
        label: format!("tenant {id}"),
        key_file: None,
        migrating_from: None,
        slot: ConfigKeyslot {
            id: tenant_slot_id(id),
            ..c.keyslots[0].clone()
        },
    });
    c
}

#[test]
fn policies_need_version_4_and_valid_ids_slots_and_labels() {
    let c = with_policy(1);
    assert_eq!(c.required_version(), 4);
    assert_eq!(VolumeConfig::parse(&c.to_pretty_json()).unwrap(), c);
    let mut old = c.clone();
    old.format_version = 3;
    assert!(old.validate().is_err(), "a policy needs version 4");
    let mut retired = c.clone();
    retired.retired_policies = vec![1];
    assert!(retired.validate().is_err(), "live and retired at once");
    let mut slot = c.clone();
    slot.policies[0].slot.id = 0;
    assert!(slot.validate().is_err(), "slot id outside the tenant range");
    let mut zero = with_policy(0);
    zero.policies[0].slot.id = tenant_slot_id(0);
    assert!(zero.validate().is_err(), "policy 0 is the volume's own");
    let mut passphrase = c.clone();
    passphrase.policies[0].slot = ConfigKeyslot {
        id: tenant_slot_id(1),
        ..c.keyslots[1].clone()
    };
    assert!(passphrase.validate().is_err(), "no passphrase tenants");
    let mut label = c.clone();
    label.policies[0].label = "a\nb".into();
    assert!(label.validate().is_err());
    let mut two = c.clone();
    two.policies.push(with_policy(1).policies[0].clone());
    assert!(two.validate().is_err(), "duplicate ids");
    let mut next = c.clone();
    next.retired_policies = vec![7];
    assert_eq!(next.next_policy_id(), 8, "retired ids are never reused");
    assert_eq!(policy_of_slot(tenant_slot_id(5)), Some(5));
    assert_eq!(policy_of_slot(3), None);
}

#[test]
fn round_trip() {
    let c = sample();
    assert_eq!(VolumeConfig::parse(&c.to_pretty_json()).unwrap(), c);
}

#[test]
fn newer_version_is_named() {
    let mut c = sample();
    c.format_version = CONFIG_VERSION_MAX + 1;
    let err = VolumeConfig::parse(&serde_json::to_vec(&c).unwrap()).unwrap_err();
    assert!(err.to_string().contains("newer than this sealfs supports"));
}

#[test]
fn remote_keyslots_need_version_2() {
    let mut c = sample();
    c.keyslots[0].provider = SlotProvider::AwsKms {
        key_id: "alias/x".into(),
        key_arn: "arn:aws:kms:us-east-1:1:key/x".into(),
        encrypted_slot_key: B64.encode([1; 96]),
    };
    assert_eq!(c.required_version(), 2);
    assert!(
        VolumeConfig::parse(&c.to_pretty_json()).is_err(),
        "a v1 config cannot hold a KMS slot"
    );
    c.format_version = 2;
    assert_eq!(VolumeConfig::parse(&c.to_pretty_json()).unwrap(), c);
}

#[test]
fn rotated_keks_need_version_3() {
    let mut c = sample();
    c.keks.push(SealedKek {
        version: 2,
        sealed: B64.encode([1; 60]),
    });
    c.current_kek = 2;
    assert_eq!(c.required_version(), 3);
    assert!(VolumeConfig::parse(&c.to_pretty_json()).is_err());
    c.format_version = 3;
    assert_eq!(VolumeConfig::parse(&c.to_pretty_json()).unwrap(), c);
    c.retired_keks.push(1);
    assert_eq!(VolumeConfig::parse(&c.to_pretty_json()).unwrap(), c);
    assert_eq!(c.highest_named_kek(), 2);
    c.retired_keks = vec![2];
    assert!(
        VolumeConfig::parse(&c.to_pretty_json()).is_err(),
        "the current KEK cannot be retired"
    );
    c.retired_keks.clear();
    c.keks.push(c.keks[0].clone());
    assert!(
        VolumeConfig::parse(&c.to_pretty_json()).is_err(),
        "duplicate"
    );
    c.keks.pop();
    c.keks[0].sealed = B64.encode([1; 10]);
    assert!(
        VolumeConfig::parse(&c.to_pretty_json()).is_err(),
        "short seal"
    );
}

#[test]
fn invalid_fields_rejected() {
    type Mutation = Box<dyn Fn(&mut VolumeConfig)>;
    let cases: Vec<Mutation> = vec![
        Box::new(|c| c.block_size = 1000),
        Box::new(|c| c.cipher = "rot13".into()),
        Box::new(|c| c.volume_id = "xyz".into()),
        Box::new(|c| c.current_kek = 0),
        Box::new(|c| c.keyslots.clear()),
        Box::new(|c| c.keyslots[1].id = 0),
        Box::new(|c| c.keyslots[0].key_check = "00".into()),
        Box::new(|c| {
            c.keyslots[1].provider = SlotProvider::Passphrase {
                argon2id: Argon2Params {
                    m_kib: u32::MAX,
                    t: 3,
                    p: 1,
                },
                salt: B64.encode([4; 16]),
            }
        }),
    ];
    for (i, mutate) in cases.iter().enumerate() {
        let mut c = sample();
        mutate(&mut c);
        assert!(
            VolumeConfig::parse(&serde_json::to_vec(&c).unwrap()).is_err(),
            "case {i}"
        );
    }
}

#[test]
fn mac_input_ignores_mac_and_formatting() {
    let a = sample();
    let mut b = sample();
    b.mac = hex(&[9; 32]);
    assert_eq!(a.mac_input(), b.mac_input());
    let reparsed = VolumeConfig::parse(&a.to_pretty_json()).unwrap();
    assert_eq!(reparsed.mac_input(), a.mac_input());
}

proptest! {
    #[test]
    fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = VolumeConfig::parse(&bytes);
    }
}
