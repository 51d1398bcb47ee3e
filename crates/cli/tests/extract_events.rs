//! `lakeshop extract purchases` / `interactions` against the local stack, into a local
//! folder stage and an `s3://` stage: every record read lands exactly once, in the event
//! table or in `dead_letters` with its reason, totals per day equal the generator's ground
//! truth, and a second run finds nothing new (offsets live in the Delta commits).

mod common;

use anyhow::{Context as _, Result};
use common::{counts, lakeshop};
use serde_json::Value;
use std::collections::BTreeMap;

async fn extract_matches_truth(stage_uri: String) -> Result<()> {
    let db = lakeshop_testkit::fresh_database("extract_test").await?;
    let purchases_topic = lakeshop_testkit::unique("purchases");
    let interactions_topic = lakeshop_testkit::unique("interactions");
    lakeshop_testkit::create_topic(&purchases_topic, 3).await?;
    lakeshop_testkit::create_topic(&interactions_topic, 2).await?;
    let dir = tempfile::tempdir()?;
    let pipeline = dir.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[pipeline]\nname = \"{}\"\n[postgres]\nurl = \"{db}\"\n[kafka]\nbrokers = \"{}\"\n[kafka.topics.purchases]\nname = \"{purchases_topic}\"\npartitions = 3\n[kafka.topics.interactions]\nname = \"{interactions_topic}\"\npartitions = 2\n[s3]\nendpoint = \"{}\"\n[products]\nuri = \"s3://lakeshop/{}/products\"\n[stage]\nuri = \"{stage_uri}\"\nflush_max_rows = 5000\n",
            lakeshop_testkit::unique("p"),
            lakeshop_testkit::kafka_brokers(),
            lakeshop_testkit::s3_endpoint(),
            lakeshop_testkit::unique("src"),
        ),
    )?;
    let truth_path = dir.path().join("truth.json");
    let truth_arg = truth_path.to_string_lossy().to_string();
    lakeshop(
        &pipeline,
        &[
            "gen",
            "--clients",
            "2000",
            "--products",
            "300",
            "--purchases",
            "20000",
            "--interactions",
            "5000",
            "--duplicate-fraction",
            "0.02",
            "--unknown-fraction",
            "0.01",
            "--bad-fraction",
            "0.02",
            "--seed",
            "11",
            "--quiet",
            "--truth",
            &truth_arg,
        ],
    )?;
    let truth: Value = serde_json::from_slice(&std::fs::read(&truth_path)?)?;
    let c = &truth["counts"];
    let n = |k: &str| c[k].as_i64().unwrap_or(-1);
    let conflicts = c["bad_by_reason"]["conflicting_duplicate"]
        .as_i64()
        .unwrap_or(0);

    let stats = lakeshop(&pipeline, &["extract", "purchases", "--until-end"])?;
    assert_eq!(
        stats["read"].as_i64(),
        Some(n("purchase_messages")),
        "{stats}"
    );
    // The stage keeps the log as received: duplicates and conflicting copies parse and stay.
    assert_eq!(
        stats["staged"].as_i64(),
        Some(n("purchases") + n("duplicates") + conflicts),
        "{stats}"
    );
    assert_eq!(
        stats["dead_lettered"].as_i64(),
        Some(n("bad") - conflicts),
        "{stats}"
    );
    assert!(
        stats["commits"].as_i64().unwrap_or(0) >= 4,
        "flushes by size: {stats}"
    );

    // Each Kafka position once.
    let pos = counts(&stage_uri, "purchases", "SELECT 'rows', count(*) FROM purchases UNION ALL SELECT 'positions', count(DISTINCT (source_partition, source_offset)) FROM purchases UNION ALL SELECT 'ids', count(DISTINCT purchase_id) FROM purchases").await?;
    assert_eq!(pos["rows"], pos["positions"]);
    assert_eq!(pos["ids"], n("purchases"));

    // Per day: the first arrival of each purchase id, exactly as the truth counts it.
    let days = counts(&stage_uri, "purchases", "SELECT CAST(event_date AS VARCHAR), CAST(sum(CAST(quantity AS DECIMAL(20,0)) * price) * 100 AS BIGINT) FROM (SELECT *, row_number() OVER (PARTITION BY purchase_id ORDER BY source_offset) AS rn FROM purchases) WHERE rn = 1 GROUP BY event_date").await?;
    let truth_days = truth["days"].as_object().context("days")?;
    assert_eq!(days.len(), truth_days.len());
    for (day, cents) in &days {
        let revenue: rust_decimal::Decimal = truth_days[day]["total"]["revenue"]
            .as_str()
            .context("revenue")?
            .parse()?;
        assert_eq!(rust_decimal::Decimal::new(*cents, 2), revenue, "{day}");
    }

    // Dead letters: every invalid record with its reason, raw bytes and the extractor named.
    let dl = counts(&stage_uri, "dead_letters", "SELECT reason, count(*) FROM dead_letters WHERE payload IS NOT NULL AND source_offset IS NOT NULL AND source = 'purchases' GROUP BY reason").await?;
    let mut want: BTreeMap<String, i64> = serde_json::from_value(c["bad_by_reason"].clone())?;
    want.remove("conflicting_duplicate");
    assert_eq!(dl, want);

    // Offsets live in the stage: a second run reads nothing.
    let again = lakeshop(&pipeline, &["extract", "purchases", "--until-end"])?;
    assert_eq!(again["read"].as_i64(), Some(0), "{again}");
    assert_eq!(again["staged"].as_i64(), Some(0), "{again}");

    // Interactions, into their own table.
    let inter = lakeshop(&pipeline, &["extract", "interactions", "--until-end"])?;
    assert_eq!(inter["staged"].as_i64(), Some(n("interactions")), "{inter}");
    let rows = counts(
        &stage_uri,
        "interactions",
        "SELECT kind, count(*) FROM interactions GROUP BY kind",
    )
    .await?;
    let want: BTreeMap<String, i64> = serde_json::from_value(c["interactions_by_kind"].clone())?;
    assert_eq!(rows, want);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn extract_into_a_local_folder_stage() -> Result<()> {
    let dir = tempfile::tempdir()?;
    extract_matches_truth(dir.path().join("stage").to_string_lossy().to_string()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn extract_into_an_s3_stage() -> Result<()> {
    extract_matches_truth(format!(
        "s3://lakeshop/{}/stage",
        lakeshop_testkit::unique("stage")
    ))
    .await
}

/// A plain HTTP/1.0 GET on 127.0.0.1: (status line, body).
fn http_get(port: u16, path: &str) -> Result<(String, String)> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").context("HTTP response")?;
    Ok((
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    ))
}

/// The value of an unlabelled Prometheus sample.
fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// `--follow` serves /metrics and /healthz while it runs, and SIGTERM commits what is
/// buffered (valid rows read but not yet staged when it came) and exits 0 with counts that add
/// up. On a stage in a folder and on S3.
#[tokio::test(flavor = "multi_thread")]
async fn follow_serves_metrics_and_drains_on_sigterm() -> Result<()> {
    follow(false).await
}

#[tokio::test(flavor = "multi_thread")]
async fn follow_serves_metrics_and_drains_on_sigterm_s3() -> Result<()> {
    follow(true).await
}

async fn follow(on_s3: bool) -> Result<()> {
    let db = lakeshop_testkit::fresh_database("follow_test").await?;
    let topic = lakeshop_testkit::unique("purchases");
    lakeshop_testkit::create_topic(&topic, 2).await?;
    let dir = tempfile::tempdir()?;
    let stage_uri = if on_s3 {
        format!("s3://lakeshop/{}/stage", lakeshop_testkit::unique("follow"))
    } else {
        dir.path().join("stage").to_string_lossy().to_string()
    };
    let pipeline = dir.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[pipeline]\nname = \"{}\"\n[postgres]\nurl = \"{db}\"\n[kafka]\nbrokers = \"{}\"\n[kafka.topics.purchases]\nname = \"{topic}\"\npartitions = 2\n[s3]\nendpoint = \"{}\"\n[products]\nuri = \"s3://lakeshop/{}/products\"\n[stage]\nuri = \"{stage_uri}\"\n# Long enough that SIGTERM finds rows buffered.\nflush_interval = \"30s\"\nflush_max_rows = 4000\n",
            lakeshop_testkit::unique("p"),
            lakeshop_testkit::kafka_brokers(),
            lakeshop_testkit::s3_endpoint(),
            lakeshop_testkit::unique("src"),
        ),
    )?;
    let truth = dir.path().join("truth.json").to_string_lossy().to_string();
    lakeshop(
        &pipeline,
        &[
            "gen",
            "--only",
            "purchases",
            "--clients",
            "500",
            "--products",
            "50",
            "--purchases",
            "10000",
            "--bad-fraction",
            "0.02",
            "--seed",
            "3",
            "--quiet",
            "--truth",
            &truth,
        ],
    )?;
    let truth: Value = serde_json::from_slice(&std::fs::read(&truth)?)?;
    let messages = truth["counts"]["purchase_messages"]
        .as_i64()
        .context("purchase_messages")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_lakeshop"))
        .arg("--config")
        .arg(&pipeline)
        .args(["extract", "purchases", "--follow", "--metrics-listen"])
        .arg(format!("127.0.0.1:{port}"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    // Every record is read; the last few thousand stay buffered (no size or time flush).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let body = loop {
        if let Ok((status, body)) = http_get(port, "/metrics") {
            anyhow::ensure!(status.contains("200"), "{status}");
            if sample(&body, "lakeshop_extract_consumed_records_total") == Some(messages as f64) {
                break body;
            }
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "never read all records"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let staged_before = sample(&body, "lakeshop_extract_staged_rows_total").unwrap_or(-1.0);
    assert!(
        body.contains("lakeshop_extract_commit_seconds_count"),
        "{body}"
    );
    let (health, _) = http_get(port, "/healthz")?;
    assert!(health.contains("200"), "{health}");

    let pid = child.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()?;
    let out = child.wait_with_output()?;
    assert!(out.status.success(), "exit after SIGTERM: {:?}", out.status);
    let stats: serde_json::Value = serde_json::from_str(
        String::from_utf8(out.stdout)?
            .lines()
            .last()
            .context("summary")?,
    )?;
    assert_eq!(stats["read"].as_i64(), Some(messages), "{stats}");
    // Valid rows were still buffered when SIGTERM came, and the drain staged them.
    let staged = stats["staged"].as_f64().context("staged")?;
    assert!(
        staged > staged_before,
        "SIGTERM found nothing buffered: {staged_before} staged before, {staged} after"
    );
    assert_eq!(
        stats["staged"].as_i64().unwrap_or(0) + stats["dead_lettered"].as_i64().unwrap_or(0),
        messages,
        "read = staged + dead-lettered: {stats}"
    );
    let rows = counts(
        &stage_uri,
        "purchases",
        "SELECT 'rows', count(*) FROM purchases",
    )
    .await?;
    assert_eq!(Some(&rows["rows"]), stats["staged"].as_i64().as_ref());
    Ok(())
}
