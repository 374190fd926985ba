//! Sidecar headers: decode never panics, and decode(encode(h)) == h for what decodes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sealfs::format::header::FileHeader;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = FileHeader::decode(data) {
        let bytes = header.encode().expect("a decoded header encodes");
        assert_eq!(bytes, data, "the encoding is canonical");
        assert_eq!(FileHeader::decode(&bytes).unwrap(), header);
    }
});
