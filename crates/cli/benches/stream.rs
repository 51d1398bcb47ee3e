//! Bench: the streaming loader (`lakeshop stream run`) next to two Python baselines, in one
//! run, on the same data, against the local stack.
//!
//! 1. Throughput: a topic pre-filled by `gen --rate` (`LAKESHOP_BENCH_STREAM_EVENTS`, default
//!    1M purchases, at `LAKESHOP_BENCH_STREAM_GEN_RATE`, default 200k/s; the real count is the
//!    truth file's), read by `stream run --until-end` into a fresh ClickHouse database:
//!    windows, purchases rows and checkpoints included. CPU seconds per 1M events, peak RSS,
//!    events/s. The purchases are all valid and distinct (no `--bad-fraction`, no re-sends),
//!    so every contender handles every record alike. Beside the whole run's CPU, the loader
//!    and baseline A each report their own CPU when the first record arrived (start-up:
//!    connections, the loader's dimension cache, Python's imports), and CPU per 1M from there
//!    on is printed next to it.
//! 2. Baseline A, `bench/stream_consumer.py`: confluent-kafka + clickhouse-driver (native
//!    protocol), `json.loads` per record, one row per purchase inserted in batches of 10k.
//! 3. Baseline B, `bench/quix_windows.py`: Quix Streams, one-minute tumbling windows of
//!    revenue per shop, at-least-once, until every record went through a window.
//! 4. Latency at a steady rate (`LAKESHOP_BENCH_STREAM_LATENCY_RATE`, default 10k/s, for
//!    `LAKESHOP_BENCH_STREAM_LATENCY_SECONDS`, default 30): the loader follows a fresh topic
//!    (`--flush-interval 200ms`) while `gen` produces live; a poller thread asks ClickHouse
//!    every 25 ms how far each partition is visible in the minute totals (the `version` of
//!    `stream_minutes` is the offset after the last record folded in). Afterwards every
//!    record's Kafka timestamp (the producer's CreateTime, taken when `gen` handed it to
//!    librdkafka) is read back, and each record's latency is the time of the first answer
//!    that showed it minus that timestamp: event produced → visible in a ClickHouse query,
//!    per record, to within one poll. p50/p99 over the steady part (from 3 s after the first
//!    record to 1 s before the kill below: a record produced just before the kill waits for
//!    the restart, and counts under recovery). A bare consumer reads the same topic
//!    meanwhile (fetch wait 10 ms) and notes when each record reached it: that splits each
//!    latency into the broker's part (produced -> delivered) and the loader's (delivered ->
//!    visible).
//! 5. Recovery: at `LAKESHOP_BENCH_STREAM_KILL_AT` (default 15 s) the loader is SIGKILLed and
//!    started again at once. At each poll the staleness is the age of the oldest produced
//!    record not yet visible; recovery is the time from the kill to the first poll from
//!    which staleness stays under 500 ms.
//! 6. Keys: a catalogue of `LAKESHOP_BENCH_STREAM_KEYS_PRODUCTS` (default 1M) products, each
//!    equally likely (`gen --product-skew 0`), and live purchases at `LAKESHOP_BENCH_STREAM_KEYS_RATE` (20k/s) for
//!    `LAKESHOP_BENCH_STREAM_KEYS_SECONDS` (120 s): ~2.4M purchases over 2-3 minutes of event
//!    time give ~1.4M distinct (minute, product) windows, all open at once (they close 5
//!    minutes after the watermark), ~0.9M (hour, product) keys (sums of those minutes, in
//!    ClickHouse) and the purchase ids within the lateness. Peak RSS of `stream run
//!    --until-end` over them.
//!
//! Every measured process runs under GNU time. The CPU the local services (broker, its S3
//! storage, ClickHouse) spent during each run is reported beside it, from /proc, when
//! `make up` started them. Prints a table and writes `bench-results/stream.json`.
//! `LAKESHOP_BENCH_KEEP=1` keeps the ClickHouse databases and the temp dir;
//! `LAKESHOP_BENCH_STREAM_PARTS` (e.g. `throughput,keys`) runs only those parts.

use anyhow::{Context as _, Result};
use lakeshop_clickhouse::{ClickHouse, ClickHouseOptions};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::{Message as _, Offset, TopicPartitionList};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod common;

use common::{bench_python, env_u64, last_json, measure, Measured};

const BIN: &str = env!("CARGO_BIN_EXE_lakeshop");
const PARTITIONS: i32 = 3;
/// The seed of every `gen` run: dimensions and live purchases draw the same world.
const SEED: &str = "17";
/// Native protocol port of the local ClickHouse (infra/lib.sh `CH_TCP_PORT`).
const CLICKHOUSE_TCP_PORT: &str = "9000";
/// How long `--until-end` waits at the end of every partition.
const IDLE_SECONDS: f64 = 3.0;
/// The latency goal, and the line recovery is measured against.
const LATENCY_GOAL_MS: f64 = 500.0;
const POLL_EVERY: Duration = Duration::from_millis(25);
/// Records produced this close to the kill are left out of the steady latency: the kill may
/// catch them before their flush (the loader flushes every 200 ms here), and then they wait
/// for the restart, which the recovery figures measure.
const KILL_MARGIN_MS: f64 = 1000.0;

fn clickhouse_url() -> String {
    std::env::var("CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into())
}

/// `[clickhouse] compression` of the loader: `none` by default, as suits the local server
/// and as baseline A sends its rows (clickhouse-driver's default);
/// `LAKESHOP_BENCH_CLICKHOUSE_COMPRESSION=lz4` measures the other.
fn clickhouse_compression() -> String {
    std::env::var("LAKESHOP_BENCH_CLICKHOUSE_COMPRESSION").unwrap_or_else(|_| "none".into())
}

fn clickhouse_user() -> String {
    std::env::var("CLICKHOUSE_USER").unwrap_or_else(|_| "default".into())
}

fn clickhouse(database: &str) -> Result<ClickHouse> {
    Ok(ClickHouse::new(&ClickHouseOptions {
        url: clickhouse_url(),
        database: database.into(),
        user: clickhouse_user(),
        password: std::env::var("CLICKHOUSE_PASSWORD").unwrap_or_default(),
        compression: Default::default(),
    })?)
}

/// Milliseconds since the Unix epoch (the clock Kafka timestamps use).
fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("non-UTF-8 path")
}

/// CPU seconds (user + system) of the processes of one local service (its process group,
/// as `make up` started it); `None` when `make up` did not start it.
fn service_cpu(name: &str) -> Option<f64> {
    // Empty means the default, as in infra/lib.sh (`.env.example` sets it empty).
    let state = std::env::var("LAKESHOP_STATE_DIR")
        .ok()
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".local/state/lakeshop")
        });
    let pgid: i64 = std::fs::read_to_string(state.join("pids").join(format!("{name}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let mut ticks = 0.0;
    let mut found = false;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the command name: state, ppid, pgrp, ..., utime (11), stime (12).
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.get(2).and_then(|g| g.parse::<i64>().ok()) != Some(pgid) {
            continue;
        }
        found = true;
        for i in [11, 12] {
            ticks += f.get(i).and_then(|t| t.parse::<f64>().ok()).unwrap_or(0.0);
        }
    }
    found.then_some(ticks / 100.0)
}

const SERVICES: [&str; 3] = ["kafka", "s3", "clickhouse"];

/// CPU seconds each local service spends while `f` runs.
fn with_service_cpu<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, Value)> {
    let before: Vec<Option<f64>> = SERVICES.iter().map(|s| service_cpu(s)).collect();
    let out = f()?;
    let mut spent = serde_json::Map::new();
    for (s, b) in SERVICES.iter().zip(before) {
        if let (Some(b), Some(a)) = (b, service_cpu(s)) {
            spent.insert((*s).to_string(), json!(a - b));
        }
    }
    Ok((out, Value::Object(spent)))
}

/// The dimension side shared by worlds: a PostgreSQL database (clients, sellers), a products
/// Delta table, and a local stage the three are extracted into.
struct Dims {
    pg_url: String,
    products_uri: String,
    stage: PathBuf,
    clients: u64,
    sellers: u64,
    products: u64,
}

impl Dims {
    async fn new(
        dir: &Path,
        name: &str,
        clients: u64,
        sellers: u64,
        products: u64,
    ) -> Result<Self> {
        Ok(Self {
            pg_url: lakeshop_testkit::fresh_database("bench").await?,
            products_uri: format!(
                "s3://lakeshop/{}/products",
                lakeshop_testkit::unique("bench")
            ),
            stage: dir.join(format!("stage-{name}")),
            clients,
            sellers,
            products,
        })
    }

    /// `gen` arguments drawing this world (with `--only` parts to add).
    fn gen_args(&self) -> Vec<String> {
        [
            "gen",
            "--clients",
            &self.clients.to_string(),
            "--sellers",
            &self.sellers.to_string(),
            "--products",
            &self.products.to_string(),
            "--seed",
            SEED,
            "--quiet",
        ]
        .iter()
        .map(|s| (*s).to_string())
        .collect()
    }
}

/// One loader's world: the shared dimensions, its own topic, ClickHouse database (migrated)
/// and pipeline file.
struct World<'a> {
    dims: &'a Dims,
    name: String,
    pipeline: PathBuf,
    topic: String,
    database: String,
}

impl<'a> World<'a> {
    async fn new(
        dir: &Path,
        dims: &'a Dims,
        name: &str,
        databases: &mut Vec<String>,
    ) -> Result<Self> {
        let topic = lakeshop_testkit::unique(&format!("bench_stream_{name}"));
        lakeshop_testkit::create_topic(&topic, PARTITIONS).await?;
        let database = lakeshop_testkit::unique("lakeshop_bench_stream");
        databases.push(database.clone());
        let pipeline = dir.join(format!("{name}.toml"));
        std::fs::write(
            &pipeline,
            format!(
                "[pipeline]\nname = \"{}\"\ntimezone = \"UTC\"\n\
                 [postgres]\nurl = \"{}\"\ntls = \"disable\"\n\
                 [kafka]\nbrokers = \"{}\"\n\
                 [kafka.topics.purchases]\nname = \"{topic}\"\npartitions = {PARTITIONS}\n\
                 [s3]\nendpoint = \"{}\"\n\
                 [products]\nuri = \"{}\"\n\
                 [stage]\nuri = \"{}\"\n\
                 [clickhouse]\nurl = \"{}\"\ndatabase = \"{database}\"\nuser = \"{}\"\npassword = \"${{CLICKHOUSE_PASSWORD:-}}\"\ncompression = \"{}\"\n\
                 [stream]\nflush_interval = \"200ms\"\n",
                lakeshop_testkit::unique("bench"),
                dims.pg_url,
                lakeshop_testkit::kafka_brokers(),
                lakeshop_testkit::s3_endpoint(),
                dims.products_uri,
                dims.stage.display(),
                clickhouse_url(),
                clickhouse_user(),
                clickhouse_compression(),
            ),
        )?;
        let world = Self {
            dims,
            name: name.to_string(),
            pipeline,
            topic,
            database,
        };
        world.lakeshop(&["migrate"])?;
        Ok(world)
    }

    fn ch(&self) -> Result<ClickHouse> {
        clickhouse(&self.database)
    }

    /// Runs `lakeshop` with this world's pipeline under GNU time.
    fn lakeshop(&self, args: &[&str]) -> Result<Measured> {
        let mut all = vec!["--config", path_str(&self.pipeline)?];
        all.extend_from_slice(args);
        measure(BIN, &all)
    }

    /// Writes the dimensions (PostgreSQL clients and sellers, the products Delta table) and
    /// extracts them into the stage; returns the seconds it took.
    fn load_dims(&self, dir: &Path) -> Result<f64> {
        let started = Instant::now();
        let truth = dir.join(format!("dims-{}.json", self.name));
        let mut args = self.dims.gen_args();
        args.extend(
            [
                "--purchases",
                "0",
                "--only",
                "postgres",
                "--only",
                "products",
                "--truth",
                path_str(&truth)?,
            ]
            .map(String::from),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.lakeshop(&args)?;
        for source in ["clients", "sellers", "products"] {
            self.lakeshop(&["extract", source, "--quiet"])?;
        }
        Ok(started.elapsed().as_secs_f64())
    }

    /// `gen` arguments producing live purchases at `rate` for `seconds` into the topic.
    fn live_args(&self, rate: u64, seconds: u64, truth: &Path) -> Result<Vec<String>> {
        let mut args = vec![
            "--config".to_string(),
            path_str(&self.pipeline)?.to_string(),
        ];
        args.extend(self.dims.gen_args());
        // The keys run draws products uniformly: as many distinct (window, product) keys as
        // the purchases can make.
        if self.name == "keys" {
            args.extend(["--product-skew", "0"].map(String::from));
        }
        args.extend(
            [
                "--only",
                "purchases",
                "--rate",
                &rate.to_string(),
                "--duration",
                &format!("{seconds}s"),
                "--truth",
                path_str(truth)?,
            ]
            .map(String::from),
        );
        Ok(args)
    }

    /// Pre-fills the topic with live purchases; returns (gen run, purchase messages).
    fn fill(&self, dir: &Path, rate: u64, seconds: u64) -> Result<(Measured, u64)> {
        let truth = dir.join(format!("truth-{}.json", self.name));
        let args = self.live_args(rate, seconds, &truth)?;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = measure(BIN, &args)?;
        Ok((run, messages(&truth)?))
    }

    /// `stream run --until-end` under GNU time, with the CPU the services spent meanwhile.
    fn drain(&self) -> Result<(Measured, Value, Value)> {
        let idle = format!("{IDLE_SECONDS}s");
        let (run, services) = with_service_cpu(|| {
            self.lakeshop(&[
                "stream",
                "run",
                "--until-end",
                "--idle",
                &idle,
                "--no-metrics",
            ])
        })?;
        let stats = last_json(&run.stdout)?;
        Ok((run, stats, services))
    }

    /// A loader following the topic, its log appended to `log`.
    fn follow(&self, log: &Path) -> Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        Ok(Command::new(BIN)
            .arg("--config")
            .arg(&self.pipeline)
            .args(["stream", "run", "--no-metrics", "--flush-interval", "200ms"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?)
    }

    /// Purchases counted in the minute totals (as readers see them).
    async fn counted(&self) -> Result<u64> {
        let rows = self
            .ch()?
            .rows(
                "counted purchases",
                "SELECT sum(purchases) FROM stream_windows_v WHERE granularity = 'minute' AND dim = 'total'",
            )
            .await?;
        Ok(rows
            .first()
            .and_then(|r| r.first())
            .context("no row")?
            .parse()
            .unwrap_or(0))
    }
}

/// The purchase messages a `gen` run produced, from its truth file.
fn messages(truth: &Path) -> Result<u64> {
    let t: Value = serde_json::from_slice(&std::fs::read(truth)?)?;
    t["counts"]["purchase_messages"]
        .as_u64()
        .context("truth counts.purchase_messages")
}

/// CPU seconds per 1M records.
fn per_1m(cpu: f64, records: u64) -> f64 {
    cpu * 1e6 / records as f64
}

async fn throughput(dir: &Path, dims: &Dims, databases: &mut Vec<String>) -> Result<Value> {
    let n = env_u64("LAKESHOP_BENCH_STREAM_EVENTS", 1_000_000);
    let rate = env_u64("LAKESHOP_BENCH_STREAM_GEN_RATE", 200_000);
    let w = World::new(dir, dims, "throughput", databases).await?;
    let dims_seconds = w.load_dims(dir)?;
    let (gen, records) = w.fill(dir, rate, n.div_ceil(rate).max(1))?;

    // 1. The loader.
    let (run, stats, loader_services) = w.drain()?;
    anyhow::ensure!(
        stats["read"].as_u64() == Some(records) && stats["counted"].as_u64() == Some(records),
        "the loader read {} and counted {} of {records} records: {stats}",
        stats["read"],
        stats["counted"]
    );
    let visible = w.counted().await?;
    anyhow::ensure!(
        visible == records,
        "ClickHouse shows {visible} of {records} purchases"
    );
    let loader_seconds = run.wall - IDLE_SECONDS;

    // 2. Baseline A: a minimal Python consumer into ClickHouse.
    let python = bench_python()?;
    let url = url::Url::parse(&clickhouse_url())?;
    let host = url.host_str().unwrap_or("127.0.0.1").to_string();
    let user = clickhouse_user();
    let brokers = lakeshop_testkit::kafka_brokers();
    let partitions = PARTITIONS.to_string();
    let (a, a_services) = with_service_cpu(|| {
        measure(
            &python,
            &[
                "bench/stream_consumer.py",
                &brokers,
                &w.topic,
                &partitions,
                &host,
                CLICKHOUSE_TCP_PORT,
                &user,
                &w.database,
                "baseline_purchases",
            ],
        )
    })?;
    let a_stats = last_json(&a.stdout)?;
    anyhow::ensure!(
        a_stats["records"].as_u64() == Some(records) && a_stats["rows"].as_u64() == Some(records),
        "stream_consumer.py: {a_stats} of {records} records"
    );

    // 3. Baseline B: Quix Streams windows.
    let state = dir.join("quix-state");
    let n_arg = records.to_string();
    let (b, b_services) = with_service_cpu(|| {
        measure(
            &python,
            &[
                "bench/quix_windows.py",
                &brokers,
                &w.topic,
                &partitions,
                &n_arg,
                path_str(&state)?,
                "30",
            ],
        )
    })?;
    let b_stats = last_json(&b.stdout)?;
    anyhow::ensure!(
        b_stats["records"].as_u64() == Some(records),
        "quix_windows.py: {b_stats} of {records} records"
    );

    let cpu_1m = per_1m(run.cpu, records);
    let a_cpu_1m = per_1m(a.cpu, records);
    let b_cpu_1m = per_1m(b.cpu, records);
    // The same, without start-up (before the first record: connections, the loader's
    // dimension cache, Python's imports), as each process measured its own CPU.
    let loader_start = stats["cpu_ms_before_first_record"]
        .as_f64()
        .map(|ms| ms / 1000.0);
    let loader_own = stats["cpu_ms"].as_f64().map(|ms| ms / 1000.0);
    let a_start = a_stats["cpu_seconds_before_first_record"].as_f64();
    let a_own = a_stats["cpu_seconds"].as_f64();
    let after_start = |start: Option<f64>, own: Option<f64>| match (start, own) {
        (Some(s), Some(o)) => json!(per_1m(o - s, records)),
        _ => Value::Null,
    };
    let loader_after = after_start(loader_start, loader_own);
    let a_after = after_start(a_start, a_own);
    let ratio_after = match (a_after.as_f64(), loader_after.as_f64()) {
        (Some(a), Some(l)) if l > 0.0 => json!(a / l),
        _ => Value::Null,
    };
    Ok(json!({
        "records": records,
        "requested_records": n,
        "gen_rate": rate,
        "gen_seconds": gen.wall,
        "dims": {"clients": dims.clients, "sellers": dims.sellers, "products": dims.products, "seconds": dims_seconds},
        "loader": {
            "clickhouse_compression": clickhouse_compression(),
            "stats": stats,
            "seconds": run.wall,
            "idle_seconds": IDLE_SECONDS,
            // Without the idle wait at the end.
            "events_per_s": records as f64 / loader_seconds,
            "cpu_seconds": run.cpu,
            "cpu_seconds_per_1m": cpu_1m,
            "start_up_cpu_seconds": loader_start,
            "cpu_seconds_per_1m_after_start_up": loader_after,
            "peak_rss_mib": run.rss_mib,
            "services_cpu_seconds": loader_services,
        },
        "python_consumer": {
            "stats": a_stats,
            "seconds": a.wall,
            "events_per_s": records as f64 / a.wall,
            "cpu_seconds": a.cpu,
            "cpu_seconds_per_1m": a_cpu_1m,
            "start_up_cpu_seconds": a_start,
            "cpu_seconds_per_1m_after_start_up": a_after,
            "peak_rss_mib": a.rss_mib,
            "services_cpu_seconds": a_services,
            "cpu_ratio_vs_loader": a_cpu_1m / cpu_1m,
            "cpu_ratio_vs_loader_after_start_up": ratio_after,
        },
        "quix_windows": {
            "stats": b_stats,
            "seconds": b.wall,
            "events_per_s": records as f64 / b.wall,
            "cpu_seconds": b.cpu,
            "cpu_seconds_per_1m": b_cpu_1m,
            "peak_rss_mib": b.rss_mib,
            "services_cpu_seconds": b_services,
            "cpu_ratio_vs_loader": b_cpu_1m / cpu_1m,
        },
    }))
}

/// One answer of the poller: when it arrived (ms since the epoch), how long the query took,
/// and per partition the offset up to which records are visible.
struct Poll {
    at: f64,
    query_ms: f64,
    visible: Vec<u64>,
}

/// Asks ClickHouse every [`POLL_EVERY`] how far each partition is visible in the minute
/// totals, until `stop`.
fn poller(
    database: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<(Vec<Poll>, u64)>> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let ch = clickhouse(&database)?;
            let mut polls = Vec::new();
            let mut errors = 0u64;
            let mut tick = tokio::time::interval(POLL_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let sent = Instant::now();
                // The latest state of each minute-total window per partition; its version is
                // the offset after the last record folded in.
                let rows = ch
                    .rows(
                        "visible offsets",
                        "SELECT part, max(version) FROM stream_minutes \
                         WHERE dim = 'total' GROUP BY part",
                    )
                    .await;
                let at = now_ms();
                let Ok(rows) = rows else {
                    errors += 1;
                    continue;
                };
                let mut visible = vec![0u64; PARTITIONS as usize];
                for r in rows {
                    if let [p, v] = r.as_slice() {
                        if let (Ok(p), Ok(v)) = (p.parse::<usize>(), v.parse::<u64>()) {
                            if let Some(slot) = visible.get_mut(p) {
                                *slot = v;
                            }
                        }
                    }
                }
                polls.push(Poll {
                    at,
                    query_ms: sent.elapsed().as_secs_f64() * 1000.0,
                    visible,
                });
            }
            Ok((polls, errors))
        })
    })
}

/// Per partition, (offset, ms since the epoch) of each record, in offset order.
type PerPartition = Vec<Vec<(u64, f64)>>;

/// The broker's own delivery, as a baseline: a bare consumer reading the topic from the start
/// (fetch wait 10 ms) while `gen` produces, noting when each record reached it, until `stop`.
/// Per partition, (offset, ms since the epoch) in offset order.
fn witness(topic: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Result<PerPartition>> {
    std::thread::spawn(move || {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", lakeshop_testkit::kafka_brokers())
            .set("group.id", lakeshop_testkit::unique("bench_witness"))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .set("fetch.min.bytes", "1")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let mut out = vec![Vec::new(); PARTITIONS as usize];
        while !stop.load(Ordering::Relaxed) {
            match consumer.poll(Duration::from_millis(50)) {
                Some(Ok(m)) => {
                    let at = now_ms();
                    if let Some(slot) = usize::try_from(m.partition())
                        .ok()
                        .and_then(|p| out.get_mut(p))
                    {
                        slot.push((u64::try_from(m.offset())?, at));
                    }
                }
                Some(Err(e)) => return Err(e.into()),
                None => {}
            }
        }
        Ok(out)
    })
}

/// Every record of the topic as (offset, Kafka timestamp in ms), per partition, in offset
/// order.
fn timestamps(topic: &str) -> Result<PerPartition> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", lakeshop_testkit::kafka_brokers())
        .set("group.id", lakeshop_testkit::unique("bench"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.message.max.bytes", "8388608")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut out = vec![Vec::new(); PARTITIONS as usize];
    let mut eof = BTreeSet::new();
    let started = Instant::now();
    while eof.len() < PARTITIONS as usize {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                eof.remove(&m.partition());
                let ts = m
                    .timestamp()
                    .to_millis()
                    .context("a record without timestamp")?;
                out.get_mut(usize::try_from(m.partition())?)
                    .context("partition")?
                    .push((u64::try_from(m.offset())?, ts as f64));
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                eof.insert(p);
            }
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "reading the topic back is stuck"
        );
    }
    for p in &mut out {
        p.sort_by_key(|r| r.0);
    }
    Ok(out)
}

/// The `q` quantile (0..=1) of sorted values.
fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted.get(i).copied()
}

fn summary(mut v: Vec<f64>) -> Value {
    v.sort_by(f64::total_cmp);
    json!({
        "records": v.len(),
        "p50_ms": quantile(&v, 0.5),
        "p90_ms": quantile(&v, 0.9),
        "p99_ms": quantile(&v, 0.99),
        "max_ms": v.last(),
    })
}

/// Each record's (Kafka timestamp, latency): the first poll that showed it minus its
/// timestamp.
fn record_latencies(polls: &[Poll], records: &[Vec<(u64, f64)>]) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    for (p, recs) in records.iter().enumerate() {
        let mut i = 0;
        for poll in polls {
            let v = poll.visible.get(p).copied().unwrap_or(0);
            while let Some(&(offset, ts)) = recs.get(i) {
                if offset >= v {
                    break;
                }
                out.push((ts, poll.at - ts));
                i += 1;
            }
        }
    }
    out
}

/// At each poll: the age of the oldest record produced but not yet visible (0 when none).
fn staleness(poll: &Poll, records: &[Vec<(u64, f64)>]) -> f64 {
    let mut worst: f64 = 0.0;
    for (p, recs) in records.iter().enumerate() {
        let v = poll.visible.get(p).copied().unwrap_or(0);
        let i = recs.partition_point(|r| r.0 < v);
        if let Some(&(_, ts)) = recs.get(i) {
            if ts <= poll.at {
                worst = worst.max(poll.at - ts);
            }
        }
    }
    worst
}

/// Sends SIGTERM to a child and waits up to `within` for it to exit (then SIGKILL).
async fn terminate(child: &mut Child, within: Duration) -> Result<Option<i32>> {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status.code());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill()?;
    child.wait()?;
    Ok(None)
}

async fn latency(dir: &Path, world: &World<'_>) -> Result<Value> {
    let rate = env_u64("LAKESHOP_BENCH_STREAM_LATENCY_RATE", 10_000);
    let seconds = env_u64("LAKESHOP_BENCH_STREAM_LATENCY_SECONDS", 30);
    let kill_at = env_u64("LAKESHOP_BENCH_STREAM_KILL_AT", 15);
    let log = dir.join("latency-loader.log");
    let stop = Arc::new(AtomicBool::new(false));
    let polls = poller(world.database.clone(), stop.clone());
    let delivered = witness(world.topic.clone(), stop.clone());
    let mut loader = world.follow(&log)?;
    // Time for the loader to restore (nothing) and take its partitions.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let loader_log = || std::fs::read_to_string(&log).unwrap_or_default();
    anyhow::ensure!(
        loader.try_wait()?.is_none(),
        "the loader exited before the run: {}",
        loader_log()
    );
    let truth = dir.join("truth-latency.json");
    let args = world.live_args(rate, seconds, &truth)?;
    let gen_started = now_ms();
    let mut gen = Command::new(BIN)
        .args(&args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("latency-gen.log"))?)
        .spawn()?;
    let kill_instant = Instant::now() + Duration::from_secs(kill_at);
    while Instant::now() < kill_instant {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if let Some(status) = loader.try_wait()? {
            anyhow::bail!(
                "the loader exited ({status}) before the kill: {}",
                loader_log()
            );
        }
    }
    loader.kill()?; // SIGKILL
    loader.wait()?;
    let killed = now_ms();
    let mut loader = world.follow(&log)?;
    let gen_status = loop {
        if let Some(status) = gen.try_wait()? {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let gen_ended = now_ms();
    anyhow::ensure!(
        gen_status.success(),
        "gen: {}",
        std::fs::read_to_string(dir.join("latency-gen.log")).unwrap_or_default()
    );
    let produced = messages(&truth)?;
    let topic = world.topic.clone();
    let records = tokio::task::spawn_blocking(move || timestamps(&topic)).await??;
    let total: usize = records.iter().map(Vec::len).sum();
    anyhow::ensure!(
        total as u64 == produced,
        "the topic holds {total} records, gen produced {produced}"
    );
    // Wait until the poller saw every record (or give up after 2 minutes).
    let ends: Vec<u64> = records
        .iter()
        .map(|r| r.last().map_or(0, |l| l.0 + 1))
        .collect();
    let ch = world.ch()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let rows = ch
            .rows(
                "visible offsets",
                "SELECT part, max(version) FROM stream_minutes \
                 WHERE dim = 'total' GROUP BY part",
            )
            .await?;
        let done = ends.iter().enumerate().all(|(p, end)| {
            *end == 0
                || rows.iter().any(|r| {
                    r.first().and_then(|x| x.parse::<usize>().ok()) == Some(p)
                        && r.get(1).and_then(|x| x.parse::<u64>().ok()) >= Some(*end)
                })
        });
        if done {
            break;
        }
        if let Some(status) = loader.try_wait()? {
            anyhow::bail!("the restarted loader exited ({status}): {}", loader_log());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "not every record visible 2 minutes after gen ended: {rows:?} of {ends:?}; {}",
            loader_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A few more polls, then stop the poller and the loader.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let (polls, poll_errors) = polls
        .join()
        .map_err(|_| anyhow::anyhow!("the poller panicked"))??;
    let delivered = delivered
        .join()
        .map_err(|_| anyhow::anyhow!("the witness consumer panicked"))??;
    let exit = terminate(&mut loader, Duration::from_secs(30)).await?;

    let first = records
        .iter()
        .filter_map(|r| r.first().map(|f| f.1))
        .fold(f64::INFINITY, f64::min);
    let lat = record_latencies(&polls, &records);
    // Steady: records produced from 3 s after the first to `KILL_MARGIN_MS` before the
    // kill. A record produced just before the kill waits for the restarted loader: its
    // latency is the recovery's, measured below.
    let steady_end = killed - KILL_MARGIN_MS;
    let steady: Vec<f64> = lat
        .iter()
        .filter(|(ts, _)| *ts >= first + 3000.0 && *ts < steady_end)
        .map(|l| l.1)
        .collect();
    // The same steady records split at the broker's delivery to the witness: the broker's
    // part (delivered - produced) and the loader's (visible - delivered).
    let mut broker_part = Vec::new();
    let mut loader_part = Vec::new();
    for (p, recs) in records.iter().enumerate() {
        let got: std::collections::HashMap<u64, f64> = delivered
            .get(p)
            .map(|d| d.iter().copied().collect())
            .unwrap_or_default();
        let mut i = 0;
        for poll in &polls {
            let v = poll.visible.get(p).copied().unwrap_or(0);
            while let Some(&(offset, ts)) = recs.get(i) {
                if offset >= v {
                    break;
                }
                if let Some(at) = got.get(&offset) {
                    if ts >= first + 3000.0 && ts < steady_end {
                        broker_part.push(at - ts);
                        loader_part.push(poll.at - at);
                    }
                }
                i += 1;
            }
        }
    }
    // Staleness at each poll after the kill; recovered from the first poll after which it
    // stays under the goal.
    let after: Vec<(f64, f64)> = polls
        .iter()
        .filter(|p| p.at >= killed)
        .map(|p| (p.at, staleness(p, &records)))
        .collect();
    let last_bad = after.iter().rposition(|(_, s)| *s >= LATENCY_GOAL_MS);
    let recovered_at = match last_bad {
        None => after.first().map(|a| a.0),
        Some(i) => after.get(i + 1).map(|a| a.0),
    };
    let recovery = recovered_at.map(|t| (t - killed) / 1000.0);
    let after_recovery: Vec<f64> = match recovered_at {
        Some(t) => lat.iter().filter(|(ts, _)| *ts >= t).map(|l| l.1).collect(),
        None => Vec::new(),
    };
    let mut query_ms: Vec<f64> = polls.iter().map(|p| p.query_ms).collect();
    query_ms.sort_by(f64::total_cmp);
    let interval = if polls.len() > 1 {
        (polls.last().map_or(0.0, |p| p.at) - polls.first().map_or(0.0, |p| p.at))
            / (polls.len() - 1) as f64
    } else {
        f64::NAN
    };
    Ok(json!({
        "rate": rate,
        "seconds": seconds,
        "records": produced,
        "gen_seconds": (gen_ended - gen_started) / 1000.0,
        "steady": summary(steady),
        "steady_broker_part": summary(broker_part),
        "steady_loader_part": summary(loader_part),
        "kill_at_seconds": (killed - first) / 1000.0,
        "recovery_seconds": recovery,
        "max_staleness_after_kill_ms": after.iter().map(|a| a.1).fold(0.0, f64::max),
        "after_recovery": summary(after_recovery),
        "all_records": summary(lat.iter().map(|l| l.1).collect()),
        "polls": polls.len(),
        "poll_interval_ms": interval,
        "poll_query_p50_ms": quantile(&query_ms, 0.5),
        "poll_query_p99_ms": quantile(&query_ms, 0.99),
        "poll_errors": poll_errors,
        "loader_exit_on_sigterm": exit,
    }))
}

async fn keys(dir: &Path, databases: &mut Vec<String>) -> Result<Value> {
    let products = env_u64("LAKESHOP_BENCH_STREAM_KEYS_PRODUCTS", 1_000_000);
    let rate = env_u64("LAKESHOP_BENCH_STREAM_KEYS_RATE", 20_000);
    let seconds = env_u64("LAKESHOP_BENCH_STREAM_KEYS_SECONDS", 120);
    let dims = Dims::new(dir, "keys", 100_000, 1_000, products).await?;
    let w = World::new(dir, &dims, "keys", databases).await?;
    let dims_seconds = w.load_dims(dir)?;
    let (gen, records) = w.fill(dir, rate, seconds)?;
    let (run, stats, services) = w.drain()?;
    anyhow::ensure!(
        stats["read"].as_u64() == Some(records),
        "the loader read {} of {records} records: {stats}",
        stats["read"]
    );
    let ch = w.ch()?;
    let one = |rows: Vec<Vec<String>>| -> u64 {
        rows.first()
            .and_then(|r| r.first())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let minute_keys = one(ch
        .rows(
            "minute product windows",
            "SELECT uniqExact(window_start, key) FROM stream_minutes WHERE dim = 'product'",
        )
        .await?);
    let in_one_hour = one(ch
        .rows(
            "minute product windows per hour",
            "SELECT max(n) FROM (SELECT toStartOfHour(window_start) AS h, uniqExact(window_start, key) AS n \
             FROM stream_minutes WHERE dim = 'product' GROUP BY h)",
        )
        .await?);
    let hour_keys = one(ch
        .rows(
            "hour product windows",
            "SELECT uniqExact(hour_start, key) FROM stream_minutes WHERE dim = 'product'",
        )
        .await?);
    Ok(json!({
        "products": products,
        "rate": rate,
        "seconds": seconds,
        "records": records,
        "dims_seconds": dims_seconds,
        "gen_seconds": gen.wall,
        "minute_product_windows": minute_keys,
        "minute_product_windows_in_one_hour": in_one_hour,
        "hour_product_windows": hour_keys,
        "loader": {
            "clickhouse_compression": clickhouse_compression(),
            "stats": stats,
            "seconds": run.wall,
            "events_per_s": records as f64 / (run.wall - IDLE_SECONDS),
            "cpu_seconds": run.cpu,
            "cpu_seconds_per_1m": per_1m(run.cpu, records),
            "peak_rss_mib": run.rss_mib,
            "services_cpu_seconds": services,
        },
    }))
}

/// The parts to run: `LAKESHOP_BENCH_STREAM_PARTS`, a comma-separated subset of
/// `throughput,latency,keys` (default all three).
fn parts() -> Result<BTreeSet<String>> {
    const ALL: [&str; 3] = ["throughput", "latency", "keys"];
    let Ok(v) = std::env::var("LAKESHOP_BENCH_STREAM_PARTS") else {
        return Ok(ALL.iter().map(|s| (*s).to_string()).collect());
    };
    let parts: BTreeSet<String> = v
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if let Some(p) = parts.iter().find(|p| !ALL.contains(&p.as_str())) {
        anyhow::bail!("LAKESHOP_BENCH_STREAM_PARTS: unknown part {p:?} (parts: {ALL:?})");
    }
    Ok(parts)
}

async fn run(dir: &Path, databases: &mut Vec<String>) -> Result<Value> {
    let parts = parts()?;
    let mut out = serde_json::Map::new();
    if parts.contains("throughput") || parts.contains("latency") {
        let dims = Dims::new(dir, "shop", 100_000, 1_000, 10_000).await?;
        if parts.contains("throughput") {
            out.insert(
                "throughput".into(),
                throughput(dir, &dims, databases).await?,
            );
            eprintln!("stream bench: throughput done");
        }
        if parts.contains("latency") {
            let w = World::new(dir, &dims, "latency", databases).await?;
            if !parts.contains("throughput") {
                w.load_dims(dir)?;
            }
            out.insert("latency".into(), latency(dir, &w).await?);
            eprintln!("stream bench: latency done");
        }
    }
    if parts.contains("keys") {
        out.insert("keys".into(), keys(dir, databases).await?);
    }
    Ok(Value::Object(out))
}

fn print(r: &Value) {
    if let Some(t) = r.get("throughput") {
        print_throughput(t);
    }
    if let Some(l) = r.get("latency") {
        print_latency(l);
    }
    if let Some(k) = r.get("keys") {
        print_keys(k);
    }
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn print_throughput(t: &Value) {
    println!(
        "stream loader throughput ({} purchases pre-filled, 3 partitions):",
        t["records"]
    );
    for (name, key) in [
        ("lakeshop stream run     ", "loader"),
        ("python consumer (A)     ", "python_consumer"),
        ("quix streams windows (B)", "quix_windows"),
    ] {
        let m = &t[key];
        let ratio = if key == "loader" {
            String::new()
        } else {
            format!("  {:.1}x lakeshop's CPU", f(&m["cpu_ratio_vs_loader"]))
        };
        println!(
            "  {name} {:>9.0} events/s  {:>7.2} CPU-s per 1M  peak RSS {:>5.0} MiB{ratio}",
            f(&m["events_per_s"]),
            f(&m["cpu_seconds_per_1m"]),
            f(&m["peak_rss_mib"]),
        );
    }
    let (l, a) = (&t["loader"], &t["python_consumer"]);
    println!(
        "  after start-up (CPU from the first record on): lakeshop {:.2} CPU-s per 1M (start-up {:.2} s), python consumer {:.2} (start-up {:.2} s): {:.1}x",
        f(&l["cpu_seconds_per_1m_after_start_up"]),
        f(&l["start_up_cpu_seconds"]),
        f(&a["cpu_seconds_per_1m_after_start_up"]),
        f(&a["start_up_cpu_seconds"]),
        f(&a["cpu_ratio_vs_loader_after_start_up"]),
    );
}

fn print_latency(l: &Value) {
    println!(
        "latency at {}/s (event produced -> visible in ClickHouse, {} records):",
        l["rate"], l["records"]
    );
    println!(
        "  steady: p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms ({} records)",
        f(&l["steady"]["p50_ms"]),
        f(&l["steady"]["p99_ms"]),
        f(&l["steady"]["max_ms"]),
        l["steady"]["records"],
    );
    println!(
        "  of which the broker (produced -> delivered to a bare consumer): p50 {:.0} ms  p99 {:.0} ms; the loader (delivered -> visible): p50 {:.0} ms  p99 {:.0} ms ({} records)",
        f(&l["steady_broker_part"]["p50_ms"]),
        f(&l["steady_broker_part"]["p99_ms"]),
        f(&l["steady_loader_part"]["p50_ms"]),
        f(&l["steady_loader_part"]["p99_ms"]),
        l["steady_loader_part"]["records"],
    );
    println!(
        "  SIGKILL at {:.1} s, restarted at once: staleness back under {LATENCY_GOAL_MS:.0} ms after {:.2} s (peak {:.0} ms); after that p99 {:.0} ms",
        f(&l["kill_at_seconds"]),
        f(&l["recovery_seconds"]),
        f(&l["max_staleness_after_kill_ms"]),
        f(&l["after_recovery"]["p99_ms"]),
    );
}

fn print_keys(k: &Value) {
    println!(
        "keys: {} products, {} purchases, {} (minute, product) windows ({} within one hour), {} hour windows:",
        k["products"], k["records"], k["minute_product_windows"], k["minute_product_windows_in_one_hour"], k["hour_product_windows"],
    );
    println!(
        "  lakeshop stream run      peak RSS {:.0} MiB  {:.2} CPU-s per 1M  {:.0} events/s",
        f(&k["loader"]["peak_rss_mib"]),
        f(&k["loader"]["cpu_seconds_per_1m"]),
        f(&k["loader"]["events_per_s"]),
    );
}

#[tokio::main]
async fn main() -> Result<()> {
    // cargo runs benches from the package directory; paths here are from the repository.
    std::env::set_current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))?;
    let dir = tempfile::tempdir()?;
    let mut databases = Vec::new();
    let result = run(dir.path(), &mut databases).await;
    if std::env::var_os("LAKESHOP_BENCH_KEEP").is_some() {
        let kept = dir.keep();
        eprintln!(
            "kept: {} (pipelines, logs, truth files), ClickHouse databases {databases:?}",
            kept.display()
        );
    } else {
        for db in &databases {
            let _ = clickhouse(db)?
                .execute(
                    "drop bench database",
                    &format!("DROP DATABASE IF EXISTS {db}"),
                )
                .await;
        }
    }
    let results = result?;
    print(&results);
    std::fs::create_dir_all("bench-results")?;
    std::fs::write(
        "bench-results/stream.json",
        serde_json::to_vec_pretty(&results)?,
    )?;
    Ok(())
}
