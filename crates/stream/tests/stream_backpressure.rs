//! Backpressure when ClickHouse acknowledges, but slowly: `stream run` reads a topic while
//! every ClickHouse answer is held back 300 ms by a proxy in front of it. The records awaiting
//! acknowledgement never exceed `[stream] max_unacked_records` (by more than one run of
//! records), and every purchase is still counted once.

use anyhow::{Context as _, Result};
use lakeshop_testkit::world::World;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// How long the proxy holds each piece of an answer.
const DELAY: Duration = Duration::from_millis(300);
/// The bound under test.
const MAX_UNACKED: u64 = 1_000;
/// Records the loader takes in one run before it looks at its buffer (`BATCH` in the loader).
const RUN: u64 = 256;

/// A TCP proxy to `upstream` that passes requests at once and answers `DELAY` late.
async fn slow_proxy(upstream: String) -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    let _ = sw.shutdown().await;
                });
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = sr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    tokio::time::sleep(DELAY).await;
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = cw.shutdown().await;
            });
        }
    });
    Ok(format!("http://{addr}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_clickhouse_bounds_the_records_awaiting_acknowledgement() -> Result<()> {
    let (world, _topic) = World::for_stream(3).await?;
    let truth = world.dir.path().join("truth.json");
    world.run(&[
        "gen",
        "--only",
        "purchases",
        "--rate",
        "20000",
        "--duration",
        "1s",
        "--seed",
        "5",
        "--quiet",
        "--truth",
        &truth.to_string_lossy(),
    ])?;
    let truth: serde_json::Value = serde_json::from_slice(&std::fs::read(&truth)?)?;
    let sent = truth["counts"]["purchase_messages"]
        .as_u64()
        .context("messages")?;
    let purchases = truth["counts"]["purchases"].as_u64().context("purchases")?;

    // From here on the loader reaches ClickHouse only through the slow proxy.
    let url = std::env::var("CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into());
    let upstream = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let proxy = slow_proxy(upstream).await?;
    let text = std::fs::read_to_string(&world.pipeline)?.replace(&url, &proxy);
    anyhow::ensure!(
        text.contains(&proxy),
        "the pipeline's ClickHouse url is {url}"
    );
    std::fs::write(
        &world.pipeline,
        format!("{text}[stream]\nflush_interval = \"50ms\"\nmax_unacked_records = {MAX_UNACKED}\n"),
    )?;
    let stats = world.stream_until_end()?;
    eprintln!("stream run: {stats}");
    assert_eq!(stats["read"], sent, "records read: {stats}");
    assert_eq!(stats["counted"], purchases, "purchases counted: {stats}");
    let peak = stats["peak_unacked"].as_u64().context("peak_unacked")?;
    assert!(
        peak <= MAX_UNACKED + RUN,
        "{peak} records awaited acknowledgement at once; the bound is {MAX_UNACKED}"
    );
    // The bound was reached (the test measured backpressure, not a loader slower than
    // ClickHouse), and the flushes were many.
    assert!(peak >= MAX_UNACKED, "peak {peak}: the buffer never filled");
    let flushes = stats["flushes"].as_u64().context("flushes")?;
    assert!(
        flushes >= sent / (MAX_UNACKED + RUN),
        "{flushes} flushes for {sent} records"
    );
    let counted = world
        .ch
        .rows(
            "day totals",
            "SELECT sum(purchases) FROM stream_sales_v WHERE granularity = 'day' AND dim = 'total'",
        )
        .await?;
    assert_eq!(
        counted,
        vec![vec![purchases.to_string()]],
        "day totals in ClickHouse"
    );
    Ok(())
}
