//! The keyring a keyslot opens to: decode never panics; what decodes re-encodes identically.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sealfs::format::keyring::Keyring;

fuzz_target!(|data: &[u8]| {
    if let Ok(keyring) = Keyring::decode(data) {
        assert_eq!(keyring.encode().as_slice(), data);
    }
});
