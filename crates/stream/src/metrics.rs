//! Metrics of a running loader in the Prometheus model (`lakeshop_stream_*`, served on
//! `/metrics` by `stream run` beside the process's CPU seconds and resident memory, which
//! the metrics server adds for every command).

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

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
    /// conflicting_duplicate).
    pub rejected: Family<ReasonLabels, Counter>,
    /// Purchases older than the watermark by more than the allowed lateness (counted as
    /// corrections of their closed windows).
    pub too_late: Counter,
    /// Purchases stamped further ahead of their Kafka time than the allowed clock skew.
    pub future_events: Counter,
    /// Exact look-ups of purchase ids in ClickHouse (the id filter said "maybe", or the
    /// purchase is older than the filter).
    pub dedup_lookups: Counter,
    /// Records behind the high watermark of the last fetch, per partition.
    pub lag: Family<PartitionLabels, Gauge>,
    /// Seconds per flush (every insert of the flush and the checkpoint).
    pub flush_seconds: Histogram,
    /// Seconds from a purchase's event time to ClickHouse acknowledging its windows.
    pub latency_seconds: BatchHistogram,
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
            future_events: Counter::default(),
            dedup_lookups: Counter::default(),
            lag: Family::default(),
            flush_seconds: Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            latency_seconds: BatchHistogram::new(&[
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
            "Purchases older than the watermark by more than the allowed lateness, counted as corrections of their closed windows",
            self.too_late.clone(),
        );
        r.register(
            "future_events",
            "Purchases stamped further ahead of their Kafka time than the allowed clock skew",
            self.future_events.clone(),
        );
        r.register(
            "dedup_lookups",
            "Exact look-ups of purchase ids in ClickHouse behind the id filter",
            self.dedup_lookups.clone(),
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

/// A histogram that takes a whole flush's observations at once: they are counted into
/// buckets by the caller's thread without a lock ([`Batch`]) and added under one lock per
/// flush, where a plain histogram takes a lock per observation (one per purchase).
#[derive(Debug, Clone)]
pub struct BatchHistogram {
    bounds: Arc<[f64]>,
    inner: Arc<Mutex<Tally>>,
}

/// Sum, count and per-bucket counts (not cumulative; the last is past every bound).
#[derive(Debug, Clone, Default, PartialEq)]
struct Tally {
    sum: f64,
    count: u64,
    buckets: Vec<u64>,
}

/// Observations counted into a [`BatchHistogram`]'s buckets, not yet added to it.
#[derive(Debug)]
pub struct Batch<'a> {
    bounds: &'a [f64],
    tally: Tally,
}

impl BatchHistogram {
    /// A histogram with these upper bounds (ascending), and one past them.
    pub fn new(bounds: &[f64]) -> Self {
        let tally = Tally {
            buckets: vec![0; bounds.len() + 1],
            ..Tally::default()
        };
        Self {
            bounds: bounds.into(),
            inner: Arc::new(Mutex::new(tally)),
        }
    }

    /// An empty batch of observations for this histogram.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            bounds: &self.bounds,
            tally: Tally {
                buckets: vec![0; self.bounds.len() + 1],
                ..Tally::default()
            },
        }
    }

    /// Adds a batch's observations.
    pub fn add(&self, batch: Batch<'_>) {
        let mut t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        t.sum += batch.tally.sum;
        t.count += batch.tally.count;
        for (total, n) in t.buckets.iter_mut().zip(&batch.tally.buckets) {
            *total += n;
        }
    }

    /// Sum, count and the count of each bucket by its upper bound (not cumulative: the
    /// encoder sums them up), the last past every bound.
    fn get(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let t = self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let bounds = self.bounds.iter().copied().chain([f64::MAX]);
        (t.sum, t.count, bounds.zip(t.buckets).collect())
    }
}

impl Batch<'_> {
    /// Counts one observation.
    pub fn observe(&mut self, v: f64) {
        let bucket = self.bounds.partition_point(|&b| b < v);
        self.tally.buckets[bucket] += 1;
        self.tally.sum += v;
        self.tally.count += 1;
    }
}

impl TypedMetric for BatchHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for BatchHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> std::result::Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.get();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Batched observations are exposed as a plain histogram exposes them one at a time.
    #[test]
    fn a_batch_is_exposed_as_the_same_observations_one_by_one() {
        let bounds = [0.05, 0.1, 0.5, 1.0];
        let values = [0.0, 0.05, 0.06, 0.1, 0.3, 0.5, 0.99, 1.0, 2.0, 40.0, 0.07];
        let plain = Histogram::new(bounds);
        let batched = BatchHistogram::new(&bounds);
        let (first, second) = values.split_at(4);
        for part in [first, second] {
            let mut b = batched.batch();
            for &v in part {
                plain.observe(v);
                b.observe(v);
            }
            batched.add(b);
        }
        let text = |register: &dyn Fn(&mut Registry)| {
            let mut r = Registry::default();
            register(&mut r);
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &r).expect("encodes");
            out
        };
        let want = text(&|r| r.register("h", "h", plain.clone()));
        let got = text(&|r| r.register("h", "h", batched.clone()));
        assert_eq!(got, want);
        assert!(want.contains("h_count 11"), "{want}");
    }
}
