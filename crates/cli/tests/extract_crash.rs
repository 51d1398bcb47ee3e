//! Exactly once across crashes: the purchases extractor is SIGKILLed at random points while
//! the generator streams purchases (1% invalid, 1% re-sent); after restarts the stage holds
//! every produced record exactly once (by topic-partition-offset), dead letters hold every
//! invalid one, and per-day distinct purchases and revenue equal the ground truth.
//!
//! Three ways, each into a local folder stage and an `s3://` stage: one extractor killed
//! and restarted; the same while `stage optimize` compacts the tables in a loop; two
//! extractors sharing one consumer group, one of them killed and restarted.
//!
//! Size: `LAKESHOP_CRASH_TEST_RATE` purchases/s for 10 s (default 20000, i.e. 200k); the
//! group runs stream the same count over 20 s.

mod common;

use anyhow::{Context as _, Result};
use common::counts;
use rand::Rng as _;
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What runs beside the killed extractor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Alone,
    /// `stage optimize` in a loop.
    Optimizing,
    /// A second extractor in the same consumer group (both `--group`).
    Group,
}

fn local() -> Result<(tempfile::TempDir, String)> {
    let dir = tempfile::tempdir()?;
    let uri = dir.path().join("stage").to_string_lossy().to_string();
    Ok((dir, uri))
}

fn s3() -> String {
    format!("s3://lakeshop/{}/stage", lakeshop_testkit::unique("crash"))
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkilled_extractor_stages_every_record_exactly_once_local() -> Result<()> {
    let (_dir, uri) = local()?;
    crash_and_check(uri, Mode::Alone).await
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkilled_extractor_stages_every_record_exactly_once_s3() -> Result<()> {
    crash_and_check(s3(), Mode::Alone).await
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkilled_extractor_beside_optimize_local() -> Result<()> {
    let (_dir, uri) = local()?;
    crash_and_check(uri, Mode::Optimizing).await
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkilled_extractor_beside_optimize_s3() -> Result<()> {
    crash_and_check(s3(), Mode::Optimizing).await
}

#[tokio::test(flavor = "multi_thread")]
async fn two_extractors_in_one_group_one_killed_local() -> Result<()> {
    let (_dir, uri) = local()?;
    crash_and_check(uri, Mode::Group).await
}

#[tokio::test(flavor = "multi_thread")]
async fn two_extractors_in_one_group_one_killed_s3() -> Result<()> {
    crash_and_check(s3(), Mode::Group).await
}

/// Sends SIGTERM and waits: the extractor commits what it buffered and exits 0.
fn terminate(child: &mut std::process::Child) -> Result<std::process::ExitStatus> {
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        anyhow::ensure!(Instant::now() < deadline, "no exit 60 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn crash_and_check(stage_uri: String, mode: Mode) -> Result<()> {
    let rate: u64 = std::env::var("LAKESHOP_CRASH_TEST_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let db = lakeshop_testkit::fresh_database("crash_test").await?;
    let topic = lakeshop_testkit::unique("purchases");
    lakeshop_testkit::create_topic(&topic, 3).await?;
    let dir = tempfile::tempdir()?;
    let pipeline = dir.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[pipeline]\nname = \"{}\"\n[postgres]\nurl = \"{db}\"\n[kafka]\nbrokers = \"{}\"\n[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"\n[kafka.topics.purchases]\nname = \"{topic}\"\npartitions = 3\n[s3]\nendpoint = \"{}\"\n[products]\nuri = \"s3://lakeshop/{}/products\"\n[stage]\nuri = \"{stage_uri}\"\nflush_interval = \"300ms\"\n",
            lakeshop_testkit::unique("p"),
            lakeshop_testkit::kafka_brokers(),
            lakeshop_testkit::s3_endpoint(),
            lakeshop_testkit::unique("src"),
        ),
    )?;
    let bin = env!("CARGO_BIN_EXE_lakeshop");
    // A group streams the same records over 20 s: a member joining late still finds live
    // records to stage.
    let (rate, seconds) = if mode == Mode::Group {
        (rate / 2, 20)
    } else {
        (rate, 10)
    };
    let truth_path = dir.path().join("truth.json");
    let mut gen = Command::new(bin)
        .arg("--config")
        .arg(&pipeline)
        .args([
            "gen",
            "--clients",
            "5000",
            "--products",
            "500",
            "--rate",
            &rate.to_string(),
            "--duration",
            &format!("{seconds}s"),
        ])
        .args([
            "--duplicate-fraction",
            "0.01",
            "--bad-fraction",
            "0.01",
            "--unknown-fraction",
            "0.005",
            "--seed",
            "5",
            "--quiet",
        ])
        .arg("--truth")
        .arg(&truth_path)
        .stdout(Stdio::null())
        .spawn()?;
    let group = mode == Mode::Group;
    // In group mode every extractor logs (JSON, commits included) to a file of its own: the
    // logs show who held which partitions when, and who staged what.
    let spawned = std::cell::Cell::new(0u32);
    let logs = dir.path().to_path_buf();
    let extractor = || -> Result<std::process::Child> {
        let mut cmd = Command::new(bin);
        cmd.arg("--config")
            .arg(&pipeline)
            .args(["--log-format", "json"])
            .args(["extract", "purchases", "--follow", "--no-metrics"]);
        let n = spawned.get();
        spawned.set(n + 1);
        if group {
            cmd.arg("--group")
                .env("RUST_LOG", "warn,lakeshop_sources=debug")
                .stderr(std::fs::File::create(
                    logs.join(format!("extractor-{n}.log")),
                )?);
        } else {
            cmd.stderr(Stdio::null());
        }
        Ok(cmd.stdout(Stdio::null()).spawn()?)
    };
    // The extractor that stays up in group mode.
    let mut partner = if group { Some(extractor()?) } else { None };
    if group {
        // The partner holds partitions before the other member first joins.
        let deadline = Instant::now() + Duration::from_secs(60);
        while read_log(&dir.path().join("extractor-0.log"))?.0.is_empty() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the partner never got partitions"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // Compaction in a loop, beside the extractor.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let optimizer = (mode == Mode::Optimizing).then(|| {
        let stop = stop.clone();
        let pipeline = pipeline.clone();
        std::thread::spawn(move || -> Result<(u32, u64)> {
            let (mut runs, mut removed) = (0u32, 0u64);
            loop {
                let last = stop.load(std::sync::atomic::Ordering::Relaxed);
                let out = Command::new(bin)
                    .arg("--config")
                    .arg(&pipeline)
                    .args([
                        "stage",
                        "optimize",
                        "--table",
                        "purchases,dead_letters",
                        "--json",
                    ])
                    .output()?;
                anyhow::ensure!(
                    out.status.success(),
                    "stage optimize failed beside the extractor: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let reports: Value = serde_json::from_slice(&out.stdout)?;
                for r in reports.as_array().into_iter().flatten() {
                    removed += r["files_removed"].as_u64().unwrap_or(0);
                }
                runs += 1;
                if last {
                    break;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            Ok((runs, removed))
        })
    });
    // Kill the follower at random points while the generator streams, then restart it.
    let mut kills = 0;
    let started = Instant::now();
    let mut rng = rand::rng();
    while kills < 5 || gen.try_wait()?.is_none() {
        let n = spawned.get();
        let mut child = extractor()?;
        if group && kills == 0 {
            // The first member killed in a group has staged rows first: a (re)joining member
            // may wait several seconds for partitions, so no fixed life would be enough.
            let log = dir.path().join(format!("extractor-{n}.log"));
            let deadline = Instant::now() + Duration::from_secs(60);
            while read_log(&log)?.1 == 0 {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "member {n} staged nothing in 60 s: {}",
                    tail(&log)
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        // In a group a member lives long enough to be given partitions and stage some.
        let life = if group { 3000..6000 } else { 700..2500 };
        std::thread::sleep(Duration::from_millis(rng.random_range(life)));
        child.kill()?; // SIGKILL
        child.wait()?;
        kills += 1;
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "generator did not finish"
        );
    }
    assert!(gen.wait()?.success(), "gen failed");
    assert!(kills >= 5);
    if let Some(mut partner) = partner.take() {
        // SIGTERM drains: flush, commit, exit 0.
        assert!(terminate(&mut partner)?.success(), "drain on SIGTERM");
    }

    // Drain what is left.
    let out = Command::new(bin)
        .arg("--config")
        .arg(&pipeline)
        .args(["extract", "purchases", "--until-end"])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if let Some(optimizer) = optimizer {
        // It also ran beside the drain; one last run after it.
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (runs, removed) = optimizer
            .join()
            .map_err(|_| anyhow::anyhow!("optimizer thread panicked"))??;
        assert!(runs >= 3, "optimize ran {runs} times");
        assert!(removed > 0, "optimize compacted nothing in {runs} runs");
    }

    let truth: Value = serde_json::from_slice(&std::fs::read(&truth_path)?)?;
    let c = &truth["counts"];
    let n = |k: &str| c[k].as_i64().unwrap_or(-1);
    let conflicts = c["bad_by_reason"]["conflicting_duplicate"]
        .as_i64()
        .unwrap_or(0);
    let pos = counts(&stage_uri, "purchases", "SELECT 'rows', count(*) FROM purchases UNION ALL SELECT 'positions', count(DISTINCT (source_partition, source_offset)) FROM purchases UNION ALL SELECT 'ids', count(DISTINCT purchase_id) FROM purchases").await?;
    assert_eq!(pos["rows"], pos["positions"], "no position staged twice");
    assert_eq!(
        pos["rows"],
        n("purchases") + n("duplicates") + conflicts,
        "every valid record staged"
    );
    assert_eq!(pos["ids"], n("purchases"));
    let dl = counts(&stage_uri, "dead_letters", "SELECT 'rows', count(*) FROM dead_letters UNION ALL SELECT 'positions', count(DISTINCT (source_partition, source_offset)) FROM dead_letters").await?;
    assert_eq!(dl["rows"], dl["positions"], "no dead letter twice");
    assert_eq!(
        dl["rows"],
        n("bad") - conflicts,
        "every invalid record dead-lettered"
    );
    // Dead letters by reason, as the generator made them.
    let reasons = counts(
        &stage_uri,
        "dead_letters",
        "SELECT reason, count(*) FROM dead_letters GROUP BY reason",
    )
    .await?;
    let mut want: std::collections::BTreeMap<String, i64> =
        serde_json::from_value(c["bad_by_reason"].clone())?;
    want.remove("conflicting_duplicate");
    assert_eq!(reasons, want, "dead letters by reason");
    let days = counts(&stage_uri, "purchases", "SELECT CAST(event_date AS VARCHAR), CAST(sum(CAST(quantity AS DECIMAL(20,0)) * price) * 100 AS BIGINT) FROM (SELECT *, row_number() OVER (PARTITION BY purchase_id ORDER BY source_offset) AS rn FROM purchases) WHERE rn = 1 GROUP BY event_date").await?;
    let ids = counts(&stage_uri, "purchases", "SELECT CAST(event_date AS VARCHAR), count(DISTINCT purchase_id) FROM purchases GROUP BY event_date").await?;
    let truth_days = truth["days"].as_object().context("days")?;
    assert_eq!(days.len(), truth_days.len());
    for (day, cents) in &days {
        let revenue: rust_decimal::Decimal = truth_days[day]["total"]["revenue"]
            .as_str()
            .context("revenue")?
            .parse()?;
        assert_eq!(rust_decimal::Decimal::new(*cents, 2), revenue, "{day}");
        assert_eq!(
            Some(ids[day]),
            truth_days[day]["total"]["purchases"].as_i64(),
            "distinct purchase ids of {day}"
        );
    }
    if group {
        // Partitions moved between the group's members (some partition was held by two
        // processes over the run), and more than one member staged rows.
        let mut holders: std::collections::BTreeMap<String, std::collections::BTreeSet<u32>> =
            Default::default();
        let mut staged_by = Vec::new();
        for n in 0..spawned.get() {
            let (assignments, rows) = read_log(&dir.path().join(format!("extractor-{n}.log")))?;
            for a in &assignments {
                for p in a
                    .trim_matches(['[', ']'])
                    .split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                {
                    holders.entry(p.to_string()).or_default().insert(n);
                }
            }
            if rows > 0 {
                staged_by.push((n, rows));
            }
        }
        assert!(
            holders.values().any(|h| h.len() >= 2),
            "no partition moved between members: {holders:?}"
        );
        assert!(
            staged_by.len() >= 2,
            "only {staged_by:?} staged rows (member 0 stayed up, the others were killed)"
        );
        eprintln!("group: partition holders {holders:?}, rows staged by member {staged_by:?}");
    }
    Ok(())
}

/// The last lines of a log, for a failure message.
fn tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// From one extractor's JSON log: the partitions of each assignment, in order, and the rows
/// its commits staged.
fn read_log(path: &std::path::Path) -> Result<(Vec<String>, u64)> {
    let text = std::fs::read_to_string(path)?;
    let (mut assigned, mut rows) = (Vec::new(), 0u64);
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let f = &v["fields"];
        let message = f["message"].as_str().unwrap_or("");
        if message.starts_with("assigned") {
            assigned.push(f["partitions"].as_str().unwrap_or("").to_string());
        }
        if message == "committed" && f["table"] == "purchases" {
            rows += f["rows"].as_u64().unwrap_or(0);
        }
    }
    Ok((assigned, rows))
}
