//! Bench: the batch job next to its baselines, in one run, on the same stage data.
//!
//! The stage is written directly (no broker), deterministically: `LAKESHOP_BENCH_PURCHASES`
//! (default 10M) purchases over 7 UTC days, with ~1% re-sent duplicates, a few unknown
//! clients and products and purchases without a seller, joined to 1M clients, 100k products
//! and 1k sellers. The stage is a local folder in a temp dir; ClickHouse gets a fresh database.
//!
//! - (a) Query: `BatchJob::build` (join and aggregation, nothing written) over every day,
//!   in this process, next to DuckDB (`bench/duckdb_batch.py`, from the bench venv) running
//!   the same SQL ported to its dialect over the same Parquet files: the active files of the
//!   stage's Delta tables, listed from the Delta log. Goal: lakeshop ≤ 1.5× DuckDB's time.
//! - (b) Load: the whole `lakeshop batch run --from --to` into ClickHouse, next to
//!   `clickhouse-client --query "INSERT … FORMAT TSV"` loading the `sales` rows lakeshop wrote
//!   (exported as TSV) into an empty copy of the table. Goal: lakeshop ≥ 0.5× its rows/s.
//!
//! Every child process runs under GNU time (wall, CPU, peak RSS). Prints a table and writes
//! `bench-results/batch.json`. `LAKESHOP_BENCH_KEEP=1` keeps the stage, the pipeline file
//! and the ClickHouse database for a closer look.

use anyhow::{Context as _, Result};
use chrono::{NaiveDate, NaiveTime};
use deltalake::arrow::array::{
    ArrayRef, Date32Builder, Decimal128Builder, Int32Builder, Int64Builder, RecordBatch,
    StringBuilder, TimestampMicrosecondBuilder,
};
use lakeshop_batch::{BatchJob, BatchOptions, PiiMode};
use lakeshop_clickhouse::{ClickHouse, ClickHouseOptions};
use lakeshop_stage::{Stage, StageOptions, Table};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

mod common;

/// The allocator of the `lakeshop` binary, so the in-process build (a) runs as it would there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use common::{bench_python, env_u64, last_json, measure, measure_io, Measured};

const BIN: &str = env!("CARGO_BIN_EXE_lakeshop");

/// The first business day of the data (fixed, so runs are comparable).
const FIRST_DAY: (i32, u32, u32) = (2026, 10, 1);
const DAYS: u32 = 7;
const CLIENTS: usize = 1_000_000;
const PRODUCTS: usize = 100_000;
const SELLERS: usize = 1_000;
/// Rows per stage commit while writing.
const CHUNK: usize = 1_000_000;
/// Native protocol port of the local ClickHouse (infra/lib.sh `CH_TCP_PORT`).
const CLICKHOUSE_TCP_PORT: &str = "9000";

/// SplitMix64: a small seeded generator, so the data depends on nothing but the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// A random (version 4) UUID in canonical form.
    fn uuid(&mut self) -> String {
        let (a, b) = (self.next(), self.next());
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | ((b >> 48) & 0x3fff),
            b & 0xffff_ffff_ffff
        )
    }
}

fn micros(day: NaiveDate) -> i64 {
    day.and_time(NaiveTime::MIN).and_utc().timestamp_micros()
}

fn ts_builder(capacity: usize) -> TimestampMicrosecondBuilder {
    TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC")
}

fn money_builder(capacity: usize) -> Result<Decimal128Builder> {
    Ok(Decimal128Builder::with_capacity(capacity).with_precision_and_scale(18, 2)?)
}

fn strings<'a>(values: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    let mut b = StringBuilder::new();
    for v in values {
        b.append_option(v);
    }
    Arc::new(b.finish())
}

fn texts(values: impl Iterator<Item = String>) -> ArrayRef {
    let mut b = StringBuilder::new();
    for v in values {
        b.append_value(v);
    }
    Arc::new(b.finish())
}

/// Appends rows to a stage table in one commit.
async fn append(stage: &Stage, table: Table, batch: RecordBatch) -> Result<()> {
    let mut handle = stage.open(table).await?;
    stage.append(table, &mut handle, vec![batch], &[]).await?;
    Ok(())
}

/// The dimension ids the purchases draw from.
struct Dimensions {
    clients: Vec<String>,
    /// (product id, seller id, list price in cents).
    products: Vec<(String, String, i64)>,
}

const FIRST_NAMES: [&str; 8] = [
    "Anna", "Boris", "Chen", "Dana", "Emil", "Farah", "Goran", "Hana",
];
const LAST_NAMES: [&str; 8] = [
    "Ivanova", "Jensen", "Kim", "Lopez", "Meyer", "Novak", "Okafor", "Petrov",
];
const REGIONS: [&str; 5] = ["north", "south", "east", "west", "central"];

async fn write_dimensions(stage: &Stage, rng: &mut Rng, first: NaiveDate) -> Result<Dimensions> {
    let updated = micros(first) - 86_400_000_000;
    let sellers: Vec<String> = (0..SELLERS).map(|_| rng.uuid()).collect();
    let n = sellers.len();
    append(
        stage,
        Table::Sellers,
        RecordBatch::try_new(
            Table::Sellers.schema(),
            vec![
                strings(sellers.iter().map(|s| Some(s.as_str()))),
                texts((0..n).map(|i| format!("Seller {i}"))),
                strings((0..n).map(|i| Some(REGIONS[i % REGIONS.len()]))),
                {
                    let mut b = ts_builder(n);
                    b.append_slice(&vec![updated; n]);
                    Arc::new(b.finish())
                },
                {
                    let mut b = ts_builder(n);
                    b.append_slice(&vec![updated; n]);
                    Arc::new(b.finish())
                },
                {
                    let mut b = ts_builder(n);
                    b.append_nulls(n);
                    Arc::new(b.finish())
                },
            ],
        )?,
    )
    .await?;

    let products: Vec<(String, String, i64)> = (0..PRODUCTS)
        .map(|_| {
            let id = rng.uuid();
            let seller = sellers[rng.below(SELLERS as u64) as usize].clone();
            let price = 100 + rng.below(50_000) as i64;
            (id, seller, price)
        })
        .collect();
    let n = products.len();
    let mut price = money_builder(n)?;
    let mut stock = Int32Builder::with_capacity(n);
    let mut at = ts_builder(n);
    for (i, p) in products.iter().enumerate() {
        price.append_value(i128::from(p.2));
        stock.append_value((i % 500) as i32);
        at.append_value(updated);
    }
    append(
        stage,
        Table::Products,
        RecordBatch::try_new(
            Table::Products.schema(),
            vec![
                strings(products.iter().map(|p| Some(p.0.as_str()))),
                texts((0..n).map(|i| format!("Product {i}"))),
                texts((0..n).map(|i| format!("category-{:02}", i % 40))),
                Arc::new(price.finish()),
                Arc::new(stock.finish()),
                strings(products.iter().map(|p| Some(p.1.as_str()))),
                Arc::new(at.finish()),
            ],
        )?,
    )
    .await?;

    let clients: Vec<String> = (0..CLIENTS).map(|_| rng.uuid()).collect();
    for (chunk_no, chunk) in clients.chunks(CLIENTS.div_ceil(4)).enumerate() {
        let n = chunk.len();
        let base = chunk_no * CLIENTS.div_ceil(4);
        let mut first_name = StringBuilder::new();
        let mut last_name = StringBuilder::new();
        let mut email = StringBuilder::new();
        let mut address = StringBuilder::new();
        let mut registered = ts_builder(n);
        let mut at = ts_builder(n);
        let mut deleted = ts_builder(n);
        for i in 0..n {
            let k = base + i;
            first_name.append_value(FIRST_NAMES[k % FIRST_NAMES.len()]);
            last_name.append_value(LAST_NAMES[(k / 8) % LAST_NAMES.len()]);
            email.append_value(format!("client{k}@example.com"));
            address.append_value(format!("{} Main St, Town {}", k % 997, k % 89));
            registered.append_value(updated - (k as i64 % 1000) * 86_400_000_000);
            at.append_value(updated);
            // A few soft-deleted clients: they still join.
            deleted.append_option((k % 1000 == 7).then_some(updated));
        }
        append(
            stage,
            Table::Clients,
            RecordBatch::try_new(
                Table::Clients.schema(),
                vec![
                    strings(chunk.iter().map(|s| Some(s.as_str()))),
                    Arc::new(first_name.finish()),
                    Arc::new(last_name.finish()),
                    Arc::new(email.finish()),
                    Arc::new(address.finish()),
                    Arc::new(registered.finish()),
                    Arc::new(at.finish()),
                    Arc::new(deleted.finish()),
                ],
            )?,
        )
        .await?;
    }
    Ok(Dimensions { clients, products })
}

/// One purchase as produced (re-sends repeat it byte for byte).
#[derive(Clone)]
struct Purchase {
    id: String,
    client: String,
    product: String,
    seller: Option<String>,
    quantity: i32,
    price: i64,
    ts: i64,
    partition: i32,
}

/// `stage.purchases` rows being gathered for one commit.
struct PurchaseRows {
    id: StringBuilder,
    client: StringBuilder,
    product: StringBuilder,
    seller: StringBuilder,
    quantity: Int32Builder,
    price: Decimal128Builder,
    ts: TimestampMicrosecondBuilder,
    topic: StringBuilder,
    partition: Int32Builder,
    offset: Int64Builder,
    ingested: TimestampMicrosecondBuilder,
    day: Date32Builder,
    len: usize,
}

impl PurchaseRows {
    fn new() -> Result<Self> {
        Ok(Self {
            id: StringBuilder::with_capacity(CHUNK, CHUNK * 36),
            client: StringBuilder::with_capacity(CHUNK, CHUNK * 36),
            product: StringBuilder::with_capacity(CHUNK, CHUNK * 36),
            seller: StringBuilder::with_capacity(CHUNK, CHUNK * 36),
            quantity: Int32Builder::with_capacity(CHUNK),
            price: money_builder(CHUNK)?,
            ts: ts_builder(CHUNK),
            topic: StringBuilder::with_capacity(CHUNK, CHUNK * 9),
            partition: Int32Builder::with_capacity(CHUNK),
            offset: Int64Builder::with_capacity(CHUNK),
            ingested: ts_builder(CHUNK),
            day: Date32Builder::with_capacity(CHUNK),
            len: 0,
        })
    }

    fn push(&mut self, p: &Purchase, offset: i64, ingested: i64) {
        self.id.append_value(&p.id);
        self.client.append_value(&p.client);
        self.product.append_value(&p.product);
        self.seller.append_option(p.seller.as_deref());
        self.quantity.append_value(p.quantity);
        self.price.append_value(i128::from(p.price));
        self.ts.append_value(p.ts);
        self.topic.append_value("purchases");
        self.partition.append_value(p.partition);
        self.offset.append_value(offset);
        self.ingested.append_value(ingested);
        self.day
            .append_value(p.ts.div_euclid(86_400_000_000) as i32);
        self.len += 1;
    }

    fn finish(&mut self) -> Result<RecordBatch> {
        self.len = 0;
        Ok(RecordBatch::try_new(
            Table::Purchases.schema(),
            vec![
                Arc::new(self.id.finish()),
                Arc::new(self.client.finish()),
                Arc::new(self.product.finish()),
                Arc::new(self.seller.finish()),
                Arc::new(self.quantity.finish()),
                Arc::new(self.price.finish().with_precision_and_scale(18, 2)?),
                Arc::new(self.ts.finish().with_timezone("UTC")),
                Arc::new(self.topic.finish()),
                Arc::new(self.partition.finish()),
                Arc::new(self.offset.finish()),
                Arc::new(self.ingested.finish().with_timezone("UTC")),
                Arc::new(self.day.finish()),
            ],
        )?)
    }
}

/// What was written to `stage.purchases`.
#[derive(Debug, Default, serde::Serialize)]
struct Written {
    purchases: u64,
    rows: u64,
    resent: u64,
    unknown_clients: u64,
    unknown_products: u64,
    without_seller: u64,
    commits: u64,
    seconds: f64,
}

/// Writes the dimensions and `purchases` distinct purchases (plus re-sends) in arrival
/// order, a commit every [`CHUNK`] rows.
async fn write_stage(stage: &Stage, purchases: u64, first: NaiveDate) -> Result<Written> {
    let started = Instant::now();
    let mut rng = Rng(0x1a4e_5409);
    let dims = write_dimensions(stage, &mut rng, first).await?;
    let mut w = Written::default();
    let mut rows = PurchaseRows::new()?;
    let mut offsets = [0i64; 3];
    // Recent purchases, the ones a retrying producer re-sends.
    let mut recent: Vec<Purchase> = Vec::with_capacity(10_000);
    let mut recent_next = 0usize;
    for d in 0..u64::from(DAYS) {
        let day_start = micros(first) + d as i64 * 86_400_000_000;
        let count = purchases / u64::from(DAYS) + u64::from(d < purchases % u64::from(DAYS));
        let step = (86_400_000_000 / count.max(1)) as i64;
        for i in 0..count {
            let ts = day_start + i as i64 * step + rng.below(step as u64) as i64;
            // A few products sell most.
            let product = (rng.unit().powi(3) * PRODUCTS as f64) as usize;
            let (mut product_id, seller, price) = dims.products[product].clone();
            if rng.chance(0.002) {
                product_id = rng.uuid();
                w.unknown_products += 1;
            }
            let client = if rng.chance(0.002) {
                w.unknown_clients += 1;
                rng.uuid()
            } else {
                dims.clients[rng.below(CLIENTS as u64) as usize].clone()
            };
            let seller = if rng.chance(0.003) {
                w.without_seller += 1;
                None
            } else {
                Some(seller)
            };
            let id = rng.uuid();
            let p = Purchase {
                partition: (rng.below(3)) as i32,
                id,
                client,
                product: product_id,
                seller,
                quantity: 1 + rng.below(5) as i32,
                price,
                ts,
            };
            let ingested = ts + 2_000_000;
            let part = p.partition as usize;
            rows.push(&p, offsets[part], ingested);
            offsets[part] += 1;
            w.purchases += 1;
            if recent.len() < recent.capacity() {
                recent.push(p);
            } else {
                recent[recent_next] = p;
                recent_next = (recent_next + 1) % recent.len();
            }
            // A re-send of a recent purchase, after it in its partition.
            if rng.chance(0.01) {
                let q = &recent[rng.below(recent.len() as u64) as usize];
                let part = q.partition as usize;
                rows.push(q, offsets[part], ingested);
                offsets[part] += 1;
                w.resent += 1;
            }
            if rows.len >= CHUNK {
                w.rows += rows.len as u64;
                append(stage, Table::Purchases, rows.finish()?).await?;
                w.commits += 1;
            }
        }
    }
    if rows.len > 0 {
        w.rows += rows.len as u64;
        append(stage, Table::Purchases, rows.finish()?).await?;
        w.commits += 1;
    }
    w.seconds = started.elapsed().as_secs_f64();
    Ok(w)
}

/// Local paths of the active files of a stage table (from its Delta log).
async fn active_files(stage: &Stage, table: Table) -> Result<Vec<String>> {
    let t = stage.open(table).await?;
    let files = t
        .get_file_uris()?
        .map(|uri| match url::Url::parse(&uri) {
            // A plain path, as deltalake gives local tables' files.
            Err(_) => Ok(uri),
            Ok(url) => url
                .to_file_path()
                .map(|p| p.to_string_lossy().to_string())
                .map_err(|()| anyhow::anyhow!("not a local file: {uri}")),
        })
        .collect();
    files
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

fn clickhouse_url() -> String {
    std::env::var("CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into())
}

/// `[clickhouse] compression` of the bench's batch run: `none` by default, as suits the
/// local server (`LAKESHOP_BENCH_CLICKHOUSE_COMPRESSION=lz4` to measure the other).
fn clickhouse_compression() -> String {
    std::env::var("LAKESHOP_BENCH_CLICKHOUSE_COMPRESSION").unwrap_or_else(|_| "none".into())
}

fn clickhouse_user() -> String {
    std::env::var("CLICKHOUSE_USER").unwrap_or_else(|_| "default".into())
}

/// `clickhouse-client` arguments reaching the local server's native port.
fn client_args(database: &str, query: &str) -> Result<Vec<String>> {
    let url = url::Url::parse(&clickhouse_url())?;
    let mut args = vec![
        "--host".to_string(),
        url.host_str().unwrap_or("127.0.0.1").to_string(),
        "--port".into(),
        CLICKHOUSE_TCP_PORT.into(),
        "--user".into(),
        clickhouse_user(),
        "--database".into(),
        database.into(),
        "--query".into(),
        query.into(),
    ];
    if let Ok(pw) = std::env::var("CLICKHOUSE_PASSWORD") {
        if !pw.is_empty() {
            args.extend(["--password".to_string(), pw]);
        }
    }
    Ok(args)
}

fn client(
    database: &str,
    query: &str,
    stdin: Option<&Path>,
    stdout: Option<&Path>,
) -> Result<Measured> {
    let args = client_args(database, query)?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    measure_io("clickhouse-client", &args, stdin, stdout)
}

fn pipeline(dir: &Path, stage: &Path, database: &str) -> Result<PathBuf> {
    let path = dir.join("bench.toml");
    std::fs::write(
        &path,
        format!(
            "[pipeline]\nname = \"{}\"\ntimezone = \"UTC\"\n[stage]\nuri = \"{}\"\n[clickhouse]\nurl = \"{}\"\ndatabase = \"{database}\"\nuser = \"{}\"\npassword = \"${{CLICKHOUSE_PASSWORD:-}}\"\ncompression = \"{}\"\n[batch]\npii = \"keep\"\n",
            lakeshop_testkit::unique("bench"),
            stage.display(),
            clickhouse_url(),
            clickhouse_user(),
            clickhouse_compression(),
        ),
    )?;
    Ok(path)
}

fn lakeshop(pipeline: &Path, args: &[&str]) -> Result<Measured> {
    let mut all = vec!["--config", pipeline.to_str().context("path")?];
    all.extend_from_slice(args);
    measure(BIN, &all)
}

/// (a) lakeshop: `BatchJob::build` of every day in this process. Returns the seconds
/// (registering the stage tables and building every day) and the day summaries.
async fn lakeshop_build(
    stage: &Stage,
    database: &str,
    days: &[NaiveDate],
) -> Result<(f64, Vec<Value>)> {
    let started = Instant::now();
    let job = BatchJob::new(
        stage.clone(),
        clickhouse(database)?,
        BatchOptions {
            timezone: chrono_tz::UTC,
            pii: PiiMode::Keep,
            dedup_horizon: std::time::Duration::from_secs(7 * 86_400),
        },
    )
    .await?;
    // As `batch run` over these days: one window (the bench's 7 days).
    job.prepare(days[0], days[days.len() - 1]).await?;
    let mut out = Vec::new();
    for &day in days {
        let t = Instant::now();
        let built = job.build(day).await?;
        let seconds = t.elapsed().as_secs_f64();
        let mut s = serde_json::to_value(&built.summary)?;
        s["seconds"] = json!(seconds);
        out.push(s);
    }
    Ok((started.elapsed().as_secs_f64(), out))
}

/// The counts both engines report per day, to check they computed the same thing.
fn same_answers(lakeshop: &[Value], duckdb: &Value) -> Result<()> {
    let theirs = duckdb["days"].as_array().context("duckdb days")?;
    anyhow::ensure!(
        theirs.len() == lakeshop.len(),
        "duckdb ran {} days",
        theirs.len()
    );
    for (ours, theirs) in lakeshop.iter().zip(theirs) {
        for key in [
            "rows_in",
            "rows_out",
            "conflicting_duplicates",
            "counted_on_other_day",
            "unknown_clients",
            "unknown_products",
            "unknown_sellers",
            "revenue",
        ] {
            let (a, b) = (&ours[key], &theirs[key]);
            let same = match (a.as_u64(), b.as_u64()) {
                (Some(x), Some(y)) => x == y,
                _ => a.as_str().zip(b.as_str()).is_some_and(|(x, y)| x == y),
            };
            anyhow::ensure!(same, "{}: lakeshop {key} = {a}, duckdb {b}", ours["date"]);
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    // cargo runs benches from the package directory; paths here are from the repository.
    std::env::set_current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))?;
    let n = env_u64("LAKESHOP_BENCH_PURCHASES", 10_000_000);
    let first = NaiveDate::from_ymd_opt(FIRST_DAY.0, FIRST_DAY.1, FIRST_DAY.2).context("day")?;
    let days: Vec<NaiveDate> = first.iter_days().take(DAYS as usize).collect();

    let dir = tempfile::tempdir()?;
    let stage_dir = dir.path().join("stage");
    let stage = Stage::new(StageOptions {
        uri: stage_dir.to_string_lossy().to_string(),
        storage_options: HashMap::new(),
    });
    let database = lakeshop_testkit::unique("lakeshop_bench");
    let pipeline = pipeline(dir.path(), &stage_dir, &database)?;
    let result = run(&stage, &pipeline, &database, dir.path(), n, &days).await;
    if std::env::var_os("LAKESHOP_BENCH_KEEP").is_some() {
        // Kept for a closer look (profiling a `batch run` on the same stage, say).
        let kept = dir.keep();
        eprintln!(
            "kept: pipeline {}, stage {}, ClickHouse database {database}",
            kept.join("bench.toml").display(),
            stage_dir.display()
        );
    } else {
        let _ = clickhouse(&database)?
            .execute(
                "drop bench database",
                &format!("DROP DATABASE IF EXISTS {database}"),
            )
            .await;
    }
    let results = result?;

    let a = &results["query"];
    let b = &results["load"];
    let f = |v: &Value| v.as_f64().unwrap_or_default();
    println!(
        "batch job over {} days: {} stage rows, {} sales rows",
        DAYS, results["stage"]["rows"], b["rows"]
    );
    println!("  (a) join + aggregation (build every day, no writes)");
    println!(
        "      DuckDB {} same SQL       {:>8.2} s",
        a["duckdb_version"].as_str().unwrap_or("?"),
        f(&a["duckdb_seconds"])
    );
    println!(
        "      lakeshop BatchJob::build      {:>8.2} s   ratio {:.2} (goal <= 1.5)",
        f(&a["lakeshop_seconds"]),
        f(&a["ratio_vs_duckdb"])
    );
    println!("  (b) load into ClickHouse");
    println!(
        "      clickhouse-client INSERT TSV  {:>8.2} s  {:>10.0} rows/s",
        f(&b["clickhouse_client_seconds"]),
        f(&b["clickhouse_client_rows_per_s"])
    );
    println!(
        "      lakeshop batch run            {:>8.2} s  {:>10.0} rows/s  ratio {:.2} (goal >= 0.5)  CPU {:.1} s  peak RSS {:.0} MiB",
        f(&b["batch_run_seconds"]),
        f(&b["batch_run_rows_per_s"]),
        f(&b["ratio_vs_clickhouse_client"]),
        f(&b["batch_run_cpu_seconds"]),
        f(&b["batch_run_peak_rss_mib"]),
    );
    println!(
        "      of which query {:.2} s, stage.sales {:.2} s, ClickHouse {:.2} s ({:.0} rows/s, ratio {:.2})",
        f(&b["batch_run_query_seconds"]),
        f(&b["batch_run_stage_seconds"]),
        f(&b["batch_run_clickhouse_seconds"]),
        f(&b["clickhouse_step_rows_per_s"]),
        f(&b["clickhouse_step_ratio_vs_clickhouse_client"]),
    );
    std::fs::create_dir_all("bench-results")?;
    std::fs::write(
        "bench-results/batch.json",
        serde_json::to_vec_pretty(&results)?,
    )?;
    Ok(())
}

async fn run(
    stage: &Stage,
    pipeline: &Path,
    database: &str,
    dir: &Path,
    n: u64,
    days: &[NaiveDate],
) -> Result<Value> {
    let (first, last) = (days[0], days[days.len() - 1]);
    let written = write_stage(stage, n, first).await?;
    eprintln!(
        "stage written: {} rows ({} purchases) in {:.1} s",
        written.rows, written.purchases, written.seconds
    );
    lakeshop(pipeline, &["migrate"])?;

    // (a) DuckDB over the active Parquet files, then lakeshop's build in this process.
    let mut spec = json!({
        "days": days.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        "timezone": "UTC",
    });
    for table in [
        Table::Purchases,
        Table::Clients,
        Table::Sellers,
        Table::Products,
    ] {
        spec[table.name()] = json!(active_files(stage, table).await?);
    }
    let spec_path = dir.join("duckdb.json");
    std::fs::write(&spec_path, serde_json::to_vec(&spec)?)?;
    let python = bench_python()?;
    let duck = measure(
        &python,
        &["bench/duckdb_batch.py", spec_path.to_str().context("path")?],
    )?;
    let duck_out = last_json(&duck.stdout)?;
    let duck_seconds = duck_out["seconds"].as_f64().context("duckdb seconds")?;
    eprintln!("duckdb: {duck_seconds:.2} s");
    let (build_seconds, build_days) = lakeshop_build(stage, database, days).await?;
    eprintln!("lakeshop build: {build_seconds:.2} s");
    same_answers(&build_days, &duck_out)?;

    // (b) The whole batch run, then the same rows through clickhouse-client.
    let from = first.to_string();
    let to = last.to_string();
    let run = lakeshop(
        pipeline,
        &["batch", "run", "--from", &from, "--to", &to, "--json"],
    )?;
    let summary = last_json(&run.stdout)?;
    anyhow::ensure!(summary["ok"] == json!(true), "batch run {summary}");
    let rows = summary["totals"]["rows_out"].as_u64().context("rows_out")?;
    eprintln!("lakeshop batch run: {:.2} s", run.wall);
    let tsv = dir.join("sales.tsv");
    let export = client(database, "SELECT * FROM sales FORMAT TSV", None, Some(&tsv))?;
    let ch = clickhouse(database)?;
    ch.execute("copy sales", "CREATE TABLE sales_ingest AS sales")
        .await?;
    let ingest = client(
        database,
        "INSERT INTO sales_ingest FORMAT TSV",
        Some(&tsv),
        None,
    )?;
    let loaded = ch.rows("count", "SELECT count() FROM sales_ingest").await?;
    anyhow::ensure!(
        loaded.first().and_then(|r| r.first()).map(String::as_str)
            == Some(rows.to_string().as_str()),
        "clickhouse-client loaded {loaded:?} of {rows} rows"
    );
    let tsv_bytes = std::fs::metadata(&tsv)?.len();
    let run_rate = rows as f64 / run.wall;
    let ch_rate = rows as f64 / ingest.wall;
    let t = &summary["totals"];
    Ok(json!({
        "purchases": n,
        "days": DAYS,
        "clients": CLIENTS,
        "products": PRODUCTS,
        "sellers": SELLERS,
        "stage": written,
        "query": {
            "duckdb_version": duck_out["duckdb"],
            "duckdb_threads": duck_out["threads"],
            "duckdb_seconds": duck_seconds,
            "duckdb_process_seconds": duck.wall,
            "duckdb_peak_rss_mib": duck.rss_mib,
            "duckdb_days": duck_out["days"],
            "lakeshop_seconds": build_seconds,
            "lakeshop_days": build_days,
            "ratio_vs_duckdb": build_seconds / duck_seconds,
        },
        "load": {
            "rows": rows,
            "clickhouse_compression": clickhouse_compression(),
            "batch_run_seconds": run.wall,
            "batch_run_cpu_seconds": run.cpu,
            "batch_run_peak_rss_mib": run.rss_mib,
            "batch_run_rows_per_s": run_rate,
            "batch_run_query_seconds": t["query_seconds"],
            "batch_run_stage_seconds": t["stage_seconds"],
            "batch_run_clickhouse_seconds": t["clickhouse_seconds"],
            "tsv_bytes": tsv_bytes,
            "tsv_export_seconds": export.wall,
            "clickhouse_client_seconds": ingest.wall,
            "clickhouse_client_cpu_seconds": ingest.cpu,
            "clickhouse_client_peak_rss_mib": ingest.rss_mib,
            "clickhouse_client_rows_per_s": ch_rate,
            "ratio_vs_clickhouse_client": run_rate / ch_rate,
            // The ClickHouse step of the run alone (all seven tables of every day).
            "clickhouse_step_rows_per_s": rows as f64 / t["clickhouse_seconds"].as_f64().unwrap_or(f64::NAN),
            "clickhouse_step_ratio_vs_clickhouse_client": rows as f64 / t["clickhouse_seconds"].as_f64().unwrap_or(f64::NAN) / ch_rate,
            "summary_totals": summary["totals"],
        },
    }))
}
