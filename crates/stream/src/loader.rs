//! The loader's consumer loop: reads the purchases topic, folds each record into its
//! partition's state, and flushes the changed rows and then the checkpoint to ClickHouse.
//!
//! What is durable when:
//! 1. A flush first inserts the counted purchases, then the changed windows (full state and
//!    version), then the changed reject counters, and only after all three are acknowledged
//!    the checkpoint (next offset, watermark, clock) of each partition.
//! 2. On assignment a partition's state is restored from ClickHouse: its checkpoint, the latest
//!    version of its open windows and counters, and the purchase ids it counted within the
//!    lateness (and any counted at or after the checkpoint, with the keys they counted under).
//!    Reading starts at the checkpoint (a little before it: the local broker answers a fetch
//!    from the middle of a record batch with the batch after it, so records before the
//!    checkpoint are read again and skipped by offset).
//! 3. A record after the checkpoint whose windows were already written is recognised by the
//!    windows' versions and not folded in twice; its purchase id is recognised as its own by
//!    its offset. So a kill at any instant neither loses a record (nothing is checkpointed
//!    before its rows are acknowledged) nor counts one twice (rows are versioned full state).
//!
//! ClickHouse down: a failed flush keeps every row (the rows are rebuilt from state when the
//! flush is tried again, with backoff up to 10 s); reading goes on until
//! `max_unacked_records` records wait for acknowledgement, then the assigned partitions are
//! paused until a flush succeeds. A broker restart is librdkafka's reconnect.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lakeshop_clickhouse::stream::Checkpoint;
use lakeshop_clickhouse::{ClickHouse, RowBinary, StreamTable};
use lakeshop_stage::Stage;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use crate::dead_letters::DeadLetters;
use crate::dims::DimsCache;
use crate::metrics::StreamMetrics;
use crate::state::{Outcome, PartitionState, Restored, Settings, TOO_LATE};
use crate::{Error, Result};

/// How far before its checkpoint a partition is read again on assignment (then skipped).
const RESUME_REWIND: i64 = 10_000;
/// Longest wait between two tries of a failed flush.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Longest a single insert may take before the flush counts as failed.
const INSERT_TIMEOUT: Duration = Duration::from_secs(15);
/// How often closed windows and old ids are swept from memory.
const EVICT_EVERY: Duration = Duration::from_secs(2);
/// How often progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// What one loader reads and how it flushes.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Brokers and pass-through librdkafka properties.
    pub client: ClientConfig,
    /// The purchases topic.
    pub topic: String,
    /// Checkpoints are kept per pipeline name (loaders of one pipeline share them).
    pub pipeline: String,
    /// Consumer group id.
    pub group_id: String,
    /// Share the partitions with the group's other loaders (subscribe); otherwise read every
    /// partition (assign), which needs no group coordination after a crash.
    pub group: bool,
    /// Business time zone of hour and day windows.
    pub timezone: chrono_tz::Tz,
    /// How long past its end a window still takes records (measured on the watermark).
    pub allowed_lateness: Duration,
    /// Flush changed rows at least this often while records flow.
    pub flush_interval: Duration,
    /// Records read but not yet acknowledged by ClickHouse before reading pauses.
    pub max_unacked_records: usize,
    /// How often the dimension tables' versions are checked.
    pub dims_refresh: Duration,
    /// Stop once every assigned partition reached its end, everything is acknowledged and
    /// nothing arrived for this long (`--until-end`). `None` follows forever.
    pub until_idle: Option<Duration>,
    /// Set it to stop: the loader flushes what it holds and returns (SIGTERM drain).
    pub stop: Arc<AtomicBool>,
    /// Counters and gauges for `/metrics`.
    pub metrics: StreamMetrics,
    /// Forward rejected records to this topic, reason in a header (at least once).
    pub dead_letters: Option<String>,
}

/// What a run did, per partition and in all.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StreamStats {
    /// Records read (each offset once).
    pub read: u64,
    /// Purchases counted in windows.
    pub counted: u64,
    /// Records not counted (any reason, too-late included).
    pub rejected: u64,
    /// Rejected records by reason.
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// Acknowledged flushes.
    pub flushes: u64,
    /// Per partition: (read, counted, rejected).
    pub partitions: BTreeMap<i32, (u64, u64, u64)>,
}

/// Partitions handed over by the rebalance callback, for the loop to take.
#[derive(Debug, Default)]
struct Handover {
    arrived: Vec<PartitionState>,
    revoked: BTreeSet<i32>,
    /// Next offset of each partition the loop holds (for the lag gauge).
    next: BTreeMap<i32, i64>,
    error: Option<String>,
}

struct Ctx {
    topic: String,
    settings: Settings,
    pipeline: String,
    ch: ClickHouse,
    dims: DimsCache,
    stop: Arc<AtomicBool>,
    metrics: StreamMetrics,
    runtime: tokio::runtime::Handle,
    handover: Mutex<Handover>,
}

impl ClientContext for Ctx {
    /// The high watermark each partition's last fetch carried (never ListOffsets), minus the
    /// next offset to read, is the lag.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let h = self.handover.lock().unwrap_or_else(|p| p.into_inner());
        for (p, part) in &topic.partitions {
            if let (Some(next), true) = (h.next.get(p), part.hi_offset >= 0) {
                self.metrics.set_lag(*p, (part.hi_offset - next).max(0));
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(
            error,
            KafkaError::PartitionEOF(_)
                | KafkaError::Global(rdkafka::error::RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::debug!(topic = %self.topic, reason, "end of partition");
        } else {
            tracing::warn!(topic = %self.topic, error = %error, reason, "kafka client error");
        }
    }
}

impl ConsumerContext for Ctx {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let mut h = self.handover.lock().unwrap_or_else(|p| p.into_inner());
                for e in tpl.elements_for_topic(&self.topic) {
                    h.revoked.insert(e.partition());
                    h.next.remove(&e.partition());
                }
                tracing::info!(topic = %self.topic, partitions = ?h.revoked, "partitions revoked; their unflushed state is dropped (the next owner replays it)");
                let _ = consumer.unassign();
            }
            other => {
                let mut h = self.handover.lock().unwrap_or_else(|p| p.into_inner());
                h.error = Some(format!("rebalance failed: {other:?}"));
            }
        }
    }
}

impl Ctx {
    /// Restores `tpl`'s partitions from ClickHouse (retrying while it does not answer),
    /// positions them at their checkpoints and assigns them.
    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let partitions: Vec<i32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        let started = Instant::now();
        let mut backoff = Duration::from_millis(200);
        let states = loop {
            match self.runtime.block_on(self.restore(&partitions)) {
                Ok(s) => break s,
                Err(e) if !self.stop.load(Ordering::Relaxed) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot restore partition state; retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => {
                    let mut h = self.handover.lock().unwrap_or_else(|p| p.into_inner());
                    h.error = Some(format!("restoring partitions: {e}"));
                    return;
                }
            }
        };
        let mut h = self.handover.lock().unwrap_or_else(|p| p.into_inner());
        for st in states {
            let p = st.part();
            let offset = if st.next > 0 {
                Offset::Offset((st.next - RESUME_REWIND).max(0))
            } else {
                Offset::Beginning
            };
            let _ = tpl.set_partition_offset(&self.topic, p, offset);
            let (windows, ids) = st.sizes();
            tracing::info!(topic = %self.topic, partition = p, next = st.next, watermark = st.watermark, windows, ids, "partition restored");
            h.revoked.remove(&p);
            h.next.insert(p, st.next);
            h.arrived.push(st);
        }
        tracing::info!(topic = %self.topic, partitions = ?partitions, ms = started.elapsed().as_millis() as u64, "assigned; reading from the checkpoints");
        if let Err(e) = consumer.assign(tpl) {
            h.error = Some(format!("assign: {e}"));
        }
    }

    async fn restore(&self, partitions: &[i32]) -> Result<Vec<PartitionState>> {
        let checkpoints: HashMap<i32, Checkpoint> = self
            .ch
            .stream_checkpoints(&self.pipeline, &self.topic)
            .await?
            .into_iter()
            .map(|c| (c.part, c))
            .collect();
        let dims = self.dims.get();
        let lateness = self.settings.lateness;
        let mut out = Vec::with_capacity(partitions.len());
        for &p in partitions {
            let restored = match checkpoints.get(&p) {
                None => Restored::default(),
                Some(c) => {
                    // Day windows may last 25 hours; everything older is closed.
                    let windows_since = c.watermark - lateness - 26 * 3600;
                    Restored {
                        next_offset: c.next_offset,
                        watermark: c.watermark,
                        clock: c.clock,
                        windows: self
                            .ch
                            .stream_windows(&self.topic, p, windows_since)
                            .await?,
                        counted: self
                            .ch
                            .stream_counted(&self.topic, p, c.watermark - lateness, c.next_offset)
                            .await?,
                        rejects: self
                            .ch
                            .stream_rejects(&self.topic, p, c.clock.div_euclid(60) * 60)
                            .await?,
                    }
                }
            };
            out.push(PartitionState::new(
                p,
                self.settings.clone(),
                restored,
                &dims,
            ));
        }
        Ok(out)
    }
}

/// Runs the loader until stopped (or, with `until_idle`, until it caught up).
pub async fn run(stage: &Stage, ch: &ClickHouse, opts: &StreamOptions) -> Result<StreamStats> {
    ch.require_stream_tables().await?;
    let dims = DimsCache::load(stage).await?;
    let (products, sellers) = dims.get().sizes();
    tracing::info!(products, sellers, "dimension cache loaded");
    let refresher = dims.refresh_task(stage.clone(), opts.dims_refresh);
    let ctx = Ctx {
        topic: opts.topic.clone(),
        settings: Settings {
            topic: Arc::from(opts.topic.as_str()),
            timezone: opts.timezone,
            lateness: opts.allowed_lateness.as_secs() as i64,
        },
        pipeline: opts.pipeline.clone(),
        ch: ch.clone(),
        dims: dims.clone(),
        stop: opts.stop.clone(),
        metrics: opts.metrics.clone(),
        runtime: tokio::runtime::Handle::current(),
        handover: Mutex::new(Handover::default()),
    };
    let mut client = opts.client.clone();
    client
        .set("group.id", &opts.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .set("statistics.interval.ms", "1000")
        // Latency: a fetch returns as soon as it has data and waits at most this long.
        .set("fetch.wait.max.ms", "20")
        .set("fetch.message.max.bytes", "8388608");
    let kafka_err = |source| Error::Kafka {
        topic: opts.topic.clone(),
        source,
    };
    let consumer: BaseConsumer<Ctx> = client.create_with_context(ctx).map_err(kafka_err)?;
    if opts.group {
        consumer.subscribe(&[&opts.topic]).map_err(kafka_err)?;
    } else {
        let md = tokio::task::block_in_place(|| {
            consumer.fetch_metadata(Some(&opts.topic), Duration::from_secs(30))
        })
        .map_err(kafka_err)?;
        let mut tpl = TopicPartitionList::new();
        for t in md.topics() {
            if let Some(e) = t.error() {
                return Err(Error::Kafka {
                    topic: opts.topic.clone(),
                    source: KafkaError::MetadataFetch(e.into()),
                });
            }
            for p in t.partitions() {
                tpl.add_partition(&opts.topic, p.id());
            }
        }
        if tpl.count() == 0 {
            return Err(Error::Config(format!(
                "topic {} has no partitions (does it exist?)",
                opts.topic
            )));
        }
        let ctx = consumer.context();
        tokio::task::block_in_place(|| ctx.assign(&consumer, &mut tpl));
    }
    let dead_letters = match &opts.dead_letters {
        Some(topic) => Some(DeadLetters::new(&opts.client, topic)?),
        None => None,
    };
    let opts2 = opts.clone();
    let ch = ch.clone();
    let result = tokio::task::spawn_blocking(move || {
        Loop::new(consumer, ch, opts2, dims, dead_letters).run()
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))?;
    refresher.abort();
    result
}

struct Loop {
    consumer: BaseConsumer<Ctx>,
    ch: ClickHouse,
    opts: StreamOptions,
    dims: DimsCache,
    states: BTreeMap<i32, PartitionState>,
    /// Next offset each partition's last acknowledged checkpoint holds.
    checkpointed: BTreeMap<i32, i64>,
    /// Counted-purchase rows taken from the states and not yet acknowledged.
    purchases: RowBinary,
    /// Records processed since the last acknowledged flush.
    unacked: usize,
    stats: StreamStats,
    paused: bool,
    dead_letters: Option<DeadLetters>,
}

impl Loop {
    fn new(
        consumer: BaseConsumer<Ctx>,
        ch: ClickHouse,
        opts: StreamOptions,
        dims: DimsCache,
        dead_letters: Option<DeadLetters>,
    ) -> Self {
        Self {
            dead_letters,
            consumer,
            ch,
            opts,
            dims,
            states: BTreeMap::new(),
            checkpointed: BTreeMap::new(),
            purchases: RowBinary::new(),
            unacked: 0,
            stats: StreamStats::default(),
            paused: false,
        }
    }

    /// Takes partitions the rebalance callback restored or revoked.
    /// (An associated function: a polled message still borrows the consumer.)
    fn take_handover(
        consumer: &BaseConsumer<Ctx>,
        states: &mut BTreeMap<i32, PartitionState>,
        checkpointed: &mut BTreeMap<i32, i64>,
    ) -> Result<()> {
        let mut h = consumer
            .context()
            .handover
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(e) = h.error.take() {
            return Err(Error::Internal(e));
        }
        for p in std::mem::take(&mut h.revoked) {
            states.remove(&p);
            checkpointed.remove(&p);
        }
        for st in h.arrived.drain(..) {
            checkpointed.insert(st.part(), st.next);
            states.insert(st.part(), st);
        }
        for (p, st) in states.iter() {
            h.next.insert(*p, st.next);
        }
        Ok(())
    }

    fn run(mut self) -> Result<StreamStats> {
        let mut dims = self.dims.get();
        let mut eof: BTreeSet<i32> = BTreeSet::new();
        let mut last_data = Instant::now();
        let mut last_flush = Instant::now();
        let mut last_evict = Instant::now();
        let mut last_progress = Instant::now();
        let mut last_beat = Instant::now();
        let mut retry_at: Option<Instant> = None;
        let mut backoff = Duration::from_millis(250);
        let mut progress = (0u64, 0u64, 0u64);
        Self::take_handover(&self.consumer, &mut self.states, &mut self.checkpointed)?;
        loop {
            let polled = self.consumer.poll(Duration::from_millis(20));
            let now = Instant::now();
            if now.duration_since(last_beat) >= Duration::from_millis(250) {
                self.opts.metrics.heartbeat();
                last_beat = now;
            }
            Self::take_handover(&self.consumer, &mut self.states, &mut self.checkpointed)?;
            match polled {
                Some(Ok(m)) => {
                    let p = m.partition();
                    if let Some(st) = self.states.get_mut(&p) {
                        let outcome = st.process(
                            m.offset(),
                            m.timestamp().to_millis(),
                            m.payload().unwrap_or_default(),
                            &dims,
                        );
                        let entry = self.stats.partitions.entry(p).or_default();
                        match outcome {
                            Outcome::Skipped => {}
                            Outcome::Counted => {
                                entry.0 += 1;
                                entry.1 += 1;
                                self.stats.read += 1;
                                self.stats.counted += 1;
                                self.opts.metrics.consumed.inc();
                                self.opts.metrics.counted.inc();
                                self.unacked += 1;
                            }
                            Outcome::Rejected(reason) => {
                                entry.0 += 1;
                                entry.2 += 1;
                                self.stats.read += 1;
                                self.stats.rejected += 1;
                                *self
                                    .stats
                                    .rejected_by_reason
                                    .entry(reason.to_string())
                                    .or_default() += 1;
                                self.opts.metrics.consumed.inc();
                                self.opts.metrics.rejected(reason);
                                if reason == TOO_LATE {
                                    self.opts.metrics.too_late.inc();
                                }
                                if let Some(dl) = &mut self.dead_letters {
                                    dl.forward(
                                        &self.opts.topic,
                                        p,
                                        m.offset(),
                                        m.payload().unwrap_or_default(),
                                        reason,
                                    )?;
                                }
                                self.unacked += 1;
                            }
                        }
                        eof.remove(&p);
                        last_data = now;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    eof.insert(p);
                }
                Some(Err(e)) => {
                    tracing::warn!(topic = %self.opts.topic, error = %e, "consumer error")
                }
                None => {}
            }
            let pending = self.needs_flush();
            let due = pending
                && (now.duration_since(last_flush) >= self.opts.flush_interval
                    || self.unacked >= self.opts.max_unacked_records);
            let stopping = self.opts.stop.load(Ordering::Relaxed);
            let caught_up = !self.states.is_empty()
                && self.states.keys().all(|p| eof.contains(p))
                && self
                    .opts
                    .until_idle
                    .is_some_and(|idle| now.duration_since(last_data) >= idle);
            let may_try = retry_at.is_none_or(|t| now >= t);
            if (due || ((stopping || caught_up) && pending)) && may_try {
                match self.flush() {
                    Ok(()) => {
                        last_flush = Instant::now();
                        retry_at = None;
                        backoff = Duration::from_millis(250);
                        if self.paused {
                            self.set_paused(false)?;
                        }
                        dims = self.dims.get();
                        if now.duration_since(last_evict) >= EVICT_EVERY {
                            for st in self.states.values_mut() {
                                st.evict();
                            }
                            last_evict = now;
                        }
                    }
                    Err(e @ Error::DeadLetters(_)) => return Err(e),
                    Err(e) => {
                        self.opts.metrics.flush_errors.inc();
                        tracing::warn!(error = %e, unacked = self.unacked, retry_in_ms = backoff.as_millis() as u64, "flush failed; keeping the rows and retrying");
                        retry_at = Some(Instant::now() + backoff);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        if stopping {
                            return Err(e);
                        }
                    }
                }
            }
            if !self.paused && self.unacked >= self.opts.max_unacked_records && retry_at.is_some() {
                tracing::warn!(
                    unacked = self.unacked,
                    "buffer full while ClickHouse does not acknowledge; pausing reads"
                );
                self.set_paused(true)?;
            }
            if now.duration_since(last_progress) >= PROGRESS_EVERY {
                let s = &self.stats;
                tracing::info!(
                    topic = %self.opts.topic,
                    partitions = self.states.len(),
                    read = s.read,
                    counted = s.counted,
                    rejected = s.rejected,
                    per_s = ((s.read - progress.0) as f64 / now.duration_since(last_progress).as_secs_f64()) as u64,
                    unacked = self.unacked,
                    flushes = s.flushes - progress.2,
                    "progress"
                );
                progress = (s.read, s.counted, s.flushes);
                last_progress = now;
            }
            if stopping && !self.needs_flush() {
                tracing::info!(topic = %self.opts.topic, "stop requested; everything acknowledged");
                break;
            }
            if caught_up && !self.needs_flush() {
                tracing::info!(topic = %self.opts.topic, read = self.stats.read, "caught up");
                break;
            }
        }
        Ok(self.stats)
    }

    fn needs_flush(&self) -> bool {
        !self.purchases.is_empty()
            || self
                .states
                .values()
                .any(|s| s.is_dirty() || self.checkpointed.get(&s.part()) != Some(&s.next))
    }

    fn set_paused(&mut self, paused: bool) -> Result<()> {
        let tpl = self.consumer.assignment().map_err(|source| Error::Kafka {
            topic: self.opts.topic.clone(),
            source,
        })?;
        let r = if paused {
            self.consumer.pause(&tpl)
        } else {
            self.consumer.resume(&tpl)
        };
        r.map_err(|source| Error::Kafka {
            topic: self.opts.topic.clone(),
            source,
        })?;
        self.paused = paused;
        self.opts.metrics.backpressure.set(i64::from(paused));
        if !paused {
            tracing::info!("ClickHouse acknowledges again; reading resumed");
        }
        Ok(())
    }

    /// Inserts the counted purchases, the changed windows and counters, then the checkpoints.
    fn flush(&mut self) -> Result<()> {
        let started = Instant::now();
        for st in self.states.values_mut() {
            st.take_purchases(&mut self.purchases);
        }
        let runtime = self.consumer.context().runtime.clone();
        let ch = &self.ch;
        let insert = |table: StreamTable, body: &RowBinary| -> Result<()> {
            runtime.block_on(async {
                match tokio::time::timeout(INSERT_TIMEOUT, ch.insert_stream(table, body)).await {
                    Ok(r) => r.map_err(Error::from),
                    Err(_) => Err(Error::Internal(format!(
                        "insert into {} took longer than {} s",
                        table.name(),
                        INSERT_TIMEOUT.as_secs()
                    ))),
                }
            })
        };
        insert(StreamTable::Purchases, &self.purchases)?;
        self.purchases.clear();
        let mut windows = RowBinary::new();
        let mut rejects = RowBinary::new();
        let mut checkpoints = RowBinary::new();
        for st in self.states.values() {
            st.window_rows(&mut windows);
            st.reject_rows(&mut rejects);
            st.checkpoint_row(&self.opts.pipeline, &mut checkpoints);
        }
        insert(StreamTable::Windows, &windows)?;
        insert(StreamTable::Rejects, &rejects)?;
        if let Some(dl) = &mut self.dead_letters {
            dl.acknowledge()?;
        }
        insert(StreamTable::Checkpoints, &checkpoints)?;
        let acked_ms = chrono::Utc::now().timestamp_millis();
        for st in self.states.values_mut() {
            for t in &st.counted_times {
                self.opts
                    .metrics
                    .latency_seconds
                    .observe((acked_ms - t).max(0) as f64 / 1000.0);
            }
            st.acknowledged();
            self.checkpointed.insert(st.part(), st.next);
        }
        self.unacked = 0;
        self.stats.flushes += 1;
        self.opts.metrics.acked();
        self.opts
            .metrics
            .flush_seconds
            .observe(started.elapsed().as_secs_f64());
        tracing::debug!(
            windows = windows.rows(),
            rejects = rejects.rows(),
            ms = started.elapsed().as_millis() as u64,
            "flushed"
        );
        Ok(())
    }
}
