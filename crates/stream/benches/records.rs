//! Bench: the loader's per-record path with no broker and no ClickHouse, in seconds.
//!
//! 1M recorded purchase messages (JSON as producers send them: 10k products in 50 categories,
//! 100 sellers, 100k clients, one event every millisecond with 1% re-sends and 0.5% unknown
//! products) go through the very code `stream run` runs per record — decode, validate, dedup,
//! minute windows, row encoding — one partition's [`PartitionState`], flushed into a null sink
//! every 20,000 records (purchase rows, window rows, checkpoint encoded and dropped; the state
//! evicts as after an acknowledged flush). Beside it, in the same run, the floor: a plain
//! `serde_json` decode of the same bytes into a typed struct (borrowed ids, float price).
//!
//! Each contender runs `LAKESHOP_BENCH_ROUNDS` (default 5) times; the fastest round counts.
//! `LAKESHOP_BENCH_RECORDS` (default 1000000) sets the message count. Prints a table and writes
//! `bench-results/stream_records.json` in the working directory. `make bench-records`.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use lakeshop_clickhouse::RowBinary;
use lakeshop_model::Purchase;
use lakeshop_stream::dims::Dims;
use lakeshop_stream::state::{NoLookups, Outcome, PartitionState, Restored, Settings};
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use uuid::Uuid;

/// Records between two flushes (the loader flushes every 200 ms; at 100k records/s that is
/// 20,000 records).
const FLUSH_EVERY: usize = 20_000;
/// 2026-11-18T00:00:00Z.
const T0_MS: i64 = 1_795_046_400_000;

/// A recorded message: payload and Kafka timestamp (ms).
struct Message {
    payload: Vec<u8>,
    kafka_ms: i64,
}

fn messages(n: usize) -> (Vec<Message>, Dims) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let products: Vec<Uuid> = (0..10_000u128)
        .map(|i| Uuid::from_u128(1 << 64 | i))
        .collect();
    let sellers: Vec<Uuid> = (0..100u128).map(|i| Uuid::from_u128(2 << 64 | i)).collect();
    let mut dims = Dims::empty();
    for (i, p) in products.iter().enumerate() {
        dims.add_product(*p, &format!("category-{}", i % 50));
    }
    for s in &sellers {
        dims.add_seller(*s);
    }
    let mut out = Vec::with_capacity(n);
    let mut sent: Vec<Vec<u8>> = Vec::new();
    for i in 0..n {
        let kafka_ms = T0_MS + i as i64;
        if i > 1000 && rng.random_bool(0.01) {
            // A re-send of one of the last thousand purchases.
            let back = rng.random_range(1..1000);
            let payload = sent[sent.len() - back].clone();
            out.push(Message { payload, kafka_ms });
            continue;
        }
        let product = if rng.random_bool(0.005) {
            Uuid::from_u128(rng.random())
        } else {
            products[rng.random_range(0..products.len())]
        };
        let p = Purchase {
            purchase_id: Uuid::from_u128(rng.random()),
            client_id: Uuid::from_u128(3 << 64 | rng.random_range(0..100_000u128)),
            product_id: product,
            seller_id: Some(sellers[rng.random_range(0..sellers.len())]),
            quantity: rng.random_range(1..5),
            price: Decimal::new(rng.random_range(100..100_000), 2),
            timestamp: DateTime::<Utc>::from_timestamp_millis(kafka_ms - rng.random_range(0..500))
                .unwrap_or_default(),
        };
        let payload = p.to_json().into_bytes();
        sent.push(payload.clone());
        out.push(Message { payload, kafka_ms });
    }
    (out, dims)
}

/// What one pass counted (to check every contender saw every record).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Counts {
    counted: u64,
    other: u64,
    bytes: u64,
}

/// The loader's per-record path into a null sink.
fn loader_pass(msgs: &[Message], dims: &Dims) -> Counts {
    let settings = Settings {
        topic: Arc::from("purchases"),
        timezone: chrono_tz::UTC,
        lateness: 300,
        max_clock_skew: 60,
        dedup_horizon: 7 * 86_400,
    };
    let mut lookups = NoLookups::default();
    let mut st = PartitionState::new(0, settings, Restored::default(), dims);
    let mut body = RowBinary::new();
    let mut counts = Counts::default();
    for (offset, m) in msgs.iter().enumerate() {
        let outcome = st
            .process(
                offset as i64,
                Some(m.kafka_ms),
                &m.payload,
                dims,
                &mut lookups,
            )
            .expect("no look-up fails");
        match outcome {
            Outcome::Counted | Outcome::Future | Outcome::Late => counts.counted += 1,
            Outcome::Rejected(_) | Outcome::Skipped => counts.other += 1,
        }
        if (offset + 1) % FLUSH_EVERY == 0 || offset + 1 == msgs.len() {
            st.take_purchases(&mut body);
            st.take_flagged(&mut body);
            st.window_rows(&mut body);
            st.reject_rows(&mut body);
            st.checkpoint_row("bench", &mut body);
            counts.bytes += body.len() as u64;
            body.clear();
            st.acknowledged();
            st.evict();
        }
    }
    counts
}

/// The floor: a plain typed `serde_json` decode of the same bytes.
fn serde_pass(msgs: &[Message]) -> Counts {
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Raw<'a> {
        purchase_id: &'a str,
        client_id: &'a str,
        product_id: &'a str,
        seller_id: Option<&'a str>,
        quantity: u32,
        price: f64,
        timestamp: &'a str,
    }
    let mut counts = Counts::default();
    for m in msgs {
        match serde_json::from_slice::<Raw<'_>>(&m.payload) {
            Ok(r) => {
                counts.counted += 1;
                counts.bytes += std::hint::black_box(r.purchase_id.len()) as u64;
            }
            Err(_) => counts.other += 1,
        }
    }
    counts
}

/// CPU seconds of this process (user + system; the bench runs on one thread).
fn cpu() -> f64 {
    lakeshop_service::process::usage().map_or(0.0, |u| u.cpu_seconds)
}

/// The fastest of `rounds` passes: (CPU seconds, wall seconds, counts).
fn best(rounds: usize, mut pass: impl FnMut() -> Counts) -> (f64, f64, Counts) {
    let mut out = (f64::MAX, f64::MAX, Counts::default());
    for _ in 0..rounds {
        let (cpu, wall) = (cpu(), Instant::now());
        let counts = pass();
        let (cpu, wall) = (self::cpu() - cpu, wall.elapsed().as_secs_f64());
        if cpu < out.0 {
            out = (cpu, wall, counts);
        }
    }
    out
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("LAKESHOP_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let rounds: usize = std::env::var("LAKESHOP_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let (msgs, dims) = messages(n);
    let bytes: usize = msgs.iter().map(|m| m.payload.len()).sum();
    let (l_cpu, l_wall, l) = best(rounds, || loader_pass(&msgs, &dims));
    let (s_cpu, s_wall, s) = best(rounds, || serde_pass(&msgs));
    anyhow::ensure!(
        l.counted + l.other == n as u64 && s.counted == n as u64,
        "a contender missed records: loader {l:?}, serde {s:?}"
    );
    let per_1m = |cpu: f64| cpu * 1e6 / n as f64;
    println!(
        "stream records: {n} messages ({:.1} MiB), best of {rounds}",
        bytes as f64 / (1 << 20) as f64
    );
    println!(
        "  loader path (decode, validate, dedup, windows, encode): {:.3} CPU-s per 1M ({:.0} ns/record, {:.2} s wall); counted {}, rejected {}",
        per_1m(l_cpu),
        l_cpu * 1e9 / n as f64,
        l_wall,
        l.counted,
        l.other
    );
    println!(
        "  floor (serde_json typed decode):                       {:.3} CPU-s per 1M ({:.0} ns/record, {:.2} s wall)",
        per_1m(s_cpu),
        s_cpu * 1e9 / n as f64,
        s_wall
    );
    println!("  loader / floor: {:.2}x", l_cpu / s_cpu);
    let result = serde_json::json!({
        "records": n,
        "payload_bytes": bytes,
        "rounds": rounds,
        "loader": {
            "cpu_seconds": l_cpu,
            "cpu_seconds_per_1m": per_1m(l_cpu),
            "wall_seconds": l_wall,
            "counted": l.counted,
            "rejected": l.other,
            "encoded_bytes": l.bytes,
        },
        "serde_json_floor": {
            "cpu_seconds": s_cpu,
            "cpu_seconds_per_1m": per_1m(s_cpu),
            "wall_seconds": s_wall,
        },
        "ratio_vs_floor": l_cpu / s_cpu,
    });
    std::fs::create_dir_all("bench-results")?;
    std::fs::write(
        "bench-results/stream_records.json",
        serde_json::to_string_pretty(&result)?,
    )?;
    Ok(())
}
