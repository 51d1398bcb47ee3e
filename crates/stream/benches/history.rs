//! Bench: what the loader's restore and a day's reads cost with 1 and with 30 days of
//! history before the day, against the local ClickHouse (`CLICKHOUSE_URL`, `make up`).
//!
//! Two databases are filled alike but for the days before the measured one (1 or 30),
//! straight in ClickHouse (`INSERT … SELECT FROM numbers`): per day
//! `LAKESHOP_BENCH_HISTORY_PURCHASES` (default 200,000) counted purchases over 3 partitions,
//! 1,000 products in 20 categories, and their minute windows, as the loader writes them.
//! Then, in each database, the median of 5 runs of:
//! - restore: the three reads that restore one partition at a watermark at the end of the
//!   measured day (open windows, reject counters, the purchase ids within the lateness);
//! - reconcile's read of the day (`reconcile_day`, the batch side empty);
//! - `stream_sales_v` for the day (the view, as a user would query it).
//!
//! Prints a table and writes `bench-results/stream_history.json`.

use std::time::Instant;

use anyhow::Result;
use chrono::NaiveDate;
use lakeshop_clickhouse::migrate::Migration;
use lakeshop_clickhouse::ClickHouse;
use lakeshop_testkit::world::clickhouse;

/// The measured day: 2026-11-20 (its midnight, UTC seconds), and its text.
const DAY_START: i64 = 1_795_132_800;
const DAY: &str = "2026-11-20";
const LATENESS: i64 = 300;

async fn fill(ch: &ClickHouse, days_before: i64, per_day: u64) -> Result<()> {
    ch.migrate(&Migration::all()?).await?;
    let first = DAY_START - days_before * 86_400;
    let days = days_before + 1;
    let n = per_day * days as u64;
    // One purchase every 86400 / per_day seconds from `first` on; product number % 1000.
    let step = 86_400.0 / per_day as f64;
    ch.execute(
        "fill purchases",
        &format!(
            "INSERT INTO stream_purchases \
             SELECT lower(hex(MD5(toString(number)))) AS purchase_id, 'purchases', \
                    toUInt16(number % 3), intDiv(number, 3), \
                    toDateTime({first} + toUInt32(number * {step})) AS ts, toDate(ts), \
                    toStartOfMinute(ts), toStartOfHour(ts), toStartOfDay(ts), \
                    toString(number % 50000), toString(number % 100), \
                    concat('c', toString(number % 20)), toString(number % 1000), \
                    toUInt32(1 + number % 3), toDecimal128(12.5, 2), number \
             FROM numbers({n})"
        ),
    )
    .await?;
    // The minute windows of the product dimension: one row per (minute, product, partition)
    // that had a purchase, full state at its last offset.
    ch.execute(
        "fill minutes",
        "INSERT INTO stream_minutes \
         SELECT minute_start, any(hour_start), any(day_start), any(event_date), 'product', \
                product_key, source, part, sum(amount), count(), sum(quantity), max(offset) + 1 \
         FROM stream_purchases GROUP BY minute_start, product_key, source, part",
    )
    .await?;
    Ok(())
}

/// Median seconds of 5 runs of `f`.
async fn median<F, Fut>(mut f: F) -> Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        f().await?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[2])
}

/// (restore, reconcile's read, the view) seconds on one database.
async fn measure(ch: &ClickHouse) -> Result<(f64, f64, f64)> {
    let watermark = DAY_START + 86_400 - 1;
    let restore = median(|| async move {
        let (mut windows, mut ids) = (0u64, 0u64);
        ch.stream_windows("purchases", 0, watermark - LATENESS - 60, |_| windows += 1)
            .await?;
        ch.stream_rejects("purchases", 0, watermark.div_euclid(60) * 60)
            .await?;
        ch.stream_counted("purchases", 0, watermark - LATENESS, i64::MAX, |_| ids += 1)
            .await?;
        anyhow::ensure!(windows > 0 && ids > 0, "nothing restored");
        Ok(())
    })
    .await?;
    let day: NaiveDate = DAY.parse()?;
    anyhow::ensure!(
        day.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp()) == Some(DAY_START),
        "the measured day's constants disagree"
    );
    let reconcile = median(|| async move {
        let report = lakeshop_stream::reconcile::reconcile_day(ch, day).await?;
        anyhow::ensure!(
            report.rows.iter().any(|r| r.stream.is_some()),
            "the stream holds nothing of {day}"
        );
        Ok(())
    })
    .await?;
    let view = median(|| async move {
        ch.rows(
            "stream_sales_v of a day",
            &format!(
                "SELECT count() FROM stream_sales_v WHERE event_date = toDate('{DAY}') \
                 AND granularity = 'day'"
            ),
        )
        .await?;
        Ok(())
    })
    .await?;
    Ok((restore, reconcile, view))
}

#[tokio::main]
async fn main() -> Result<()> {
    let per_day: u64 = std::env::var("LAKESHOP_BENCH_HISTORY_PURCHASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let mut results = Vec::new();
    for days_before in [1, 30] {
        let database = lakeshop_testkit::unique("lakeshop_bench_history");
        let ch = clickhouse(&database)?;
        let outcome = async {
            fill(&ch, days_before, per_day).await?;
            measure(&ch).await
        }
        .await;
        ch.execute(
            "drop bench database",
            &format!("DROP DATABASE IF EXISTS {database}"),
        )
        .await?;
        results.push((days_before, outcome?));
    }
    println!("stream history: {per_day} purchases a day, median of 5 runs (seconds)");
    println!("  days before  restore  reconcile-read  stream_sales_v");
    for (days, (r, c, v)) in &results {
        println!("  {days:>11}  {r:>7.3}  {c:>14.3}  {v:>14.3}");
    }
    let (one, thirty) = (results[0].1, results[1].1);
    println!(
        "  30 vs 1 day: restore {:.2}x, reconcile read {:.2}x, view {:.2}x",
        thirty.0 / one.0,
        thirty.1 / one.1,
        thirty.2 / one.2
    );
    let json = serde_json::json!({
        "purchases_per_day": per_day,
        "runs": results.iter().map(|(d, (r, c, v))| serde_json::json!({
            "days_before": d,
            "restore_seconds": r,
            "reconcile_read_seconds": c,
            "stream_sales_v_seconds": v,
        })).collect::<Vec<_>>(),
        "ratio_30_vs_1": {
            "restore": thirty.0 / one.0,
            "reconcile_read": thirty.1 / one.1,
            "stream_sales_v": thirty.2 / one.2,
        },
    });
    std::fs::create_dir_all("bench-results")?;
    std::fs::write(
        "bench-results/stream_history.json",
        serde_json::to_string_pretty(&json)?,
    )?;
    Ok(())
}
