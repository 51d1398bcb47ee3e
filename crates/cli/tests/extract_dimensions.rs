//! `lakeshop extract clients | sellers | products` against the local stack, into a local
//! folder stage and an `s3://` stage: the first run stages every row; after 100 clients
//! change, 10 are soft-deleted and a new product table version changes 50 products, the next
//! run moves exactly those rows; `--full` finds hard deletes; a column added to the source
//! product table does not fail the extract; a first load killed midway is read again whole.

mod common;

use anyhow::{Context as _, Result};
use common::{counts, lakeshop};
use deltalake::arrow::array::{
    Array, ArrayRef, AsArray, Decimal128Array, Int32Array, RecordBatch, TimestampMicrosecondArray,
};
use deltalake::arrow::datatypes::{DataType, Decimal128Type, Field, Schema};
use std::sync::Arc;

/// The source product table, sorted by id, as one batch.
async fn read_products(uri: &str) -> Result<RecordBatch> {
    let (root, name) = uri.rsplit_once('/').context("table uri")?;
    let batches = common::query(
        root,
        name,
        &format!("SELECT product_id, name, category, price, available_stock, seller_id, updated_at FROM {name} ORDER BY product_id"),
    )
    .await?;
    let schema = batches.first().context("no products")?.schema();
    let batch = deltalake::arrow::compute::concat_batches(&schema, &batches)?;
    // Back to the source types (DataFusion may read strings as views).
    let columns = batch
        .columns()
        .iter()
        .zip(lakeshop_model::arrow_schema::product().fields())
        .map(|(c, f)| deltalake::arrow::compute::cast(c, f.data_type()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(
        lakeshop_model::arrow_schema::product(),
        columns,
    )?)
}

/// A new version of the source table in which the first `n` products (by id) cost 1.00
/// more and are stamped now; with `extra_column`, the version also gains a column.
async fn change_products(uri: &str, skip: usize, n: usize, extra_column: bool) -> Result<()> {
    let batch = read_products(uri).await?;
    let price = batch.column(3).as_primitive::<Decimal128Type>();
    let updated = batch
        .column(6)
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .context("updated_at")?;
    let now = chrono::Utc::now().timestamp_micros();
    let changed = |i: usize| i >= skip && i < skip + n;
    let new_price: Decimal128Array = (0..batch.num_rows())
        .map(|i| Some(price.value(i) + if changed(i) { 100 } else { 0 }))
        .collect::<Decimal128Array>()
        .with_precision_and_scale(18, 2)?;
    let new_updated = TimestampMicrosecondArray::from_iter_values((0..batch.num_rows()).map(|i| {
        if changed(i) {
            now
        } else {
            updated.value(i)
        }
    }))
    .with_timezone("UTC");
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    columns[3] = Arc::new(new_price);
    columns[6] = Arc::new(new_updated);
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    if extra_column {
        fields.push(Field::new("discount_percent", DataType::Int32, true));
        columns.push(Arc::new(Int32Array::from(vec![Some(5); batch.num_rows()])));
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
    let url = deltalake::table::builder::ensure_table_uri(uri)?;
    let t = deltalake::DeltaTable::try_from_url_with_storage_options(
        url,
        lakeshop_testkit::s3_options(),
    )
    .await?;
    t.write(vec![batch])
        .with_save_mode(deltalake::protocol::SaveMode::Overwrite)
        .with_schema_mode(deltalake::operations::write::SchemaMode::Merge)
        .await?;
    Ok(())
}

fn num(v: &serde_json::Value, k: &str) -> i64 {
    v[k].as_i64().unwrap_or(-1)
}

async fn dimensions_move_exactly_what_changed(stage_uri: String) -> Result<()> {
    let db = lakeshop_testkit::fresh_database("dims_test").await?;
    let products_uri = format!("s3://lakeshop/{}/products", lakeshop_testkit::unique("src"));
    let dir = tempfile::tempdir()?;
    let pipeline = dir.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[pipeline]\nname = \"{}\"\n[postgres]\nurl = \"{db}\"\ntls = \"disable\"\n[s3]\nendpoint = \"{}\"\n[products]\nuri = \"{products_uri}\"\n[stage]\nuri = \"{stage_uri}\"\n",
            lakeshop_testkit::unique("p"),
            lakeshop_testkit::s3_endpoint(),
        ),
    )?;
    let truth = dir.path().join("truth.json").to_string_lossy().to_string();
    lakeshop(
        &pipeline,
        &[
            "gen",
            "--clients",
            "3000",
            "--sellers",
            "40",
            "--products",
            "500",
            "--only",
            "postgres,products",
            "--seed",
            "5",
            "--quiet",
            "--truth",
            &truth,
        ],
    )?;

    // First runs: every row.
    let c = lakeshop(&pipeline, &["extract", "clients", "--quiet"])?;
    assert_eq!((num(&c, "read"), num(&c, "inserted")), (3000, 3000), "{c}");
    let s = lakeshop(&pipeline, &["extract", "sellers", "--quiet"])?;
    assert_eq!((num(&s, "read"), num(&s, "inserted")), (40, 40), "{s}");
    let p = lakeshop(&pipeline, &["extract", "products"])?;
    assert_eq!(p["method"], "full", "{p}");
    assert_eq!((num(&p, "changed"), num(&p, "inserted")), (500, 500), "{p}");

    // 100 clients change, 10 are soft-deleted, 50 products change.
    let pg = lakeshop_testkit::pg(&db).await?;
    let changed = pg
        .execute(
            "UPDATE clients SET email = 'changed-' || email WHERE client_id IN \
             (SELECT client_id FROM clients ORDER BY client_id LIMIT 100)",
            &[],
        )
        .await?;
    assert_eq!(changed, 100);
    let deleted = pg
        .execute(
            "UPDATE clients SET deleted_at = now() WHERE client_id IN \
             (SELECT client_id FROM clients ORDER BY client_id DESC LIMIT 10)",
            &[],
        )
        .await?;
    assert_eq!(deleted, 10);
    change_products(&products_uri, 0, 50, false).await?;

    // The next runs move exactly those rows (re-read overlap rows are no-ops).
    let c = lakeshop(&pipeline, &["extract", "clients", "--quiet"])?;
    assert_eq!((num(&c, "inserted"), num(&c, "updated")), (0, 110), "{c}");
    let s = lakeshop(&pipeline, &["extract", "sellers", "--quiet"])?;
    assert_eq!((num(&s, "inserted"), num(&s, "updated")), (0, 0), "{s}");
    let p = lakeshop(&pipeline, &["extract", "products"])?;
    assert_eq!(p["method"], "diff", "{p}");
    assert_eq!(
        (num(&p, "changed"), num(&p, "inserted"), num(&p, "updated")),
        (50, 0, 50),
        "{p}"
    );
    let again = lakeshop(&pipeline, &["extract", "products"])?;
    assert_eq!(again["method"], "up_to_date", "{again}");

    let rows = counts(
        &stage_uri,
        "clients",
        "SELECT 'rows', count(*) FROM clients UNION ALL SELECT 'ids', count(DISTINCT client_id) FROM clients \
         UNION ALL SELECT 'changed', count(*) FROM clients WHERE email LIKE 'changed-%' \
         UNION ALL SELECT 'deleted', count(*) FROM clients WHERE deleted_at IS NOT NULL",
    )
    .await?;
    assert_eq!(
        (rows["rows"], rows["ids"], rows["changed"], rows["deleted"]),
        (3000, 3000, 100, 10),
        "{rows:?}"
    );
    // The staged products equal the source's new version, row for row.
    let source = read_products(&products_uri).await?;
    let staged = counts(
        &stage_uri,
        "products",
        "SELECT 'rows', count(*) FROM products UNION ALL SELECT 'cents', CAST(sum(price) * 100 AS BIGINT) FROM products",
    )
    .await?;
    let source_cents: i128 = source
        .column(3)
        .as_primitive::<Decimal128Type>()
        .iter()
        .flatten()
        .sum();
    assert_eq!(staged["rows"], source.num_rows() as i64);
    assert_eq!(i128::from(staged["cents"]), source_cents);

    // A full run finds hard deletes, and only those.
    let gone = pg
        .execute(
            "DELETE FROM clients WHERE client_id IN \
             (SELECT client_id FROM clients WHERE deleted_at IS NULL ORDER BY client_id LIMIT 5 OFFSET 200)",
            &[],
        )
        .await?;
    assert_eq!(gone, 5);
    let full = lakeshop(&pipeline, &["extract", "clients", "--full", "--quiet"])?;
    assert_eq!(
        (
            num(&full, "read"),
            num(&full, "inserted"),
            num(&full, "updated"),
            num(&full, "marked_deleted")
        ),
        (2995, 0, 0, 5),
        "{full}"
    );
    let deleted = counts(
        &stage_uri,
        "clients",
        "SELECT 'deleted', count(*) FROM clients WHERE deleted_at IS NOT NULL",
    )
    .await?;
    assert_eq!(deleted["deleted"], 15);

    // Schema evolution: the source gains a column and 5 products change.
    change_products(&products_uri, 100, 5, true).await?;
    let p = lakeshop(&pipeline, &["extract", "products"])?;
    assert_eq!((num(&p, "changed"), num(&p, "updated")), (5, 5), "{p}");
    assert_eq!(
        p["ignored_columns"],
        serde_json::json!(["discount_percent"]),
        "{p}"
    );

    // `stage show` reports the positions committed with the data.
    let show = std::process::Command::new(env!("CARGO_BIN_EXE_lakeshop"))
        .arg("--config")
        .arg(&pipeline)
        .args(["stage", "show", "--json"])
        .output()?;
    assert!(
        show.status.success(),
        "{}",
        String::from_utf8_lossy(&show.stderr)
    );
    let tables: serde_json::Value = serde_json::from_slice(&show.stdout)?;
    let clients = tables
        .as_array()
        .and_then(|a| a.iter().find(|t| t["table"] == "clients"))
        .context("clients in stage show")?;
    assert_eq!(clients["rows"].as_i64(), Some(3000), "{clients}");
    assert!(
        clients["positions"]
            .as_object()
            .is_some_and(|p| p.keys().any(|k| k.starts_with("postgres:clients:"))),
        "{clients}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn dimensions_into_a_local_folder_stage() -> Result<()> {
    let dir = tempfile::tempdir()?;
    dimensions_move_exactly_what_changed(dir.path().join("stage").to_string_lossy().to_string())
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn dimensions_into_an_s3_stage() -> Result<()> {
    dimensions_move_exactly_what_changed(format!(
        "s3://lakeshop/{}/stage",
        lakeshop_testkit::unique("stage")
    ))
    .await
}

/// Commit files in a local Delta table's log.
fn commits(table: &std::path::Path) -> usize {
    std::fs::read_dir(table.join("_delta_log")).map_or(0, |d| {
        d.filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .count()
    })
}

/// A first load SIGKILLed after some of its commits is run again: the rerun stages every
/// client exactly once and ends with the real watermark, the largest `updated_at`.
#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_first_load_is_read_again_whole() -> Result<()> {
    const CLIENTS: i64 = 40_000;
    let db = lakeshop_testkit::fresh_database("dims_kill").await?;
    let dir = tempfile::tempdir()?;
    let stage = dir.path().join("stage");
    let pipeline = dir.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[pipeline]\nname = \"{}\"\n[postgres]\nurl = \"{db}\"\ntls = \"disable\"\ncommit_rows = 5000\n[stage]\nuri = \"{}\"\n",
            lakeshop_testkit::unique("p"),
            stage.display(),
        ),
    )?;
    lakeshop(
        &pipeline,
        &[
            "gen",
            "--clients",
            &CLIENTS.to_string(),
            "--sellers",
            "10",
            "--only",
            "postgres",
            "--seed",
            "9",
            "--quiet",
            "--truth",
            &dir.path().join("truth.json").to_string_lossy(),
        ],
    )?;

    // Kill the first load once a few commits landed, well before its end.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lakeshop"))
        .arg("--config")
        .arg(&pipeline)
        .args(["extract", "clients", "--quiet"])
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let table = stage.join("clients");
    let started = std::time::Instant::now();
    while commits(&table) < 3 && started.elapsed() < std::time::Duration::from_secs(60) {
        if child.try_wait()?.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill()?;
    child.wait()?;
    let staged = counts(
        &stage.to_string_lossy(),
        "clients",
        "SELECT 'n', count(*) FROM clients",
    )
    .await?;
    let partial = staged.get("n").copied().unwrap_or(0);
    assert!(
        partial > 0 && partial < CLIENTS,
        "the kill should land mid-load, but {partial} of {CLIENTS} rows were staged"
    );

    let rerun = lakeshop(&pipeline, &["extract", "clients", "--quiet"])?;
    assert_eq!(num(&rerun, "read"), CLIENTS, "{rerun}");
    assert_eq!(
        num(&rerun, "inserted") + partial,
        CLIENTS,
        "the rerun inserts exactly what the killed run did not stage: {rerun}"
    );
    let after = counts(
        &stage.to_string_lossy(),
        "clients",
        "SELECT 'n', count(*) FROM clients UNION ALL SELECT 'ids', count(DISTINCT client_id) FROM clients",
    )
    .await?;
    assert_eq!(after.get("n"), Some(&CLIENTS), "{after:?}");
    assert_eq!(after.get("ids"), Some(&CLIENTS), "{after:?}");

    // The watermark is the source's largest updated_at, so the next run reads only the
    // overlap.
    let pg = lakeshop_testkit::pg(&db).await?;
    let max: chrono::DateTime<chrono::Utc> = pg
        .query_one("SELECT max(updated_at) FROM clients", &[])
        .await?
        .get(0);
    let watermark = rerun["watermark"]
        .as_str()
        .and_then(|w| chrono::DateTime::parse_from_rfc3339(w).ok());
    assert_eq!(watermark, Some(max.fixed_offset()), "{rerun}");
    let next = lakeshop(&pipeline, &["extract", "clients", "--quiet"])?;
    assert_eq!(
        (num(&next, "inserted"), num(&next, "updated")),
        (0, 0),
        "{next}"
    );
    assert!(num(&next, "read") < CLIENTS, "{next}");
    Ok(())
}

/// `extract sellers --follow`: a seller created in PostgreSQL while it runs reaches the stage
/// within a few poll intervals, with no other command run; SIGTERM ends it with exit 0 and a
/// summary of its passes. Seen failing (timing out) with `--follow` ignored by the dimension
/// extracts: one pass, then exit.
#[tokio::test(flavor = "multi_thread")]
async fn following_sellers_stages_a_new_seller_within_seconds() -> Result<()> {
    let db = lakeshop_testkit::fresh_database("follow_test").await?;
    let dir = tempfile::tempdir()?;
    let stage_uri = dir.path().join("stage").to_string_lossy().to_string();
    let pipeline = dir.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[pipeline]\nname = \"{}\"\n[postgres]\nurl = \"{db}\"\ntls = \"disable\"\nfollow_interval = \"500ms\"\n[s3]\nendpoint = \"{}\"\n[products]\nuri = \"s3://lakeshop/{}/products\"\n[stage]\nuri = \"{stage_uri}\"\n",
            lakeshop_testkit::unique("p"),
            lakeshop_testkit::s3_endpoint(),
            lakeshop_testkit::unique("src"),
        ),
    )?;
    lakeshop(
        &pipeline,
        &[
            "gen",
            "--clients",
            "10",
            "--sellers",
            "5",
            "--only",
            "postgres",
            "--seed",
            "5",
            "--quiet",
        ],
    )?;
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_lakeshop"))
        .arg("--config")
        .arg(&pipeline)
        .args(["extract", "sellers", "--follow"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let sellers = || async {
        let n = counts(&stage_uri, "sellers", "SELECT 'all', count(*) FROM sellers")
            .await
            .ok()
            .and_then(|c| c.get("all").copied());
        n.unwrap_or(0)
    };
    let wait_for = |want: i64| async move {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let n = sellers().await;
            if n == want || std::time::Instant::now() > deadline {
                return n;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    };
    let outcome = async {
        assert_eq!(wait_for(5).await, 5, "the first pass stages every seller");
        let pg = lakeshop_testkit::pg(&db).await?;
        pg.execute(
            "INSERT INTO sellers (seller_id, name, region) VALUES ($1, 'New shop', 'north')",
            &[&uuid::Uuid::new_v4()],
        )
        .await?;
        let started = std::time::Instant::now();
        assert_eq!(wait_for(6).await, 6, "the new seller reached the stage");
        eprintln!("new seller staged after {:?}", started.elapsed());
        anyhow::Ok(())
    }
    .await;
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    let out = child.wait_with_output()?;
    outcome?;
    assert!(out.status.success(), "exit status {:?}", out.status);
    let stdout = String::from_utf8(out.stdout)?;
    let last: serde_json::Value =
        serde_json::from_str(stdout.lines().last().context("no summary")?)?;
    assert_eq!(last["follow"], true, "{stdout}");
    assert!(last["passes"].as_u64().is_some_and(|n| n >= 2), "{stdout}");
    assert!(
        last["passes_that_changed"].as_u64().is_some_and(|n| n >= 2),
        "{stdout}"
    );
    Ok(())
}
