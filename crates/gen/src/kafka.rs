//! Purchases and interactions into Kafka, in event-time order, keyed by purchase id (so a
//! re-send or a conflicting copy lands on the same partition after its original). Purchases
//! stamped late or ahead (`--late-fraction`, `--future-fraction`) keep the place of the time
//! they would otherwise have had; every record's Kafka timestamp is its produce time.

use chrono::{DateTime, TimeDelta, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use lakeshop_model::Reason;
use rand::distr::weighted::WeightedIndex;
use rand::distr::Distribution as _;
use rand::seq::SliceRandom as _;
use rand::Rng;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};
use rdkafka::ClientContext;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::data::{
    business_day, check_verdict, history_days, BadKind, PurchaseDraw, Unknown, World,
};
use crate::truth::Truth;
use crate::{Error, GenOptions, Part, Result, Targets};

/// The header that carries the run id on every message.
pub const RUN_HEADER: &str = "lakeshop-run";

/// How much earlier than its time a purchase stamped late is stamped, in ms: 6 to 30
/// minutes, beyond a streaming loader's default 5-minute lateness.
const LATE_MS: RangeInclusive<i64> = 360_000..=1_800_000;
/// How much later than its time a purchase stamped ahead is stamped, in ms: 2 to 60 minutes,
/// beyond the loader's default 1-minute clock skew and within the validator's day ahead.
const AHEAD_MS: RangeInclusive<i64> = 120_000..=3_600_000;

/// How far a valid purchase's stamp moves from the time it would otherwise get: with
/// probability `late_fraction` back by [`LATE_MS`], with probability `future_fraction` ahead
/// by [`AHEAD_MS`], else not at all. Draws nothing when both fractions are 0, so runs
/// without them produce the records they always did.
pub(crate) fn stamp_shift(opts: &GenOptions, rng: &mut impl Rng) -> TimeDelta {
    if opts.late_fraction <= 0.0 && opts.future_fraction <= 0.0 {
        return TimeDelta::zero();
    }
    let u: f64 = rng.random();
    if u < opts.late_fraction {
        -TimeDelta::milliseconds(rng.random_range(LATE_MS))
    } else if u < opts.late_fraction + opts.future_fraction {
        TimeDelta::milliseconds(rng.random_range(AHEAD_MS))
    } else {
        TimeDelta::zero()
    }
}

/// One message to produce.
struct Msg {
    /// Event time in ms (before any late or ahead shift of a purchase's stamp): the produce
    /// order.
    at: i64,
    key: String,
    payload: Vec<u8>,
}

#[derive(Default)]
struct Delivery {
    ok: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

struct Ctx(Arc<Delivery>);

impl ClientContext for Ctx {}

impl ProducerContext for Ctx {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        match result {
            Ok(_) => {
                self.0.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.0.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = self.0.first_error.lock().unwrap_or_else(|p| p.into_inner());
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// Producer settings tuned for throughput; the pass-through properties win.
pub fn producer_config(base: &rdkafka::ClientConfig) -> rdkafka::ClientConfig {
    let mut c = rdkafka::ClientConfig::new();
    for (k, v) in [
        ("linger.ms", "20"),
        ("batch.num.messages", "10000"),
        ("batch.size", "1000000"),
        ("queue.buffering.max.messages", "1000000"),
        ("queue.buffering.max.kbytes", "2097152"),
        // Room for the deliberately oversized (> 1 MiB) invalid records.
        ("message.max.bytes", "4194304"),
        ("acks", "all"),
    ] {
        c.set(k, v);
    }
    for (k, v) in base.config_map() {
        c.set(k, v);
    }
    c
}

/// The history-mode purchase messages as (key, payload), filling the truth.
pub(crate) fn history_messages(
    opts: &GenOptions,
    world: &World,
    now: DateTime<Utc>,
    truth: &mut Truth,
) -> Result<Vec<(String, Vec<u8>)>> {
    let draw = PurchaseDraw::new(world, opts.product_skew);
    let days = history_days(now, opts.timezone, opts.days);
    let mut rng = world.event_rng();
    let msgs = history_purchases(opts, &draw, &days, now, &mut rng, truth)?;
    Ok(msgs.into_iter().map(|m| (m.key, m.payload)).collect())
}

/// Produces the run's purchases and interactions and fills the truth.
pub async fn produce(
    opts: &GenOptions,
    targets: &Targets,
    world: &World,
    now: DateTime<Utc>,
    truth: &mut Truth,
) -> Result<()> {
    truth.index(world);
    let mut world_rng = world.event_rng();
    if let Some(live) = opts.live {
        truth.purchases_topic = Some(targets.purchases_topic.clone());
        let opts = opts.clone();
        let targets = targets.clone();
        // The live loop is blocking (it paces with sleeps); keep it off the runtime threads.
        let world = world.clone();
        let mut t = truth.clone();
        let t = tokio::task::spawn_blocking(move || {
            live_loop(
                &opts,
                &targets,
                &world,
                &mut world_rng,
                live.rate,
                live.duration,
                &mut t,
            )
            .map(|_| t)
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
        *truth = t;
        return Ok(());
    }
    let draw = PurchaseDraw::new(world, opts.product_skew);
    let days = history_days(now, opts.timezone, opts.days);
    let mut sends: Vec<(String, Vec<Msg>)> = Vec::new();
    if opts.wants(Part::Purchases) {
        let msgs = history_purchases(opts, &draw, &days, now, &mut world_rng, truth)?;
        truth.purchases_topic = Some(targets.purchases_topic.clone());
        sends.push((targets.purchases_topic.clone(), msgs));
    }
    if opts.wants(Part::Interactions) && opts.interactions > 0 {
        let mut msgs = Vec::with_capacity(opts.interactions as usize);
        for _ in 0..opts.interactions {
            let day = days[world_rng.random_range(0..days.len())];
            let ts = draw.time_on(&mut world_rng, day, opts.timezone);
            let i = draw.interaction(&mut world_rng, ts);
            truth.interaction(i.kind.as_str());
            msgs.push(Msg {
                at: ts.timestamp_millis(),
                key: i.client_id.to_string(),
                payload: i.to_json().into_bytes(),
            });
        }
        msgs.sort_by_key(|m| m.at);
        truth.interactions_topic = Some(targets.interactions_topic.clone());
        sends.push((targets.interactions_topic.clone(), msgs));
    }
    let config = producer_config(&targets.kafka);
    let run_id = truth.run_id.to_string();
    let progress = opts.progress;
    tokio::task::spawn_blocking(move || {
        for (topic, msgs) in sends {
            send_all(&config, &topic, &run_id, msgs, progress)?;
        }
        Ok::<_, Error>(())
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))??;
    Ok(())
}

fn history_purchases(
    opts: &GenOptions,
    draw: &PurchaseDraw<'_>,
    days: &[chrono::NaiveDate],
    now: DateTime<Utc>,
    rng: &mut impl Rng,
    truth: &mut Truth,
) -> Result<Vec<Msg>> {
    let n = opts.purchases as usize;
    let count = |f: f64| ((n as f64) * f).round() as usize;
    // Exactly round(n × fraction) of each, at random places.
    let unknowns = count(opts.unknown_fraction).min(n);
    let mut flags: Vec<Option<Unknown>> = (0..n)
        .map(|i| {
            (i < unknowns).then_some(match i % 3 {
                0 => Unknown::Product,
                1 => Unknown::Seller,
                _ => Unknown::NoSeller,
            })
        })
        .collect();
    flags.shuffle(rng);
    let mut purchases = Vec::with_capacity(n);
    // Each purchase's place in the produce order: its drawn time, before any shift of its
    // stamp (so copies of it still follow it).
    let mut places: Vec<i64> = Vec::with_capacity(n);
    let mut msgs =
        Vec::with_capacity(n + count(opts.duplicate_fraction) + count(opts.bad_fraction));
    for flag in flags {
        let day = days[rng.random_range(0..days.len())];
        let at = draw.time_on(rng, day, opts.timezone);
        let shift = stamp_shift(opts, rng);
        let ts = at + shift;
        let p = draw.purchase(rng, ts, flag);
        let payload = p.to_json().into_bytes();
        if shift != TimeDelta::zero() {
            check_verdict(&payload, None, now).map_err(Error::Internal)?;
        }
        truth.purchase(&p, business_day(ts, opts.timezone));
        msgs.push(Msg {
            at: at.timestamp_millis(),
            key: p.purchase_id.to_string(),
            payload,
        });
        places.push(at.timestamp_millis());
        purchases.push(p);
    }
    // Re-sends: the same bytes again, up to two minutes later.
    let dups = count(opts.duplicate_fraction).min(n);
    for i in rand::seq::index::sample(rng, n, dups) {
        let p = &purchases[i];
        truth.duplicate();
        msgs.push(Msg {
            at: places[i] + rng.random_range(1..120_000),
            key: p.purchase_id.to_string(),
            payload: p.to_json().into_bytes(),
        });
    }
    // Invalid records of every kind; conflicting duplicates reuse a sent purchase id.
    let bad = count(opts.bad_fraction);
    let mut kinds: Vec<(Option<BadKind>, u32)> = BadKind::WEIGHTED
        .iter()
        .map(|(k, w)| (Some(*k), *w))
        .collect();
    if n > 0 {
        kinds.push((None, 10));
    }
    let pick = WeightedIndex::new(kinds.iter().map(|(_, w)| *w))
        .map_err(|e| Error::Internal(e.to_string()))?;
    for _ in 0..bad {
        match kinds[pick.sample(rng)].0 {
            Some(kind) => {
                let day = days[rng.random_range(0..days.len())];
                let ts = draw.time_on(rng, day, opts.timezone);
                let base = draw.purchase(rng, ts, None);
                let payload = kind.corrupt(rng, &base, now);
                check_verdict(&payload, Some(kind.reason()), now).map_err(Error::Internal)?;
                truth.bad(kind.reason());
                msgs.push(Msg {
                    at: ts.timestamp_millis(),
                    key: base.purchase_id.to_string(),
                    payload,
                });
            }
            None => {
                let i = rng.random_range(0..n);
                let original = &purchases[i];
                let mut changed = original.clone();
                changed.quantity = original.quantity % 12 + 1;
                truth.bad(Reason::ConflictingDuplicate);
                msgs.push(Msg {
                    at: places[i] + rng.random_range(1..120_000),
                    key: changed.purchase_id.to_string(),
                    payload: changed.to_json().into_bytes(),
                });
            }
        }
    }
    // Stable: an original and its copies keep their order even at equal times.
    msgs.sort_by_key(|m| m.at);
    Ok(msgs)
}

fn bar(total: u64, topic: &str, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:>14} [{bar:40}] {human_pos}/{human_len} {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(topic.to_string());
    pb
}

fn producer(
    config: &rdkafka::ClientConfig,
    topic: &str,
) -> Result<(ThreadedProducer<Ctx>, Arc<Delivery>)> {
    let delivery = Arc::new(Delivery::default());
    let producer = config
        .create_with_context(Ctx(delivery.clone()))
        .map_err(|e| Error::Kafka {
            topic: topic.to_string(),
            message: e.to_string(),
        })?;
    Ok((producer, delivery))
}

/// Sends one record, waiting while the local queue is full.
fn send_one(
    producer: &ThreadedProducer<Ctx>,
    topic: &str,
    key: &str,
    payload: &[u8],
    headers: &OwnedHeaders,
) -> Result<()> {
    let mut record = BaseRecord::to(topic)
        .key(key)
        .payload(payload)
        .headers(headers.clone());
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                std::thread::sleep(Duration::from_millis(2));
            }
            Err((e, _)) => {
                return Err(Error::Kafka {
                    topic: topic.to_string(),
                    message: e.to_string(),
                })
            }
        }
    }
}

fn finish(
    producer: &ThreadedProducer<Ctx>,
    delivery: &Delivery,
    topic: &str,
    expected: u64,
) -> Result<()> {
    producer
        .flush(Duration::from_secs(300))
        .map_err(|e| Error::Kafka {
            topic: topic.to_string(),
            message: format!("flush: {e}"),
        })?;
    let ok = delivery.ok.load(Ordering::Relaxed);
    let failed = delivery.failed.load(Ordering::Relaxed);
    if failed > 0 || ok != expected {
        let first = delivery
            .first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        return Err(Error::Kafka {
            topic: topic.to_string(),
            message: format!(
                "{ok} of {expected} delivered, {failed} failed; first error: {}",
                first.unwrap_or_default()
            ),
        });
    }
    Ok(())
}

fn run_headers(run_id: &str) -> OwnedHeaders {
    OwnedHeaders::new().insert(Header {
        key: RUN_HEADER,
        value: Some(run_id.as_bytes()),
    })
}

fn send_all(
    config: &rdkafka::ClientConfig,
    topic: &str,
    run_id: &str,
    msgs: Vec<Msg>,
    progress: bool,
) -> Result<()> {
    let (producer, delivery) = producer(config, topic)?;
    let headers = run_headers(run_id);
    let pb = bar(msgs.len() as u64, topic, progress);
    let started = Instant::now();
    for (i, m) in msgs.iter().enumerate() {
        send_one(&producer, topic, &m.key, &m.payload, &headers)?;
        if i % 4096 == 0 {
            pb.set_position(i as u64);
        }
    }
    finish(&producer, &delivery, topic, msgs.len() as u64)?;
    pb.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        topic,
        messages = msgs.len(),
        seconds = secs,
        per_second = (msgs.len() as f64 / secs) as u64,
        "produced"
    );
    Ok(())
}

/// One live purchase, stamped from `now` (its produce time; moved by [`stamp_shift`]),
/// then the re-send and the invalid record that may follow it, each handed to `send` as
/// (key, payload) in produce order and counted in the truth (a purchase under its own
/// stamp). `recent` holds purchases a re-send may copy.
pub(crate) fn live_step(
    opts: &GenOptions,
    draw: &PurchaseDraw<'_>,
    rng: &mut impl Rng,
    now: DateTime<Utc>,
    recent: &mut Vec<lakeshop_model::Purchase>,
    truth: &mut Truth,
    send: &mut impl FnMut(&str, &[u8]) -> Result<()>,
) -> Result<()> {
    let unknown = rng
        .random_bool(opts.unknown_fraction)
        .then_some(Unknown::Product);
    let shift = stamp_shift(opts, rng);
    let p = draw.purchase(rng, now + shift, unknown);
    let payload = p.to_json();
    if shift != TimeDelta::zero() {
        check_verdict(payload.as_bytes(), None, now).map_err(Error::Internal)?;
    }
    truth.purchase(&p, business_day(p.timestamp, opts.timezone));
    send(p.purchase_id.to_string().as_str(), payload.as_bytes())?;
    if recent.len() < 1024 {
        recent.push(p);
    } else {
        let slot = rng.random_range(0..recent.len());
        recent[slot] = p;
    }
    if rng.random_bool(opts.duplicate_fraction) {
        let p = &recent[rng.random_range(0..recent.len())];
        truth.duplicate();
        send(p.purchase_id.to_string().as_str(), p.to_json().as_bytes())?;
    }
    if rng.random_bool(opts.bad_fraction) {
        let (kind, _) = BadKind::WEIGHTED[rng.random_range(0..BadKind::WEIGHTED.len() - 1)];
        let base = draw.purchase(rng, now, None);
        let payload = kind.corrupt(rng, &base, now);
        check_verdict(&payload, Some(kind.reason()), now).map_err(Error::Internal)?;
        truth.bad(kind.reason());
        send(base.purchase_id.to_string().as_str(), payload.as_slice())?;
    }
    Ok(())
}

/// Live mode: purchases stamped now (some late or ahead, see [`live_step`]), `rate` per
/// second for `duration`. The producer leaves each record's timestamp to librdkafka, which
/// stamps the produce time: a purchase stamped late or ahead differs from it by its shift.
fn live_loop(
    opts: &GenOptions,
    targets: &Targets,
    world: &World,
    rng: &mut impl Rng,
    rate: u64,
    duration: Duration,
    truth: &mut Truth,
) -> Result<()> {
    let topic = &targets.purchases_topic;
    let (producer, delivery) = producer(&producer_config(&targets.kafka), topic)?;
    let headers = run_headers(&truth.run_id.to_string());
    let draw = PurchaseDraw::new(world, opts.product_skew);
    let pb = bar(rate * duration.as_secs().max(1), topic, opts.progress);
    let started = Instant::now();
    let mut sent: u64 = 0;
    let mut recent: Vec<lakeshop_model::Purchase> = Vec::with_capacity(1024);
    let mut send = |key: &str, payload: &[u8]| send_one(&producer, topic, key, payload, &headers);
    while started.elapsed() < duration {
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            live_step(opts, &draw, rng, Utc::now(), &mut recent, truth, &mut send)?;
            sent += 1;
        }
        pb.set_position(sent);
        std::thread::sleep(Duration::from_millis(5));
    }
    finish(&producer, &delivery, topic, truth.counts.purchase_messages)?;
    pb.finish_and_clear();
    tracing::info!(
        topic,
        purchases = sent,
        messages = truth.counts.purchase_messages,
        "live run done"
    );
    Ok(())
}
