//! The loader's consumer loop: reads the purchases topic, folds each record into its
//! partition's state, and flushes the changed rows and then the checkpoint to ClickHouse.
//!
//! What is durable when:
//! 1. A flush inserts the counted purchases, the changed windows (full state and version),
//!    the changed reject counters and the flagged records (late purchases, counted as
//!    correction rows of their closed windows, and future-stamped ones; the four at once), and
//!    only after all four are acknowledged the checkpoint (next offset, watermark, clock) of each partition. One flush
//!    is in flight at a time, on the runtime, while the loop goes on reading: records read
//!    meanwhile change windows that the next flush writes.
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
//! ClickHouse down: a failed flush keeps every row (its purchases are sent again, its windows
//! and counters are marked changed so the next flush writes their current state; tried again
//! with backoff up to 10 s); reading goes on until
//! `max_unacked_records` records wait for acknowledgement, then the assigned partitions are
//! paused until a flush succeeds. ClickHouse slower than the topic: at that bound, with a
//! flush on its way, the loop waits for the flush instead of reading. A broker restart is
//! librdkafka's reconnect.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lakeshop_clickhouse::stream::Checkpoint;
use lakeshop_clickhouse::{ClickHouse, RowBinary, StreamTable};
use lakeshop_sources::kafka::{ConsumerOptions, KafkaConsumer, Polled, Record, Resume, Resumed};
use lakeshop_stage::Stage;
use rdkafka::ClientConfig;

use crate::dead_letters::DeadLetters;
use crate::dims::{Dims, DimsCache};
use crate::metrics::StreamMetrics;
use crate::state::{CountedArrival, Lookup, LookupFailed, Outcome, PartitionState, Settings};
use crate::{Error, Result};

/// Records taken from the consumer in one run before the loop looks at its flush, clocks
/// and progress.
const BATCH: usize = 256;
/// Longest wait between two tries of a failed flush.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Longest a single insert may take before the flush counts as failed.
const INSERT_TIMEOUT: Duration = Duration::from_secs(15);
/// How often closed windows and old ids are swept from memory.
const EVICT_EVERY: Duration = Duration::from_secs(2);
/// How often progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// What one loader reads and how it flushes.
#[derive(Clone)]
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
    /// How long past its end a window still takes records (measured on the watermark);
    /// later purchases are counted as corrections of their closed windows.
    pub allowed_lateness: Duration,
    /// How far ahead of its Kafka timestamp an event may be stamped and still move the
    /// watermark to its own time.
    pub max_clock_skew: Duration,
    /// Event time within which a re-sent purchase id is a duplicate of the one counted.
    pub dedup_horizon: Duration,
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
    /// Purchases counted in windows (late and future-stamped ones included).
    pub counted: u64,
    /// Of the counted: purchases later than the lateness, counted as corrections of their
    /// closed windows.
    pub late: u64,
    /// Of the counted: purchases stamped further ahead of their Kafka time than the allowed
    /// clock skew.
    pub future: u64,
    /// Records not counted (any reason).
    pub rejected: u64,
    /// Rejected records by reason.
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// Exact look-ups of purchase ids in ClickHouse (the id filter said "maybe", or the
    /// purchase is older than the filter).
    pub lookups: u64,
    /// Acknowledged flushes.
    pub flushes: u64,
    /// Most records awaiting acknowledgement by ClickHouse at once (bounded by
    /// `max_unacked_records`, and a run of records past it).
    pub peak_unacked: u64,
    /// Per partition: (read, counted, rejected).
    pub partitions: BTreeMap<i32, (u64, u64, u64)>,
    /// CPU milliseconds (user + system) of the process when the first record was read:
    /// start-up (dimension cache, ClickHouse checks, restoring partitions); `None` when no
    /// record was read or the platform has no `/proc`.
    pub cpu_ms_before_first_record: Option<u64>,
    /// CPU milliseconds of the process when the run ended.
    pub cpu_ms: Option<u64>,
}

/// CPU milliseconds this process has used so far.
fn cpu_ms() -> Option<u64> {
    lakeshop_service::process::usage().map(|u| (u.cpu_seconds * 1000.0).round() as u64)
}

impl std::fmt::Debug for StreamOptions {
    // The client properties may hold credentials: they are not shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamOptions")
            .field("topic", &self.topic)
            .field("pipeline", &self.pipeline)
            .field("group_id", &self.group_id)
            .field("group", &self.group)
            .field("timezone", &self.timezone)
            .field("allowed_lateness", &self.allowed_lateness)
            .field("max_clock_skew", &self.max_clock_skew)
            .field("dedup_horizon", &self.dedup_horizon)
            .field("flush_interval", &self.flush_interval)
            .field("max_unacked_records", &self.max_unacked_records)
            .field("until_idle", &self.until_idle)
            .field("dead_letters", &self.dead_letters)
            .finish_non_exhaustive()
    }
}

/// The loader's positions: each partition's checkpoint in ClickHouse, restored with the
/// state it covers.
struct Checkpoints {
    topic: String,
    settings: Settings,
    pipeline: String,
    ch: ClickHouse,
    dims: DimsCache,
    runtime: tokio::runtime::Handle,
}

impl Resume for Checkpoints {
    type State = PartitionState;
    const FROM: &'static str = "the checkpoints";

    fn resume(
        &self,
        partitions: &[i32],
    ) -> std::result::Result<Vec<Resumed<PartitionState>>, String> {
        let states = self
            .runtime
            .block_on(self.restore(partitions))
            .map_err(|e| e.to_string())?;
        Ok(states
            .into_iter()
            .map(|st| {
                let (windows, ids) = st.sizes();
                let (filter_ids, filter_bytes) = st.filter_size();
                tracing::info!(topic = %self.topic, partition = st.part(), next = st.next, watermark = st.watermark, windows, ids, filter_ids, filter_bytes, "partition restored");
                Resumed {
                    partition: st.part(),
                    next: (st.next > 0).then_some(st.next),
                    state: st,
                }
            })
            .collect())
    }
}

impl Checkpoints {
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
            let Some(c) = checkpoints.get(&p) else {
                out.push(PartitionState::resuming(p, self.settings.clone(), 0, 0, 0));
                continue;
            };
            let mut st = PartitionState::resuming(
                p,
                self.settings.clone(),
                c.next_offset,
                c.watermark,
                c.clock,
            );
            // Rows are folded in as they arrive: the state is never held twice. A minute
            // that ended longer than the lateness before the watermark is closed.
            let windows_since = c.watermark - lateness - 60;
            self.ch
                .stream_windows(&self.topic, p, windows_since, |w| {
                    st.restore_window(w, &dims)
                })
                .await?;
            for r in self
                .ch
                .stream_rejects(&self.topic, p, c.clock.div_euclid(60) * 60)
                .await?
            {
                st.restore_reject(r);
            }
            self.ch
                .stream_counted(
                    &self.topic,
                    p,
                    c.watermark - lateness,
                    c.next_offset,
                    |counted| st.restore_counted(counted, &dims),
                )
                .await?;
            // The id filter: every id counted within the horizon (and a day more).
            let ids_since = self.settings.ids_since(c.watermark);
            st.restore_ids_from(ids_since);
            self.ch
                .stream_counted_ids(&self.topic, p, ids_since, |id, ts| {
                    if let Ok(id) = uuid::Uuid::parse_str(id) {
                        st.restore_id(id.as_u128(), ts);
                    }
                })
                .await?;
            st.restored();
            out.push(st);
        }
        Ok(out)
    }
}

/// Runs the loader until stopped (or, with `until_idle`, until it caught up).
pub async fn run(stage: &Stage, ch: &ClickHouse, opts: &StreamOptions) -> Result<StreamStats> {
    ch.require_stream_tables().await?;
    // The stream rows are keyed by topic and partition: a second pipeline over the same
    // topic in one database would write over the first one's windows.
    let others = ch
        .stream_other_pipelines(&opts.pipeline, &opts.topic)
        .await?;
    if !others.is_empty() {
        return Err(Error::Config(format!(
            "topic {} already has stream rows of pipeline {} in this ClickHouse database; \
             one database holds one pipeline's stream of a topic (use another database, or \
             the same pipeline name)",
            opts.topic,
            others.join(", ")
        )));
    }
    let dims = DimsCache::load(stage).await?;
    let (products, sellers) = dims.get().sizes();
    tracing::info!(products, sellers, "dimension cache loaded");
    let refresher = dims.refresh_task(stage.clone(), opts.dims_refresh);
    let checkpoints = Checkpoints {
        topic: opts.topic.clone(),
        settings: Settings {
            topic: Arc::from(opts.topic.as_str()),
            timezone: opts.timezone,
            lateness: opts.allowed_lateness.as_secs() as i64,
            max_clock_skew: opts.max_clock_skew.as_secs() as i64,
            dedup_horizon: opts.dedup_horizon.as_secs() as i64,
        },
        pipeline: opts.pipeline.clone(),
        ch: ch.clone(),
        dims: dims.clone(),
        runtime: tokio::runtime::Handle::current(),
    };
    let metrics = opts.metrics.clone();
    let options = ConsumerOptions {
        client: opts.client.clone(),
        topic: opts.topic.clone(),
        group_id: opts.group_id.clone(),
        group: opts.group,
        // Latency: a fetch returns as soon as it has data and waits at most this long.
        fetch_wait: Some(Duration::from_millis(20)),
        stop: opts.stop.clone(),
        lag: Arc::new(move |p, lag| metrics.set_lag(p, lag)),
    };
    let dead_letters = match &opts.dead_letters {
        Some(topic) => Some(DeadLetters::new(&opts.client, topic)?),
        None => None,
    };
    let opts2 = opts.clone();
    let ch = ch.clone();
    let runtime = tokio::runtime::Handle::current();
    // librdkafka's poll blocks: the loop runs on a blocking thread and reaches ClickHouse
    // through the runtime handle.
    let result = tokio::task::spawn_blocking(move || {
        let consumer = KafkaConsumer::start(&options, checkpoints)?;
        Loop::new(runtime, ch, opts2, dims, dead_letters).run(consumer)
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))?;
    refresher.abort();
    result
}

struct Loop {
    runtime: tokio::runtime::Handle,
    ch: ClickHouse,
    opts: StreamOptions,
    dims: DimsCache,
    states: BTreeMap<i32, PartitionState>,
    /// Each assigned partition's assignment number: a flush ending after its partition was
    /// revoked (and maybe assigned again) changes nothing of the new assignment.
    epochs: BTreeMap<i32, u64>,
    next_epoch: u64,
    /// Next offset each partition's last acknowledged checkpoint holds.
    checkpointed: BTreeMap<i32, i64>,
    /// Counted-purchase rows of a failed flush, sent again with the next one.
    purchases: RowBinary,
    /// Flagged-record rows of a failed flush, sent again with the next one.
    flagged: RowBinary,
    /// Event times (ms) of the purchases of a failed flush (latency metric).
    counted_times: Vec<i64>,
    /// Records processed since the last acknowledged flush.
    unacked: usize,
    /// The flush in flight.
    flight: Option<Flight>,
    stats: StreamStats,
    /// Records consumed and counted not yet added to the metrics (added once per run of
    /// records, not per record).
    unpublished: (u64, u64),
    dead_letters: Option<DeadLetters>,
}

/// The exact look-up behind the id filter: ClickHouse, asked again with backoff while it
/// does not answer (the loop waits: no record after this one is decided before it is). A
/// stop requested meanwhile ends the run before the record; nothing after it is
/// checkpointed.
struct ClickHouseLookup<'a> {
    runtime: &'a tokio::runtime::Handle,
    ch: &'a ClickHouse,
    topic: &'a str,
    stop: &'a AtomicBool,
    metrics: &'a StreamMetrics,
}

impl Lookup for ClickHouseLookup<'_> {
    fn first_counted(
        &mut self,
        part: i32,
        id: u128,
        since: i64,
        through: i64,
    ) -> std::result::Result<Option<CountedArrival>, LookupFailed> {
        self.metrics.dedup_lookups.inc();
        let id = uuid::Uuid::from_u128(id);
        let text = id.hyphenated().to_string();
        let mut backoff = Duration::from_millis(250);
        loop {
            let asked = self.runtime.block_on(tokio::time::timeout(
                INSERT_TIMEOUT,
                self.ch
                    .stream_first_counted(self.topic, part, &text, since, through),
            ));
            let message = match asked {
                Ok(Ok(found)) => {
                    return Ok(found.map(|(offset, content_hash)| CountedArrival {
                        offset,
                        content_hash,
                    }))
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {INSERT_TIMEOUT:?}"),
            };
            if self.stop.load(Ordering::Relaxed) {
                return Err(LookupFailed { id, message });
            }
            tracing::warn!(partition = part, error = %message, retry_in_ms = backoff.as_millis() as u64, "purchase id look-up failed; retrying");
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// A flush sent to ClickHouse and not yet answered.
struct Flight {
    task: tokio::task::JoinHandle<Result<()>>,
    started: Instant,
    /// (partition, assignment, next offset its checkpoint holds).
    covers: Vec<(i32, u64, i64)>,
    /// Records processed before the flush began.
    records: usize,
    /// The counted-purchase rows it sends (shared with the task; sent again if it fails).
    purchases: Arc<RowBinary>,
    /// The flagged-record rows it sends (sent again if it fails).
    flagged: Arc<RowBinary>,
    counted_times: Vec<i64>,
    windows: usize,
    rejects: usize,
}

impl Loop {
    fn new(
        runtime: tokio::runtime::Handle,
        ch: ClickHouse,
        opts: StreamOptions,
        dims: DimsCache,
        dead_letters: Option<DeadLetters>,
    ) -> Self {
        Self {
            dead_letters,
            runtime,
            ch,
            opts,
            dims,
            states: BTreeMap::new(),
            epochs: BTreeMap::new(),
            next_epoch: 0,
            checkpointed: BTreeMap::new(),
            purchases: RowBinary::new(),
            flagged: RowBinary::new(),
            counted_times: Vec::new(),
            unacked: 0,
            flight: None,
            stats: StreamStats::default(),
            unpublished: (0, 0),
        }
    }

    fn run(mut self, mut consumer: KafkaConsumer<Checkpoints>) -> Result<StreamStats> {
        let mut dims = self.dims.get();
        // When the last flush began: flushes begin every flush interval (a flush in flight
        // delays the next), not an interval after the previous one ended.
        let mut last_flush = Instant::now();
        let mut last_evict = Instant::now();
        let mut last_progress = Instant::now();
        let mut last_beat = Instant::now();
        let mut retry_at: Option<Instant> = None;
        let mut backoff = Duration::from_millis(250);
        let mut progress = (0u64, 0u64, 0u64);
        loop {
            // Backpressure while ClickHouse acknowledges, but more slowly than records
            // arrive: with the buffer full and a flush on its way, the loop waits for the
            // flush instead of reading (librdkafka's fetch queue fills and fetching stops;
            // the consumer is not paused, so no fetch position is reset). While flushes fail
            // the partitions are paused instead (below): no flush is then on its way.
            let full = self.unacked >= self.opts.max_unacked_records;
            if full && self.flight.is_some() {
                self.await_flight(Duration::from_millis(20));
            } else {
                self.take_records(&mut consumer, &dims)?;
            }
            self.stats.peak_unacked = self.stats.peak_unacked.max(self.unacked as u64);
            let (consumed, counted) = std::mem::take(&mut self.unpublished);
            if consumed > 0 {
                self.opts.metrics.consumed.inc_by(consumed);
                self.opts.metrics.counted.inc_by(counted);
            }
            let now = Instant::now();
            if now.duration_since(last_beat) >= Duration::from_millis(250) {
                self.opts.metrics.heartbeat();
                last_beat = now;
            }
            if self.flight.as_ref().is_some_and(|f| f.task.is_finished()) {
                match self.land() {
                    Ok(()) => {
                        retry_at = None;
                        backoff = Duration::from_millis(250);
                        if consumer.is_paused() {
                            self.set_paused(&mut consumer, false)?;
                        }
                        dims = self.dims.get();
                        if now.duration_since(last_evict) >= EVICT_EVERY {
                            for st in self.states.values_mut() {
                                st.evict();
                            }
                            last_evict = now;
                        }
                    }
                    Err(e) => {
                        self.opts.metrics.flush_errors.inc();
                        tracing::warn!(error = %e, unacked = self.unacked, retry_in_ms = backoff.as_millis() as u64, "flush failed; keeping the rows and retrying");
                        retry_at = Some(Instant::now() + backoff);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        if self.opts.stop.load(Ordering::Relaxed) {
                            return Err(e);
                        }
                    }
                }
            }
            let pending = self.needs_flush();
            let due = pending
                && (now.duration_since(last_flush) >= self.opts.flush_interval
                    || self.unacked >= self.opts.max_unacked_records);
            let stopping = self.opts.stop.load(Ordering::Relaxed);
            let caught_up = self
                .opts
                .until_idle
                .is_some_and(|idle| consumer.caught_up(idle));
            let may_try = retry_at.is_none_or(|t| now >= t) && self.flight.is_none();
            if (due || ((stopping || caught_up) && pending)) && may_try {
                self.take_off()?;
                last_flush = now;
            }
            if !consumer.is_paused()
                && self.unacked >= self.opts.max_unacked_records
                && retry_at.is_some()
            {
                tracing::warn!(
                    unacked = self.unacked,
                    "buffer full while ClickHouse does not acknowledge; pausing reads"
                );
                self.set_paused(&mut consumer, true)?;
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
            let settled = self.flight.is_none() && !self.needs_flush();
            if stopping && settled {
                tracing::info!(topic = %self.opts.topic, "stop requested; everything acknowledged");
                break;
            }
            if caught_up && settled {
                tracing::info!(topic = %self.opts.topic, read = self.stats.read, "caught up");
                break;
            }
        }
        self.stats.cpu_ms = cpu_ms();
        Ok(self.stats)
    }

    /// Polls the consumer and processes the records already fetched, in a run (up to
    /// [`BATCH`], and not past the buffer's bound): the loop's clock reads and checks are
    /// paid per run, not per record. Assignments and revocations arrive here too.
    fn take_records(
        &mut self,
        consumer: &mut KafkaConsumer<Checkpoints>,
        dims: &Dims,
    ) -> Result<()> {
        // While a flush is in flight the poll returns soon, to see it end.
        let wait = if self.flight.is_some() { 2 } else { 20 };
        let mut polled = consumer.poll(Duration::from_millis(wait))?;
        let mut taken = 0;
        loop {
            let Polled {
                revoked,
                assigned,
                record,
            } = polled;
            // A revoked partition's unflushed state is dropped: its next owner replays
            // it from the checkpoint.
            for p in revoked {
                self.states.remove(&p);
                self.epochs.remove(&p);
                self.checkpointed.remove(&p);
            }
            for r in assigned {
                self.next_epoch += 1;
                self.epochs.insert(r.partition, self.next_epoch);
                self.checkpointed.insert(r.partition, r.state.next);
                self.states.insert(r.partition, r.state);
            }
            let Some(m) = record else { break };
            if self.stats.read == 0 && self.stats.cpu_ms_before_first_record.is_none() {
                self.stats.cpu_ms_before_first_record = cpu_ms();
            }
            self.process(&m, dims)?;
            taken += 1;
            if taken >= BATCH || self.unacked >= self.opts.max_unacked_records {
                break;
            }
            polled = consumer.poll(Duration::ZERO)?;
        }
        Ok(())
    }

    /// Waits up to `most` for the flush in flight to end (it is landed by the loop).
    fn await_flight(&self, most: Duration) {
        let until = Instant::now() + most;
        while self.flight.as_ref().is_some_and(|f| !f.task.is_finished()) && Instant::now() < until
        {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Folds one record into its partition's state and counts what became of it.
    fn process(&mut self, m: &Record<'_>, dims: &Dims) -> Result<()> {
        let p = m.partition();
        let Some(st) = self.states.get_mut(&p) else {
            return Ok(());
        };
        let mut lookup = ClickHouseLookup {
            runtime: &self.runtime,
            ch: &self.ch,
            topic: &self.opts.topic,
            stop: &self.opts.stop,
            metrics: &self.opts.metrics,
        };
        let asked = st.lookups();
        let outcome = st
            .process(m.offset(), m.timestamp_ms(), m.payload(), dims, &mut lookup)
            .map_err(|e| Error::Internal(e.to_string()))?;
        self.stats.lookups += st.lookups() - asked;
        let entry = self.stats.partitions.entry(p).or_default();
        match outcome {
            Outcome::Skipped => {}
            Outcome::Counted | Outcome::Future | Outcome::Late => {
                match outcome {
                    Outcome::Future => {
                        self.stats.future += 1;
                        self.opts.metrics.future_events.inc();
                    }
                    Outcome::Late => {
                        self.stats.late += 1;
                        self.opts.metrics.too_late.inc();
                    }
                    _ => {}
                }
                entry.0 += 1;
                entry.1 += 1;
                self.stats.read += 1;
                self.stats.counted += 1;
                self.unpublished.0 += 1;
                self.unpublished.1 += 1;
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
                self.unpublished.0 += 1;
                self.opts.metrics.rejected(reason);
                if let Some(dl) = &mut self.dead_letters {
                    dl.forward(&self.opts.topic, p, m.offset(), m.payload(), reason)?;
                }
                self.unacked += 1;
            }
        }
        Ok(())
    }

    fn needs_flush(&self) -> bool {
        !self.purchases.is_empty()
            || !self.flagged.is_empty()
            || self
                .states
                .values()
                .any(|s| s.is_dirty() || self.checkpointed.get(&s.part()) != Some(&s.next))
    }

    fn set_paused(
        &mut self,
        consumer: &mut KafkaConsumer<Checkpoints>,
        paused: bool,
    ) -> Result<()> {
        consumer.set_paused(paused)?;
        self.opts.metrics.backpressure.set(i64::from(paused));
        if !paused {
            tracing::info!("ClickHouse acknowledges again; reading resumed");
        }
        Ok(())
    }

    /// Starts a flush: encodes the counted purchases, the changed windows and counters and the
    /// checkpoints, and sends them on the runtime (purchases, windows and counters at once,
    /// then the checkpoints once all three are acknowledged).
    fn take_off(&mut self) -> Result<()> {
        // Dead letters are acknowledged before a checkpoint that covers them is sent.
        if let Some(dl) = &mut self.dead_letters {
            dl.acknowledge()?;
        }
        let mut purchases = std::mem::take(&mut self.purchases);
        let mut flagged = std::mem::take(&mut self.flagged);
        let mut counted_times = std::mem::take(&mut self.counted_times);
        let mut windows = RowBinary::new();
        let mut rejects = RowBinary::new();
        let mut checkpoints = RowBinary::new();
        let mut covers = Vec::with_capacity(self.states.len());
        purchases.reserve(self.states.values().map(|s| s.purchases_len()).sum());
        for (p, st) in self.states.iter_mut() {
            st.take_purchases(&mut purchases);
            st.take_flagged(&mut flagged);
            st.window_rows(&mut windows);
            st.reject_rows(&mut rejects);
            st.checkpoint_row(&self.opts.pipeline, &mut checkpoints);
            counted_times.extend(st.begin_flush());
            let epoch = self.epochs.get(p).copied().unwrap_or_default();
            covers.push((*p, epoch, st.next));
        }
        let ch = self.ch.clone();
        let purchases = Arc::new(purchases);
        let body = purchases.clone();
        let flagged = Arc::new(flagged);
        let flagged_body = flagged.clone();
        let (window_rows, reject_rows) = (windows.rows(), rejects.rows());
        let task = self.runtime.spawn(async move {
            let (a, b, c, d) = tokio::join!(
                insert(&ch, StreamTable::Purchases, body),
                insert(&ch, StreamTable::Minutes, Arc::new(windows)),
                insert(&ch, StreamTable::Rejects, Arc::new(rejects)),
                insert(&ch, StreamTable::Flagged, flagged_body),
            );
            a.and(b).and(c).and(d)?;
            insert(&ch, StreamTable::Checkpoints, Arc::new(checkpoints)).await
        });
        self.flight = Some(Flight {
            task,
            started: Instant::now(),
            covers,
            records: self.unacked,
            purchases,
            flagged,
            counted_times,
            windows: window_rows,
            rejects: reject_rows,
        });
        Ok(())
    }

    /// Ends the flush in flight (it has finished): on success its checkpoints hold, on
    /// failure its rows are sent again with the next flush.
    fn land(&mut self) -> Result<()> {
        let Some(flight) = self.flight.take() else {
            return Ok(());
        };
        let result = self
            .runtime
            .block_on(flight.task)
            .map_err(|e| Error::Internal(e.to_string()))
            .and_then(|r| r);
        if let Err(e) = result {
            for (p, epoch, _) in &flight.covers {
                if self.epochs.get(p) == Some(epoch) {
                    if let Some(st) = self.states.get_mut(p) {
                        st.flush_failed();
                    }
                }
            }
            // The task has ended: the rows are this loop's alone again (no copy).
            self.purchases = Arc::try_unwrap(flight.purchases).unwrap_or_else(|a| (*a).clone());
            self.flagged = Arc::try_unwrap(flight.flagged).unwrap_or_else(|a| (*a).clone());
            self.counted_times = flight.counted_times;
            return Err(e);
        }
        let acked_ms = chrono::Utc::now().timestamp_millis();
        let mut latencies = self.opts.metrics.latency_seconds.batch();
        for t in &flight.counted_times {
            latencies.observe((acked_ms - t).max(0) as f64 / 1000.0);
        }
        self.opts.metrics.latency_seconds.add(latencies);
        for (p, epoch, next) in &flight.covers {
            if self.epochs.get(p) == Some(epoch) {
                if let Some(st) = self.states.get_mut(p) {
                    st.flush_succeeded();
                }
                self.checkpointed.insert(*p, *next);
            }
        }
        self.unacked = self.unacked.saturating_sub(flight.records);
        self.stats.flushes += 1;
        self.opts.metrics.acked();
        let elapsed = flight.started.elapsed();
        self.opts
            .metrics
            .flush_seconds
            .observe(elapsed.as_secs_f64());
        tracing::debug!(
            windows = flight.windows,
            rejects = flight.rejects,
            ms = elapsed.as_millis() as u64,
            "flushed"
        );
        Ok(())
    }
}

/// Inserts one body, failing when ClickHouse takes longer than [`INSERT_TIMEOUT`].
async fn insert(ch: &ClickHouse, table: StreamTable, body: Arc<RowBinary>) -> Result<()> {
    match tokio::time::timeout(INSERT_TIMEOUT, ch.insert_stream(table, body)).await {
        Ok(r) => r.map_err(Error::from),
        Err(_) => Err(Error::Internal(format!(
            "insert into {} took longer than {} s",
            table.name(),
            INSERT_TIMEOUT.as_secs()
        ))),
    }
}
