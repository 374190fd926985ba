//! A snapshot in the Prometheus text format (0.0.4), written by the prometheus-client crate:
//! a collector that reads every counter at scrape time, so the hot path keeps its plain
//! atomics.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::HistogramSnapshot;
use super::snapshot::{RequestSnapshot, Snapshot};

/// The Content-Type of what `render` returns.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every metric of `snapshot`, as Prometheus scrapes it.
pub fn render(snapshot: &Snapshot) -> String {
    let mut registry = Registry::with_prefix("sealfs");
    registry.register_collector(Box::new(SnapshotCollector(snapshot.clone())));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        .expect("writing to a String does not fail");
    out
}

#[derive(Debug)]
struct SnapshotCollector(Snapshot);

fn counter(metric: &mut MetricEncoder<'_>, value: u64) -> std::fmt::Result {
    metric.encode_counter::<NoLabelSet, u64, u64>(&value, None)
}

/// A counter with one label, one sample per (label value, count).
fn counter_family<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    samples: impl Iterator<Item = (&'a str, u64)>,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in samples {
        counter(&mut metric.encode_family(&[(label, value)])?, n)?;
    }
    Ok(())
}

fn gauge(metric: &mut MetricEncoder<'_>, value: f64) -> std::fmt::Result {
    metric.encode_gauge(&value)
}

fn histogram(metric: &mut MetricEncoder<'_>, h: &HistogramSnapshot) -> std::fmt::Result {
    // The encoder accumulates per-bucket counts itself.
    let mut previous = 0;
    let buckets: Vec<(f64, u64)> = h
        .buckets
        .iter()
        .map(|&(bound, cumulative)| {
            let n = cumulative - previous;
            previous = cumulative;
            (bound, n)
        })
        .collect();
    metric.encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &buckets, None)
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.0;
        let ops = |value: fn(&RequestSnapshot) -> u64| {
            s.requests
                .iter()
                .map(move |(op, r)| (op.as_str(), value(r)))
        };
        counter_family(
            &mut encoder,
            "fuse_requests",
            "FUSE requests answered, by operation.",
            "op",
            ops(|r| r.count),
        )?;
        counter_family(
            &mut encoder,
            "fuse_request_errors",
            "FUSE requests answered with an error, by operation.",
            "op",
            ops(|r| r.errors),
        )?;
        counter_family(
            &mut encoder,
            "fuse_errors_by_errno",
            "FUSE requests answered with an error, by errno.",
            "errno",
            s.errors_by_errno.iter().map(|(e, n)| (e.as_str(), *n)),
        )?;
        let mut m = encoder.encode_descriptor(
            "fuse_request_duration_seconds",
            "Time from a FUSE request's arrival to its answer, by operation.",
            None,
            MetricType::Histogram,
        )?;
        for (op, r) in &s.requests {
            histogram(&mut m.encode_family(&[("op", op.as_str())])?, &r.latency)?;
        }
        counter_family(
            &mut encoder,
            "plaintext_bytes",
            "Plaintext bytes read and written through the mount.",
            "direction",
            [
                ("read", s.bytes.plaintext_read),
                ("write", s.bytes.plaintext_written),
            ]
            .into_iter(),
        )?;
        counter_family(
            &mut encoder,
            "backing_bytes",
            "Ciphertext bytes read from and written to the backing data files.",
            "direction",
            [
                ("read", s.bytes.backing_read),
                ("write", s.bytes.backing_written),
            ]
            .into_iter(),
        )?;
        counter_family(
            &mut encoder,
            "blocks",
            "Data blocks sealed (encrypted) and opened (decrypted and authenticated).",
            "op",
            [("seal", s.blocks_sealed), ("open", s.blocks_opened)].into_iter(),
        )?;
        counter_family(
            &mut encoder,
            "integrity_failures",
            "Authentication failures (tampering or damage), by what failed.",
            "kind",
            s.integrity_failures.iter().map(|(k, n)| (k.as_str(), *n)),
        )?;
        let cache = &s.key_cache;
        for (name, help, value) in [
            (
                "key_cache_hits",
                "File keys served from the cache.",
                cache.hits,
            ),
            (
                "key_cache_misses",
                "File keys loaded (header read and unwrapped).",
                cache.misses,
            ),
            (
                "key_cache_evictions",
                "Keys dropped to keep the cache within its size.",
                cache.evictions,
            ),
            (
                "key_cache_expirations",
                "Keys dropped at their maximum age or idle time.",
                cache.expirations,
            ),
            (
                "key_cache_load_failures",
                "File key loads that failed.",
                cache.load_failures,
            ),
        ] {
            counter(
                &mut encoder.encode_descriptor(name, help, None, MetricType::Counter)?,
                value,
            )?;
        }
        gauge(
            &mut encoder.encode_descriptor(
                "key_cache_entries",
                "File keys in the cache now.",
                None,
                MetricType::Gauge,
            )?,
            cache.entries as f64,
        )?;
        gauge(
            &mut encoder.encode_descriptor(
                "key_cache_loads_in_flight",
                "File key loads under way now.",
                None,
                MetricType::Gauge,
            )?,
            cache.loads_in_flight as f64,
        )?;
        let calls = &s.key_service.calls;
        let split = |name: &str| -> (String, String) {
            let (service, call) = name.split_once('/').unwrap_or((name, ""));
            (service.to_string(), call.to_string())
        };
        let mut m = encoder.encode_descriptor(
            "key_service_calls",
            "Calls to KMS or the PKCS#11 token, by service and operation.",
            None,
            MetricType::Counter,
        )?;
        for (name, c) in calls {
            let (service, call) = split(name);
            counter(
                &mut m.encode_family(&[("service", service), ("op", call)])?,
                c.count,
            )?;
        }
        let mut m = encoder.encode_descriptor(
            "key_service_errors",
            "Failed calls to KMS or the PKCS#11 token, by service, operation and kind.",
            None,
            MetricType::Counter,
        )?;
        for (name, c) in calls {
            let (service, call) = split(name);
            for (kind, n) in &c.errors {
                counter(
                    &mut m.encode_family(&[
                        ("service", service.clone()),
                        ("op", call.clone()),
                        ("kind", kind.clone()),
                    ])?,
                    *n,
                )?;
            }
        }
        let mut m = encoder.encode_descriptor(
            "key_service_call_duration_seconds",
            "Duration of calls to KMS or the PKCS#11 token.",
            None,
            MetricType::Histogram,
        )?;
        for (name, c) in calls {
            let (service, call) = split(name);
            histogram(
                &mut m.encode_family(&[("service", service), ("op", call)])?,
                &c.latency,
            )?;
        }
        let failing_for = s
            .key_service_failing_for(super::snapshot::now_unix())
            .unwrap_or(0);
        gauge(
            &mut encoder.encode_descriptor(
                "key_service_failing_seconds",
                "How long the key service has been unreachable (0: it is not failing).",
                None,
                MetricType::Gauge,
            )?,
            failing_for as f64,
        )?;
        gauge(
            &mut encoder.encode_descriptor(
                "key_cache_bound_seconds",
                "How long a key is served from the cache without its key service.",
                None,
                MetricType::Gauge,
            )?,
            s.mount.cache_bound_seconds as f64,
        )?;
        histogram(
            &mut encoder.encode_descriptor(
                "shared_lock_wait_seconds",
                "Waits for a shared-storage block lock another mount held.",
                None,
                MetricType::Histogram,
            )?,
            &s.lock_waits,
        )?;
        gauge(
            &mut encoder.encode_descriptor(
                "uptime_seconds",
                "Seconds since the mount started.",
                None,
                MetricType::Gauge,
            )?,
            s.mount.uptime_seconds,
        )?;
        gauge(
            &mut encoder.encode_descriptor(
                "kek_version",
                "The KEK version new files are wrapped under.",
                None,
                MetricType::Gauge,
            )?,
            s.mount.kek_version as f64,
        )?;
        counter(
            &mut encoder.encode_descriptor(
                "config_reloads",
                "Times the mount took up a changed volume config (rotation, key changes).",
                None,
                MetricType::Counter,
            )?,
            s.mount.config_reloads,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_labels() {
        let mut s = Snapshot::default();
        s.requests.insert(
            "read".into(),
            RequestSnapshot {
                count: 3,
                errors: 1,
                latency: HistogramSnapshot {
                    count: 3,
                    sum_seconds: 0.5,
                    buckets: vec![(0.001, 1), (0.01, 2)],
                },
            },
        );
        s.errors_by_errno.insert("EIO".into(), 1);
        s.integrity_failures.insert("block".into(), 1);
        let text = render(&s);
        assert!(
            text.contains("sealfs_fuse_requests_total{op=\"read\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("sealfs_fuse_errors_by_errno_total{errno=\"EIO\"} 1\n"));
        assert!(text.contains("sealfs_integrity_failures_total{kind=\"block\"} 1\n"));
        assert!(
            text.contains(
                "sealfs_fuse_request_duration_seconds_bucket{le=\"0.001\",op=\"read\"} 1\n"
            ) || text.contains(
                "sealfs_fuse_request_duration_seconds_bucket{op=\"read\",le=\"0.001\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("le=\"+Inf\"} 3\n") || text.contains("le=\"+Inf\",op=\"read\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE sealfs_fuse_request_duration_seconds histogram"));
    }
}
