//! Bench: generator throughput into Kafka next to a bare rdkafka producer sending the very
//! same messages, in the same run, against the same broker.
//!
//! `LAKESHOP_BENCH_EVENTS` (default 1000000) purchases. Prints a table and writes
//! `bench-results/gen_produce.json` in the working directory.

use anyhow::Result;
use lakeshop_gen::{GenOptions, Part, Targets};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer};
use std::time::{Duration, Instant};

fn opts(n: u64) -> GenOptions {
    GenOptions {
        clients: 100_000,
        sellers: 100,
        products: 10_000,
        purchases: n,
        interactions: 0,
        days: 7,
        live: None,
        duplicate_fraction: 0.01,
        unknown_fraction: 0.005,
        bad_fraction: 0.0,
        late_fraction: 0.0,
        future_fraction: 0.0,
        product_skew: 1.1,
        seed: 42,
        timezone: chrono_tz::UTC,
        parts: vec![Part::Purchases],
        append: true,
        products_cdf: false,
        progress: false,
    }
}

fn bare_produce(topic: &str, msgs: &[(String, Vec<u8>)]) -> Result<f64> {
    let mut base = rdkafka::ClientConfig::new();
    base.set("bootstrap.servers", lakeshop_testkit::kafka_brokers());
    // Same producer settings as the generator: the comparison is of everything else.
    let producer: ThreadedProducer<DefaultProducerContext> =
        lakeshop_gen::producer_config(&base).create()?;
    let started = Instant::now();
    for (k, v) in msgs {
        let mut rec = BaseRecord::to(topic).key(k.as_str()).payload(v.as_slice());
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(300))?;
    Ok(started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> Result<()> {
    let n: u64 = std::env::var("LAKESHOP_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let gen_topic = lakeshop_testkit::unique("bench_gen");
    let bare_topic = lakeshop_testkit::unique("bench_bare");
    lakeshop_testkit::create_topic(&gen_topic, 3).await?;
    lakeshop_testkit::create_topic(&bare_topic, 3).await?;
    let mut kafka = rdkafka::ClientConfig::new();
    kafka.set("bootstrap.servers", lakeshop_testkit::kafka_brokers());
    let targets = Targets {
        postgres_url: String::new(),
        clients_table: "clients".into(),
        sellers_table: "sellers".into(),
        kafka,
        purchases_topic: gen_topic.clone(),
        interactions_topic: String::new(),
        products_uri: String::new(),
        storage_options: Default::default(),
    };
    let o = opts(n);
    // The generator end to end: draw the events, serialize, produce, wait for delivery.
    let started = Instant::now();
    let truth = lakeshop_gen::run(&o, &targets).await?;
    let gen_secs = started.elapsed().as_secs_f64();
    let events = truth.counts.purchase_messages;

    let msgs = lakeshop_gen::purchase_messages(&o, chrono::Utc::now())?;
    let bare_secs = bare_produce(&bare_topic, &msgs)?;
    let bare_events = msgs.len() as u64;

    let gen_rate = events as f64 / gen_secs;
    let bare_rate = bare_events as f64 / bare_secs;
    println!("gen → Kafka: {events} events in {gen_secs:.2} s = {gen_rate:.0} events/s");
    println!(
        "bare rdkafka producer: {bare_events} events in {bare_secs:.2} s = {bare_rate:.0} events/s"
    );
    println!("ratio gen / bare: {:.2}", gen_rate / bare_rate);
    std::fs::create_dir_all("bench-results")?;
    std::fs::write(
        "bench-results/gen_produce.json",
        serde_json::to_vec_pretty(&serde_json::json!({
            "bench": "gen_produce",
            "events": events,
            "gen_seconds": gen_secs,
            "gen_events_per_s": gen_rate,
            "bare_seconds": bare_secs,
            "bare_events_per_s": bare_rate,
            "ratio": gen_rate / bare_rate,
        }))?,
    )?;
    Ok(())
}
