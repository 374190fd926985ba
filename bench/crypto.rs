//! Micro-benchmarks of the crypto paths, without FUSE: block seal/open per block size,
//! header wrap/unwrap, name encryption, and the key-cache hit path of a file open.
//! `cargo bench --bench crypto`

use std::ffi::OsStr;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sealfs::crypto::{SEAL_OVERHEAD, Sealer, SecretKey};
use sealfs::format::block::block_aad;
use sealfs::keys::{CacheLimits, FileKeys, HeaderKeys, KeyCache, VolumeKeys};
use sealfs::volume::names::encrypt_name;

fn blocks(c: &mut Criterion) {
    let sealer = Sealer::new(&SecretKey::from_array([7; 32]));
    let mut group = c.benchmark_group("block");
    for size in [4096usize, 16384, 65536] {
        let plain = vec![0x5au8; size];
        let mut sealed = vec![0u8; size + SEAL_OVERHEAD];
        let mut opened = vec![0u8; size];
        let aad = block_aad(2, &[1; 16], 3);
        group.throughput(Throughput::Bytes(size as u64));
        // A given nonce: the cipher alone. Block writes draw their nonces from the OS once
        // per run of blocks (io::blocks), not once per block.
        let nonce = [3u8; 12];
        group.bench_with_input(BenchmarkId::new("seal", size), &size, |b, _| {
            b.iter(|| {
                sealer
                    .seal_into_with_nonce(&nonce, &aad, black_box(&plain), &mut sealed)
                    .unwrap()
            })
        });
        sealer.seal_into(&aad, &plain, &mut sealed).unwrap();
        group.bench_with_input(BenchmarkId::new("open", size), &size, |b, _| {
            b.iter(|| {
                sealer
                    .open_into(&aad, black_box(&sealed), &mut opened)
                    .unwrap()
            })
        });
    }
    group.finish();
}

/// The same blocks through the pure-Rust aes-gcm-siv crate (the `pure-rust-cipher` build and
/// the test oracle), to compare with `block` (AWS-LC unless built with that feature).
fn blocks_pure_rust(c: &mut Criterion) {
    use aes_gcm_siv::aead::{AeadInOut, KeyInit};
    let cipher = aes_gcm_siv::Aes256GcmSiv::new(&[7u8; 32].into());
    let nonce = [3u8; 12];
    let mut group = c.benchmark_group("block-pure-rust");
    for size in [4096usize, 16384, 65536] {
        let aad = block_aad(2, &[1; 16], 3);
        let mut buf = vec![0x5au8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("seal", size), &size, |b, _| {
            b.iter(|| {
                cipher
                    .encrypt_inout_detached(&nonce.into(), &aad, black_box(&mut buf[..]).into())
                    .unwrap()
            })
        });
        let tag = cipher
            .encrypt_inout_detached(&nonce.into(), &aad, (&mut buf[..]).into())
            .unwrap();
        let sealed = buf.clone();
        group.bench_with_input(BenchmarkId::new("open", size), &size, |b, _| {
            b.iter(|| {
                buf.copy_from_slice(&sealed);
                cipher
                    .decrypt_inout_detached(
                        &nonce.into(),
                        &aad,
                        black_box(&mut buf[..]).into(),
                        &tag,
                    )
                    .unwrap()
            })
        });
    }
    group.finish();
}

fn keys() -> Arc<VolumeKeys> {
    Arc::new(VolumeKeys::from_keyring([1; 16], VolumeKeys::generate_keyring().unwrap()).unwrap())
}

fn headers(c: &mut Criterion) {
    let file_keys = FileKeys::volume_mode(keys());
    let (header, _) = file_keys.new_header().unwrap();
    c.bench_function("header/new (volume mode)", |b| {
        b.iter(|| file_keys.new_header().unwrap())
    });
    c.bench_function("header/open (volume mode)", |b| {
        b.iter(|| file_keys.open_header(black_box(&header)).unwrap())
    });
}

fn names(c: &mut Criterion) {
    let keys = keys();
    c.bench_function("name/encrypt 20 bytes", |b| {
        b.iter(|| encrypt_name(&keys.names, black_box(OsStr::new("a-typical-name.txt"))).unwrap())
    });
}

/// What a file open costs in key work when its key is cached: the cache lookup alone, no
/// KMS, no HSM, no header read.
fn cache_hit(c: &mut Criterion) {
    let cache = KeyCache::new(CacheLimits::default());
    let file_keys = FileKeys::volume_mode(keys());
    let ids: Vec<[u8; 16]> = (0..1000u32)
        .map(|i| {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&i.to_be_bytes());
            id
        })
        .collect();
    for id in &ids {
        cache
            .get_or_load(id, || file_keys.new_header().map(|(_, m)| m))
            .unwrap();
    }
    let mut i = 0;
    c.bench_function("key cache hit (1000 keys cached)", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            cache
                .get_or_load(&ids[i], || unreachable!("cached"))
                .unwrap()
        })
    });
}

criterion_group!(benches, blocks, blocks_pure_rust, headers, names, cache_hit);
criterion_main!(benches);
