//! A data file from the cipher dir: the preamble decoder, the hole map decoder, the size arithmetic for any backing
//! length and block size, and opening every block under a fixed key never panic or loop.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sealfs::crypto::{Sealer, SecretKey};
use sealfs::format::block::{self, Layout};

fuzz_target!(|data: &[u8]| {
    let _ = sealfs::format::holes::HoleMap::decode(data);
    let _ = sealfs::format::holes::decode_sidecar(data, &[0; 16]);
    let Some((&shift, rest)) = data.split_first() else {
        return;
    };
    let block_size = 512u32 << (shift % 12);
    let layout = Layout::new(block_size).expect("valid block size");
    let Ok(preamble) = block::decode_preamble(rest) else {
        return;
    };
    let body = &rest[block::PREAMBLE_LEN as usize..];
    let plain = layout.plain_size(rest.len() as u64);
    let _ = layout.backing_size(plain);
    let sealer = Sealer::new(&SecretKey::from_array([9; 32]));
    for (index, sealed) in body.chunks(layout.sealed_block_size() as usize).enumerate() {
        let _ = layout.block_len(index as u64, plain);
        let _ = sealer.open(
            &block::block_aad(preamble.version, &preamble.file_id, index as u64),
            sealed,
        );
    }
});
