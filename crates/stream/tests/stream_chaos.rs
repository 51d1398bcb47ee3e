//! The streaming loader exactly once under chaos, against the real broker and ClickHouse: the
//! generator streams purchases live (1% invalid, 1% re-sent, 1% stamped 6 to 30 minutes
//! before their produce time, later than the 5-minute lateness, and 0.1% stamped 2 to 60
//! minutes after it, further ahead than the 1-minute clock skew) while the loader is
//! SIGKILLed at random points, ClickHouse is stopped for at least 22 s and then the broker
//! restarted; afterwards every minute, hour and day aggregate equals the generator's ground
//! truth exactly (the late purchases counted as corrections of their closed windows), every
//! record is counted, counted late, flagged as stamped ahead or rejected under its reason
//! exactly as a recount of the topic by the loader's rules says, and `reconcile` against a
//! batch run over the same stage finds no difference (a day the stream has not closed, only
//! the last, is refused first and then compared with `--force`). Then the same with two
//! loaders in one consumer group, one of them killed again and again, with proof that
//! partitions moved between them (what a dead member may still hold on the local broker is
//! drained by one loader at the end).
//!
//! The two tests stop shared services, so they run one at a time.

use anyhow::{Context as _, Result};
use lakeshop_clickhouse::ClickHouse;
use lakeshop_testkit::world::{Setup, StageKind, World};
use rand::Rng;
use rust_decimal::Decimal;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `[stream] allowed_lateness` of the tests' pipeline, in seconds.
const LATENESS_S: i64 = 300;
/// `[stream] max_clock_skew` of the tests' pipeline, in seconds.
const SKEW_S: i64 = 60;
/// `[stream] dedup_horizon` of the tests' pipeline (the default), in seconds.
const HORIZON_S: i64 = 7 * 86_400;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn state_dir() -> PathBuf {
    std::env::var("LAKESHOP_STATE_DIR")
        .ok()
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .ok_or(())
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".local/state/lakeshop")
        })
}

/// Stops a service `make up` started (SIGTERM to its process group, then waits).
fn stop_service(name: &str) -> Result<()> {
    let pid = std::fs::read_to_string(state_dir().join("pids").join(format!("{name}.pid")))
        .with_context(|| format!("{name} was not started by `make up`"))?;
    let pid = pid.trim();
    // `--` first: procps `kill` reads a bare negative number as options (`-17924` would
    // become signal 17 and pid -1, every process).
    anyhow::ensure!(
        pid.parse::<u32>().is_ok_and(|p| p > 1),
        "{name}.pid holds {pid:?}"
    );
    Command::new("kill")
        .args(["-TERM", "--", &format!("-{pid}")])
        .status()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Path::new(&format!("/proc/{pid}")).exists() {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.contains(") Z ") {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{name} still running 60 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Starts what is missing of the local stack.
fn start_stack() -> Result<()> {
    let out = Command::new("bash")
        .arg(repo().join("infra/up.sh"))
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "infra/up.sh: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

struct Chaos {
    world: World,
    topic: String,
    truth: PathBuf,
    logs: PathBuf,
}

impl Chaos {
    async fn new(partitions: i32) -> Result<Self> {
        let db = lakeshop_testkit::fresh_database("stream_chaos").await?;
        let topic = lakeshop_testkit::unique("purchases");
        lakeshop_testkit::create_topic(&topic, partitions).await?;
        let world = World::new(
            StageKind::Local,
            Setup {
                pg_url: Some(db),
                purchases_topic: Some(topic.clone()),
                ..Setup::default()
            },
        )?;
        let mut text = std::fs::read_to_string(&world.pipeline)?;
        text.push_str(
            "[stream]\nflush_interval = \"200ms\"\nallowed_lateness = \"5m\"\nmax_clock_skew = \"1m\"\n[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"\n",
        );
        std::fs::write(&world.pipeline, text)?;
        let truth = world.dir.path().join("truth.json");
        let logs = world.dir.path().join("logs");
        std::fs::create_dir_all(&logs)?;
        world.run(&["migrate"])?;
        // The dimensions first (same seed as the live run, so the same world), staged.
        let dims_truth = world.dir.path().join("dims.json");
        world.run(&[
            "gen",
            "--clients",
            "3000",
            "--sellers",
            "40",
            "--products",
            "400",
            "--purchases",
            "0",
            "--only",
            "postgres",
            "--only",
            "products",
            "--seed",
            "11",
            "--quiet",
            "--truth",
            &dims_truth.to_string_lossy(),
        ])?;
        for source in ["clients", "sellers", "products"] {
            world.run(&["extract", source, "--quiet"])?;
        }
        Ok(Self {
            world,
            topic,
            truth,
            logs,
        })
    }

    /// `gen` streaming live purchases into the topic.
    fn generator(&self, rate: u64, seconds: u64) -> Result<Child> {
        Ok(Command::new(lakeshop_testkit::lakeshop_bin())
            .arg("--config")
            .arg(&self.world.pipeline)
            .args([
                "gen",
                "--clients",
                "3000",
                "--sellers",
                "40",
                "--products",
                "400",
                "--only",
                "purchases",
                "--seed",
                "11",
                "--duplicate-fraction",
                "0.01",
                "--bad-fraction",
                "0.01",
                "--unknown-fraction",
                "0.005",
                "--late-fraction",
                "0.01",
                "--future-fraction",
                "0.001",
                "--quiet",
            ])
            .args([
                "--rate",
                &rate.to_string(),
                "--duration",
                &format!("{seconds}s"),
            ])
            .arg("--truth")
            .arg(&self.truth)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?)
    }

    /// A loader whose log goes to `logs/<name>.log` (appended across restarts).
    fn loader(&self, name: &str, extra: &[&str]) -> Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{name}.log")))?;
        Ok(Command::new(lakeshop_testkit::lakeshop_bin())
            .arg("--config")
            .arg(&self.world.pipeline)
            .args(["stream", "run", "--no-metrics"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?)
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.logs.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// The lines of a loader's log that tell what happened to it (assignments, revocations,
    /// warnings, errors, the last progress lines), for a failure message.
    fn log_events(&self, name: &str) -> String {
        let log = self.log(name);
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| {
                ["assigned", "revoked", "WARN", "ERROR", "progress", "stop"]
                    .iter()
                    .any(|k| l.contains(k))
            })
            .collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn truth(&self) -> Result<Value> {
        Ok(serde_json::from_slice(&std::fs::read(&self.truth)?)?)
    }

    /// Drains what is left with one loader (`--until-end`).
    fn finish(&self) -> Result<Value> {
        let out = Command::new(lakeshop_testkit::lakeshop_bin())
            .arg("--config")
            .arg(&self.world.pipeline)
            .args([
                "stream",
                "run",
                "--no-metrics",
                "--until-end",
                "--idle",
                "3s",
            ])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "final stream run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        lakeshop_testkit::world::last_json(&String::from_utf8(out.stdout)?)
    }
}

/// One record of a topic with its Kafka timestamp.
struct Timed {
    partition: i32,
    offset: i64,
    /// The record's Kafka timestamp (ms), what the loader measures clock skew against.
    kafka_ms: Option<i64>,
    payload: Vec<u8>,
}

/// Reads a whole topic from the beginning, as [`lakeshop_testkit::read_topic`] does (until
/// every partition reports its end and nothing new arrived for `idle`), keeping each
/// record's Kafka timestamp.
fn read_timed(topic: &str, idle: Duration) -> Result<Vec<Timed>> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    use rdkafka::message::Message as _;
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", lakeshop_testkit::kafka_brokers())
        .set("group.id", lakeshop_testkit::unique("chaos_read"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .set("fetch.message.max.bytes", "8388608")
        .create()?;
    consumer.subscribe(&[topic])?;
    let partitions = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))?
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len());
    anyhow::ensure!(partitions > 0, "{topic} has no partition");
    let mut out = Vec::new();
    let mut eof: HashSet<i32> = HashSet::new();
    let mut last = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                eof.remove(&m.partition());
                out.push(Timed {
                    partition: m.partition(),
                    offset: m.offset(),
                    kafka_ms: m.timestamp().to_millis(),
                    payload: m.payload().unwrap_or_default().to_vec(),
                });
                last = Instant::now();
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                eof.insert(p);
            }
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
        if eof.len() >= partitions && last.elapsed() >= idle {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "reading {topic}: no end after 10 minutes"
        );
    }
    Ok(out)
}

/// What the loader must make of a topic, by its rules, recounted record by record in
/// partition order.
#[derive(Debug, Default)]
struct Recount {
    /// Rejected records by reason.
    rejects: BTreeMap<String, u64>,
    /// Valid purchases older than their partition's watermark by more than the lateness:
    /// counted as corrections (`too_late` rows).
    late: u64,
    /// Purchases counted in their windows though stamped further ahead of their Kafka time
    /// than the clock skew (`future` rows).
    future: u64,
}

/// Recounts `records` (sorted by partition and offset) as the loader decides them: each
/// validated at its Kafka time; a valid purchase id counted before (on time or late),
/// stamped no more than the dedup horizon before this arrival, is a duplicate or, with other
/// content, a conflicting duplicate; else a purchase stamped more than the lateness before the
/// partition's watermark (the newest event time counted, each at most its Kafka time plus
/// the clock skew) is counted late, and one stamped further ahead of its Kafka time than the
/// skew is counted and flagged as such.
fn recount(records: &[Timed]) -> Recount {
    let mut out = Recount::default();
    // Ids counted (on time or late): content and stamp (UTC seconds).
    let mut counted: HashMap<uuid::Uuid, (String, i64)> = HashMap::new();
    let mut watermarks: HashMap<i32, i64> = HashMap::new();
    for r in records {
        let now = r
            .kafka_ms
            .and_then(chrono::DateTime::<chrono::Utc>::from_timestamp_millis)
            .unwrap_or_else(chrono::Utc::now);
        let p = match lakeshop_model::parse_purchase(&r.payload, now) {
            Ok(p) => p,
            Err(rejection) => {
                *out.rejects
                    .entry(rejection.reason.as_str().to_string())
                    .or_default() += 1;
                continue;
            }
        };
        let ts = p.timestamp.timestamp();
        let reach = r
            .kafka_ms
            .map_or(ts, |ms| ts.min(ms.div_euclid(1000) + SKEW_S));
        let watermark = watermarks.entry(r.partition).or_insert(0);
        let horizon = *watermark - LATENESS_S;
        let json = p.to_json();
        if let Some(first) = counted
            .get(&p.purchase_id)
            .filter(|c| c.1 >= ts - HORIZON_S)
        {
            let reason = if first.0 == json {
                "duplicate"
            } else {
                "conflicting_duplicate"
            };
            *out.rejects.entry(reason.to_string()).or_default() += 1;
            continue;
        }
        if ts < horizon {
            out.late += 1;
            counted.insert(p.purchase_id, (json, ts));
            continue;
        }
        *watermark = (*watermark).max(reach);
        if reach < ts {
            out.future += 1;
        }
        counted.insert(p.purchase_id, (json, ts));
    }
    out
}

/// The summary of a loader's run adds up: every record it read counted or rejected, the
/// late and ahead-stamped purchases among the counted, and nothing rejected for lateness.
fn assert_summary(summary: &Value) -> Result<()> {
    let n = |k: &str| {
        summary[k]
            .as_u64()
            .with_context(|| format!("no {k} in the summary {summary}"))
    };
    let (read, counted, rejected) = (n("read")?, n("counted")?, n("rejected")?);
    let (late, future) = (n("late")?, n("future")?);
    assert_eq!(
        read,
        counted + rejected,
        "read = counted + rejected: {summary}"
    );
    assert!(
        late + future <= counted,
        "late and future are counted: {summary}"
    );
    assert!(
        summary["rejected_by_reason"].get("too_late").is_none(),
        "rejected as too late: {summary}"
    );
    Ok(())
}

/// Window rows of the stream views: (window start as `YYYY-MM-DDTHH:MM:SSZ`, key) →
/// (revenue, purchases, items, distinct clients).
async fn windows(
    ch: &ClickHouse,
    granularity: &str,
    dim: &str,
) -> Result<BTreeMap<(String, String), (Decimal, u64, u64, u64)>> {
    // Both values are this test's own constants, never data.
    let rows = ch
        .rows(
            "stream windows",
            &format!(
                "SELECT formatDateTime(window_start, '%Y-%m-%dT%H:%M:%SZ', 'UTC'), key, \
                 toString(revenue), purchases, items, distinct_clients \
                 FROM stream_sales_v WHERE granularity = '{granularity}' AND dim = '{dim}'"
            ),
        )
        .await?;
    let mut out = BTreeMap::new();
    for r in rows {
        let [w, k, rev, p, i, d] =
            <[String; 6]>::try_from(r).map_err(|r| anyhow::anyhow!("row {r:?}"))?;
        out.insert(
            (w, k),
            (Decimal::from_str(&rev)?, p.parse()?, i.parse()?, d.parse()?),
        );
    }
    Ok(out)
}

fn bucket(v: &Value) -> Result<(Decimal, u64, u64)> {
    Ok((
        Decimal::from_str(v["revenue"].as_str().context("revenue")?)?,
        v["purchases"].as_u64().context("purchases")?,
        v["items"].as_u64().context("items")?,
    ))
}

/// Every day, hour and minute aggregate of the stream equals the truth.
async fn assert_equals_truth(chaos: &Chaos) -> Result<()> {
    let ch = &chaos.world.ch;
    let truth = chaos.truth()?;
    let days = truth["days"].as_object().context("days")?;
    anyhow::ensure!(!days.is_empty(), "the truth has no day");
    let day_total = windows(ch, "day", "total").await?;
    let mut expected_days = 0;
    for (day, t) in days {
        let start = format!("{day}T00:00:00Z");
        let (rev, p, i) = bucket(&t["total"])?;
        let got = day_total
            .get(&(start.clone(), String::new()))
            .with_context(|| format!("no day total for {day}"))?;
        assert_eq!(
            (got.0, got.1, got.2, got.3),
            (
                rev,
                p,
                i,
                t["distinct_clients"].as_u64().context("clients")?
            ),
            "day {day} total"
        );
        expected_days += 1;
        for (dim, field) in [
            ("seller", "by_seller"),
            ("category", "by_category"),
            ("product", "by_product"),
        ] {
            let got = windows(ch, "day", dim).await?;
            let want = t[field].as_object().context("breakdown")?;
            let got_day: BTreeMap<&String, (Decimal, u64, u64)> = got
                .iter()
                .filter(|((w, _), _)| *w == start)
                .map(|((_, k), v)| (k, (v.0, v.1, v.2)))
                .collect();
            let want: BTreeMap<&String, (Decimal, u64, u64)> = want
                .iter()
                .map(|(k, v)| Ok((k, bucket(v)?)))
                .collect::<Result<_>>()?;
            assert_eq!(got_day, want, "day {day} by {dim}");
        }
        for (granularity, field) in [("hour", "by_hour"), ("minute", "by_minute")] {
            let Some(want) = t[field].as_object() else {
                anyhow::bail!("the truth has no {field}");
            };
            let got = windows(ch, granularity, "total").await?;
            let got_day: BTreeMap<String, (Decimal, u64, u64)> = got
                .iter()
                .filter(|((w, _), _)| want.contains_key(w))
                .map(|((w, _), v)| (w.clone(), (v.0, v.1, v.2)))
                .collect();
            let want: BTreeMap<String, (Decimal, u64, u64)> = want
                .iter()
                .map(|(k, v)| Ok((k.clone(), bucket(v)?)))
                .collect::<Result<_>>()?;
            assert_eq!(got_day, want, "day {day} by {granularity}");
        }
    }
    assert_eq!(day_total.len(), expected_days, "days the stream counted");
    // Every message is counted or rejected under its reason.
    let rejects = lakeshop_testkit::world::stream_rejects_by_reason(ch).await?;
    let counts = &truth["counts"];
    let sent = counts["purchase_messages"].as_u64().context("messages")?;
    // The generator's producer retries a batch whose acknowledgement the broker restart cut
    // off, so the topic may hold a message twice (at least once without an idempotent
    // producer). What the loader must report is therefore read off the topic itself: each
    // record in partition order, decided by the loader's rules ([`recount`]).
    let mut records = read_timed(&chaos.topic, Duration::from_secs(2))?;
    let in_topic = records.len() as u64;
    anyhow::ensure!(
        in_topic >= sent,
        "the topic holds {in_topic} messages, the generator sent {sent}"
    );
    let copies = in_topic - sent;
    eprintln!("messages sent: {sent}, in the topic: {in_topic} ({copies} producer retries)");
    records.sort_by_key(|r| (r.partition, r.offset));
    let Recount {
        rejects: want,
        late,
        future,
    } = recount(&records);
    eprintln!("purchases counted late: {late}, stamped ahead: {future}");
    // The generator stamps 1% of its purchases late and 0.1% ahead (at least 20 of each
    // expected from 20000 purchases on; a low LAKESHOP_CHAOS_RATE may make none): both kinds
    // reached the loader, and it flagged exactly the records the recount says (each offset
    // once, whatever the kills made it read again).
    let purchases = counts["purchases"].as_u64().context("purchases")?;
    anyhow::ensure!(
        purchases < 20_000 || (late > 0 && future > 0),
        "the topic holds {late} late and {future} ahead-stamped purchases of {purchases}, \
         expected some of each"
    );
    let flags = lakeshop_testkit::world::stream_flags_by_flag(ch).await?;
    // Late re-sends of an id counted before are rejected by the loader, never flagged.
    assert_eq!(
        flags.get("too_late").copied().unwrap_or(0),
        late,
        "purchases counted late: {flags:?}"
    );
    assert_eq!(
        flags.get("duplicate").copied().unwrap_or(0)
            + flags.get("conflicting_duplicate").copied().unwrap_or(0),
        0,
        "late re-sends flagged: {flags:?}"
    );
    assert_eq!(
        flags.get("future").copied().unwrap_or(0),
        future,
        "purchases stamped ahead: {flags:?}"
    );
    // The generator's truth explains all but the copies: each reason holds at least what
    // the truth says, and the copies make up the rest. A re-send of a purchase stamped late
    // is a duplicate like any other.
    let mut truth_rejects: BTreeMap<String, u64> = counts["bad_by_reason"]
        .as_object()
        .context("bad_by_reason")?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
        .collect();
    let truth_duplicates = counts["duplicates"].as_u64().unwrap_or(0);
    if truth_duplicates > 0 {
        truth_rejects.insert("duplicate".into(), truth_duplicates);
    }
    for (reason, n) in &truth_rejects {
        assert!(
            want.get(reason).copied().unwrap_or(0) >= *n,
            "{reason}: the topic holds fewer than the truth's {n}"
        );
    }
    assert_eq!(
        want.values().sum::<u64>(),
        truth_rejects.values().sum::<u64>() + copies,
        "the topic's rejects are the truth's rejects plus the producer's copies: \
         {want:?} vs {truth_rejects:?}"
    );
    // Lateness no longer rejects anything.
    assert_eq!(rejects, want, "rejected records by reason");
    assert!(
        !rejects.contains_key("too_late"),
        "too_late rejects: {rejects:?}"
    );
    // Every distinct purchase is in the windows once (counted on time, or late and added by
    // the views); the rest of the topic is rejects.
    let counted: u64 = day_total.values().map(|v| v.1).sum();
    assert_eq!(
        counted + rejects.values().sum::<u64>(),
        in_topic,
        "read = counted + rejected"
    );
    Ok(())
}

/// When business day `day` of `tz` ends, as a UTC instant.
fn day_end(tz: chrono_tz::Tz, day: chrono::NaiveDate) -> Result<chrono::DateTime<chrono::Utc>> {
    use chrono::TimeZone as _;
    let midnight = day
        .succ_opt()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .with_context(|| format!("the day after {day}"))?;
    Ok(tz
        .from_local_datetime(&midnight)
        .earliest()
        .with_context(|| format!("midnight after {day} in {tz}"))?
        .with_timezone(&chrono::Utc))
}

/// `extract purchases`, `batch run` and `reconcile` over every day of the truth.
///
/// `reconcile` refuses (exit status 3) a day the stream has not closed: a partition's
/// watermark short of the day's end plus the lateness. At the end of a finite run only the
/// last day of the truth is open, or, when the run ended within the lateness (plus a margin
/// for partitions whose newest purchase came a little earlier) of a midnight, the day before
/// it too (purchases stamped ahead can put the last day after that midnight). Such a day is
/// then compared with `--force`; every other day must be closed and equal.
fn assert_reconciles(chaos: &Chaos) -> Result<()> {
    let w = &chaos.world;
    w.run(&["extract", "purchases", "--until-end", "--quiet"])?;
    let truth = chaos.truth()?;
    let tz: chrono_tz::Tz = truth["timezone"]
        .as_str()
        .context("timezone")?
        .parse()
        .map_err(|e| anyhow::anyhow!("the truth's timezone: {e}"))?;
    let generated_at = chrono::DateTime::parse_from_rfc3339(
        truth["generated_at"].as_str().context("generated_at")?,
    )?
    .with_timezone(&chrono::Utc);
    let seconds = truth["seconds"].as_f64().context("seconds")?;
    let gen_end = generated_at + chrono::TimeDelta::milliseconds((seconds * 1000.0) as i64);
    let days = truth["days"].as_object().context("days")?;
    let last = days.keys().max().context("the truth has no day")?.clone();
    for day in days.keys() {
        w.run(&["batch", "run", "--date", day])?;
        let (code, stdout, stderr) = w.try_run_status(&["reconcile", "--date", day, "--json"])?;
        if code == Some(0) {
            continue;
        }
        let date: chrono::NaiveDate = day.parse()?;
        let may_be_open = *day == last
            || day_end(tz, date)? + chrono::TimeDelta::seconds(LATENESS_S + 120) > gen_end;
        assert!(
            code == Some(3) && may_be_open,
            "reconcile {day} (the last day is {last}, the generator stopped at {gen_end}) \
             exited with {code:?}, not 0, nor 3 for a day still open: {stdout}\n{stderr}"
        );
        assert!(
            stderr.contains("refused"),
            "reconcile {day} exited with 3 but did not say it refused: {stderr}"
        );
        let (code, stdout, stderr) =
            w.try_run_status(&["reconcile", "--date", day, "--json", "--force"])?;
        assert_eq!(
            code,
            Some(0),
            "reconcile --force {day} found differences: {stdout}\n{stderr}"
        );
    }
    Ok(())
}

/// Loader starts in `log` that restored their partitions from the checkpoints.
fn restored_starts(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("assigned; reading from the checkpoints"))
        .count()
}

/// Flushes in `log` that ClickHouse did not acknowledge.
fn failed_flushes(log: &str) -> usize {
    log.lines().filter(|l| l.contains("flush failed")).count()
}

/// Waits until the loader started after `restored_before` restores restored its partitions
/// and a progress line after that shows it flushed.
fn wait_until_flushing(chaos: &Chaos, restored_before: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = chaos.log("loader");
        let flushing = log
            .lines()
            .filter(|l| l.contains("assigned; reading from the checkpoints"))
            .count()
            > restored_before
            && log
                .rsplit("assigned; reading from the checkpoints")
                .next()
                .is_some_and(|after| {
                    after.lines().any(|l| {
                        l.contains("progress")
                            && l.split("flushes=")
                                .nth(1)
                                .and_then(|v| v.split_whitespace().next())
                                .and_then(|v| v.parse::<u64>().ok())
                                .is_some_and(|n| n > 0)
                    })
                });
        if flushing {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the loader never flushed after its start:\n{}",
            chaos.log_events("loader")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_loader_broker_restart_and_clickhouse_outage_count_every_purchase_once() -> Result<()>
{
    let _serial = SERIAL.lock().await;
    // A rate the (unoptimised) loader keeps up with between kills, for long enough that the
    // ClickHouse outage meets records still arriving: at 6,000/s for 50 s a loader killed
    // every few seconds fell so far behind that the generator had ended, and the loader had
    // read everything, before the outage began (nothing to flush, so no flush failed).
    let rate: u64 = std::env::var("LAKESHOP_CHAOS_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let seconds = 80;
    let chaos = Chaos::new(3).await?;
    let mut gen = chaos.generator(rate, seconds)?;
    let started = Instant::now();
    let mut rng = rand::rng();
    let mut kills = 0;
    let (mut broker_restarted, mut clickhouse_stopped) = (false, false);
    while gen.try_wait()?.is_none() || kills < 5 || !broker_restarted || !clickhouse_stopped {
        let restored_before = restored_starts(&chaos.log("loader"));
        let mut loader = chaos.loader("loader", &[])?;
        std::thread::sleep(Duration::from_millis(rng.random_range(1500..5000)));
        let t = started.elapsed().as_secs();
        // ClickHouse goes down first, in the first half of the generator's run: a flush
        // fails only when records arrive while it is down, and its shutdown (SIGTERM) may
        // take seconds during which it still acknowledges. The broker restart follows.
        if !clickhouse_stopped && t >= seconds / 4 {
            // The outage must meet a loader that is past its start (which reads ClickHouse)
            // and flushing, or it proves nothing about flushes; it lasts at least 22 s and
            // until a flush has failed.
            wait_until_flushing(&chaos, restored_before)?;
            let failed_before = failed_flushes(&chaos.log("loader"));
            stop_service("clickhouse")?;
            let down = Instant::now();
            while down.elapsed() < Duration::from_secs(22)
                || (failed_flushes(&chaos.log("loader")) == failed_before
                    && down.elapsed() < Duration::from_secs(60))
            {
                std::thread::sleep(Duration::from_millis(200));
            }
            start_stack()?;
            clickhouse_stopped = true;
            std::thread::sleep(Duration::from_secs(2));
        } else if clickhouse_stopped && !broker_restarted && t >= seconds / 2 {
            stop_service("kafka")?;
            std::thread::sleep(Duration::from_secs(2));
            start_stack()?;
            broker_restarted = true;
            std::thread::sleep(Duration::from_secs(2));
        }
        loader.kill()?; // SIGKILL
        loader.wait()?;
        kills += 1;
    }
    assert!(gen.wait()?.success(), "gen failed");
    let summary = chaos.finish()?;
    eprintln!("kills: {kills}, final run: {summary}");
    assert_summary(&summary)?;
    // Evidence that the chaos reached the loader: restores from checkpoints after kills, and
    // flushes that failed while ClickHouse was down.
    let log = chaos.log("loader");
    let restores = restored_starts(&log);
    let failed = failed_flushes(&log);
    eprintln!("loader starts that restored state: {restores}, failed flushes: {failed}");
    assert!(
        restores >= 5,
        "only {restores} loader starts restored state:\n{}",
        chaos.log_events("loader")
    );
    assert!(
        failed > 0,
        "no flush failed while ClickHouse was down:\n{}",
        chaos.log_events("loader")
    );
    assert_equals_truth(&chaos).await?;
    assert_reconciles(&chaos)?;
    Ok(())
}

/// The partitions each "assigned" line of a log names.
fn assignments(log: &str) -> Vec<Vec<i32>> {
    log.lines()
        .filter(|l| l.contains("assigned; reading from the checkpoints"))
        .filter_map(|l| {
            let list = l.split("partitions=[").nth(1)?.split(']').next()?;
            Some(
                list.split(',')
                    .filter_map(|p| p.trim().parse().ok())
                    .collect(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_loaders_in_one_group_one_killed_count_every_purchase_once() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let chaos = Chaos::new(4).await?;
    let mut gen = chaos.generator(4000, 40)?;
    let mut stayer = chaos.loader("stayer", &["--group"])?;
    // The stayer owns every partition before the other member first joins, so the other's
    // arrival has to take partitions from it (proof that they move between the two).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !assignments(&chaos.log("stayer"))
        .iter()
        .any(|s| s.len() == 4)
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the stayer never owned every partition:\n{}",
            chaos.log_events("stayer")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut rng = rand::rng();
    let mut kills = 0;
    while gen.try_wait()?.is_none() || kills < 3 {
        let mut other = chaos.loader("other", &["--group"])?;
        std::thread::sleep(Duration::from_millis(rng.random_range(6000..12000)));
        other.kill()?; // SIGKILL
        other.wait()?;
        kills += 1;
    }
    assert!(gen.wait()?.success(), "gen failed");
    // The member that stayed drains what it holds on SIGTERM. The local broker does not
    // always expire a member that died (Apache Kafka does, after `session.timeout.ms`), so a
    // partition may stay assigned to a dead member: one loader without a group then reads
    // what is left from the checkpoints the group members wrote.
    Command::new("kill")
        .args(["-TERM", &stayer.id().to_string()])
        .status()?;
    assert!(stayer.wait()?.success(), "the stayer did not drain cleanly");
    let summary = chaos.finish()?;
    eprintln!("kills: {kills}, final run: {summary}");
    assert_summary(&summary)?;
    let stayer_log = chaos.log("stayer");
    let other_log = chaos.log("other");
    let stayer_sets = assignments(&stayer_log);
    let other_sets = assignments(&other_log);
    eprintln!("stayer assignments: {stayer_sets:?}; other: {other_sets:?}");
    // Partitions moved: the other member owned some, and the stayer owned different sets.
    assert!(
        other_sets.iter().any(|s| !s.is_empty()),
        "the killed member never got a partition"
    );
    let distinct: std::collections::BTreeSet<&Vec<i32>> = stayer_sets.iter().collect();
    assert!(
        distinct.len() >= 2,
        "the remaining member's partitions never changed:\n{}",
        chaos.log_events("stayer")
    );
    assert!(stayer_log.contains("partition restored") && other_log.contains("partition restored"));
    assert_equals_truth(&chaos).await?;
    assert_reconciles(&chaos)?;
    Ok(())
}
