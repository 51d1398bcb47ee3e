//! One Kafka consumer for every command that reads a topic exactly once against positions it
//! keeps itself (the extractor's Delta commits, the streaming loader's ClickHouse checkpoints).
//!
//! The consumer group's offsets are never trusted. On every assignment the owner's [`Resume`]
//! reads where each partition goes on and the state it keeps with it; the consumer starts a
//! little before that position (a broker may answer a fetch from the middle of a record batch
//! with the batch after it, the local tansu does) and skips what came before it, so the owner
//! sees each offset from its position on once per assignment, in order. Assignments and
//! revocations reach the owner as typed values, revocations first, in the same [`Polled`] as
//! the record that followed them; a failed rebalance or a position that cannot be read is a
//! [`ConsumerError`]. "Caught up" is decided from fetched data (partition EOF) plus an idle
//! time, never from ListOffsets; the lag gauge comes from the high watermark the last fetch
//! response carried.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

/// How far before its position a partition is read again on assignment (then skipped).
pub const RESUME_REWIND: i64 = 10_000;
/// Longest wait between two tries of a position read that failed.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Records between two publications of the positions for the lag gauge.
const PUBLISH_EVERY: u32 = 64;

/// What stops the consumer.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// The Kafka client failed.
    #[error("kafka topic {topic}: {source}")]
    Kafka {
        topic: String,
        #[source]
        source: KafkaError,
    },
    /// The topic has no partition (it does not exist, or metadata says nothing).
    #[error("kafka topic {topic} has no partitions (does it exist?)")]
    NoPartitions { topic: String },
    /// A setting the loop cannot honour (refused at start, before anything is read).
    #[error("kafka topic {topic}: {message}")]
    Unsupported { topic: String, message: String },
    /// The group coordinator reported a rebalance error.
    #[error("kafka topic {topic}: rebalance failed: {code:?}")]
    Rebalance { topic: String, code: RDKafkaRespErr },
    /// The positions of assigned partitions could not be read, and the consumer was stopped
    /// while it was still trying.
    #[error("kafka topic {topic}: reading the positions of partitions {partitions:?} from {from}: {reason}")]
    Resume {
        topic: String,
        partitions: Vec<i32>,
        from: &'static str,
        reason: String,
    },
}

impl ConsumerError {
    /// Whether trying again may succeed (a broker or store that stopped answering).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ConsumerError::Kafka { .. } | ConsumerError::Resume { .. }
        )
    }
}

/// Where a partition goes on, and what its owner keeps with it.
#[derive(Debug)]
pub struct Resumed<S> {
    pub partition: i32,
    /// Next offset to hand to the owner; `None`: from the beginning of the partition.
    pub next: Option<i64>,
    pub state: S,
}

/// The owner's durable positions.
pub trait Resume: Send + Sync + 'static {
    /// What the owner restores with a partition.
    type State: Send + 'static;
    /// What the positions are read from, for the logs.
    const FROM: &'static str;
    /// Reads the position and state of each of `partitions` (one value for each). Called on
    /// the consumer's thread, during a poll; a failure is retried with backoff until it
    /// succeeds or the consumer's stop flag is set.
    fn resume(&self, partitions: &[i32]) -> Result<Vec<Resumed<Self::State>>, String>;
}

/// How the consumer connects and reads.
#[derive(Clone)]
pub struct ConsumerOptions {
    /// Brokers and pass-through librdkafka properties.
    pub client: ClientConfig,
    pub topic: String,
    /// Consumer group id.
    pub group_id: String,
    /// Share the partitions with the group's other members (subscribe); otherwise read every
    /// partition (assign), which needs no group coordination after a crash.
    pub group: bool,
    /// Longest a fetch waits for data before the broker answers (`fetch.wait.max.ms`);
    /// `None` keeps librdkafka's default (throughput over latency).
    pub fetch_wait: Option<Duration>,
    /// Set it to stop retrying position reads.
    pub stop: Arc<AtomicBool>,
    /// Called with (partition, records behind the high watermark) about once a second.
    pub lag: Arc<dyn Fn(i32, i64) + Send + Sync>,
}

impl std::fmt::Debug for ConsumerOptions {
    // The client properties may hold credentials: only the topic and group are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerOptions")
            .field("topic", &self.topic)
            .field("group_id", &self.group_id)
            .field("group", &self.group)
            .field("fetch_wait", &self.fetch_wait)
            .finish_non_exhaustive()
    }
}

/// What one poll brought, to be handled in field order.
#[derive(Debug)]
pub struct Polled<'a, S> {
    /// Partitions taken away since the last poll: whatever the owner holds for them belongs
    /// to their next owner now (who reads it again from the durable positions).
    pub revoked: BTreeSet<i32>,
    /// Partitions given since the last poll, with their positions and restored state.
    pub assigned: Vec<Resumed<S>>,
    /// The next record at or after its partition's position, if one came.
    pub record: Option<Record<'a>>,
}

/// One record, borrowed from the client.
#[derive(Debug)]
pub struct Record<'a>(BorrowedMessage<'a>);

impl Record<'_> {
    pub fn partition(&self) -> i32 {
        self.0.partition()
    }

    pub fn offset(&self) -> i64 {
        self.0.offset()
    }

    /// The broker's or producer's timestamp, milliseconds since the epoch.
    pub fn timestamp_ms(&self) -> Option<i64> {
        self.0.timestamp().to_millis()
    }

    pub fn payload(&self) -> &[u8] {
        self.0.payload().unwrap_or_default()
    }
}

/// What the rebalance callback hands to the consumer's owner.
struct Handover<S> {
    revoked: BTreeSet<i32>,
    arrived: Vec<Resumed<S>>,
    error: Option<ConsumerError>,
    /// Next offset of each partition the owner holds (lag gauge).
    next: BTreeMap<i32, i64>,
}

impl<S> Default for Handover<S> {
    fn default() -> Self {
        Self {
            revoked: BTreeSet::new(),
            arrived: Vec::new(),
            error: None,
            next: BTreeMap::new(),
        }
    }
}

/// The client context: rebalance callback, statistics, error log.
struct Ctx<R: Resume> {
    topic: String,
    resume: R,
    stop: Arc<AtomicBool>,
    lag: Arc<dyn Fn(i32, i64) + Send + Sync>,
    handover: Mutex<Handover<R::State>>,
}

impl<R: Resume> Ctx<R> {
    fn handover(&self) -> std::sync::MutexGuard<'_, Handover<R::State>> {
        self.handover.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the positions of `tpl`'s partitions (retrying while the store does not answer),
    /// positions `tpl` a little before them and assigns it.
    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let partitions: Vec<i32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        let started = Instant::now();
        let mut backoff = Duration::from_millis(200);
        let resumed = loop {
            let attempt = self.resume.resume(&partitions).and_then(|r| {
                match partitions
                    .iter()
                    .find(|p| !r.iter().any(|x| x.partition == **p))
                {
                    Some(p) => Err(format!("no position for partition {p}")),
                    None => Ok(r),
                }
            });
            match attempt {
                Ok(r) => break r,
                Err(reason) if !self.stop.load(Ordering::Relaxed) => {
                    tracing::warn!(topic = %self.topic, partitions = ?partitions, error = %reason, retry_in_ms = backoff.as_millis() as u64, "cannot read the positions of assigned partitions; retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(reason) => {
                    self.handover().error = Some(ConsumerError::Resume {
                        topic: self.topic.clone(),
                        partitions,
                        from: R::FROM,
                        reason,
                    });
                    return;
                }
            }
        };
        let mut h = self.handover();
        for r in resumed {
            let offset = match r.next {
                Some(next) => Offset::Offset((next - RESUME_REWIND).max(0)),
                None => Offset::Beginning,
            };
            let _ = tpl.set_partition_offset(&self.topic, r.partition, offset);
            if let Some(next) = r.next {
                h.next.insert(r.partition, next);
            }
            h.arrived.retain(|a| a.partition != r.partition);
            h.arrived.push(r);
        }
        tracing::info!(topic = %self.topic, partitions = ?partitions, ms = started.elapsed().as_millis() as u64, "assigned; reading from {}", R::FROM);
        if let Err(source) = consumer.assign(tpl) {
            h.error = Some(ConsumerError::Kafka {
                topic: self.topic.clone(),
                source,
            });
        }
    }
}

impl<R: Resume> ClientContext for Ctx<R> {
    /// librdkafka statistics (every second): the high watermark each partition's last fetch
    /// response carried (never ListOffsets), minus the next offset to read, is the lag.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let h = self.handover();
        for (p, part) in &topic.partitions {
            if let (Some(next), true) = (h.next.get(p), part.hi_offset >= 0) {
                (self.lag)(*p, (part.hi_offset - next).max(0));
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Reaching the end of a partition is how "caught up" is decided, not an error.
        if matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::debug!(topic = %self.topic, reason, "end of partition");
        } else {
            tracing::warn!(topic = %self.topic, error = %error, reason, "kafka client error");
        }
    }
}

impl<R: Resume> ConsumerContext for Ctx<R> {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let mut h = self.handover();
                let mut revoked = Vec::new();
                for e in tpl.elements_for_topic(&self.topic) {
                    let p = e.partition();
                    // Given and taken back before the owner saw it: it never arrives.
                    h.arrived.retain(|a| a.partition != p);
                    h.next.remove(&p);
                    h.revoked.insert(p);
                    revoked.push(p);
                }
                tracing::info!(topic = %self.topic, partitions = ?revoked, "partitions revoked; what was not durable is read again by their next owner");
                let _ = consumer.unassign();
            }
            code => {
                self.handover().error = Some(ConsumerError::Rebalance {
                    topic: self.topic.clone(),
                    code,
                });
            }
        }
    }
}

/// A consumer of one topic that reads each partition from its owner's positions.
pub struct KafkaConsumer<R: Resume> {
    consumer: BaseConsumer<Ctx<R>>,
    topic: String,
    /// Assigned partitions and the next offset to hand over (`None`: every offset).
    next: BTreeMap<i32, Option<i64>>,
    /// Assigned partitions whose end was reached after their last record.
    eof: BTreeSet<i32>,
    /// Records handed over so far.
    records: u64,
    /// The record count at the last `caught_up` and since when it has not moved: no clock
    /// is read per record.
    quiet: std::cell::Cell<(u64, Instant)>,
    since_publish: u32,
    paused: bool,
}

impl<R: Resume> std::fmt::Debug for KafkaConsumer<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConsumer")
            .field("topic", &self.topic)
            .field("next", &self.next)
            .field("eof", &self.eof)
            .field("paused", &self.paused)
            .finish_non_exhaustive()
    }
}

impl<R: Resume> KafkaConsumer<R> {
    /// Connects and subscribes (group) or assigns every partition from `resume`'s positions.
    /// Blocking: call it on a thread that may block.
    pub fn start(opts: &ConsumerOptions, resume: R) -> Result<Self, ConsumerError> {
        let ctx = Ctx {
            topic: opts.topic.clone(),
            resume,
            stop: opts.stop.clone(),
            lag: opts.lag.clone(),
            handover: Mutex::new(Handover::default()),
        };
        let mut client = opts.client.clone();
        // The handover assumes eager rebalancing: every partition is revoked, then the new
        // set assigned. Incremental (cooperative) assignment would hand over deltas it does
        // not expect.
        if let Some(strategy) = client.get("partition.assignment.strategy") {
            if strategy.to_ascii_lowercase().contains("cooperative") {
                return Err(ConsumerError::Unsupported {
                    topic: opts.topic.clone(),
                    message: format!(
                        "partition.assignment.strategy {strategy:?}: cooperative rebalancing is \
                         not supported; use range or roundrobin (eager)"
                    ),
                });
            }
        }
        client
            .set("group.id", &opts.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "true")
            .set("statistics.interval.ms", "1000")
            .set("fetch.message.max.bytes", "8388608");
        // Records fetched ahead of the loop: librdkafka's default (64 MiB) is most of a
        // loader's memory while it catches up, for no gain in speed. `[kafka.properties]`
        // may say otherwise.
        if client.get("queued.max.messages.kbytes").is_none() {
            client.set("queued.max.messages.kbytes", "16384");
        }
        if let Some(wait) = opts.fetch_wait {
            client.set("fetch.wait.max.ms", wait.as_millis().max(1).to_string());
        }
        let kafka = |source| ConsumerError::Kafka {
            topic: opts.topic.clone(),
            source,
        };
        let consumer: BaseConsumer<Ctx<R>> = client.create_with_context(ctx).map_err(kafka)?;
        if opts.group {
            consumer.subscribe(&[&opts.topic]).map_err(kafka)?;
        } else {
            let md = consumer
                .fetch_metadata(Some(&opts.topic), Duration::from_secs(30))
                .map_err(kafka)?;
            let mut tpl = TopicPartitionList::new();
            for t in md.topics() {
                if let Some(e) = t.error() {
                    return Err(kafka(KafkaError::MetadataFetch(e.into())));
                }
                for p in t.partitions() {
                    tpl.add_partition(&opts.topic, p.id());
                }
            }
            if tpl.count() == 0 {
                return Err(ConsumerError::NoPartitions {
                    topic: opts.topic.clone(),
                });
            }
            consumer.context().assign(&consumer, &mut tpl);
        }
        Ok(Self {
            consumer,
            topic: opts.topic.clone(),
            next: BTreeMap::new(),
            eof: BTreeSet::new(),
            records: 0,
            quiet: std::cell::Cell::new((0, Instant::now())),
            since_publish: 0,
            paused: false,
        })
    }

    /// The owner's positions (to read them again after a failed commit).
    pub fn resumer(&self) -> &R {
        &self.consumer.context().resume
    }

    /// The topic read.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partitions assigned, as the owner has seen them.
    pub fn partitions(&self) -> impl Iterator<Item = i32> + '_ {
        self.next.keys().copied()
    }

    /// Waits up to `timeout` for the next record; rebalances that happened meanwhile come
    /// with it. Records before their partition's position are skipped here.
    pub fn poll(&mut self, timeout: Duration) -> Result<Polled<'_, R::State>, ConsumerError> {
        let consumer = &self.consumer;
        let mut revoked = BTreeSet::new();
        let mut assigned = Vec::new();
        loop {
            let polled = consumer.poll(timeout);
            // The rebalance callback runs inside `poll`: its handover applies before the
            // record (a record of a partition revoked meanwhile is dropped).
            {
                let mut h = consumer.context().handover();
                if let Some(e) = h.error.take() {
                    return Err(e);
                }
                if !h.revoked.is_empty() || !h.arrived.is_empty() {
                    for p in std::mem::take(&mut h.revoked) {
                        self.next.remove(&p);
                        self.eof.remove(&p);
                        revoked.insert(p);
                    }
                    for r in h.arrived.drain(..) {
                        self.next.insert(r.partition, r.next);
                        self.eof.remove(&r.partition);
                        assigned.retain(|a: &Resumed<R::State>| a.partition != r.partition);
                        assigned.push(r);
                    }
                }
                if !matches!(polled, Some(Ok(_))) || self.since_publish >= PUBLISH_EVERY {
                    self.since_publish = 0;
                    for (p, n) in &self.next {
                        if let Some(n) = n {
                            h.next.insert(*p, *n);
                        }
                    }
                }
            }
            let record = match polled {
                Some(Ok(m)) => {
                    let p = m.partition();
                    let offset = m.offset();
                    match self.next.get_mut(&p) {
                        Some(next) if next.is_none_or(|n| offset >= n) => {
                            *next = Some(offset + 1);
                            self.eof.remove(&p);
                            self.records += 1;
                            self.since_publish += 1;
                            Some(Record(m))
                        }
                        // Before the position (the rewind), or not (any more) assigned.
                        _ => {
                            if revoked.is_empty() && assigned.is_empty() {
                                continue;
                            }
                            None
                        }
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    if self.next.contains_key(&p) {
                        self.eof.insert(p);
                    }
                    None
                }
                Some(Err(e)) => {
                    tracing::warn!(topic = %self.topic, error = %e, "consumer error");
                    None
                }
                None => None,
            };
            return Ok(Polled {
                revoked,
                assigned,
                record,
            });
        }
    }

    /// Every assigned partition reached its end after its last record, and no record came for
    /// `idle` (measured from the first call that saw the count of records stand still).
    pub fn caught_up(&self, idle: Duration) -> bool {
        let (seen, since) = self.quiet.get();
        let since = if seen == self.records {
            since
        } else {
            let now = Instant::now();
            self.quiet.set((self.records, now));
            now
        };
        !self.next.is_empty()
            && self.next.keys().all(|p| self.eof.contains(p))
            && since.elapsed() >= idle
    }

    /// Reads `partition` again from `next` (`None`: from its beginning), as after an
    /// assignment: what the owner dropped is handed over again.
    pub fn seek(&mut self, partition: i32, next: Option<i64>) -> Result<(), ConsumerError> {
        let offset = match next {
            Some(n) => Offset::Offset((n - RESUME_REWIND).max(0)),
            None => Offset::Beginning,
        };
        self.consumer
            .seek(&self.topic, partition, offset, Duration::from_secs(10))
            .map_err(|source| ConsumerError::Kafka {
                topic: self.topic.clone(),
                source,
            })?;
        self.next.insert(partition, next);
        self.eof.remove(&partition);
        Ok(())
    }

    /// Stops (or resumes) fetching every assigned partition; polls go on serving rebalances.
    pub fn set_paused(&mut self, paused: bool) -> Result<(), ConsumerError> {
        let kafka = |source| ConsumerError::Kafka {
            topic: self.topic.clone(),
            source,
        };
        let tpl = self.consumer.assignment().map_err(kafka)?;
        if paused {
            self.consumer.pause(&tpl).map_err(kafka)?;
        } else {
            self.consumer.resume(&tpl).map_err(kafka)?;
        }
        self.paused = paused;
        Ok(())
    }

    /// Whether fetching is paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }
}
