//! End to end through the binary: `lakeshop serve` takes purchases over HTTP (one identical
//! re-send among them), `stream run` loads them, and the API's live series shows each
//! purchase once with its exact revenue; the live page, rendered by headless Chromium, shows
//! them and then the purchases posted after (a screenshot is left in the target dir).
//! `/healthz` names both dependencies, `/metrics` counts the requests by route and status,
//! and SIGTERM stops the server cleanly. Sellers, clients and products written through the
//! API reach their sources and, through the extracts, the stage.

use anyhow::{Context as _, Result};
use lakeshop_testkit::world::{Setup, StageKind, World};
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
    render_url(&format!("{base}/"))
}

/// A page's DOM after its scripts ran, rendered by headless Chromium.
fn render_url(url: &str) -> Result<String> {
    let out = Command::new("chromium")
        .args(CHROMIUM_FLAGS)
        .args(["--dump-dom", url])
        .output()
        .context("running chromium (infra/deps.sh test installs it)")?;
    anyhow::ensure!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
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

/// A fresh PostgreSQL database with the sellers and clients tables; its URL.
async fn source_database() -> Result<String> {
    let db = lakeshop_testkit::fresh_database("api_sources").await?;
    let pg = lakeshop_testkit::pg(&db).await?;
    pg.batch_execute(include_str!("../../../schemas/postgres/sellers.sql"))
        .await?;
    pg.batch_execute(include_str!("../../../schemas/postgres/clients.sql"))
        .await?;
    Ok(db)
}

/// A world with a purchases topic, a migrated ClickHouse database, source tables in a fresh
/// PostgreSQL database, one seller and one product in the stage, and `[api]` reading its
/// write token from `E2E_WRITE_TOKENS`.
async fn api_world() -> Result<World> {
    let topic = lakeshop_testkit::unique("purchases");
    lakeshop_testkit::create_topic(&topic, 3).await?;
    let world = World::new(
        StageKind::Local,
        Setup {
            pg_url: Some(source_database().await?),
            purchases_topic: Some(topic),
            ..Setup::default()
        },
    )?;
    let mut text = std::fs::read_to_string(&world.pipeline)?;
    text.push_str("[api]\nwrite_tokens = \"${E2E_WRITE_TOKENS:-}\"\n");
    std::fs::write(&world.pipeline, text)?;
    world.run(&["migrate"])?;
    let stage = world.stage();
    lakeshop_testkit::world::append_sellers(&stage, &[(SELLER, "Shop")]).await?;
    lakeshop_testkit::world::append_products(&stage, &[(PRODUCT, "Lamp", "lighting", SELLER)])
        .await?;
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

    let stats = world.stream_until_end()?;
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
    assert_eq!(world.stream_until_end()?["counted"], 4);
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

    // /docs renders every operation of /openapi.json.
    let dom = render_url(&format!("{base}/docs"))?;
    for want in [
        ">/api/purchases<",
        ">/api/sellers/{id}<",
        ">/api/analytics/series<",
        ">/api/products<",
        ">POST<",
        ">PUT<",
        ">GET<",
    ] {
        assert!(dom.contains(want), "{want} in /docs:\n{dom}");
    }

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

/// The stage's text of `column` for each row of `sql` (one column), sorted.
async fn stage_texts(
    world: &World,
    table: lakeshop_stage::Table,
    sql: &str,
) -> Result<Vec<String>> {
    use deltalake::arrow::array::{Array as _, AsArray as _};
    let mut out = Vec::new();
    for b in lakeshop_testkit::world::stage_query(&world.stage(), &[table], sql).await? {
        let c = deltalake::arrow::compute::cast(
            b.column(0),
            &deltalake::arrow::datatypes::DataType::Utf8,
        )?;
        let c = c.as_string::<i32>();
        out.extend((0..c.len()).map(|i| c.value(i).to_string()));
    }
    out.sort();
    Ok(out)
}

/// Sellers and clients written through the API land in PostgreSQL and products in the source
/// Delta table (on S3); the extracts stage them. An update moves a seller's `updated_at` (the
/// next incremental extract takes the new name) and an identical re-write does not; a product
/// update is a new source version that `extract products` takes. Invalid objects are refused
/// field by field and nothing of their request is written.
#[tokio::test(flavor = "multi_thread")]
async fn sellers_clients_and_products_written_through_the_api_reach_the_stage() -> Result<()> {
    let db = source_database().await?;
    let pg = lakeshop_testkit::pg(&db).await?;
    let topic = lakeshop_testkit::unique("purchases");
    lakeshop_testkit::create_topic(&topic, 1).await?;
    let world = World::new(
        StageKind::Local,
        Setup {
            pg_url: Some(db),
            purchases_topic: Some(topic),
            ..Setup::default()
        },
    )?;
    let mut text = std::fs::read_to_string(&world.pipeline)?;
    text.push_str("[api]\nwrite_tokens = \"${E2E_WRITE_TOKENS:-}\"\n");
    std::fs::write(&world.pipeline, text)?;
    let server = Served::start(&world)?;
    let base = server.base.clone();
    let seller =
        |name: &str| format!(r#"{{"seller_id":"{SELLER}","name":"{name}","region":"EU"}}"#);
    let updated_at = || async {
        let row = pg
            .query_one(
                "SELECT updated_at, name FROM sellers WHERE seller_id = $1::text::uuid",
                &[&SELLER],
            )
            .await?;
        anyhow::Ok((
            row.get::<_, chrono::DateTime<chrono::Utc>>(0),
            row.get::<_, String>(1),
        ))
    };

    // An invalid array: every fault listed, nothing written.
    let bad = format!(
        r#"[{{"seller_id":"{SELLER}","name":"Shop","region":"EU"}},{{"seller_id":"nope","name":"","region":"EU"}}]"#
    );
    let (s, body) = http("POST", &format!("{base}/api/sellers"), Some(&bad))?;
    assert_eq!(s, 400, "{body}");
    let err: Value = serde_json::from_str(&body)?;
    let faults: Vec<(u64, String, String)> = err["errors"]
        .as_array()
        .context("errors")?
        .iter()
        .map(|e| {
            (
                e["index"].as_u64().unwrap_or(99),
                e["field"].as_str().unwrap_or("").to_string(),
                e["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        faults,
        vec![
            (1, "seller_id".into(), "bad_uuid".into()),
            (1, "name".into(), "missing_field".into())
        ],
        "{body}"
    );
    let n: i64 = pg
        .query_one("SELECT count(*) FROM sellers", &[])
        .await?
        .get(0);
    assert_eq!(n, 0, "a refused request writes nothing");

    // Insert by PUT, then the same again, then a real change.
    let put = |body: String| http("PUT", &format!("{base}/api/sellers/{SELLER}"), Some(&body));
    let (s, body) = put(seller("Shop"))?;
    assert_eq!(
        (s, serde_json::from_str::<Value>(&body)?["inserted"].clone()),
        (200, 1.into()),
        "{body}"
    );
    let (first, _) = updated_at().await?;
    let (s, body) = put(seller("Shop"))?;
    assert_eq!(
        (s, serde_json::from_str::<Value>(&body)?["updated"].clone()),
        (200, 1.into()),
        "{body}"
    );
    assert_eq!(
        updated_at().await?.0,
        first,
        "an identical write does not move updated_at"
    );
    assert_eq!(
        world.json(&["extract", "sellers"])?["inserted"],
        1,
        "first extract"
    );
    let (s, body) = put(seller("Shop Renamed"))?;
    assert_eq!(s, 200, "{body}");
    let (second, name) = updated_at().await?;
    assert!(
        second > first && name == "Shop Renamed",
        "a change moves updated_at"
    );
    world.run(&["extract", "sellers"])?;
    assert_eq!(
        stage_texts(
            &world,
            lakeshop_stage::Table::Sellers,
            "SELECT name FROM sellers"
        )
        .await?,
        vec!["Shop Renamed".to_string()],
        "the incremental extract took the change"
    );

    // Clients: an array of two.
    let clients = format!(
        r#"[{{"client_id":"{CLIENT}","first_name":"Ada","last_name":"L","email":"ada@example.com","address":"1 Road"}},
            {{"client_id":"{}","first_name":"Bob","last_name":"M","email":"bob@example.com","address":"2 Road","registration_date":"2024-05-01T10:00:00Z"}}]"#,
        uuid::Uuid::from_u128(42)
    );
    let (s, body) = http("POST", &format!("{base}/api/clients"), Some(&clients))?;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body)?["inserted"],
        2,
        "{body}"
    );
    world.run(&["extract", "clients"])?;
    assert_eq!(
        stage_texts(
            &world,
            lakeshop_stage::Table::Clients,
            "SELECT email FROM clients"
        )
        .await?,
        vec!["ada@example.com".to_string(), "bob@example.com".to_string()]
    );

    // Products: created in the source table, then a price change as a new version.
    let product = |price: &str| {
        format!(
            r#"{{"product_id":"{PRODUCT}","name":"Lamp","category":"lighting","price":{price},"available_stock":5,"seller_id":"{SELLER}"}}"#
        )
    };
    let (s, body) = http(
        "POST",
        &format!("{base}/api/products"),
        Some(&product("12.5")),
    )?;
    assert_eq!(s, 200, "{body}");
    let v0 = serde_json::from_str::<Value>(&body)?["version"]
        .as_u64()
        .context("version")?;
    world.run(&["extract", "products"])?;
    let price = "SELECT CAST(price AS VARCHAR) FROM products";
    assert_eq!(
        stage_texts(&world, lakeshop_stage::Table::Products, price).await?,
        vec!["12.50".to_string()]
    );
    let (s, body) = http(
        "PUT",
        &format!("{base}/api/products/{PRODUCT}"),
        Some(&product("9.99")),
    )?;
    assert_eq!(s, 200, "{body}");
    let receipt: Value = serde_json::from_str(&body)?;
    assert_eq!(
        (receipt["updated"].as_u64(), receipt["version"].as_u64()),
        (Some(1), Some(v0 + 1)),
        "{body}"
    );
    world.run(&["extract", "products"])?;
    assert_eq!(
        stage_texts(&world, lakeshop_stage::Table::Products, price).await?,
        vec!["9.99".to_string()]
    );

    let (s, metrics) = http("GET", &format!("{base}/metrics"), None)?;
    assert_eq!(s, 200);
    for line in [
        r#"lakeshop_api_dimension_rows_total{kind="sellers"} 3"#,
        r#"lakeshop_api_dimension_rows_total{kind="clients"} 2"#,
        r#"lakeshop_api_dimension_rows_total{kind="products"} 2"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
    server.stop()?;
    Ok(())
}

/// `curl ARGS URL` → (exit success, status or 0, headers and body).
fn curl(args: &[&str], url: &str) -> Result<(bool, u16, String)> {
    let out = Command::new("curl")
        .args(["-sS", "-i", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .context("running curl")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    Ok((
        out.status.success(),
        status.trim().parse().unwrap_or(0),
        body.to_string(),
    ))
}

/// `serve` over HTTPS with a certificate from a CA made here (openssl), checked by curl
/// against that CA; plain HTTP to the port gets no answer. With `rate_limit` on, a client
/// over its burst gets 429 with `Retry-After`, another client (token) still gets through.
#[tokio::test(flavor = "multi_thread")]
async fn serve_speaks_https_and_limits_each_clients_rate() -> Result<()> {
    let world = api_world().await?;
    let dir = world.dir.path();
    let ca = lakeshop_testkit::tls::TestCa::new(&dir.join("ca"), "lakeshop-test-ca")?;
    let server_cert = ca.server("lakeshop-test", &["IP:127.0.0.1"])?;
    let (cert, key) = (server_cert.cert, server_cert.key);
    let mut text = std::fs::read_to_string(&world.pipeline)?;
    text.push_str(&format!(
        "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\nrate_limit = 0.1\nrate_limit_burst = 3\n",
        cert.display(),
        key.display()
    ));
    std::fs::write(&world.pipeline, text)?;
    let server = Served::start(&world)?;
    let https = server.base.replace("http://", "https://");
    let ca = ca.cert.to_string_lossy().to_string();

    // Without the CA, curl refuses the certificate; with it, the answer comes over TLS.
    let (ok, _, _) = curl(&[], &format!("{https}/openapi.json"))?;
    assert!(!ok, "an unknown CA is refused");
    let (ok, status, _) = curl(&["--cacert", &ca], &format!("{https}/openapi.json"))?;
    assert!(ok && status == 200, "HTTPS with the CA: {status}");
    // Plain HTTP to the TLS port: no HTTP answer.
    let (_, status, _) = curl(
        &["--max-time", "5"],
        &format!("{}/openapi.json", server.base),
    )?;
    assert_ne!(status, 200, "plain HTTP must not be served");

    // The burst of 3 is spent (one request above): two more pass, the next is limited.
    for _ in 0..2 {
        let (_, status, _) = curl(&["--cacert", &ca], &format!("{https}/openapi.json"))?;
        assert_eq!(status, 200);
    }
    let (_, status, answer) = curl(&["--cacert", &ca], &format!("{https}/openapi.json"))?;
    assert_eq!(status, 429, "{answer}");
    assert!(
        answer
            .lines()
            .any(|l| l.to_ascii_lowercase().starts_with("retry-after: ")),
        "{answer}"
    );
    assert!(answer.contains(r#""error":"rate_limited""#), "{answer}");
    // Another client (its own token) has its own bucket; /metrics is never limited.
    let auth = format!("Authorization: Bearer {TOKEN}");
    let (_, status, _) = curl(
        &["--cacert", &ca, "-H", &auth],
        &format!("{https}/openapi.json"),
    )?;
    assert_eq!(status, 200);
    let (_, status, _) = curl(&["--cacert", &ca], &format!("{https}/metrics"))?;
    assert_eq!(status, 200);
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
    let ops = [
        "POST /api/purchases",
        "GET /api/analytics/{report}",
        "GET /api/analytics/series",
        "POST /api/sellers",
        "PUT /api/sellers/{id}",
        "POST /api/clients",
        "PUT /api/clients/{id}",
        "POST /api/products",
        "PUT /api/products/{id}",
    ];
    for op in ops {
        assert!(junit.contains(op), "{op} in the JUnit report:\n{junit}");
    }
    assert!(text.contains(&format!("Tested: {}", ops.len())), "{text}");
    Ok(())
}

/// Debian's Prometheus on a free loopback port, scraping the given servers every second.
struct Prometheus {
    child: std::process::Child,
    base: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(dir: &std::path::Path, jobs: &[(&str, &Served)]) -> Result<Self> {
        let mut config =
            String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
        for (job, s) in jobs {
            let target = s.base.trim_start_matches("http://");
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ));
        }
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", file.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("prometheus-data").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("running prometheus (infra/deps.sh test installs it)")?;
        Ok(Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        })
    }

    /// The result vector of an instant query.
    fn query(&self, q: &str) -> Result<Vec<Value>> {
        let out = Command::new("curl")
            .args(["-sS", "--get", "--data-urlencode"])
            .arg(format!("query={q}"))
            .arg(format!("{}/api/v1/query", self.base))
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout)?;
        anyhow::ensure!(v["status"] == "success", "{v}");
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// Polls `q` until it returns something.
    fn wait_for(&self, q: &str, within: Duration) -> Result<Vec<Value>> {
        let deadline = Instant::now() + within;
        loop {
            match self.query(q) {
                Ok(r) if !r.is_empty() => return Ok(r),
                Ok(_) | Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(500))
                }
                Ok(_) => anyhow::bail!("Prometheus answered nothing to {q}"),
                Err(e) => return Err(e),
            }
        }
    }
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
/// (read from their live `/metrics`), and the dashboard shows each of the three. The real
/// Prometheus server scrapes all three and answers a query for lakeshop metrics of each.
#[tokio::test(flavor = "multi_thread")]
async fn grafana_dashboard_and_prometheus_see_only_what_the_commands_export() -> Result<()> {
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

    // The real Prometheus (Debian's) scrapes the three and answers for each.
    let jobs = [
        ("serve", &server),
        ("stream", &loader),
        ("extract", &extractor),
    ];
    let prometheus = Prometheus::start(world.dir.path(), &jobs)?;
    for (job, _) in jobs {
        let names = prometheus.wait_for(
            &format!(r#"group by (__name__) ({{job="{job}", __name__=~"lakeshop_.+"}})"#),
            Duration::from_secs(60),
        )?;
        let names: Vec<&str> = names
            .iter()
            .filter_map(|r| r["metric"]["__name__"].as_str())
            .collect();
        assert!(
            !names.is_empty(),
            "Prometheus holds no lakeshop metric of {job}"
        );
        let up = prometheus.query(&format!(r#"up{{job="{job}"}}"#))?;
        assert_eq!(up[0]["value"][1], "1", "up of {job}: {up:?}");
        eprintln!("prometheus: job {job}: {} lakeshop metrics", names.len());
    }
    drop(prometheus);
    for s in [server, loader, extractor] {
        s.stop()?;
    }
    Ok(())
}
