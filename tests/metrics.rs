//! A running mount's numbers on real mounts: `sealfs stats` (table, JSON, --check) and the
//! Prometheus endpoint, scraped over HTTP and parsed as the text format. Counters must move
//! by exactly what a known workload does; a flipped bit must show as an authentication
//! failure; a KMS outage as errors by kind and a failing health check that recovers.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use common::services::{Fault, kms, kms_env};
use common::{Mounted, TestVolume};
use serde_json::Value;

fn stats(vol: &TestVolume, m: &Mounted) -> Value {
    let out = vol.run(&["stats", m.path.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "stats: {}", common::stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn n(v: &Value, path: &[&str]) -> u64 {
    let mut v = v;
    for key in path {
        v = &v[*key];
    }
    v.as_u64().unwrap_or(0)
}

/// A scrape by a real HTTP client (Python's urllib): the Content-Type, then the body.
fn scrape(port: u16) -> String {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sys, urllib.request\n\
             r = urllib.request.urlopen(sys.argv[1], timeout=10)\n\
             assert r.status == 200, r.status\n\
             sys.stdout.write(r.headers['Content-Type'] + '\\n' + r.read().decode())",
        )
        .arg(format!("http://127.0.0.1:{port}/metrics"))
        .output()
        .unwrap();
    assert!(out.status.success(), "scrape: {}", common::stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let (content_type, body) = text.split_once('\n').unwrap();
    assert!(
        content_type.contains("text/plain; version=0.0.4"),
        "{content_type}"
    );
    body.to_string()
}

/// The value of the sample `name` with labels `labels` in a parsed scrape.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name} is not a plain value"),
        })
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn counters_move_by_exactly_what_the_workload_does() {
    let vol = TestVolume::new();
    const CREATES: u64 = 20;
    const READS: u64 = 5;
    const READ_LEN: usize = 10_000; // 3 blocks of 4 KiB
    let m = vol.mount();
    let before = stats(&vol, &m);
    for i in 0..CREATES {
        fs::write(m.p(&format!("c{i}")), vec![7u8; 4096]).unwrap();
    }
    let after = stats(&vol, &m);
    assert_eq!(
        n(&after, &["requests", "create", "count"]) - n(&before, &["requests", "create", "count"]),
        CREATES
    );
    assert_eq!(
        n(&after, &["bytes", "plaintext_written"]) - n(&before, &["bytes", "plaintext_written"]),
        CREATES * 4096
    );
    assert_eq!(
        n(&after, &["blocks_sealed"]) - n(&before, &["blocks_sealed"]),
        CREATES,
        "one 4 KiB block per file"
    );
    assert_eq!(
        n(&after, &["bytes", "backing_written"]) - n(&before, &["bytes", "backing_written"]),
        CREATES * (4096 + 28),
        "a nonce and a tag per block"
    );
    // A rotation while mounted: the mount takes up the new config at its next create.
    let rotated = vol.run(&["rotate", vol.cipher_str()]);
    assert!(rotated.status.success(), "{}", common::stderr(&rotated));
    for i in 0..READS {
        fs::write(m.p(&format!("r{i}")), vec![1u8; READ_LEN]).unwrap();
    }
    let s = stats(&vol, &m);
    assert_eq!(n(&s, &["mount", "config_reloads"]), 1);
    assert_eq!(n(&s, &["mount", "kek_version"]), 2);
    m.unmount();

    // A fresh daemon counts from zero; the kernel reads each file once (its size is known).
    let m = vol.mount();
    for i in 0..READS {
        assert_eq!(fs::read(m.p(&format!("r{i}"))).unwrap().len(), READ_LEN);
    }
    let s = stats(&vol, &m);
    assert_eq!(n(&s, &["bytes", "plaintext_read"]), READS * READ_LEN as u64);
    assert_eq!(n(&s, &["blocks_opened"]), READS * 3);
    assert_eq!(
        n(&s, &["key_cache", "misses"]),
        READS,
        "one key load per file"
    );
    assert_eq!(n(&s, &["integrity_failures", "block"]), 0);
    assert!(n(&s, &["requests", "read", "count"]) >= READS);
    assert!(n(&s, &["mount", "kek_version"]) >= 1);
    // The table a person reads names what it counts.
    let out = vol.run(&["stats", m.path.to_str().unwrap()]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", common::stderr(&out));
    for word in [
        "request",
        "read",
        "plaintext",
        "key cache",
        "authentication failures: 0",
    ] {
        assert!(table.contains(word), "{word:?} missing from:\n{table}");
    }
    m.unmount();

    // One flipped bit in one block of one file.
    let victim = common::backing(&common::open_volume(&vol), "r0");
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&victim)
        .unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, 100).unwrap();
    file.write_all_at(&[byte[0] ^ 1], 100).unwrap();
    drop(file);
    let m = vol.mount();
    let state = vol.cipher.parent().unwrap().join("check.json");
    let check = |path: &std::path::Path| {
        vol.run(&[
            "stats",
            path.to_str().unwrap(),
            "--check",
            "--state",
            state.to_str().unwrap(),
        ])
    };
    assert!(check(&m.path).status.success(), "healthy before the read");
    let err = fs::read(m.p("r0")).expect_err("a flipped bit is EIO");
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    assert_eq!(
        fs::read(m.p("r1")).unwrap().len(),
        READ_LEN,
        "the others read"
    );
    let s = stats(&vol, &m);
    let failures = n(&s, &["integrity_failures", "block"]);
    assert!(failures >= 1);
    // Every failed read is one authentication failure and one EIO, nothing else failed.
    assert_eq!(failures, n(&s, &["requests", "read", "errors"]));
    assert_eq!(failures, n(&s, &["errors_by_errno", "EIO"]));
    let failed = check(&m.path);
    let line = String::from_utf8_lossy(&failed.stdout);
    assert_eq!(failed.status.code(), Some(1), "{line}");
    assert!(line.contains("authentication failure"), "{line}");
    assert!(
        check(&m.path).status.success(),
        "nothing new since the last check"
    );
    let path = m.path.clone();
    m.unmount();
    let gone = check(&path);
    assert_eq!(
        gone.status.code(),
        Some(1),
        "a mount that is gone fails the check"
    );
}

#[test]
fn the_prometheus_endpoint_serves_the_same_numbers() {
    let vol = TestVolume::new();
    let port = free_port();
    let textfile = vol.cipher.parent().unwrap().join("sealfs.prom");
    let m = vol.mount_with(&[
        "--metrics",
        &format!("127.0.0.1:{port}"),
        "--metrics-textfile",
        textfile.to_str().unwrap(),
    ]);
    for i in 0..10 {
        fs::write(m.p(&format!("f{i}")), vec![3u8; 5000]).unwrap();
    }
    let body = scrape(port);
    let parsed = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap();
    assert_eq!(
        sample(&parsed, "sealfs_fuse_requests_total", &[("op", "create")]),
        10.0
    );
    assert_eq!(
        sample(
            &parsed,
            "sealfs_plaintext_bytes_total",
            &[("direction", "write")]
        ),
        50_000.0
    );
    assert_eq!(
        sample(
            &parsed,
            "sealfs_integrity_failures_total",
            &[("kind", "block")]
        ),
        0.0
    );
    assert!(sample(&parsed, "sealfs_uptime_seconds", &[]) >= 0.0);
    // The write histogram has a +Inf bucket equal to its count.
    let write_count = parsed
        .samples
        .iter()
        .find(|s| {
            s.metric == "sealfs_fuse_request_duration_seconds"
                && s.labels.get("op") == Some("write")
        })
        .map(|s| match &s.value {
            prometheus_parse::Value::Histogram(buckets) => {
                buckets.iter().map(|b| b.count).fold(0.0, f64::max)
            }
            other => panic!("not a histogram: {other:?}"),
        })
        .unwrap();
    assert!(write_count >= 1.0);
    // No label carries a file name (nor anything else a user chose).
    for s in &parsed.samples {
        for (k, v) in s.labels.iter() {
            assert!(
                !v.contains("f1") && !v.contains('/'),
                "label {k}={v} of {}",
                s.metric
            );
        }
    }
    let text = fs::read_to_string(&textfile).unwrap();
    assert!(
        text.contains("# TYPE sealfs_fuse_requests_total counter"),
        "{text}"
    );
    m.unmount();

    // Anything but loopback is refused unless asked for, before anything is mounted.
    let out = vol.run(&[
        "mount",
        vol.cipher_str(),
        vol.mnt.to_str().unwrap(),
        "--metrics",
        "0.0.0.0:0",
    ]);
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("--metrics-allow-remote"),
        "{}",
        common::stderr(&out)
    );
    assert!(!common::is_mounted(&vol.mnt));
}

#[test]
fn a_kms_outage_shows_as_errors_by_kind_and_a_failing_check_that_recovers() {
    let kms = kms();
    let vol = TestVolume::with_env(
        &["--kms", &kms.key, "--key-mode", "per-file"],
        kms_env(&kms.proxy.endpoint()),
    );
    let m = vol.mount();
    for name in ["a", "b", "c"] {
        fs::write(m.p(name), name).unwrap();
    }
    m.unmount();
    let proxy_before = kms.proxy.count("Decrypt") as u64;
    let m = vol.mount_with(&["--key-cache-max-age", "1"]);
    let state = vol.cipher.parent().unwrap().join("kms-check.json");
    let check = || {
        vol.run(&[
            "stats",
            m.path.to_str().unwrap(),
            "--check",
            "--state",
            state.to_str().unwrap(),
        ])
    };
    assert_eq!(fs::read(m.p("a")).unwrap(), b"a");
    let s = stats(&vol, &m);
    let decrypts = n(&s, &["key_service", "calls", "aws-kms/Decrypt", "count"]);
    assert!(decrypts >= 2, "the keyslot and one file key: {s}");
    assert_eq!(
        kms.proxy.count("Decrypt") as u64 - proxy_before,
        decrypts,
        "the proxy saw as many"
    );

    kms.proxy.set(Fault::Down);
    assert!(fs::read(m.p("b")).is_err());
    kms.proxy.set(Fault::Error(400, "DisabledException"));
    assert_eq!(
        fs::read(m.p("c")).unwrap_err().raw_os_error(),
        Some(libc::EKEYREVOKED)
    );
    let s = stats(&vol, &m);
    let errors = &s["key_service"]["calls"]["aws-kms/Decrypt"]["errors"];
    assert!(errors["unavailable"].as_u64().unwrap_or(0) >= 1, "{errors}");
    assert_eq!(errors["key_disabled"].as_u64(), Some(1), "{errors}");
    assert!(
        s["key_service"]["failing_since_unix"].is_null(),
        "a disabled key is an answer, not an outage"
    );
    kms.proxy.set(Fault::Down);
    assert!(fs::read(m.p("b")).is_err());
    // Failing for longer than the cache bound (1 s): the check fails, with why.
    std::thread::sleep(Duration::from_millis(2100));
    let failed = check();
    let line = String::from_utf8_lossy(&failed.stdout).to_string();
    assert_eq!(failed.status.code(), Some(1), "{line}");
    assert!(line.contains("key service has been failing"), "{line}");
    kms.proxy.set(Fault::Pass);
    assert_eq!(fs::read(m.p("b")).unwrap(), b"b", "recovers by itself");
    let ok = check();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    m.unmount();
}

/// A reverse view serves metrics too (a backup server runs views): requests, the plaintext it
/// read, the ciphertext it served and the blocks it sealed, each exactly.
#[test]
fn a_reverse_view_counts_what_it_serves() {
    let dir = common::test_dir();
    let plain = dir.path().join("plain");
    fs::create_dir(&plain).unwrap();
    fs::write(plain.join("a"), vec![7u8; 10_000]).unwrap();
    let keys = dir.path().join("keys");
    common::ok(common::sealfs(
        &keys,
        &["init", "--reverse", plain.to_str().unwrap()],
    ));
    let vol = TestVolume::existing(dir, plain.clone(), keys);
    let port = free_port();
    let m = vol.mount_with(&["--reverse", "--metrics", &format!("127.0.0.1:{port}")]);
    let name = fs::read_dir(&m.path)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_file() && fs::metadata(p).unwrap().len() > 10_000)
        .expect("the view's data file");
    let served = fs::read(&name).unwrap().len() as f64;
    let parsed =
        prometheus_parse::Scrape::parse(scrape(port).lines().map(|l| Ok(l.to_string()))).unwrap();
    assert!(sample(&parsed, "sealfs_fuse_requests_total", &[("op", "read")]) >= 1.0);
    let dir_label = [("direction", "read")];
    assert_eq!(
        sample(&parsed, "sealfs_backing_bytes_total", &dir_label),
        served
    );
    assert_eq!(
        sample(&parsed, "sealfs_plaintext_bytes_total", &dir_label),
        10_000.0
    );
    assert_eq!(
        sample(&parsed, "sealfs_blocks_total", &[("op", "seal")]),
        3.0
    );
}
