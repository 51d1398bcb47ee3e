//! `POST /api/purchases` under load, broker acknowledgement included, next to a bare
//! rdkafka producer of the same messages (so the API's own cost shows as a ratio).
//!
//! 1. `lakeshop serve` (the bench build) on a free loopback port, writing to a fresh topic of
//!    3 partitions.
//! 2. Singles: `wrk` (Debian) with `LAKESHOP_BENCH_API_CONNECTIONS` (64) connections for
//!    `LAKESHOP_BENCH_API_SECONDS` (10 s), each request one purchase with a fresh id (a Lua
//!    script); requests/s and the latency distribution (p50, p99) as wrk reports it.
//! 3. Arrays: the same with `LAKESHOP_BENCH_API_BATCH` (1000) purchases per request;
//!    purchases/s.
//! 4. Baselines, in this process, on the same broker: a bare `FutureProducer` with the API's
//!    producer settings (acks=all, idempotence, linger 2 ms) sending the same canonical JSON
//!    keyed by id: (a) as many concurrent one-message sends, each awaited, as wrk has
//!    connections (messages/s and p99 of the acknowledgement), (b) streaming as fast as the
//!    acknowledgements come back (messages/s).
//!
//! Every request must be answered 202 (wrk's non-2xx and socket error counts are checked).
//! Prints a table and writes `bench-results/api.json`.

use anyhow::{Context as _, Result};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::env_u64;

const BIN: &str = env!("CARGO_BIN_EXE_lakeshop");
const TOKEN: &str = "bench-writer-token-0123456789";
const PARTITIONS: i32 = 3;

/// A running `lakeshop serve`.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(pipeline: &std::path::Path) -> Result<Server> {
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(pipeline)
        .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
        .env("BENCH_WRITE_TOKENS", TOKEN)
        .env("RUST_LOG", "warn,lakeshop=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let base = loop {
        let line = lines.next().context("serve ended before it listened")??;
        let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if let Some(addr) = v["fields"]["addr"].as_str() {
            break format!("http://{addr}");
        }
    };
    // Keep reading its log so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    Ok(Server { child, base })
}

/// The canonical JSON of purchase `n` of thread `t` at `ts` (what the API produces from the
/// wrk script's purchase).
fn purchase(t: u32, n: u64, ts: &str) -> String {
    let text = format!(
        r#"{{"purchase_id":"{t:08x}-0000-4000-8000-{n:012x}","client_id":"6f1c2f4e-9a57-4b0a-9d2b-0c8f3e7a1d11","product_id":"0b6f8a3e-2c1d-4e5f-8a9b-7c6d5e4f3a21","seller_id":"9b2e4c11-8a6f-4b0e-8d7a-2c3f5e6a7b02","quantity":2,"price":12.50,"timestamp":"{ts}"}}"#
    );
    lakeshop_model::parse_purchase(text.as_bytes(), chrono::Utc::now())
        .map(|p| p.to_json())
        .unwrap_or(text)
}

/// The wrk script: each request `batch` purchases (an object when 1) with fresh ids, the
/// thread's number in the id's first group.
fn wrk_script(batch: u64, ts: &str, salt: u32) -> String {
    format!(
        r#"
local counter = 0
local thread_no = 0
local threads = {{}}
function setup(thread)
  thread:set("no", #threads + 1)
  table.insert(threads, thread)
end
function init(args)
  thread_no = no + {salt}
end
local function one()
  counter = counter + 1
  return string.format('{{"purchase_id":"%08x-0000-4000-8000-%012x","client_id":"6f1c2f4e-9a57-4b0a-9d2b-0c8f3e7a1d11","product_id":"0b6f8a3e-2c1d-4e5f-8a9b-7c6d5e4f3a21","seller_id":"9b2e4c11-8a6f-4b0e-8d7a-2c3f5e6a7b02","quantity":2,"price":12.50,"timestamp":"{ts}"}}', thread_no, counter)
end
local headers = {{ ["Content-Type"] = "application/json", ["Authorization"] = "Bearer {TOKEN}" }}
request = function()
  local body
  if {batch} == 1 then
    body = one()
  else
    local parts = {{}}
    for i = 1, {batch} do parts[i] = one() end
    body = "[" .. table.concat(parts, ",") .. "]"
  end
  return wrk.format("POST", "/api/purchases", headers, body)
end
"#
    )
}

/// A wrk duration such as `1.23ms`, in milliseconds.
fn wrk_ms(s: &str) -> Option<f64> {
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| s.split_at(i))?;
    let v: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => v / 1000.0,
        "ms" => v,
        "s" => v * 1000.0,
        "m" => v * 60_000.0,
        _ => return None,
    })
}

/// Runs wrk; returns (requests/s, p50 ms, p99 ms, requests).
fn wrk(
    base: &str,
    script: &str,
    dir: &std::path::Path,
    connections: u64,
    seconds: u64,
) -> Result<Value> {
    let file = dir.join("post.lua");
    std::fs::write(&file, script)?;
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            "--timeout",
            "10s",
            "-s",
        ])
        .arg(&file)
        .arg(format!("{base}/api/purchases"))
        .output()
        .context("running wrk (infra/deps.sh bench installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    anyhow::ensure!(
        out.status.success(),
        "wrk: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(
        !text.contains("Non-2xx or 3xx responses") && !text.contains("Socket errors"),
        "not every request was answered 202:\n{text}"
    );
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
            .map(String::from)
    };
    let rps: f64 = field("Requests/sec:").context("Requests/sec")?.parse()?;
    let p50 = field("50%").and_then(|v| wrk_ms(&v)).context("p50")?;
    let p99 = field("99%").and_then(|v| wrk_ms(&v)).context("p99")?;
    let requests: u64 = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .context("requests")?;
    Ok(json!({ "requests_per_s": rps, "p50_ms": p50, "p99_ms": p99, "requests": requests }))
}

fn producer(api_like: bool) -> Result<FutureProducer> {
    let mut c = rdkafka::ClientConfig::new();
    c.set("bootstrap.servers", lakeshop_testkit::kafka_brokers())
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "10000");
    if api_like {
        c.set("enable.idempotence", "true");
    }
    Ok(c.create()?)
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// `concurrency` tasks, each sending one message and awaiting its acknowledgement, for
/// `seconds`: (messages/s, p99 ms of the acknowledgement).
async fn bare_singles(topic: &str, ts: &str, concurrency: u64, seconds: u64) -> Result<Value> {
    let p = producer(true)?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let p = p.clone();
        let topic = topic.to_string();
        let ts = ts.to_string();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let body = purchase(0x1000 + t as u32, n, &ts);
                let key = body[16..52].to_string();
                let sent = Instant::now();
                p.send(
                    FutureRecord::to(&topic).key(&key).payload(&body),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| anyhow::anyhow!("{e}"))?;
                lat.push(sent.elapsed().as_secs_f64() * 1000.0);
            }
            anyhow::Ok(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    let n = lat.len();
    Ok(json!({
        "messages": n,
        "messages_per_s": n as f64 / secs,
        "p50_ms": quantile(&mut lat, 0.5),
        "p99_ms": quantile(&mut lat, 0.99),
    }))
}

/// One producer streaming `n` messages, every acknowledgement awaited at the end.
async fn bare_stream(topic: &str, ts: &str, n: u64) -> Result<Value> {
    let p = producer(true)?;
    let started = Instant::now();
    let bodies: Vec<String> = (0..n).map(|i| purchase(0x2000, i, ts)).collect();
    let sends = bodies.iter().map(|b| {
        p.send(
            FutureRecord::to(topic).key(&b[16..52]).payload(b.as_str()),
            Duration::from_secs(30),
        )
    });
    for r in futures::future::join_all(sends).await {
        r.map_err(|(e, _)| anyhow::anyhow!("{e}"))?;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(json!({ "messages": n, "messages_per_s": n as f64 / secs }))
}

#[tokio::main]
async fn main() -> Result<()> {
    std::env::set_current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))?;
    let connections = env_u64("LAKESHOP_BENCH_API_CONNECTIONS", 64);
    let seconds = env_u64("LAKESHOP_BENCH_API_SECONDS", 10);
    let batch = env_u64("LAKESHOP_BENCH_API_BATCH", 1000);
    let dir = tempfile::tempdir()?;
    let topic = lakeshop_testkit::unique("bench_api");
    lakeshop_testkit::create_topic(&topic, PARTITIONS).await?;
    let pipeline = dir.path().join("pipeline.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[kafka]\nbrokers = \"{}\"\n[kafka.topics.purchases]\nname = \"{topic}\"\npartitions = {PARTITIONS}\n\
             [api]\nwrite_tokens = \"${{BENCH_WRITE_TOKENS}}\"\nmax_batch = {}\nremember_purchase_ids = 20000000\n",
            lakeshop_testkit::kafka_brokers(),
            batch.max(1)
        ),
    )?;
    let ts = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let server = start_server(&pipeline)?;

    // Warm-up: the producer's connections and the broker's partitions.
    wrk(&server.base, &wrk_script(1, &ts, 0x100), dir.path(), 4, 2)?;
    let singles = wrk(
        &server.base,
        &wrk_script(1, &ts, 0x200),
        dir.path(),
        connections,
        seconds,
    )?;
    eprintln!("api bench: singles done");
    let arrays = wrk(
        &server.base,
        &wrk_script(batch, &ts, 0x300),
        dir.path(),
        connections.min(16),
        seconds,
    )?;
    eprintln!("api bench: arrays done");
    drop(server);
    let bare_one = bare_singles(&topic, &ts, connections, seconds).await?;
    let purchases_per_s = arrays["requests_per_s"].as_f64().unwrap_or(0.0) * batch as f64;
    let stream_n = ((purchases_per_s * seconds as f64) as u64).clamp(100_000, 5_000_000);
    let bare_many = bare_stream(&topic, &ts, stream_n).await?;

    let ratio = |a: &Value, b: &Value| {
        let (a, b) = (a.as_f64().unwrap_or(0.0), b.as_f64().unwrap_or(0.0));
        if a > 0.0 {
            b / a
        } else {
            0.0
        }
    };
    let results = json!({
        "connections": connections,
        "seconds": seconds,
        "batch": batch,
        "singles": singles,
        "arrays": {
            "requests": arrays["requests"],
            "requests_per_s": arrays["requests_per_s"],
            "purchases_per_s": purchases_per_s,
            "p99_ms": arrays["p99_ms"],
        },
        "bare_producer_singles": bare_one,
        "bare_producer_stream": bare_many,
        "bare_over_api_singles": ratio(&singles["requests_per_s"], &bare_one["messages_per_s"]),
        "bare_over_api_arrays": ratio(&json!(purchases_per_s), &bare_many["messages_per_s"]),
    });
    println!(
        "api: singles {:.0} req/s (p50 {:.2} ms, p99 {:.2} ms; goal >= 10k req/s, p99 <= 20 ms)",
        singles["requests_per_s"].as_f64().unwrap_or(0.0),
        singles["p50_ms"].as_f64().unwrap_or(0.0),
        singles["p99_ms"].as_f64().unwrap_or(0.0)
    );
    println!(
        "     bare producer, {connections} awaited sends: {:.0} msg/s (p99 {:.2} ms): {:.2}x the API",
        bare_one["messages_per_s"].as_f64().unwrap_or(0.0),
        bare_one["p99_ms"].as_f64().unwrap_or(0.0),
        results["bare_over_api_singles"].as_f64().unwrap_or(0.0)
    );
    println!(
        "     arrays of {batch}: {purchases_per_s:.0} purchases/s (p99 {:.1} ms per request; goal >= 200k/s)",
        arrays["p99_ms"].as_f64().unwrap_or(0.0)
    );
    println!(
        "     bare producer streaming: {:.0} msg/s: {:.2}x the API",
        bare_many["messages_per_s"].as_f64().unwrap_or(0.0),
        results["bare_over_api_arrays"].as_f64().unwrap_or(0.0)
    );
    std::fs::create_dir_all("bench-results")?;
    std::fs::write(
        "bench-results/api.json",
        serde_json::to_vec_pretty(&results)?,
    )?;
    Ok(())
}
