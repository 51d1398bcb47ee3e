//! Metrics of a running loader in the Prometheus model (`lakeshop_stream_*`, served on
//! `/metrics` by `stream run` beside the process's CPU seconds and resident memory, which
//! the metrics server adds for every command).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// Labels of the per-partition gauges.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub topic: String,
    pub partition: i32,
}

/// Labels of the per-reason counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// Counters of one loader; cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct StreamMetrics {
    topic: String,
    /// Records read from Kafka (each offset once per run).
    pub consumed: Counter,
    /// Purchases counted in windows.
    pub counted: Counter,
    /// Records not counted, by reason (validation reasons, duplicate,
    /// conflicting_duplicate, too_late).
    pub rejected: Family<ReasonLabels, Counter>,
    /// Records older than the watermark by more than the allowed lateness.
    pub too_late: Counter,
    /// Records behind the high watermark of the last fetch, per partition.
    pub lag: Family<PartitionLabels, Gauge>,
    /// Seconds per flush (every insert of the flush and the checkpoint).
    pub flush_seconds: Histogram,
    /// Seconds from a purchase's event time to ClickHouse acknowledging its windows.
    pub latency_seconds: Histogram,
    /// Flushes that failed and will be retried.
    pub flush_errors: Counter,
    /// 1 while reading is paused because the unacknowledged buffer is full.
    pub backpressure: Gauge,
    /// Unix seconds of the loop's last turn (for `/healthz`).
    heartbeat: Arc<AtomicI64>,
    /// Unix seconds of the last acknowledged flush or of the start (for `/healthz`).
    last_ack: Arc<AtomicI64>,
}

impl StreamMetrics {
    /// Metrics of a loader of `topic`.
    pub fn new(topic: &str) -> Self {
        let now = chrono::Utc::now().timestamp();
        Self {
            topic: topic.to_string(),
            consumed: Counter::default(),
            counted: Counter::default(),
            rejected: Family::default(),
            too_late: Counter::default(),
            lag: Family::default(),
            flush_seconds: Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            latency_seconds: Histogram::new([
                0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0,
            ]),
            flush_errors: Counter::default(),
            backpressure: Gauge::default(),
            heartbeat: Arc::new(AtomicI64::new(now)),
            last_ack: Arc::new(AtomicI64::new(now)),
        }
    }

    /// Adds these metrics to `registry` under the `lakeshop_stream_` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("lakeshop_stream");
        r.register(
            "consumed_records",
            "Kafka records read",
            self.consumed.clone(),
        );
        r.register(
            "counted_purchases",
            "Purchases counted in windows",
            self.counted.clone(),
        );
        r.register(
            "rejected_records",
            "Records not counted, by reason",
            self.rejected.clone(),
        );
        r.register(
            "too_late_records",
            "Records older than the watermark by more than the allowed lateness",
            self.too_late.clone(),
        );
        r.register(
            "lag_records",
            "Records behind the high watermark of the last fetch",
            self.lag.clone(),
        );
        r.register(
            "flush_seconds",
            "Seconds per flush: the inserts and the checkpoint",
            self.flush_seconds.clone(),
        );
        r.register(
            "event_latency_seconds",
            "Seconds from a purchase's event time to ClickHouse acknowledging it",
            self.latency_seconds.clone(),
        );
        r.register(
            "flush_errors",
            "Flushes that failed and are retried",
            self.flush_errors.clone(),
        );
        r.register(
            "backpressure",
            "1 while reading is paused: the unacknowledged buffer is full",
            self.backpressure.clone(),
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

    pub(crate) fn rejected(&self, reason: &str) {
        self.rejected
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Marks the loop as turning now.
    pub(crate) fn heartbeat(&self) {
        self.heartbeat
            .store(chrono::Utc::now().timestamp(), Ordering::Relaxed);
    }

    pub(crate) fn acked(&self) {
        self.last_ack
            .store(chrono::Utc::now().timestamp(), Ordering::Relaxed);
    }

    /// Seconds since the loop last turned.
    pub fn seconds_since_heartbeat(&self) -> i64 {
        chrono::Utc::now().timestamp() - self.heartbeat.load(Ordering::Relaxed)
    }

    /// Seconds since ClickHouse last acknowledged a flush (or since the start).
    pub fn seconds_since_ack(&self) -> i64 {
        chrono::Utc::now().timestamp() - self.last_ack.load(Ordering::Relaxed)
    }
}
