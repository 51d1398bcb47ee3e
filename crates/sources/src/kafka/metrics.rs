//! Metrics of a running Kafka extractor, in the Prometheus model (served on `/metrics` by
//! `extract --follow`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// Labels of the per-partition lag gauge.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub topic: String,
    pub partition: i32,
}

/// Counters of one extractor; cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct ExtractMetrics {
    topic: String,
    /// Records read from Kafka (each offset once).
    pub consumed: Counter,
    /// Rows committed to the event table.
    pub staged: Counter,
    /// Rows committed to `dead_letters`.
    pub dead_lettered: Counter,
    /// Delta commits of the event table.
    pub commits: Counter,
    /// Seconds per flush (dead letters and events, each a Delta commit).
    pub commit_seconds: Histogram,
    /// Records behind the high watermark of the last fetch, per partition.
    pub lag: Family<PartitionLabels, Gauge>,
    /// Unix seconds of the consumer loop's last turn (for `/healthz`).
    heartbeat: Arc<AtomicI64>,
}

impl ExtractMetrics {
    pub fn new(topic: &str) -> Self {
        Self {
            topic: topic.to_string(),
            consumed: Counter::default(),
            staged: Counter::default(),
            dead_lettered: Counter::default(),
            commits: Counter::default(),
            commit_seconds: Histogram::new([
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            lag: Family::default(),
            heartbeat: Arc::new(AtomicI64::new(chrono::Utc::now().timestamp())),
        }
    }

    /// Adds these metrics to `registry` under the `lakeshop_extract_` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("lakeshop_extract");
        r.register(
            "consumed_records",
            "Kafka records read, each offset once",
            self.consumed.clone(),
        );
        r.register(
            "staged_rows",
            "Rows committed to the stage event table",
            self.staged.clone(),
        );
        r.register(
            "dead_lettered_rows",
            "Rows committed to stage.dead_letters",
            self.dead_lettered.clone(),
        );
        r.register(
            "commits",
            "Delta commits of the stage event table",
            self.commits.clone(),
        );
        r.register(
            "commit_seconds",
            "Seconds per flush: dead letters and events, each one Delta commit",
            self.commit_seconds.clone(),
        );
        r.register(
            "lag_records",
            "Records behind the high watermark of the last fetch",
            self.lag.clone(),
        );
    }

    pub(crate) fn set_lag(&self, partition: i32, lag: i64) {
        self.lag
            .get_or_create(&PartitionLabels {
                topic: self.topic.clone(),
                partition,
            })
            .set(lag);
    }

    /// Marks the consumer loop as turning at `now`.
    pub(crate) fn heartbeat(&self, now: chrono::DateTime<chrono::Utc>) {
        self.heartbeat.store(now.timestamp(), Ordering::Relaxed);
    }

    /// Seconds since the consumer loop last turned.
    pub fn seconds_since_heartbeat(&self) -> i64 {
        chrono::Utc::now().timestamp() - self.heartbeat.load(Ordering::Relaxed)
    }
}
