//! The `/metrics` + `/healthz` server on a real socket (port 0), and the Kafka broker check
//! against a closed port and against the local broker (`KAFKA_BROKERS`, default
//! 127.0.0.1:9092).

use anyhow::{Context as _, Result};
use lakeshop_service::{serve, CheckStatus, Health};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// `GET path` over HTTP/1.1 with `Connection: close`: (status code, body).
async fn get(addr: std::net::SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await?;
    let (head, body) = raw.split_once("\r\n\r\n").context("no header end")?;
    let status = head
        .split(' ')
        .nth(1)
        .context("no status")?
        .parse()
        .context("status code")?;
    Ok((status, body.to_string()))
}

fn kafka_config(brokers: &str) -> rdkafka::ClientConfig {
    let mut c = rdkafka::ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    c
}

#[tokio::test]
async fn metrics_serves_a_registered_counter() -> Result<()> {
    let mut registry = Registry::default();
    let requests = Counter::<u64>::default();
    registry.sub_registry_with_prefix("lakeshop_test").register(
        "requests",
        "Requests seen",
        requests.clone(),
    );
    requests.inc_by(3);
    let server = serve("127.0.0.1:0".parse()?, registry, Health::new()).await?;
    assert_ne!(server.local_addr().port(), 0);

    let (status, body) = get(server.local_addr(), "/metrics").await?;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.lines().any(|l| l == "lakeshop_test_requests_total 3"),
        "{body}"
    );
    // Counted after start: each scrape reads the live value.
    requests.inc();
    let (_, body) = get(server.local_addr(), "/metrics").await?;
    assert!(
        body.lines().any(|l| l == "lakeshop_test_requests_total 4"),
        "{body}"
    );

    let (status, _) = get(server.local_addr(), "/nope").await?;
    assert_eq!(status, 404);

    let addr = server.local_addr();
    server.shutdown().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still listening after shutdown"
    );
    Ok(())
}

#[tokio::test]
async fn healthz_is_200_when_every_check_passes() -> Result<()> {
    let health = Health::heartbeat("consumer_loop", || 1, 30)
        .with(Health::check("clickhouse", || async { Ok(()) }));
    let server = serve("127.0.0.1:0".parse()?, Registry::default(), health).await?;
    let (status, body) = get(server.local_addr(), "/healthz").await?;
    assert_eq!(status, 200, "{body}");
    let json: Value = serde_json::from_str(&body)?;
    assert_eq!(
        json,
        serde_json::json!({"status": "ok", "checks": {"consumer_loop": "ok", "clickhouse": "ok"}})
    );
    Ok(())
}

#[tokio::test]
async fn healthz_is_503_naming_the_failing_check() -> Result<()> {
    let health = Health::heartbeat("consumer_loop", || 1, 30)
        .with(Health::check("clickhouse", || async {
            Err("connection refused".to_string())
        }));
    let server = serve("127.0.0.1:0".parse()?, Registry::default(), health).await?;
    let (status, body) = get(server.local_addr(), "/healthz").await?;
    assert_eq!(status, 503, "{body}");
    let json: Value = serde_json::from_str(&body)?;
    assert_eq!(json["status"], "fail", "{body}");
    assert_eq!(json["checks"]["clickhouse"], "connection refused", "{body}");
    assert_eq!(json["checks"]["consumer_loop"], "ok", "{body}");
    Ok(())
}

#[tokio::test]
async fn binding_a_taken_port_is_an_error() -> Result<()> {
    let first = serve("127.0.0.1:0".parse()?, Registry::default(), Health::new()).await?;
    let second = serve(first.local_addr(), Registry::default(), Health::new()).await;
    let err = second.err().context("second bind should fail")?;
    assert!(matches!(err, lakeshop_service::Error::Bind { .. }), "{err}");
    assert!(err.is_retryable(), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_check_fails_against_a_closed_port() -> Result<()> {
    let report = Health::try_kafka("kafka", kafka_config("127.0.0.1:1"))?
        .run()
        .await;
    assert_eq!(report.status, CheckStatus::Fail);
    assert!(
        report.checks["kafka"].contains("broker metadata"),
        "{report:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_check_passes_against_the_local_broker() -> Result<()> {
    let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let health = Health::try_kafka("kafka", kafka_config(&brokers))?;
    // The client is made once and probed again: both answers are healthy.
    for _ in 0..2 {
        let report = health.run().await;
        assert!(report.is_ok(), "broker at {brokers}: {report:?}");
    }
    // And through the server.
    let server = serve("127.0.0.1:0".parse()?, Registry::default(), health).await?;
    let (status, body) = get(server.local_addr(), "/healthz").await?;
    assert_eq!(status, 200, "{body}");
    Ok(())
}
