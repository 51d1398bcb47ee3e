//! Kafka → stage, exactly once: data and offsets in one Delta commit.
//!
//! On every assignment the extractor reads each partition's committed offset from the
//! stage table (`txn` app id `kafka:<topic>:<partition>`) and starts there; the consumer
//! group's own offsets are never trusted. Invalid records go to `stage.dead_letters` with
//! their raw bytes, position and reason; those commits carry their own `txn` so a restart
//! never writes a dead letter twice. "Caught up" is decided from fetched data (partition
//! EOF) plus an idle timeout, never from ListOffsets.

mod consumer;
mod metrics;
mod rows;

use chrono::Utc;
use lakeshop_stage::{OffsetCommit, Stage, Table};
use rdkafka::ClientConfig;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use consumer::{
    ConsumerError, ConsumerOptions, KafkaConsumer, Polled, Record, Resume, Resumed, RESUME_REWIND,
};
pub use metrics::ExtractMetrics;
pub use rows::{DeadLetterRows, EventKind, EventRows, Position};

use crate::{Error, Result};

/// What one extractor run consumes and how it flushes.
#[derive(Clone)]
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

impl std::fmt::Debug for KafkaSourceConfig {
    // The client properties may hold credentials: they are not shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSourceConfig")
            .field("topic", &self.topic)
            .field("group_id", &self.group_id)
            .field("group", &self.group)
            .field("kind", &self.kind)
            .field("flush_interval", &self.flush_interval)
            .field("flush_max_rows", &self.flush_max_rows)
            .field("until_end_idle", &self.until_end_idle)
            .field("timezone", &self.timezone)
            .finish_non_exhaustive()
    }
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

/// Last committed offset per partition (`None`: never committed).
type LastOffsets = BTreeMap<i32, Option<i64>>;

/// Last offsets a partition has committed in the event table and in `dead_letters`.
#[derive(Debug, Clone, Copy)]
pub struct Committed {
    pub events: Option<i64>,
    pub dead_letters: Option<i64>,
}

/// The extractor's positions: the offsets committed with the stage's data (`txn` app ids).
struct StageOffsets {
    stage: Stage,
    table: Table,
    topic: String,
    runtime: tokio::runtime::Handle,
}

impl StageOffsets {
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

impl Resume for StageOffsets {
    type State = Committed;
    const FROM: &'static str = "the stage's offsets";

    fn resume(&self, partitions: &[i32]) -> std::result::Result<Vec<Resumed<Committed>>, String> {
        let (events, dead_letters) = self.load(partitions).map_err(|e| e.to_string())?;
        Ok(partitions
            .iter()
            .map(|p| {
                let committed = Committed {
                    events: events[p],
                    dead_letters: dead_letters[p],
                };
                Resumed {
                    partition: *p,
                    next: committed.events.map(|last| last + 1),
                    state: committed,
                }
            })
            .collect())
    }
}

/// Committed offsets of the partitions this extractor holds.
#[derive(Debug, Default)]
struct Held {
    events: LastOffsets,
    dead_letters: LastOffsets,
}

impl Held {
    fn take(&mut self, r: &Resumed<Committed>) {
        self.events.insert(r.partition, r.state.events);
        self.dead_letters.insert(r.partition, r.state.dead_letters);
    }

    fn drop_partition(&mut self, p: i32) {
        self.events.remove(&p);
        self.dead_letters.remove(&p);
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
    let offsets = StageOffsets {
        stage: stage.clone(),
        table,
        topic: config.topic.clone(),
        runtime: tokio::runtime::Handle::current(),
    };
    let metrics = config.metrics.clone();
    let options = ConsumerOptions {
        client: config.client.clone(),
        topic: config.topic.clone(),
        group_id: config.group_id.clone(),
        group: config.group,
        fetch_wait: None,
        stop: config.stop.clone(),
        lag: Arc::new(move |p, lag| metrics.set_lag(p, lag)),
    };
    let config = config.clone();
    let stage = stage.clone();
    // librdkafka's poll blocks: the loop runs on a blocking thread and reaches Delta
    // through the runtime handle.
    tokio::task::spawn_blocking(move || {
        let consumer = KafkaConsumer::start(&options, offsets)?;
        run(consumer, &stage, table, &config)
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))?
}

/// The extractor's loop state.
struct Extractor<'a> {
    consumer: KafkaConsumer<StageOffsets>,
    stage: &'a Stage,
    table: Table,
    config: &'a KafkaSourceConfig,
    handle: deltalake::DeltaTable,
    dl_handle: deltalake::DeltaTable,
    held: Held,
    buf: Buffer,
    stats: ExtractStats,
}

fn run(
    consumer: KafkaConsumer<StageOffsets>,
    stage: &Stage,
    table: Table,
    config: &KafkaSourceConfig,
) -> Result<ExtractStats> {
    let runtime = consumer.resumer().runtime.clone();
    let mut x = Extractor {
        handle: runtime.block_on(stage.open(table))?,
        dl_handle: runtime.block_on(stage.open(Table::DeadLetters))?,
        consumer,
        stage,
        table,
        config,
        held: Held::default(),
        buf: Buffer {
            events: EventRows::new(config.kind, config.timezone),
            dead: DeadLetterRows::new(config.kind, config.timezone),
            last: BTreeMap::new(),
            dl_last: BTreeMap::new(),
            since: Instant::now(),
        },
        stats: ExtractStats::default(),
    };
    let mut now = Utc::now();
    let mut tick = Instant::now();
    let mut records_since_clock: u32 = 0;
    loop {
        let Polled {
            revoked,
            assigned,
            record,
        } = x.consumer.poll(Duration::from_millis(100))?;
        // The clocks are read on every turn that brought no record, and every few records
        // while records stream (a turn is one record then): `ingested_at` and the flush
        // deadline need milliseconds, not a clock read per record.
        records_since_clock = if record.is_some() {
            records_since_clock + 1
        } else {
            0
        };
        if record.is_none() || records_since_clock >= CLOCK_EVERY_RECORDS {
            records_since_clock = 0;
            now = Utc::now();
            tick = Instant::now();
            config.metrics.heartbeat(now);
        }
        // Buffered rows of revoked partitions belong to their next owner now. The buffer
        // mixes partitions: all of it is dropped and the partitions still held are read
        // again from the stage's offsets.
        let resync = revoked.iter().any(|p| x.buf.last.contains_key(p));
        for p in &revoked {
            x.held.drop_partition(*p);
        }
        for r in &assigned {
            x.held.take(r);
        }
        if resync {
            tracing::warn!(
                ?revoked,
                "partitions revoked with unflushed rows; dropping the buffer"
            );
            drop(record);
            x.resync()?;
            continue;
        }
        let staged_one = record.is_some();
        if let Some(m) = record {
            let p = m.partition();
            let offset = m.offset();
            x.stats.read += 1;
            config.metrics.consumed.inc();
            let pos = Position {
                topic: &config.topic,
                partition: p,
                offset,
            };
            let payload = m.payload();
            if let Err(why) = x.buf.events.push(payload, pos, now) {
                let dl_done = x.held.dead_letters.get(&p).copied().flatten();
                if dl_done.is_none_or(|d| offset > d) {
                    x.buf.dead.push(payload, pos, &why, now);
                    x.buf.dl_last.insert(p, offset);
                }
            }
            x.buf.last.insert(p, offset);
        }
        let due = x.buf.rows() >= config.flush_max_rows
            || (!x.buf.last.is_empty()
                && tick.saturating_duration_since(x.buf.since) >= config.flush_interval);
        // A partition that just gave a record is not at its end.
        let caught_up = !staged_one
            && config
                .until_end_idle
                .is_some_and(|idle| x.consumer.caught_up(idle));
        let stopping = config.stop.load(Ordering::Relaxed);
        if (due || caught_up || stopping) && !x.buf.last.is_empty() {
            x.flush_or_resync()?;
        }
        if stopping {
            tracing::info!(topic = %config.topic, "stop requested; buffered rows committed");
            break;
        }
        if caught_up && x.buf.last.is_empty() {
            break;
        }
    }
    let stats = x.stats;
    tracing::info!(topic = %config.topic, read = stats.read, staged = stats.staged, dead_lettered = stats.dead_lettered, commits = stats.commits, "caught up");
    Ok(stats)
}

impl Extractor<'_> {
    /// Flushes; when another writer moved this extractor's partitions meanwhile (a group
    /// rebalance this member has not seen yet), drops the buffer and re-reads each partition
    /// from the stage's offsets instead of failing: the other writer's commit stands, nothing
    /// is staged twice.
    fn flush_or_resync(&mut self) -> Result<()> {
        match self.flush() {
            Err(Error::Stage(e @ lakeshop_stage::Error::OffsetsMoved { .. })) => {
                tracing::warn!(error = %e, "offsets moved under this extractor; re-reading from the stage");
                self.resync()
            }
            Err(Error::Stage(e)) if e.is_retryable() => {
                tracing::warn!(error = %e, "commit lost a race; re-reading from the stage");
                self.resync()
            }
            other => other,
        }
    }

    /// Drops the buffer and positions every held partition at the stage's offsets.
    fn resync(&mut self) -> Result<()> {
        let buf = &mut self.buf;
        buf.events.finish()?;
        buf.dead.finish()?;
        buf.last.clear();
        buf.dl_last.clear();
        buf.since = Instant::now();
        let partitions: Vec<i32> = self.consumer.partitions().collect();
        let (events, dead_letters) = self.consumer.resumer().load(&partitions)?;
        for p in &partitions {
            // Reading on from where the consumer is would skip what the dropped buffer held.
            self.consumer.seek(*p, events[p].map(|last| last + 1))?;
        }
        self.held.events.extend(events);
        self.held.dead_letters.extend(dead_letters);
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let config = self.config;
        let topic = config.topic.as_str();
        let runtime = self.consumer.resumer().runtime.clone();
        let buf = &mut self.buf;
        let started = Instant::now();
        // Dead letters first, with their own offsets: if the event commit below never
        // happens, the restart re-reads these records and skips the dead letters already
        // written.
        if !buf.dead.is_empty() {
            let batch = buf.dead.finish()?;
            let n = batch.num_rows() as u64;
            let offsets = offset_commits(topic, &buf.dl_last, &self.held.dead_letters);
            runtime.block_on(self.stage.append(
                Table::DeadLetters,
                &mut self.dl_handle,
                vec![batch],
                &offsets,
            ))?;
            for o in &offsets {
                self.held.dead_letters.insert(o.partition, Some(o.last));
            }
            self.stats.dead_lettered += n;
            config.metrics.dead_lettered.inc_by(n);
        }
        let batch = buf.events.finish()?;
        let n = batch.num_rows() as u64;
        let offsets = offset_commits(topic, &buf.last, &self.held.events);
        let version = runtime.block_on(self.stage.append(
            self.table,
            &mut self.handle,
            vec![batch],
            &offsets,
        ))?;
        for o in &offsets {
            self.held.events.insert(o.partition, Some(o.last));
        }
        self.stats.staged += n;
        self.stats.commits += 1;
        config.metrics.staged.inc_by(n);
        config.metrics.commits.inc();
        config
            .metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        tracing::debug!(
            table = self.table.name(),
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
