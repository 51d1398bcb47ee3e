//! Kafka → stage, exactly once: data and offsets in one Delta commit.
//!
//! On every assignment the extractor reads each partition's committed offset from the
//! stage table (`txn` app id `kafka:<topic>:<partition>`) and starts there; the consumer
//! group's own offsets are never trusted. Invalid records go to `stage.dead_letters` with
//! their raw bytes, position and reason; those commits carry their own `txn` so a restart
//! never writes a dead letter twice. "Caught up" is decided from fetched data (partition
//! EOF) plus an idle timeout, never from ListOffsets.

mod metrics;
mod rows;

use chrono::Utc;
use lakeshop_stage::{OffsetCommit, Stage, Table};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use metrics::ExtractMetrics;
pub use rows::{DeadLetterRows, EventKind, EventRows, Position};

use crate::{Error, Result};

/// What one extractor run consumes and how it flushes.
#[derive(Debug, Clone)]
pub struct KafkaSourceConfig {
    /// Brokers and pass-through librdkafka properties.
    pub client: ClientConfig,
    pub topic: String,
    /// Consumer group id.
    pub group_id: String,
    /// Share the partitions with the group's other extractors (subscribe); otherwise read
    /// every partition (assign), which needs no group coordination after a crash.
    pub group: bool,
    pub kind: EventKind,
    /// Commit at least this often while data flows.
    pub flush_interval: Duration,
    /// Commit when this many rows are buffered.
    pub flush_max_rows: usize,
    /// `--until-end`: stop once every assigned partition reached its end and nothing
    /// arrived for this long. `None` follows forever.
    pub until_end_idle: Option<Duration>,
    /// Business time zone of the `event_date` partitions.
    pub timezone: chrono_tz::Tz,
    /// Set it to stop: the extractor commits what it buffered and returns (SIGTERM drain).
    pub stop: Arc<AtomicBool>,
    /// Counters and gauges for `/metrics`.
    pub metrics: ExtractMetrics,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtractStats {
    /// Records read from Kafka (each offset once).
    pub read: u64,
    /// Rows written to the event table.
    pub staged: u64,
    /// Rows written to `dead_letters`.
    pub dead_lettered: u64,
    /// Delta commits of the event table.
    pub commits: u64,
}

/// Records read between two reads of the clocks while records stream.
const CLOCK_EVERY_RECORDS: u32 = 16;

/// How far before its committed offset a partition is re-read on assignment (then skipped).
const RESUME_REWIND: i64 = 10_000;

/// Last committed offset per partition (`None`: never committed).
type LastOffsets = BTreeMap<i32, Option<i64>>;

#[derive(Debug, Default)]
struct Assignment {
    /// Next offset to read per assigned partition.
    next: BTreeMap<i32, i64>,
    /// Last offset committed in the event table per partition (`None`: never).
    committed: BTreeMap<i32, Option<i64>>,
    /// Last offset committed in `dead_letters` per partition.
    dl_committed: BTreeMap<i32, Option<i64>>,
    /// Partitions revoked since the main loop last looked.
    revoked: BTreeSet<i32>,
    error: Option<String>,
}

struct Ctx {
    metrics: ExtractMetrics,
    stage: Stage,
    table: Table,
    topic: String,
    runtime: tokio::runtime::Handle,
    state: Mutex<Assignment>,
}

impl ClientContext for Ctx {
    /// librdkafka statistics (every second): the high watermark each partition's last fetch
    /// response carried (never ListOffsets), minus the next offset to read, is the lag.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for (p, part) in &topic.partitions {
            if let (Some(next), true) = (state.next.get(p), part.hi_offset >= 0) {
                self.metrics.set_lag(*p, (part.hi_offset - next).max(0));
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Reaching the end of a partition is how "caught up" is decided, not an error.
        if matches!(
            error,
            KafkaError::PartitionEOF(_)
                | KafkaError::Global(rdkafka::error::RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::debug!(topic = %self.topic, reason, "end of partition");
        } else {
            tracing::error!(topic = %self.topic, error = %error, reason, "kafka client error");
        }
    }
}

impl Ctx {
    /// Reads the committed offsets of `partitions` from both tables.
    fn load(&self, partitions: &[i32]) -> Result<(LastOffsets, LastOffsets)> {
        self.runtime.block_on(async {
            let events = self.stage.open(self.table).await?;
            let dls = self.stage.open(Table::DeadLetters).await?;
            let e = self.stage.offsets(&events, &self.topic, partitions).await?;
            let d = self.stage.offsets(&dls, &self.topic, partitions).await?;
            let last = |m: &lakeshop_stage::Offsets, p: &i32| m.get(p).map(|next| next - 1);
            Ok((
                partitions.iter().map(|p| (*p, last(&e, p))).collect(),
                partitions.iter().map(|p| (*p, last(&d, p))).collect(),
            ))
        })
    }
}

impl Ctx {
    /// Positions `tpl`'s partitions at the stage's committed offsets and assigns them.
    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let partitions: Vec<i32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        match self.load(&partitions) {
            Ok((committed, dl)) => {
                for p in &partitions {
                    // Start a little before the committed offset and skip what is already
                    // staged (`next`): a broker may answer a fetch from the middle of a
                    // record batch with the batch after it (the local tansu does), which
                    // would silently skip the rest of that batch.
                    let offset = match committed[p] {
                        Some(last) => Offset::Offset((last + 1 - RESUME_REWIND).max(0)),
                        None => Offset::Beginning,
                    };
                    let _ = tpl.set_partition_offset(&self.topic, *p, offset);
                    if let Some(last) = committed[p] {
                        state.next.insert(*p, last + 1);
                    }
                    state.revoked.remove(p);
                }
                state.committed.extend(committed);
                state.dl_committed.extend(dl);
                tracing::info!(topic = %self.topic, partitions = ?partitions, "assigned; starting at the stage's offsets");
                if let Err(e) = consumer.assign(tpl) {
                    state.error = Some(format!("assign: {e}"));
                }
            }
            Err(e) => {
                state.error = Some(format!("reading offsets from the stage: {e}"));
            }
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
            other => self.revoke(consumer, other, tpl),
        }
    }
}

impl Ctx {
    fn revoke(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &TopicPartitionList) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                for e in tpl.elements_for_topic(&self.topic) {
                    let p = e.partition();
                    state.next.remove(&p);
                    state.committed.remove(&p);
                    state.dl_committed.remove(&p);
                    state.revoked.insert(p);
                }
                let _ = consumer.unassign();
            }
            other => state.error = Some(format!("rebalance failed: {other:?}")),
        }
    }
}

/// Buffered, not yet committed data.
struct Buffer {
    events: EventRows,
    dead: DeadLetterRows,
    /// Last offset buffered per partition (events or dead letters).
    last: BTreeMap<i32, i64>,
    /// Last offset whose dead letter is buffered, per partition.
    dl_last: BTreeMap<i32, i64>,
    since: Instant,
}

impl Buffer {
    fn rows(&self) -> usize {
        self.events.len() + self.dead.len()
    }
}

/// Runs the extractor until the end (`until_end_idle`) or forever.
pub async fn extract(stage: &Stage, config: &KafkaSourceConfig) -> Result<ExtractStats> {
    let table = match config.kind {
        EventKind::Purchases => Table::Purchases,
        EventKind::Interactions => Table::Interactions,
    };
    let ctx = Ctx {
        metrics: config.metrics.clone(),
        stage: stage.clone(),
        table,
        topic: config.topic.clone(),
        runtime: tokio::runtime::Handle::current(),
        state: Mutex::new(Assignment::default()),
    };
    let mut client = config.client.clone();
    client
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .set("statistics.interval.ms", "1000")
        .set("fetch.message.max.bytes", "8388608");
    let kafka_err = |source| Error::Kafka {
        topic: config.topic.clone(),
        source,
    };
    let consumer: BaseConsumer<Ctx> = client.create_with_context(ctx).map_err(kafka_err)?;
    if config.group {
        consumer.subscribe(&[&config.topic]).map_err(kafka_err)?;
    } else {
        // Every partition, positioned from the stage: no group coordination to wait for.
        let md = consumer
            .fetch_metadata(Some(&config.topic), Duration::from_secs(30))
            .map_err(kafka_err)?;
        let mut tpl = TopicPartitionList::new();
        for t in md.topics() {
            if let Some(e) = t.error() {
                return Err(Error::Kafka {
                    topic: config.topic.clone(),
                    source: KafkaError::MetadataFetch(e.into()),
                });
            }
            for p in t.partitions() {
                tpl.add_partition(&config.topic, p.id());
            }
        }
        let ctx = consumer.context();
        tokio::task::block_in_place(|| ctx.assign(&consumer, &mut tpl));
    }
    let config = config.clone();
    let stage = stage.clone();
    // librdkafka's poll blocks: the loop runs on a blocking thread and reaches Delta
    // through the runtime handle.
    tokio::task::spawn_blocking(move || run(consumer, &stage, table, &config))
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
}

fn run(
    consumer: BaseConsumer<Ctx>,
    stage: &Stage,
    table: Table,
    config: &KafkaSourceConfig,
) -> Result<ExtractStats> {
    let runtime = consumer.context().runtime.clone();
    let mut handle = runtime.block_on(stage.open(table))?;
    let mut dl_handle = runtime.block_on(stage.open(Table::DeadLetters))?;
    let mut stats = ExtractStats::default();
    let mut buf = Buffer {
        events: EventRows::new(config.kind, config.timezone),
        dead: DeadLetterRows::new(config.timezone),
        last: BTreeMap::new(),
        dl_last: BTreeMap::new(),
        since: Instant::now(),
    };
    let mut eof: BTreeSet<i32> = BTreeSet::new();
    let mut last_data = Instant::now();
    let mut now = Utc::now();
    let mut tick = Instant::now();
    let mut records_since_clock: u32 = 0;
    loop {
        let polled = consumer.poll(Duration::from_millis(100));
        // The clocks are read on every turn that brought no record, and every few records
        // while records stream (a turn is one record then): `ingested_at` and the flush and
        // idle deadlines need milliseconds, not a clock read per record.
        let record = matches!(polled, Some(Ok(_)));
        records_since_clock = if record { records_since_clock + 1 } else { 0 };
        if !record || records_since_clock >= CLOCK_EVERY_RECORDS {
            records_since_clock = 0;
            now = Utc::now();
            tick = Instant::now();
            config.metrics.heartbeat(now);
        }
        let mut staged_one = false;
        {
            let mut state = consumer
                .context()
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(e) = state.error.take() {
                return Err(Error::Internal(e));
            }
            let mut needs_resync = false;
            if !state.revoked.is_empty() {
                // Buffered rows of revoked partitions belong to their next owner now.
                let revoked = std::mem::take(&mut state.revoked);
                if revoked.iter().any(|p| buf.last.contains_key(p)) {
                    tracing::warn!(
                        ?revoked,
                        "partitions revoked with unflushed rows; dropping the buffer"
                    );
                    // The buffer mixes partitions: drop all of it and re-read the
                    // partitions still assigned from the stage's offsets.
                    needs_resync = true;
                }
                eof.retain(|p| !revoked.contains(p));
            }
            if needs_resync {
                drop(state);
                resync(&consumer, &mut buf, config)?;
                continue;
            }
            match polled {
                Some(Ok(m)) => {
                    let p = m.partition();
                    let offset = m.offset();
                    let assigned = state.committed.contains_key(&p);
                    let seen = state.next.get(&p).is_some_and(|next| offset < *next);
                    if assigned && !seen {
                        eof.remove(&p);
                        state.next.insert(p, offset + 1);
                        stats.read += 1;
                        config.metrics.consumed.inc();
                        let pos = Position {
                            topic: &config.topic,
                            partition: p,
                            offset,
                        };
                        let payload = m.payload().unwrap_or_default();
                        if let Err(why) = buf.events.push(payload, pos, now) {
                            let dl_done = state.dl_committed.get(&p).copied().flatten();
                            if dl_done.is_none_or(|d| offset > d) {
                                buf.dead.push(payload, pos, &why, now);
                                buf.dl_last.insert(p, offset);
                            }
                        }
                        buf.last.insert(p, offset);
                        last_data = tick;
                        staged_one = true;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    eof.insert(p);
                }
                Some(Err(e)) => tracing::warn!(topic = %config.topic, error = %e, "consumer error"),
                None => {}
            }
        }
        let due = buf.rows() >= config.flush_max_rows
            || (!buf.last.is_empty()
                && tick.saturating_duration_since(buf.since) >= config.flush_interval);
        // A partition that just gave a record is not at its end.
        let caught_up = !staged_one && {
            let state = consumer
                .context()
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            !state.committed.is_empty()
                && state.committed.keys().all(|p| eof.contains(p))
                && config
                    .until_end_idle
                    .is_some_and(|idle| tick.saturating_duration_since(last_data) >= idle)
        };
        if due || (caught_up && !buf.last.is_empty()) {
            flush_or_resync(
                &consumer,
                stage,
                table,
                &mut handle,
                &mut dl_handle,
                &mut buf,
                &mut stats,
                config,
            )?;
        }
        let stopping = config.stop.load(Ordering::Relaxed);
        if stopping && !buf.last.is_empty() {
            flush_or_resync(
                &consumer,
                stage,
                table,
                &mut handle,
                &mut dl_handle,
                &mut buf,
                &mut stats,
                config,
            )?;
        }
        if stopping {
            tracing::info!(topic = %config.topic, "stop requested; buffered rows committed");
            break;
        }
        if caught_up && buf.last.is_empty() {
            break;
        }
    }
    tracing::info!(topic = %config.topic, read = stats.read, staged = stats.staged, dead_lettered = stats.dead_lettered, commits = stats.commits, "caught up");
    Ok(stats)
}

/// Flushes; when another writer moved this extractor's partitions meanwhile (a group
/// rebalance this member has not seen yet), drops the buffer and re-reads each partition
/// from the stage's offsets instead of failing: the other writer's commit stands, nothing
/// is staged twice.
#[allow(clippy::too_many_arguments)]
fn flush_or_resync(
    consumer: &BaseConsumer<Ctx>,
    stage: &Stage,
    table: Table,
    handle: &mut deltalake::DeltaTable,
    dl_handle: &mut deltalake::DeltaTable,
    buf: &mut Buffer,
    stats: &mut ExtractStats,
    config: &KafkaSourceConfig,
) -> Result<()> {
    match flush(
        consumer, stage, table, handle, dl_handle, buf, stats, config,
    ) {
        Err(Error::Stage(e @ lakeshop_stage::Error::OffsetsMoved { .. })) => {
            tracing::warn!(error = %e, "offsets moved under this extractor; re-reading from the stage");
            resync(consumer, buf, config)
        }
        Err(Error::Stage(e)) if e.is_retryable() => {
            tracing::warn!(error = %e, "commit lost a race; re-reading from the stage");
            resync(consumer, buf, config)
        }
        other => other,
    }
}

/// Drops the buffer and positions every assigned partition at the stage's offsets.
fn resync(
    consumer: &BaseConsumer<Ctx>,
    buf: &mut Buffer,
    config: &KafkaSourceConfig,
) -> Result<()> {
    buf.events.finish()?;
    buf.dead.finish()?;
    buf.last.clear();
    buf.dl_last.clear();
    buf.since = Instant::now();
    let ctx = consumer.context();
    let partitions: Vec<i32> = {
        let s = ctx.state.lock().unwrap_or_else(|p| p.into_inner());
        s.committed.keys().copied().collect()
    };
    let (committed, dl) = ctx.load(&partitions)?;
    let mut s = ctx.state.lock().unwrap_or_else(|p| p.into_inner());
    for p in &partitions {
        let offset = match committed[p] {
            Some(last) => {
                s.next.insert(*p, last + 1);
                Offset::Offset((last + 1 - RESUME_REWIND).max(0))
            }
            None => {
                s.next.remove(p);
                Offset::Beginning
            }
        };
        // Reading on from where the consumer is would skip what the dropped buffer held.
        consumer
            .seek(&config.topic, *p, offset, Duration::from_secs(10))
            .map_err(|source| Error::Kafka {
                topic: config.topic.clone(),
                source,
            })?;
    }
    s.committed.extend(committed);
    s.dl_committed.extend(dl);
    Ok(())
}

/// What one commit moves: the last buffered offset of each partition, and the offset the
/// writer last saw committed (checked by the commit).
fn offset_commits(
    topic: &str,
    last: &BTreeMap<i32, i64>,
    committed: &LastOffsets,
) -> Vec<OffsetCommit> {
    last.iter()
        .map(|(p, last)| OffsetCommit {
            topic: topic.to_string(),
            partition: *p,
            expected: committed.get(p).copied().flatten(),
            last: *last,
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn flush(
    consumer: &BaseConsumer<Ctx>,
    stage: &Stage,
    table: Table,
    handle: &mut deltalake::DeltaTable,
    dl_handle: &mut deltalake::DeltaTable,
    buf: &mut Buffer,
    stats: &mut ExtractStats,
    config: &KafkaSourceConfig,
) -> Result<()> {
    let topic = config.topic.as_str();
    let ctx = consumer.context();
    let (committed, dl_committed) = {
        let s = ctx.state.lock().unwrap_or_else(|p| p.into_inner());
        (s.committed.clone(), s.dl_committed.clone())
    };
    let started = Instant::now();
    // Dead letters first, with their own offsets: if the event commit below never happens,
    // the restart re-reads these records and skips the dead letters already written.
    if !buf.dead.is_empty() {
        let batch = buf.dead.finish()?;
        let n = batch.num_rows() as u64;
        let offsets = offset_commits(topic, &buf.dl_last, &dl_committed);
        ctx.runtime
            .block_on(stage.append(Table::DeadLetters, dl_handle, vec![batch], &offsets))?;
        let mut s = ctx.state.lock().unwrap_or_else(|p| p.into_inner());
        for o in &offsets {
            s.dl_committed.insert(o.partition, Some(o.last));
        }
        stats.dead_lettered += n;
        config.metrics.dead_lettered.inc_by(n);
    }
    let batch = buf.events.finish()?;
    let n = batch.num_rows() as u64;
    let offsets = offset_commits(topic, &buf.last, &committed);
    let version = ctx
        .runtime
        .block_on(stage.append(table, handle, vec![batch], &offsets))?;
    {
        let mut s = ctx.state.lock().unwrap_or_else(|p| p.into_inner());
        for o in &offsets {
            s.committed.insert(o.partition, Some(o.last));
        }
    }
    stats.staged += n;
    stats.commits += 1;
    config.metrics.staged.inc_by(n);
    config.metrics.commits.inc();
    config
        .metrics
        .commit_seconds
        .observe(started.elapsed().as_secs_f64());
    tracing::debug!(
        table = table.name(),
        version,
        rows = n,
        ms = started.elapsed().as_millis() as u64,
        "committed"
    );
    buf.last.clear();
    buf.dl_last.clear();
    buf.since = Instant::now();
    Ok(())
}
