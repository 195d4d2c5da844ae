//! The ingest's Prometheus metrics: the counters at scrape time.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::Ingest;
use crate::record::Reject;
use crate::sink::SinkStats;

/// The counters at scrape time.
#[derive(Debug)]
pub(super) struct Snapshot {
    counters: crate::pipeline::Counters,
    delivered: u64,
    spooled: u64,
    replayed: u64,
    send_failures: u64,
    spool_bytes: u64,
    tokenize_errors: u64,
    cache_hits: u64,
    cache_misses: u64,
    crawler_checks: u64,
}

impl Snapshot {
    pub(super) fn of(i: &Ingest) -> Self {
        let s: &SinkStats = &i.sink.stats;
        let ld = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let cache = i.cache.lock().unwrap_or_else(|p| p.into_inner());
        Snapshot {
            counters: i.lock_pipeline().counters(),
            delivered: ld(&s.delivered),
            spooled: ld(&s.spooled),
            replayed: ld(&s.replayed),
            send_failures: ld(&s.send_failures),
            spool_bytes: ld(&s.spool_bytes),
            tokenize_errors: ld(&i.tokenize_errors),
            cache_hits: cache.hits,
            cache_misses: cache.misses,
            crawler_checks: ld(&i.crawler_checks),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct Label {
    label: String,
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let c = &self.counters;
        let plain: [(&str, &str, u64); 12] = [
            ("pii_fraud_records", "Log records parsed", c.records),
            (
                "pii_fraud_own_responses",
                "Responses our own blocking or shedding produced (never evidence)",
                c.own_responses,
            ),
            (
                "pii_fraud_allowlisted",
                "Records from allowlisted addresses",
                c.allowlisted,
            ),
            (
                "pii_fraud_decisions",
                "Decisions emitted as signals",
                c.decisions,
            ),
            (
                "pii_fraud_signals_delivered",
                "Signals acknowledged by the broker",
                self.delivered,
            ),
            (
                "pii_fraud_signals_spooled",
                "Signals written to the disk spool",
                self.spooled,
            ),
            (
                "pii_fraud_signals_replayed",
                "Spooled signals delivered later",
                self.replayed,
            ),
            (
                "pii_fraud_send_failures",
                "Failed sends to the broker",
                self.send_failures,
            ),
            (
                "pii_fraud_tokenize_errors",
                "Failed tokenization calls to the enclave",
                self.tokenize_errors,
            ),
            (
                "pii_fraud_token_cache_hits",
                "Subjects found in the token cache",
                self.cache_hits,
            ),
            (
                "pii_fraud_token_cache_misses",
                "Subjects sent to the enclave",
                self.cache_misses,
            ),
            (
                "pii_fraud_evictions_ip",
                "Address states evicted to make room",
                c.evictions_ip,
            ),
        ];
        for (name, help, v) in plain {
            let m = ConstCounter::new(v);
            m.encode(enc.encode_descriptor(name, help, None, m.metric_type())?)?;
        }
        for (name, help, v) in [
            (
                "pii_fraud_verified_crawler_records",
                "Records from crawlers verified by reverse and forward DNS (never scored)",
                c.verified_crawlers,
            ),
            (
                "pii_fraud_fake_crawler_records",
                "Records whose user agent claims a crawler that DNS disowns",
                c.fake_crawlers,
            ),
            (
                "pii_fraud_crawler_dns_checks",
                "Crawler claims checked by reverse and forward DNS",
                self.crawler_checks,
            ),
            (
                "pii_fraud_evictions_subnet",
                "Subnet states evicted to make room",
                c.evictions_subnet,
            ),
            (
                "pii_fraud_evictions_subject",
                "Subject states evicted to make room",
                c.evictions_subject,
            ),
            (
                "pii_fraud_evictions_pair",
                "Address-and-subject states evicted to make room",
                c.evictions_pair,
            ),
        ] {
            let m = ConstCounter::new(v);
            m.encode(enc.encode_descriptor(name, help, None, m.metric_type())?)?;
        }
        let g = ConstGauge::new(self.spool_bytes as i64);
        g.encode(enc.encode_descriptor(
            "pii_fraud_spool_bytes",
            "Bytes waiting in the disk spool",
            None,
            g.metric_type(),
        )?)?;
        let m = ConstCounter::new(0u64);
        let mut fam = enc.encode_descriptor(
            "pii_fraud_rejected",
            "Log lines skipped, by reason",
            None,
            m.metric_type(),
        )?;
        for (r, n) in Reject::ALL.iter().zip(c.rejected) {
            let l = Label {
                label: r.label().to_owned(),
            };
            ConstCounter::new(n).encode(fam.encode_family(&l)?)?;
        }
        Ok(())
    }
}
