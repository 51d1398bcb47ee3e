//! Bench: the extractors next to their baselines, in one run, on the same data.
//!
//! - Purchases: `lakeshop extract purchases --until-end` over a topic of
//!   `LAKESHOP_BENCH_EVENTS` (default 1M) generated purchases, next to a bare rdkafka
//!   consumer reading the same topic to nothing (before and after it). Events/s, and the
//!   extractor's CPU seconds per 1M events and peak RSS.
//! - Clients: `LAKESHOP_BENCH_CLIENTS` (default 1M) rows. The PostgreSQL read into Arrow
//!   (`extract clients --full --dry-run`) next to `psql \copy (SELECT …) TO '/dev/null'
//!   (FORMAT binary)`; the whole extract into a fresh stage next to ConnectorX reading the
//!   table into Arrow plus a pyarrow Parquet write.
//!
//! Every process runs under GNU time (wall, CPU, peak RSS). Prints a table and writes
//! `bench-results/extract.json`.

use anyhow::{Context as _, Result};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;

use common::{bench_python, env_u64, last_json, measure, process_cpu_seconds, Measured};

const BIN: &str = env!("CARGO_BIN_EXE_lakeshop");

fn lakeshop(pipeline: &Path, args: &[&str]) -> Result<Measured> {
    let mut all = vec!["--config", pipeline.to_str().context("path")?];
    all.extend_from_slice(args);
    measure(BIN, &all)
}

/// A bare consumer's read of a topic: records, wall seconds, CPU seconds of this process
/// (its librdkafka threads included; nothing else runs meanwhile).
struct Bare {
    records: u64,
    seconds: f64,
    cpu: f64,
}

/// Reads every partition of `topic` from the beginning to its end.
fn bare_consume(topic: &str, partitions: i32) -> Result<Bare> {
    let cpu_before = process_cpu_seconds()?;
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", lakeshop_testkit::kafka_brokers())
        .set("group.id", lakeshop_testkit::unique("bench"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        // The same fetch size as the extractor.
        .set("fetch.message.max.bytes", "8388608")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let started = Instant::now();
    let mut eof = std::collections::BTreeSet::new();
    let mut n = 0u64;
    let mut bytes = 0usize;
    while eof.len() < partitions as usize {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                use rdkafka::Message as _;
                n += 1;
                bytes += m.payload().map_or(0, <[u8]>::len);
                eof.remove(&m.partition());
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                eof.insert(p);
            }
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(900),
            "bare consumer stuck"
        );
    }
    std::hint::black_box(bytes);
    let seconds = started.elapsed().as_secs_f64();
    drop(consumer);
    Ok(Bare {
        records: n,
        seconds,
        cpu: process_cpu_seconds()? - cpu_before,
    })
}

fn pipeline(dir: &Path, db: &str, topic: &str, stage: &Path) -> Result<PathBuf> {
    let path = dir.join("bench.toml");
    std::fs::write(
        &path,
        format!(
            "[pipeline]\nname = \"{}\"\n[postgres]\nurl = \"{db}\"\ntls = \"disable\"\n[kafka]\nbrokers = \"{}\"\n[kafka.topics.purchases]\nname = \"{topic}\"\npartitions = 3\n[s3]\nendpoint = \"{}\"\n[products]\nuri = \"s3://lakeshop/{}/products\"\n[stage]\nuri = \"{}\"\n",
            lakeshop_testkit::unique("bench"),
            lakeshop_testkit::kafka_brokers(),
            lakeshop_testkit::s3_endpoint(),
            lakeshop_testkit::unique("bench"),
            stage.display(),
        ),
    )?;
    Ok(path)
}

async fn purchases(dir: &Path) -> Result<Value> {
    let n = env_u64("LAKESHOP_BENCH_EVENTS", 1_000_000);
    let db = lakeshop_testkit::fresh_database("bench").await?;
    let topic = lakeshop_testkit::unique("bench_purchases");
    lakeshop_testkit::create_topic(&topic, 3).await?;
    let stage = dir.join("stage-purchases");
    let pipeline = pipeline(dir, &db, &topic, &stage)?;
    let truth = dir.join("truth.json");
    let n_arg = n.to_string();
    lakeshop(
        &pipeline,
        &[
            "gen",
            "--only",
            "purchases",
            "--clients",
            "100000",
            "--products",
            "10000",
            "--purchases",
            &n_arg,
            "--duplicate-fraction",
            "0.01",
            "--bad-fraction",
            "0.01",
            "--quiet",
            "--truth",
            truth.to_str().context("path")?,
        ],
    )?;
    let bare1 = bare_consume(&topic, 3)?;
    let records = bare1.records;
    let run = lakeshop(
        &pipeline,
        &[
            "extract",
            "purchases",
            "--until-end",
            "--idle",
            "0s",
            "--quiet",
        ],
    )?;
    let bare2 = bare_consume(&topic, 3)?;
    let stats = last_json(&run.stdout)?;
    anyhow::ensure!(
        stats["read"].as_u64() == Some(records) && records == bare2.records,
        "extractor read {} of {records} records",
        stats["read"]
    );
    let bare = (bare1.seconds + bare2.seconds) / 2.0;
    let bare_rate = records as f64 / bare;
    let bare_cpu_per_1m = (bare1.cpu + bare2.cpu) / 2.0 * 1e6 / records as f64;
    let cpu_per_1m = run.cpu * 1e6 / records as f64;
    let rate = records as f64 / run.wall;
    Ok(json!({
        "records": records,
        "staged": stats["staged"],
        "dead_lettered": stats["dead_lettered"],
        "commits": stats["commits"],
        "bare_consumer_seconds": [bare1.seconds, bare2.seconds],
        "bare_consumer_cpu_seconds": [bare1.cpu, bare2.cpu],
        "bare_consumer_cpu_seconds_per_1m": bare_cpu_per_1m,
        "bare_consumer_events_per_s": bare_rate,
        "extract_seconds": run.wall,
        "extract_events_per_s": rate,
        "ratio_vs_bare": rate / bare_rate,
        "extract_cpu_seconds": run.cpu,
        "extract_cpu_seconds_per_1m": cpu_per_1m,
        // What the extractor spends beyond reading the records (decode, validate, Arrow,
        // Parquet, Delta commit, process start), per 1M.
        "extract_cpu_seconds_per_1m_beyond_bare": cpu_per_1m - bare_cpu_per_1m,
        "extract_peak_rss_mib": run.rss_mib,
    }))
}

async fn clients(dir: &Path) -> Result<Value> {
    let n = env_u64("LAKESHOP_BENCH_CLIENTS", 1_000_000);
    let db = lakeshop_testkit::fresh_database("bench").await?;
    let stage = dir.join("stage-clients");
    let pipeline = pipeline(dir, &db, "unused", &stage)?;
    let truth = dir.join("truth-clients.json");
    let n_arg = n.to_string();
    lakeshop(
        &pipeline,
        &[
            "gen",
            "--only",
            "postgres",
            "--clients",
            &n_arg,
            "--sellers",
            "100",
            "--quiet",
            "--truth",
            truth.to_str().context("path")?,
        ],
    )?;
    // Warm the table into the server's cache once, so the first measured reader does not
    // pay for the others.
    let pg = lakeshop_testkit::pg(&db).await?;
    pg.execute("ANALYZE clients", &[]).await?;
    let select = "SELECT client_id::uuid, first_name::text, last_name::text, email::text, address::text, registration_date::timestamptz, updated_at::timestamptz, deleted_at::timestamptz FROM clients";
    measure(
        "psql",
        &[
            &db,
            "-c",
            &format!("\\copy ({select}) TO '/dev/null' (FORMAT binary)"),
        ],
    )?;
    let psql = measure(
        "psql",
        &[
            &db,
            "-c",
            &format!("\\copy ({select}) TO '/dev/null' (FORMAT binary)"),
        ],
    )?;
    let read = lakeshop(
        &pipeline,
        &["extract", "clients", "--full", "--dry-run", "--quiet"],
    )?;
    anyhow::ensure!(last_json(&read.stdout)?["read"].as_u64() == Some(n));

    let python = bench_python()?;
    let cx_out = dir.join("connectorx");
    std::fs::create_dir_all(&cx_out)?;
    let cx = measure(
        &python,
        &[
            "bench/connectorx_clients.py",
            &db,
            cx_out.to_str().context("path")?,
        ],
    )?;
    let cx_stats = last_json(&cx.stdout)?;
    anyhow::ensure!(
        cx_stats["rows"].as_u64() == Some(n),
        "connectorx read {cx_stats}"
    );

    let full = lakeshop(&pipeline, &["extract", "clients", "--quiet"])?;
    let stats = last_json(&full.stdout)?;
    anyhow::ensure!(stats["inserted"].as_u64() == Some(n), "extract {stats}");
    Ok(json!({
        "rows": n,
        "psql_copy_seconds": psql.wall,
        "psql_peak_rss_mib": psql.rss_mib,
        "read_into_arrow_seconds": read.wall,
        "read_into_arrow_peak_rss_mib": read.rss_mib,
        "read_ratio_vs_psql": psql.wall / read.wall,
        "connectorx_pyarrow_seconds": cx.wall,
        "connectorx_read_seconds": cx_stats["read_seconds"],
        "connectorx_peak_rss_mib": cx.rss_mib,
        "extract_seconds": full.wall,
        "extract_cpu_seconds": full.cpu,
        "extract_peak_rss_mib": full.rss_mib,
        "extract_ratio_vs_connectorx": cx.wall / full.wall,
    }))
}

#[tokio::main]
async fn main() -> Result<()> {
    // cargo runs benches from the package directory; paths here are from the repository.
    std::env::set_current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))?;
    let dir = tempfile::tempdir()?;
    let p = purchases(dir.path()).await?;
    println!("purchases ingest ({} records):", p["records"]);
    println!(
        "  bare rdkafka consumer  {:>10.0} events/s  {:.2} CPU-s per 1M",
        p["bare_consumer_events_per_s"].as_f64().unwrap_or_default(),
        p["bare_consumer_cpu_seconds_per_1m"]
            .as_f64()
            .unwrap_or_default(),
    );
    println!(
        "  lakeshop extract       {:>10.0} events/s  ratio {:.2}  {:.2} CPU-s per 1M  peak RSS {:.0} MiB",
        p["extract_events_per_s"].as_f64().unwrap_or_default(),
        p["ratio_vs_bare"].as_f64().unwrap_or_default(),
        p["extract_cpu_seconds_per_1m"].as_f64().unwrap_or_default(),
        p["extract_peak_rss_mib"].as_f64().unwrap_or_default(),
    );
    println!(
        "    of which beyond reading the records: {:.2} CPU-s per 1M",
        p["extract_cpu_seconds_per_1m_beyond_bare"]
            .as_f64()
            .unwrap_or_default(),
    );
    let c = clients(dir.path()).await?;
    println!("clients extract ({} rows):", c["rows"]);
    println!(
        "  psql \\copy binary      {:>8.2} s      lakeshop read into Arrow {:>8.2} s  ratio {:.2}  peak RSS {:.0} MiB",
        c["psql_copy_seconds"].as_f64().unwrap_or_default(),
        c["read_into_arrow_seconds"].as_f64().unwrap_or_default(),
        c["read_ratio_vs_psql"].as_f64().unwrap_or_default(),
        c["read_into_arrow_peak_rss_mib"].as_f64().unwrap_or_default(),
    );
    println!(
        "  connectorx + pyarrow   {:>8.2} s (peak RSS {:.0} MiB)   lakeshop extract {:>8.2} s  ratio {:.2}  peak RSS {:.0} MiB",
        c["connectorx_pyarrow_seconds"].as_f64().unwrap_or_default(),
        c["connectorx_peak_rss_mib"].as_f64().unwrap_or_default(),
        c["extract_seconds"].as_f64().unwrap_or_default(),
        c["extract_ratio_vs_connectorx"].as_f64().unwrap_or_default(),
        c["extract_peak_rss_mib"].as_f64().unwrap_or_default(),
    );
    std::fs::create_dir_all("bench-results")?;
    std::fs::write(
        "bench-results/extract.json",
        serde_json::to_vec_pretty(&json!({ "purchases": p, "clients": c }))?,
    )?;
    Ok(())
}
