//! Test kit: finds the local services from the environment (the names and defaults of the
//! local stack), makes random topic, database and prefix names so tests run in parallel,
//! counts what landed in Kafka by reading it back, and sets up one test's world of the
//! `lakeshop` binary ([`world`]).

use anyhow::{Context as _, Result};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::ClientConfig;
use std::collections::HashMap;
use std::time::{Duration, Instant};

pub mod tls;
pub mod world;

/// The `lakeshop` binary the tests run: `LAKESHOP_BIN`, else the one beside the running test
/// executable's directory (`target/<profile>/lakeshop`, built by `cargo test --workspace`).
pub fn lakeshop_bin() -> std::path::PathBuf {
    if let Some(bin) = std::env::var_os("LAKESHOP_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> → target/<profile>/lakeshop
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let bin = profile_dir.join(format!("lakeshop{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is not built: run the tests through `cargo test --workspace` (or set LAKESHOP_BIN)",
        bin.display()
    );
    bin
}

/// Kafka bootstrap servers (`KAFKA_BROKERS`, default 127.0.0.1:9092).
pub fn kafka_brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// PostgreSQL server URL without a database (`LAKESHOP_PG_URL`'s server).
pub fn pg_server_url() -> String {
    let url = std::env::var("LAKESHOP_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/lakeshop".into());
    match url.rfind('/') {
        Some(i) if i > "postgres://".len() => url[..i].to_string(),
        _ => url,
    }
}

/// S3 endpoint (`AWS_ENDPOINT_URL`, default http://127.0.0.1:9100).
pub fn s3_endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:9100".into())
}

/// S3 storage options for deltalake, as the pipeline file builds them.
pub fn s3_options() -> HashMap<String, String> {
    let mut o = HashMap::new();
    o.insert("AWS_ENDPOINT_URL".into(), s3_endpoint());
    o.insert(
        "AWS_REGION".into(),
        std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()),
    );
    o.insert("AWS_ALLOW_HTTP".into(), "true".into());
    o.insert("aws_conditional_put".into(), "etag".into());
    for k in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
        o.insert(
            k.into(),
            std::env::var(k).unwrap_or_else(|_| {
                if k == "AWS_ACCESS_KEY_ID" {
                    "lakeshop".into()
                } else {
                    "lakeshop-secret".into()
                }
            }),
        );
    }
    o
}

/// A random lowercase name with a prefix, unique per call.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        uuid::Uuid::new_v4()
            .simple()
            .to_string()
            .get(..12)
            .unwrap_or("x")
    )
}

/// A fresh PostgreSQL database; returns its URL.
pub async fn fresh_database(prefix: &str) -> Result<String> {
    let name = unique(prefix);
    let server = pg_server_url();
    let (client, conn) =
        tokio_postgres::connect(&format!("{server}/postgres"), tokio_postgres::NoTls)
            .await
            .context("connecting to PostgreSQL (is `make up` done?)")?;
    tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await?;
    Ok(format!("{server}/{name}"))
}

/// Connects to a database URL.
pub async fn pg(url: &str) -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// Creates a topic with `partitions` partitions.
pub async fn create_topic(name: &str, partitions: i32) -> Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<_> = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .create()?;
    let res = admin
        .create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await?;
    for r in res {
        r.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
    }
    Ok(())
}

/// One record read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Reads a whole topic from the beginning until every partition reports its end and
/// nothing new arrived for `idle` (decided from fetched data, not ListOffsets).
pub fn read_topic(topic: &str, idle: Duration) -> Result<Vec<Record>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", unique("testkit"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .set("fetch.message.max.bytes", "8388608")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut out = Vec::new();
    let mut eof: std::collections::HashSet<i32> = Default::default();
    let mut partitions: Option<usize> = None;
    let mut last = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if partitions.is_none() {
            let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
            partitions = md
                .topics()
                .first()
                .map(|t| t.partitions().len())
                .filter(|n| *n > 0);
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                eof.remove(&m.partition());
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|x| (x.key.to_string(), x.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
                last = Instant::now();
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                eof.insert(p);
            }
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
        let all_eof = partitions.is_some_and(|n| eof.len() >= n);
        if all_eof && last.elapsed() >= idle {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "reading {topic}: no end after 10 minutes"
        );
    }
    Ok(out)
}

/// Writes `records` (partition, payload, timestamp in ms) to `topic` one at a time, each
/// acknowledged by the broker before the next is sent (so offsets follow the slice's order).
pub async fn produce(topic: &str, records: &[(i32, Vec<u8>, i64)]) -> Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("message.max.bytes", "8388608")
        .create()?;
    for (partition, payload, ts) in records {
        producer
            .send(
                FutureRecord::<[u8], [u8]>::to(topic)
                    .partition(*partition)
                    .payload(payload)
                    .timestamp(*ts),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("producing to {topic}: {e}"))?;
    }
    Ok(())
}
