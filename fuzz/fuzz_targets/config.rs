//! The volume config is attacker-controlled JSON: parsing must never panic, and whatever
//! parses must survive a round trip unchanged (what the MAC covers is what was read).
#![no_main]
use libfuzzer_sys::fuzz_target;
use sealfs::format::config::VolumeConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(config) = VolumeConfig::parse(data) {
        let again = VolumeConfig::parse(&config.to_pretty_json()).expect("re-parses");
        assert_eq!(again, config);
        assert_eq!(again.mac_input(), config.mac_input());
        let _ = config.required_version();
        for slot in &config.keyslots {
            let _ = slot.wrapped_keyring();
            let _ = slot.encrypted_slot_key();
            let _ = slot.salt();
        }
    }
});
