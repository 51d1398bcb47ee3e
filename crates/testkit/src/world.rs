//! One test's world, for the tests that run the `lakeshop` binary: a pipeline file per test
//! (its own stage, ClickHouse database, topics and PostgreSQL database), the binary
//! ([`crate::lakeshop_bin`]), digests of ClickHouse and stage tables, and stage rows written
//! directly for hand-made cases.

use anyhow::{Context as _, Result};
use deltalake::arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Decimal128Array, Int32Array, Int64Array, RecordBatch,
    StringArray, TimestampMicrosecondArray,
};
use lakeshop_clickhouse::{ClickHouse, ClickHouseOptions};
use lakeshop_stage::{Stage, StageOptions, Table};
use rust_decimal::Decimal;
use serde_json::Value;
use sha2::Digest as _;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// ClickHouse of the local stack (`CLICKHOUSE_URL`, `CLICKHOUSE_USER`, `CLICKHOUSE_PASSWORD`).
pub fn clickhouse(database: &str) -> Result<ClickHouse> {
    Ok(ClickHouse::new(&ClickHouseOptions {
        url: std::env::var("CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into()),
        database: database.into(),
        user: std::env::var("CLICKHOUSE_USER").unwrap_or_else(|_| "default".into()),
        password: std::env::var("CLICKHOUSE_PASSWORD").unwrap_or_default(),
        compression: Default::default(),
    })?)
}

/// One test's world: its pipeline file, stage and ClickHouse database (dropped on drop).
#[derive(Debug)]
pub struct World {
    pub dir: tempfile::TempDir,
    pub pipeline: PathBuf,
    pub stage_uri: String,
    pub database: String,
    pub ch: ClickHouse,
}

/// Where a test's stage lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageKind {
    Local,
    S3,
}

/// Extra pipeline settings of a world.
#[derive(Debug, Clone, Default)]
pub struct Setup {
    /// `[postgres] url`, `[kafka]` topics and `[products] uri` for tests that run `gen`.
    pub pg_url: Option<String>,
    pub purchases_topic: Option<String>,
    pub interactions_topic: Option<String>,
    /// `[batch] pii`.
    pub pii: Option<&'static str>,
    /// `[pipeline] timezone`.
    pub timezone: Option<&'static str>,
}

impl Setup {
    /// Every source `gen` writes: fresh purchases (3 partitions) and interactions topics and
    /// a fresh PostgreSQL database named after `prefix`.
    pub async fn all_sources(prefix: &str) -> Result<Self> {
        let purchases_topic = crate::unique("purchases");
        let interactions_topic = crate::unique("interactions");
        crate::create_topic(&purchases_topic, 3).await?;
        crate::create_topic(&interactions_topic, 1).await?;
        Ok(Self {
            pg_url: Some(crate::fresh_database(prefix).await?),
            purchases_topic: Some(purchases_topic),
            interactions_topic: Some(interactions_topic),
            ..Default::default()
        })
    }
}

impl World {
    pub fn new(kind: StageKind, setup: Setup) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let stage_uri = match kind {
            StageKind::Local => dir.path().join("stage").to_string_lossy().to_string(),
            StageKind::S3 => format!("s3://lakeshop/{}/stage", crate::unique("batch")),
        };
        let database = crate::unique("lakeshop_batch");
        let mut text = format!(
            "[pipeline]\nname = \"{}\"\ntimezone = \"{}\"\n",
            crate::unique("p"),
            setup.timezone.unwrap_or("UTC"),
        );
        if let Some(url) = &setup.pg_url {
            text.push_str(&format!("[postgres]\nurl = \"{url}\"\ntls = \"disable\"\n"));
        }
        text.push_str(&format!(
            "[kafka]\nbrokers = \"{}\"\n",
            crate::kafka_brokers()
        ));
        if let Some(t) = &setup.purchases_topic {
            text.push_str(&format!(
                "[kafka.topics.purchases]\nname = \"{t}\"\npartitions = 3\n"
            ));
        }
        if let Some(t) = &setup.interactions_topic {
            text.push_str(&format!(
                "[kafka.topics.interactions]\nname = \"{t}\"\npartitions = 1\n"
            ));
        }
        text.push_str(&format!(
            "[s3]\nendpoint = \"{}\"\n[products]\nuri = \"s3://lakeshop/{}/products\"\n[stage]\nuri = \"{stage_uri}\"\nflush_max_rows = 5000\n",
            crate::s3_endpoint(),
            crate::unique("src"),
        ));
        text.push_str(&format!(
            "[clickhouse]\nurl = \"{}\"\ndatabase = \"{database}\"\nuser = \"{}\"\npassword = \"${{CLICKHOUSE_PASSWORD:-}}\"\n",
            std::env::var("CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into()),
            std::env::var("CLICKHOUSE_USER").unwrap_or_else(|_| "default".into()),
        ));
        text.push_str(&format!(
            "[batch]\npii = \"{}\"\n",
            setup.pii.unwrap_or("keep")
        ));
        let pipeline = dir.path().join("pipeline.toml");
        std::fs::write(&pipeline, text)?;
        let ch = clickhouse(&database)?;
        Ok(Self {
            dir,
            pipeline,
            stage_uri,
            database,
            ch,
        })
    }

    pub fn stage(&self) -> Stage {
        Stage::new(StageOptions {
            uri: self.stage_uri.clone(),
            storage_options: crate::s3_options(),
        })
    }

    /// Runs `lakeshop` with this world's pipeline; fails with stderr on a non-zero exit.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let (ok, stdout, stderr) = self.try_run(args)?;
        anyhow::ensure!(ok, "lakeshop {args:?}: {stderr}");
        Ok(stdout)
    }

    /// Runs `lakeshop`; returns (success, stdout, stderr).
    pub fn try_run(&self, args: &[&str]) -> Result<(bool, String, String)> {
        let (code, stdout, stderr) = self.try_run_status(args)?;
        Ok((code == Some(0), stdout, stderr))
    }

    /// Runs `lakeshop`; returns (exit code, stdout, stderr). The code is `None` when a
    /// signal ended the process.
    pub fn try_run_status(&self, args: &[&str]) -> Result<(Option<i32>, String, String)> {
        let out = Command::new(crate::lakeshop_bin())
            .arg("--config")
            .arg(&self.pipeline)
            .args(args)
            .output()?;
        Ok((
            out.status.code(),
            String::from_utf8(out.stdout)?,
            String::from_utf8_lossy(&out.stderr).to_string(),
        ))
    }

    /// Runs `lakeshop` and reads its last stdout line as JSON.
    pub fn json(&self, args: &[&str]) -> Result<Value> {
        last_json(&self.run(args)?)
    }

    /// A stream test's world: a fresh purchases topic of `partitions` partitions, the
    /// ClickHouse tables migrated, and a local stage whose catalogue is one seller
    /// ([`STREAM_SELLER`], "Shop") and one product of it ([`STREAM_PRODUCT`], "Lamp",
    /// lighting). Returns the world and its topic.
    pub async fn for_stream(partitions: i32) -> Result<(Self, String)> {
        let topic = crate::unique("purchases");
        crate::create_topic(&topic, partitions).await?;
        let world = Self::new(
            StageKind::Local,
            Setup {
                purchases_topic: Some(topic.clone()),
                ..Setup::default()
            },
        )?;
        world.run(&["migrate"])?;
        let stage = world.stage();
        append_sellers(&stage, &[(STREAM_SELLER, "Shop")]).await?;
        append_products(
            &stage,
            &[(STREAM_PRODUCT, "Lamp", "lighting", STREAM_SELLER)],
        )
        .await?;
        Ok((world, topic))
    }

    /// Appends TOML to the pipeline file (tables not in it yet).
    pub fn append_pipeline(&self, toml: &str) -> Result<()> {
        let mut text = std::fs::read_to_string(&self.pipeline)?;
        text.push_str(toml);
        std::fs::write(&self.pipeline, text)?;
        Ok(())
    }

    /// `stream run --until-end` (2 s idle, no metrics server); its summary.
    pub fn stream_until_end(&self) -> Result<Value> {
        self.json(&STREAM_UNTIL_END)
    }

    /// [`Self::stream_until_end`] that may fail: (succeeded, stdout, stderr).
    pub fn try_stream_until_end(&self) -> Result<(bool, String, String)> {
        self.try_run(&STREAM_UNTIL_END)
    }
}

/// `stream run` until every partition is read and nothing arrived for 2 s, no metrics server.
const STREAM_UNTIL_END: [&str; 6] = [
    "stream",
    "run",
    "--no-metrics",
    "--until-end",
    "--idle",
    "2s",
];

/// The seller of a stream test's catalogue ([`World::for_stream`]).
pub const STREAM_SELLER: &str = "9b2e4c11-8a6f-4b0e-8d7a-2c3f5e6a7b02";
/// The product of a stream test's catalogue ([`World::for_stream`]).
pub const STREAM_PRODUCT: &str = "6f1c7a52-1d7e-4a53-9a43-0f5b2f0c1a01";

/// Drops the test's ClickHouse database, whether the test passed or not.
impl Drop for World {
    fn drop(&mut self) {
        // On a thread of its own: drop runs inside the test's runtime, which cannot block.
        let ch = self.ch.clone();
        let sql = format!("DROP DATABASE IF EXISTS {}", self.database);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(ch.execute("drop test database", &sql))?;
            anyhow::Ok(())
        })
        .join();
    }
}

pub fn last_json(stdout: &str) -> Result<Value> {
    let line = stdout.lines().last().context("no output")?;
    serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))
}

/// key → (revenue, purchases, items) of one day of a daily ClickHouse table.
pub async fn buckets(
    world: &World,
    table: &str,
    key: &str,
    day: &str,
) -> Result<BTreeMap<String, (Decimal, u64, u64)>> {
    let rows = world
        .ch
        .rows(
            "buckets",
            &format!("SELECT {key}, toString(revenue), purchases, items FROM {table} WHERE event_date = toDate('{day}')"),
        )
        .await?;
    rows.into_iter()
        .map(|r| match r.as_slice() {
            [k, revenue, purchases, items] => Ok((
                k.clone(),
                (revenue.parse()?, purchases.parse()?, items.parse()?),
            )),
            _ => anyhow::bail!("{table}: a row of {} columns", r.len()),
        })
        .collect()
}

/// Records the stream did not count, over every minute and partition, by reason
/// (`stream_rejects_v`).
pub async fn stream_rejects_by_reason(ch: &ClickHouse) -> Result<BTreeMap<String, u64>> {
    counts(
        ch,
        "SELECT reason, sum(records) FROM stream_rejects_v GROUP BY reason",
    )
    .await
}

/// Purchases the stream flagged, over every minute and partition, by flag (`stream_flags_v`).
pub async fn stream_flags_by_flag(ch: &ClickHouse) -> Result<BTreeMap<String, u64>> {
    counts(
        ch,
        "SELECT flag, sum(records) FROM stream_flags_v GROUP BY flag",
    )
    .await
}

/// A query's (name, count) rows as a map.
async fn counts(ch: &ClickHouse, sql: &str) -> Result<BTreeMap<String, u64>> {
    ch.rows("counts", sql)
        .await?
        .into_iter()
        .map(|r| match r.as_slice() {
            [k, n] => Ok((k.clone(), n.parse()?)),
            _ => anyhow::bail!("row {r:?}"),
        })
        .collect()
}

/// Row count and SHA-256 of a ClickHouse table's rows, sorted (order-free).
pub async fn ch_digest(ch: &ClickHouse, table: &str) -> Result<(usize, String)> {
    let mut rows = ch.rows("digest", &format!("SELECT * FROM {table}")).await?;
    rows.sort();
    Ok((rows.len(), digest(rows.iter().map(|r| r.join("\t")))))
}

fn digest(lines: impl Iterator<Item = String>) -> String {
    let mut h = sha2::Sha256::new();
    for l in lines {
        h.update(l.as_bytes());
        h.update(b"\n");
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `sql` over stage tables registered under their names.
pub async fn stage_query(stage: &Stage, tables: &[Table], sql: &str) -> Result<Vec<RecordBatch>> {
    let ctx = deltalake::datafusion::prelude::SessionContext::new();
    stage.register(&ctx, tables).await?;
    Ok(ctx.sql(sql).await?.collect().await?)
}

/// Row count and SHA-256 of `stage.sales`, every column as text, sorted.
pub async fn stage_sales_digest(stage: &Stage) -> Result<(usize, String)> {
    let batches = stage_query(stage, &[Table::Sales], "SELECT * FROM sales").await?;
    let mut lines = Vec::new();
    for b in &batches {
        let cols: Vec<ArrayRef> = b
            .columns()
            .iter()
            .map(|c| {
                deltalake::arrow::compute::cast(c, &deltalake::arrow::datatypes::DataType::Utf8)
            })
            .collect::<Result<_, _>>()?;
        for i in 0..b.num_rows() {
            let cells: Vec<String> = cols
                .iter()
                .map(|c| {
                    let s = c.as_any().downcast_ref::<StringArray>();
                    match s {
                        Some(s) if !deltalake::arrow::array::Array::is_null(s, i) => {
                            s.value(i).to_string()
                        }
                        _ => "\\N".to_string(),
                    }
                })
                .collect();
            lines.push(cells.join("\t"));
        }
    }
    lines.sort();
    Ok((lines.len(), digest(lines.into_iter())))
}

/// A purchase row of `stage.purchases`, made by hand.
#[derive(Debug, Clone)]
pub struct P {
    pub id: String,
    pub client: String,
    pub product: String,
    pub seller: Option<String>,
    pub quantity: i32,
    /// Cents.
    pub price: i64,
    /// RFC 3339.
    pub ts: String,
    pub partition: i32,
    pub offset: i64,
    /// Micros since the epoch.
    pub ingested: i64,
}

fn micros(ts: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(ts)
        .map(|t| t.timestamp_micros())
        .unwrap_or_default()
}

fn money(v: Vec<Option<i64>>) -> Decimal128Array {
    Decimal128Array::from(v.into_iter().map(|x| x.map(i128::from)).collect::<Vec<_>>())
        .with_precision_and_scale(18, 2)
        .expect("decimal(18,2)")
}

fn ts_array(v: Vec<Option<i64>>) -> TimestampMicrosecondArray {
    TimestampMicrosecondArray::from(v).with_timezone("UTC")
}

/// Appends purchases to `stage.purchases` (UTC business days).
pub async fn append_purchases(stage: &Stage, rows: &[P]) -> Result<()> {
    let day = |ts: &str| {
        let d = chrono::DateTime::parse_from_rfc3339(ts)
            .map(|t| t.with_timezone(&chrono::Utc).date_naive())
            .unwrap_or_default();
        (d - chrono::NaiveDate::default()).num_days() as i32
    };
    let s = |f: fn(&P) -> String| {
        Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>())) as ArrayRef
    };
    let batch = RecordBatch::try_new(
        Table::Purchases.schema(),
        vec![
            s(|p| p.id.clone()),
            s(|p| p.client.clone()),
            s(|p| p.product.clone()),
            Arc::new(StringArray::from(
                rows.iter().map(|p| p.seller.clone()).collect::<Vec<_>>(),
            )),
            Arc::new(Int32Array::from(
                rows.iter().map(|p| p.quantity).collect::<Vec<_>>(),
            )),
            Arc::new(money(rows.iter().map(|p| Some(p.price)).collect())),
            Arc::new(ts_array(rows.iter().map(|p| Some(micros(&p.ts))).collect())),
            Arc::new(StringArray::from(vec!["purchases"; rows.len()])),
            Arc::new(Int32Array::from(
                rows.iter().map(|p| p.partition).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                rows.iter().map(|p| p.offset).collect::<Vec<_>>(),
            )),
            Arc::new(ts_array(rows.iter().map(|p| Some(p.ingested)).collect())),
            Arc::new(Date32Array::from(
                rows.iter().map(|p| day(&p.ts)).collect::<Vec<_>>(),
            )),
        ],
    )?;
    let mut handle = stage.open(Table::Purchases).await?;
    stage
        .append(Table::Purchases, &mut handle, vec![batch], &[])
        .await?;
    Ok(())
}

/// A client row: (id, email, deleted).
pub async fn append_clients(stage: &Stage, rows: &[(&str, &str, bool)]) -> Result<()> {
    let n = rows.len();
    let now = chrono::Utc::now().timestamp_micros();
    let batch = RecordBatch::try_new(
        Table::Clients.schema(),
        vec![
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                rows.iter()
                    .map(|r| format!("First {}", r.0))
                    .collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(vec!["Last"; n])),
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(vec!["1 Main St, Town"; n])),
            Arc::new(ts_array(vec![Some(now); n])),
            Arc::new(ts_array(vec![Some(now); n])),
            Arc::new(ts_array(rows.iter().map(|r| r.2.then_some(now)).collect())),
        ],
    )?;
    let mut handle = stage.open(Table::Clients).await?;
    stage
        .append(Table::Clients, &mut handle, vec![batch], &[])
        .await?;
    Ok(())
}

/// Seller rows: (id, name).
pub async fn append_sellers(stage: &Stage, rows: &[(&str, &str)]) -> Result<()> {
    let n = rows.len();
    let now = chrono::Utc::now().timestamp_micros();
    let batch = RecordBatch::try_new(
        Table::Sellers.schema(),
        vec![
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(vec!["north"; n])),
            Arc::new(ts_array(vec![Some(now); n])),
            Arc::new(ts_array(vec![Some(now); n])),
            Arc::new(ts_array(vec![None; n])),
        ],
    )?;
    let mut handle = stage.open(Table::Sellers).await?;
    stage
        .append(Table::Sellers, &mut handle, vec![batch], &[])
        .await?;
    Ok(())
}

/// Product rows: (id, name, category, seller id).
pub async fn append_products(stage: &Stage, rows: &[(&str, &str, &str, &str)]) -> Result<()> {
    let n = rows.len();
    let now = chrono::Utc::now().timestamp_micros();
    let batch = RecordBatch::try_new(
        Table::Products.schema(),
        vec![
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            )),
            Arc::new(money(vec![Some(999); n])),
            Arc::new(Int32Array::from(vec![10; n])),
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.3).collect::<Vec<_>>(),
            )),
            Arc::new(ts_array(vec![Some(now); n])),
        ],
    )?;
    let mut handle = stage.open(Table::Products).await?;
    stage
        .append(Table::Products, &mut handle, vec![batch], &[])
        .await?;
    Ok(())
}

/// Reads a boolean column helper for assertions.
pub fn bools(b: &RecordBatch, name: &str) -> Vec<bool> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<BooleanArray>())
        .map(|a| a.iter().map(|v| v.unwrap_or(false)).collect())
        .unwrap_or_default()
}

/// Path of a file next to the pipeline.
pub fn beside(world: &World, name: &str) -> PathBuf {
    Path::new(world.dir.path()).join(name)
}
