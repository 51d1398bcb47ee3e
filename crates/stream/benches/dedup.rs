//! Bench: the loader's memory with a 7-day dedup horizon at 10M purchases a day, no broker
//! and no ClickHouse.
//!
//! One partition's [`PartitionState`] (the code `stream run` runs per record) takes 10M
//! purchases per day of event time for 9 days (the horizon, the lateness and the filter's
//! extra day fill; the 9th day runs at the steady state, a day leaving as one arrives), 1%
//! of them re-sends of a recent purchase, flushed into a null sink every 20,000 records
//! (acknowledged, then evicted, as the loader does). Before it, in the same process, the
//! baseline: the same stream for one day with no horizon (ids held exactly within the
//! lateness; the filter keeps its one extra day). Reported: the process's peak RSS after each, the filter's ids and bytes, the
//! exact look-ups the filter asked for (its "maybe" rate on new ids: each is one ClickHouse
//! query in the loader), and CPU seconds per 1M records.
//!
//! `LAKESHOP_BENCH_PER_DAY` (default 10000000) and `LAKESHOP_BENCH_DAYS` (default 9) set the
//! volume. Prints a table and writes `bench-results/stream_dedup.json` in the working
//! directory. Goal: peak RSS ≤ 512 MiB.

use std::io::Write as _;
use std::sync::Arc;

use lakeshop_clickhouse::RowBinary;
use lakeshop_stream::dims::Dims;
use lakeshop_stream::state::{NoLookups, Outcome, PartitionState, Restored, Settings};
use rand::{Rng, SeedableRng};
use uuid::Uuid;

/// Records between two flushes.
const FLUSH_EVERY: u64 = 20_000;
/// 2026-11-18T00:00:00Z.
const T0_MS: i64 = 1_795_046_400_000;
const DAY_MS: i64 = 86_400_000;

/// Peak resident set of this process (MiB), from `/proc/self/status`.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn cpu() -> f64 {
    lakeshop_service::process::usage().map_or(0.0, |u| u.cpu_seconds)
}

/// What one pass did.
#[derive(Debug, Default)]
struct Pass {
    records: u64,
    counted: u64,
    rejected: u64,
    lookups: u64,
    filter_ids: usize,
    filter_bytes: usize,
    held_ids: usize,
    cpu_seconds: f64,
}

/// `days` days of `per_day` purchases a day through one partition's state.
fn pass(per_day: u64, days: u64, horizon_s: i64, dims: &Dims, products: &[Uuid]) -> Pass {
    let settings = Settings {
        topic: Arc::from("purchases"),
        timezone: chrono_tz::UTC,
        lateness: 300,
        max_clock_skew: 60,
        dedup_horizon: horizon_s,
    };
    let mut st = PartitionState::new(0, settings, Restored::default(), dims);
    let mut lookups = NoLookups::default();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut body = RowBinary::new();
    let mut payload = Vec::with_capacity(256);
    // The last thousand purchases sent (id, event ms, product, client): re-sends repeat one.
    let mut recent: Vec<(u128, i64, usize, u32)> = Vec::with_capacity(1000);
    let step_ms = DAY_MS as f64 / per_day as f64;
    let n = per_day * days;
    let mut out = Pass::default();
    let started = cpu();
    for i in 0..n {
        let kafka_ms = T0_MS + (i as f64 * step_ms) as i64;
        let (id, ts_ms, product, client) = if recent.len() == 1000 && rng.random_bool(0.01) {
            recent[rng.random_range(0..recent.len())]
        } else {
            let p = (
                rng.random::<u128>(),
                kafka_ms - rng.random_range(0..500),
                rng.random_range(0..products.len()),
                rng.random_range(0..1_000_000u32),
            );
            if recent.len() < 1000 {
                recent.push(p);
            } else {
                recent[(i % 1000) as usize] = p;
            }
            p
        };
        payload.clear();
        let ts = chrono::DateTime::from_timestamp_millis(ts_ms).unwrap_or_default();
        let _ = write!(
            payload,
            r#"{{"purchase_id":"{}","client_id":"{}","product_id":"{}","quantity":2,"price":12.50,"timestamp":"{}"}}"#,
            Uuid::from_u128(id),
            Uuid::from_u128(3 << 64 | u128::from(client)),
            products[product],
            ts.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
        );
        let outcome = st
            .process(i as i64, Some(kafka_ms), &payload, dims, &mut lookups)
            .expect("no look-up fails");
        match outcome {
            Outcome::Counted | Outcome::Future | Outcome::Late => out.counted += 1,
            Outcome::Rejected(_) | Outcome::Skipped => out.rejected += 1,
        }
        if (i + 1) % FLUSH_EVERY == 0 || i + 1 == n {
            st.take_purchases(&mut body);
            st.take_flagged(&mut body);
            st.window_rows(&mut body);
            st.reject_rows(&mut body);
            st.checkpoint_row("bench", &mut body);
            body.clear();
            st.acknowledged();
            st.evict();
        }
    }
    out.cpu_seconds = cpu() - started;
    out.records = n;
    out.lookups = st.lookups();
    (out.filter_ids, out.filter_bytes) = st.filter_size();
    out.held_ids = st.sizes().1;
    out
}

fn main() -> anyhow::Result<()> {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let per_day = env("LAKESHOP_BENCH_PER_DAY", 10_000_000);
    let days = env("LAKESHOP_BENCH_DAYS", 9).max(1);
    let products: Vec<Uuid> = (0..10_000u128)
        .map(|i| Uuid::from_u128(1 << 64 | i))
        .collect();
    let mut dims = Dims::empty();
    for (i, p) in products.iter().enumerate() {
        dims.add_product(*p, &format!("category-{}", i % 50));
    }
    let rss_start = peak_rss_mib();
    let base = pass(per_day, 1, 0, &dims, &products);
    let rss_base = peak_rss_mib();
    let horizon = pass(per_day, days, 7 * 86_400, &dims, &products);
    let rss_horizon = peak_rss_mib();
    // Every record is decided, and all but the re-sends (1%) are counted.
    for p in [&base, &horizon] {
        anyhow::ensure!(
            p.counted + p.rejected == p.records && p.rejected * 50 < p.records,
            "records missed or rejected: {p:?}"
        );
    }
    let per_1m = |p: &Pass| p.cpu_seconds * 1e6 / p.records as f64;
    let new_ids = horizon.counted as f64;
    println!("stream dedup: {per_day} purchases a day, {days} days, 7-day horizon (1% re-sends)");
    println!(
        "  baseline (no horizon, 1 day): peak RSS {rss_base:.0} MiB (start {rss_start:.0}), {:.3} CPU-s per 1M",
        per_1m(&base)
    );
    println!(
        "  7-day horizon: peak RSS {rss_horizon:.0} MiB (goal <= 512); filter {} ids in {:.0} MiB ({:.2} bytes/id); {} ids held exactly; {:.3} CPU-s per 1M",
        horizon.filter_ids,
        horizon.filter_bytes as f64 / (1 << 20) as f64,
        horizon.filter_bytes as f64 / horizon.filter_ids.max(1) as f64,
        horizon.held_ids,
        per_1m(&horizon)
    );
    println!(
        "  look-ups asked: {} ({:.4}% of new ids; each is one ClickHouse query in the loader)",
        horizon.lookups,
        100.0 * horizon.lookups as f64 / new_ids
    );
    let result = serde_json::json!({
        "per_day": per_day,
        "days": days,
        "horizon_days": 7,
        "baseline": {
            "peak_rss_mib": rss_base,
            "cpu_seconds_per_1m": per_1m(&base),
            "records": base.records,
        },
        "horizon": {
            "peak_rss_mib": rss_horizon,
            "cpu_seconds_per_1m": per_1m(&horizon),
            "records": horizon.records,
            "counted": horizon.counted,
            "rejected": horizon.rejected,
            "filter_ids": horizon.filter_ids,
            "filter_bytes": horizon.filter_bytes,
            "held_ids": horizon.held_ids,
            "lookups": horizon.lookups,
            "lookup_rate": horizon.lookups as f64 / new_ids,
        },
        "goal_peak_rss_mib": 512,
    });
    std::fs::create_dir_all("bench-results")?;
    std::fs::write(
        "bench-results/stream_dedup.json",
        serde_json::to_string_pretty(&result)?,
    )?;
    anyhow::ensure!(
        rss_horizon <= 512.0,
        "peak RSS {rss_horizon:.0} MiB is above the 512 MiB goal"
    );
    Ok(())
}
