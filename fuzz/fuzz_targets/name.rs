//! Backing names from a directory listing and symlink targets: classification, base64url
//! decoding, unpadding, a decryption attempt under a fixed key, and long symlink targets with
//! their sidecars, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sealfs::crypto::{Sealer, SecretKey};
use sealfs::format::name::{self, EntryKind};

fuzz_target!(|data: &[u8]| {
    let _ = name::unpad(data);
    let _ = sealfs::format::link::LongTarget::decode(data);
    let _ = sealfs::format::link::decode_sidecar(data, &[0; 16]);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let encoded = match name::classify_entry(text) {
        EntryKind::Encrypted(e) | EntryKind::Long(e) => e,
        EntryKind::Internal => return,
    };
    if let Ok(sealed) = name::decode_b64(encoded, "name") {
        let sealer = Sealer::new(&SecretKey::from_array([7; 32]));
        if let Ok(padded) = sealer.open_deterministic(name::NAME_AAD, &sealed) {
            let _ = name::unpad(&padded);
        }
    }
    let _ = name::long_entry_name(text);
    let _ = name::symlink_plain_len(data.len() as u64);
});
