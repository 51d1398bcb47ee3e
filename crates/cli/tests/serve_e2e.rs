//! End to end through the binary: `lakeshop serve` takes purchases over HTTP (one identical
//! re-send among them), `stream run` loads them, and the API's live series shows each
//! purchase once with its exact revenue; the live page, rendered by headless Chromium, shows
//! them and then the purchases posted after (a screenshot is left in the target dir).
//! `/healthz` names both dependencies, `/metrics` counts the requests by route and status,
//! and SIGTERM stops the server cleanly.

mod batch_support;

use anyhow::{Context as _, Result};
use batch_support::{Setup, StageKind, World};
use serde_json::Value;
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PRODUCT: &str = "6f1c7a52-1d7e-4a53-9a43-0f5b2f0c1a01";
const SELLER: &str = "9b2e4c11-8a6f-4b0e-8d7a-2c3f5e6a7b02";
const CLIENT: &str = "0d3a5b7c-9e1f-4a2b-8c4d-6e8f0a1b2c03";
const TOKEN: &str = "e2e-writer-token-0123456789";

/// One HTTP exchange through curl: (status, body).
fn http(method: &str, url: &str, body: Option<&str>) -> Result<(u16, String)> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-X", method, "-w", "\n%{http_code}", url]);
    if let Some(b) = body {
        cmd.args([
            "-H",
            "Content-Type: application/json",
            "-H",
            &format!("Authorization: Bearer {TOKEN}"),
            "--data-binary",
            b,
        ]);
    }
    let out = cmd.output().context("running curl")?;
    anyhow::ensure!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let (body, status) = text.rsplit_once('\n').context("curl output")?;
    Ok((status.trim().parse()?, body.to_string()))
}

const CHROMIUM_FLAGS: [&str; 5] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    // Time for the page's first poll of the API to land before the DOM is taken.
    "--virtual-time-budget=5000",
];

/// The live page's DOM after its first refresh, rendered by headless Chromium.
fn render(base: &str) -> Result<String> {
    let out = Command::new("chromium")
        .args(CHROMIUM_FLAGS)
        .args(["--dump-dom", &format!("{base}/")])
        .output()
        .context("running chromium (infra/deps.sh test installs it)")?;
    anyhow::ensure!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// `stream run` over what the topic holds; its summary.
fn load(world: &World) -> Result<Value> {
    batch_support::last_json(&world.run(&[
        "stream",
        "run",
        "--no-metrics",
        "--until-end",
        "--idle",
        "2s",
    ])?)
}

fn purchase(id: u128, at: &str) -> String {
    format!(
        r#"{{"purchase_id":"{}","client_id":"{CLIENT}","product_id":"{PRODUCT}","seller_id":"{SELLER}","quantity":2,"price":12.50,"timestamp":"{at}"}}"#,
        uuid::Uuid::from_u128(id)
    )
}

/// A running long-running command (`serve`, `stream run`, `extract --follow`) on a free
/// port.
struct Served {
    child: std::process::Child,
    base: String,
    log: Option<std::thread::JoinHandle<Vec<String>>>,
}

/// A test that fails part way leaves no process behind.
impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    /// Starts `serve` with `TOKEN` as its write token and waits for its address.
    fn start(world: &World) -> Result<Self> {
        Self::command(world, &["serve", "--listen", "127.0.0.1:0"])
    }

    /// Starts `lakeshop ARGS` and waits for the first address it logs.
    fn command(world: &World, args: &[&str]) -> Result<Self> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lakeshop"))
            .arg("--config")
            .arg(&world.pipeline)
            .args(["--log-format", "json"])
            .args(args)
            .env("E2E_WRITE_TOKENS", TOKEN)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().context("stderr")?;
        // The bound address from the log; the rest of the log is kept for failures.
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let log = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line.clone());
                lines.push(line);
            }
            lines
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let base = loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .with_context(|| format!("lakeshop {args:?} did not log its address"))?;
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if let Some(addr) = v["fields"]["addr"].as_str() {
                break format!("http://{addr}");
            }
        };
        Ok(Self {
            child,
            base,
            log: Some(log),
        })
    }

    /// SIGTERM; checks it exits 0 and never logged the token; returns the log.
    fn stop(mut self) -> Result<Vec<String>> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        let status = self.child.wait()?;
        let log = self
            .log
            .take()
            .context("stopped twice")?
            .join()
            .map_err(|_| anyhow::anyhow!("log reader"))?;
        anyhow::ensure!(
            status.success(),
            "serve exited {status}: {}",
            log.join("\n")
        );
        anyhow::ensure!(
            !log.iter().any(|l| l.contains(TOKEN)),
            "the token appears in the log"
        );
        Ok(log)
    }
}

/// A world with a purchases topic, a migrated ClickHouse database, one seller and one
/// product in the stage, and `[api]` reading its write token from `E2E_WRITE_TOKENS`.
async fn api_world() -> Result<World> {
    let topic = lakeshop_testkit::unique("purchases");
    lakeshop_testkit::create_topic(&topic, 3).await?;
    let world = World::new(
        StageKind::Local,
        Setup {
            purchases_topic: Some(topic),
            ..Setup::default()
        },
    )?;
    let mut text = std::fs::read_to_string(&world.pipeline)?;
    text.push_str("[api]\nwrite_tokens = \"${E2E_WRITE_TOKENS:-}\"\n");
    std::fs::write(&world.pipeline, text)?;
    world.run(&["migrate"])?;
    let stage = world.stage();
    batch_support::append_sellers(&stage, &[(SELLER, "Shop")]).await?;
    batch_support::append_products(&stage, &[(PRODUCT, "Lamp", "lighting", SELLER)]).await?;
    Ok(world)
}

#[tokio::test(flavor = "multi_thread")]
async fn purchases_posted_to_the_api_show_in_its_live_series_once() -> Result<()> {
    let world = api_world().await?;
    let server = Served::start(&world)?;
    let base = server.base.clone();

    let (s, body) = http("GET", &format!("{base}/healthz"), None)?;
    assert_eq!(s, 200, "{body}");
    let health: Value = serde_json::from_str(&body)?;
    assert_eq!(health["checks"]["kafka"], "ok", "{body}");
    assert_eq!(health["checks"]["clickhouse"], "ok", "{body}");

    let at = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let n: u128 = 20;
    let batch = format!(
        "[{}]",
        (1..=n)
            .map(|i| purchase(i, &at))
            .collect::<Vec<_>>()
            .join(",")
    );
    let (s, body) = http("POST", &format!("{base}/api/purchases"), Some(&batch))?;
    assert_eq!(s, 202, "{body}");
    // A client retry of one purchase: acknowledged, counted once.
    let (s, body) = http(
        "POST",
        &format!("{base}/api/purchases"),
        Some(&purchase(7, &at)),
    )?;
    assert_eq!(s, 202, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body)?["duplicates"], 1);

    let stats = load(&world)?;
    assert_eq!(stats["counted"], 20, "{stats}");

    let (s, body) = http(
        "GET",
        &format!("{base}/api/analytics/series?granularity=day&dim=product&key={PRODUCT}"),
        None,
    )?;
    assert_eq!(s, 200, "{body}");
    let series: Value = serde_json::from_str(&body)?;
    let rows = series["rows"].as_array().context("rows")?;
    assert_eq!(rows.len(), 1, "{body}");
    assert_eq!(rows[0]["purchases"], 20, "{body}");
    assert_eq!(rows[0]["items"], 40, "{body}");
    assert_eq!(rows[0]["revenue"], "500.00", "{body}");

    // The live page in headless Chromium shows the minute's revenue and the category.
    let dom = render(&base)?;
    for want in [
        r#"id="revenue-total">500.00<"#,
        r#"data-revenue="500.00""#,
        ">lighting<",
        PRODUCT,
    ] {
        assert!(dom.contains(want), "{want} in the live page:\n{dom}");
    }
    // More purchases arrive: the page shows them after the loader took them.
    let more = format!(
        "[{}]",
        (21..=24)
            .map(|i| purchase(i, &at))
            .collect::<Vec<_>>()
            .join(",")
    );
    let (s, body) = http("POST", &format!("{base}/api/purchases"), Some(&more))?;
    assert_eq!(s, 202, "{body}");
    assert_eq!(load(&world)?["counted"], 4);
    let dom = render(&base)?;
    assert!(
        dom.contains(r#"id="revenue-total">600.00<"#) && dom.contains(r#"data-revenue="600.00""#),
        "the live page after 4 more purchases:\n{dom}"
    );
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("live-page.png");
    let out = Command::new("chromium")
        .args(CHROMIUM_FLAGS)
        .arg(format!("--screenshot={}", shot.display()))
        .args(["--window-size=1200,900", &format!("{base}/")])
        .output()?;
    anyhow::ensure!(
        out.status.success() && shot.metadata()?.len() > 10_000,
        "screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("live page screenshot: {}", shot.display());

    let (s, metrics) = http("GET", &format!("{base}/metrics"), None)?;
    assert_eq!(s, 200);
    for line in [
        r#"lakeshop_api_requests_total{route="/api/purchases",method="POST",status="202"} 3"#,
        r#"lakeshop_api_purchases_total{outcome="accepted"} 24"#,
        r#"lakeshop_api_purchases_total{outcome="duplicate"} 1"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }

    server.stop()?;
    Ok(())
}

/// Schemathesis (`infra/fuzz-requirements.txt`) against the running server's own
/// `/openapi.json`: every operation, examples and fuzzing, with the write token. It fails on
/// a 5xx, a status or body the document does not declare, a response that breaks its schema,
/// or an invalid request accepted. Its one opinion left out is that every request the
/// schema allows must succeed: the API answers 400 to what the schema cannot express (a
/// range whose start is after its end, a key that is not an id, a purchase from before
/// 2000), and documents those 400s. `LAKESHOP_FUZZ_EXAMPLES` (default 25 per operation) sets
/// how long; `make fuzz-api` runs it longer.
#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_server_error_and_no_spec_violation() -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let venv = Command::new(root.join("infra/bench-venv.sh"))
        .arg(root.join("infra/fuzz-requirements.txt"))
        .output()?;
    anyhow::ensure!(
        venv.status.success(),
        "infra/bench-venv.sh: {}",
        String::from_utf8_lossy(&venv.stderr)
    );
    let st = format!(
        "{}/bin/schemathesis",
        String::from_utf8(venv.stdout)?.trim()
    );
    let examples = std::env::var("LAKESHOP_FUZZ_EXAMPLES").unwrap_or_else(|_| "25".into());
    let world = api_world().await?;
    let server = Served::start(&world)?;
    let report = world.dir.path().join("schemathesis");
    let out = Command::new(&st)
        .args([
            "run",
            &format!("{}/openapi.json", server.base),
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-examples",
            &examples,
            "--header",
            &format!("Authorization: Bearer {TOKEN}"),
            "--report",
            "junit",
            "--report-dir",
        ])
        .arg(&report)
        // Its cache (.schemathesis/) goes to the test's temp dir, not the checkout.
        .current_dir(world.dir.path())
        .env("NO_COLOR", "1")
        .output()
        .context("running schemathesis")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let log = server.stop()?;
    anyhow::ensure!(
        out.status.success(),
        "schemathesis found problems:\n{text}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        log.join("\n")
    );
    // It really ran every operation: each is a test case of its JUnit report.
    let junit = std::fs::read_dir(&report)?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".xml"))
        .context("no JUnit report")?;
    let junit = std::fs::read_to_string(junit.path())?;
    for op in [
        "POST /api/purchases",
        "GET /api/analytics/{report}",
        "GET /api/analytics/series",
    ] {
        assert!(junit.contains(op), "{op} in the JUnit report:\n{junit}");
    }
    assert!(text.contains("Tested: 3"), "{text}");
    Ok(())
}

/// The metric names a `/metrics` answer declares (`# TYPE name kind`).
fn declared(base: &str) -> Result<std::collections::BTreeSet<String>> {
    let (s, text) = http("GET", &format!("{base}/metrics"), None)?;
    anyhow::ensure!(s == 200, "{base}/metrics: {s}");
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect())
}

/// Every query of the shipped Grafana dashboard (`infra/grafana/dashboards/lakeshop.json`)
/// names a metric that `extract purchases --follow`, `stream run` or `serve` really exports
/// (read from their live `/metrics`), and the dashboard shows each of the three.
#[tokio::test(flavor = "multi_thread")]
async fn grafana_dashboard_names_only_metrics_the_commands_export() -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(
        root.join("infra/grafana/dashboards/lakeshop.json"),
    )?)?;
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().context("panels")? {
        for t in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(
                t["expr"]
                    .as_str()
                    .context("a target without expr")?
                    .to_string(),
            );
        }
    }
    assert!(exprs.len() >= 10, "{exprs:?}");
    // Metric names in the queries, as `# TYPE` declares them: without the sample suffixes.
    let mut used = std::collections::BTreeSet::new();
    for e in &exprs {
        let names = e
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("lakeshop_") || w.starts_with("process_"));
        for n in names {
            let base = ["_bucket", "_sum", "_count", "_total"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n);
            used.insert(base.to_string());
        }
    }

    let world = api_world().await?;
    let server = Served::start(&world)?;
    let loader = Served::command(
        &world,
        &["stream", "run", "--metrics-listen", "127.0.0.1:0"],
    )?;
    let extractor = Served::command(
        &world,
        &[
            "extract",
            "purchases",
            "--follow",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    )?;
    let mut exported = std::collections::BTreeSet::new();
    for (name, s) in [
        ("serve", &server),
        ("stream run", &loader),
        ("extract --follow", &extractor),
    ] {
        let names = declared(&s.base)?;
        assert!(
            names
                .iter()
                .any(|n| used.contains(n) && n.starts_with("lakeshop_")),
            "the dashboard shows nothing of {name}: {names:?}"
        );
        exported.extend(names);
    }
    let missing: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics nobody exports: {missing:?}"
    );
    for s in [server, loader, extractor] {
        s.stop()?;
    }
    Ok(())
}
