//! `lakeshop extract products` over a source table made by `gen` with Change Data Feed on
//! (`--products-cdf`) and without it (the diff path), each on a local folder and on S3.
//! Real changes (an update, two inserts, a delete) reach the stage once and only the rows
//! that changed; source versions that change no rows (OPTIMIZE, ADD COLUMN) stage nothing
//! and fail nothing; a run with nothing new is up to date.

mod common;

use anyhow::{Context as _, Result};
use common::{counts, lakeshop};
use deltalake::arrow::array::{
    ArrayRef, Decimal128Array, Int32Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use deltalake::datafusion::prelude::{col, lit};
use deltalake::datafusion::scalar::ScalarValue;
use deltalake::DeltaTable;
use std::collections::BTreeMap;
use std::sync::Arc;

async fn open(uri: &str) -> Result<DeltaTable> {
    let url = deltalake::table::builder::ensure_table_uri(uri)?;
    Ok(DeltaTable::try_from_url_with_storage_options(url, lakeshop_testkit::s3_options()).await?)
}

/// Every staged product as one `id|name|price|stock|updated_at` line (count 1 each).
async fn stage_rows(stage: &str) -> Result<BTreeMap<String, i64>> {
    counts(
        stage,
        "products",
        "SELECT concat_ws('|', product_id, name, CAST(price AS VARCHAR), \
         CAST(available_stock AS VARCHAR), CAST(updated_at AS VARCHAR)), count(*) \
         FROM products GROUP BY 1",
    )
    .await
}

/// New products with fresh ids, stamped now, as the source schema's batch.
fn new_products(ids: &[String], seller: &str) -> Result<RecordBatch> {
    let n = ids.len();
    let now = chrono::Utc::now().timestamp_micros();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(ids.iter())),
        Arc::new(StringArray::from(vec!["Fresh product"; n])),
        Arc::new(StringArray::from(vec!["books"; n])),
        Arc::new(Decimal128Array::from(vec![1999_i128; n]).with_precision_and_scale(18, 2)?),
        Arc::new(Int32Array::from(vec![7; n])),
        Arc::new(StringArray::from(vec![seller; n])),
        Arc::new(TimestampMicrosecondArray::from(vec![now; n]).with_timezone("UTC")),
    ];
    Ok(RecordBatch::try_new(
        lakeshop_model::arrow_schema::product(),
        columns,
    )?)
}

fn num(v: &serde_json::Value, k: &str) -> i64 {
    v[k].as_i64().unwrap_or(-1)
}

/// An extract that must find nothing to stage: no rows changed, none written, the source
/// version recorded, the stage exactly as before.
async fn assert_no_op(
    pipeline: &std::path::Path,
    stage: &str,
    before: &BTreeMap<String, i64>,
    version: Option<u64>,
    what: &str,
) -> Result<serde_json::Value> {
    let p = lakeshop(pipeline, &["extract", "products"])?;
    assert_eq!(
        (num(&p, "changed"), num(&p, "inserted"), num(&p, "updated")),
        (0, 0, 0),
        "{what}: {p}"
    );
    assert_eq!(p["to_version"].as_u64(), version, "{what}: {p}");
    assert_eq!(&stage_rows(stage).await?, before, "{what}: the stage moved");
    Ok(p)
}

async fn products_extract(cdf: bool, on_s3: bool) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (products_uri, stage) = if on_s3 {
        let root = format!("s3://lakeshop/{}", lakeshop_testkit::unique("cdf"));
        (format!("{root}/products"), format!("{root}/stage"))
    } else {
        (
            dir.path().join("products").to_string_lossy().to_string(),
            dir.path().join("stage").to_string_lossy().to_string(),
        )
    };
    let pipeline = dir.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[pipeline]\nname = \"{}\"\n[s3]\nendpoint = \"{}\"\n[products]\nuri = \"{products_uri}\"\n[stage]\nuri = \"{stage}\"\n",
            lakeshop_testkit::unique("p"),
            lakeshop_testkit::s3_endpoint(),
        ),
    )?;
    let truth = dir.path().join("truth.json").to_string_lossy().to_string();
    let mut gen = vec![
        "gen",
        "--products",
        "200",
        "--sellers",
        "10",
        "--only",
        "products",
        "--seed",
        "11",
        "--quiet",
        "--truth",
        &truth,
    ];
    if cdf {
        gen.push("--products-cdf");
    }
    lakeshop(&pipeline, &gen)?;
    let table = open(&products_uri).await?;
    assert_eq!(
        table.snapshot()?.table_config().enable_change_data_feed,
        cdf.then_some(true),
        "gen --products-cdf sets delta.enableChangeDataFeed"
    );
    let method = if cdf { "change_data_feed" } else { "diff" };

    // First run: every row.
    let p = lakeshop(&pipeline, &["extract", "products"])?;
    assert_eq!(
        (p["method"].as_str(), num(&p, "inserted")),
        (Some("full"), 200),
        "{p}"
    );
    let first = stage_rows(&stage).await?;
    assert_eq!(first.len(), 200);

    // Real changes, one version each: an update of one product, two new products, a
    // delete of another.
    let ids: Vec<String> = common::query(
        &stage,
        "products",
        "SELECT product_id, seller_id FROM products ORDER BY product_id LIMIT 2",
    )
    .await?
    .iter()
    .flat_map(|b| {
        let ids = deltalake::arrow::compute::cast(
            b.column(0),
            &deltalake::arrow::datatypes::DataType::Utf8,
        );
        let sellers = deltalake::arrow::compute::cast(
            b.column(1),
            &deltalake::arrow::datatypes::DataType::Utf8,
        );
        let (ids, sellers) = (ids.ok(), sellers.ok());
        (0..b.num_rows())
            .filter_map(move |i| {
                let ids = ids.as_ref()?.as_any().downcast_ref::<StringArray>()?;
                let sellers = sellers.as_ref()?.as_any().downcast_ref::<StringArray>()?;
                Some([ids.value(i).to_string(), sellers.value(i).to_string()])
            })
            .collect::<Vec<_>>()
    })
    .flatten()
    .collect();
    let (updated_id, seller, deleted_id) = (
        ids.first().context("a product")?.clone(),
        ids.get(1).context("its seller")?.clone(),
        ids.get(2).context("a second product")?.clone(),
    );
    let now = chrono::Utc::now().timestamp_micros();
    let (table, _) = table
        .update()
        .with_predicate(col("product_id").eq(lit(updated_id.as_str())))
        .with_update("name", lit("Renamed product"))
        .with_update(
            "updated_at",
            lit(ScalarValue::TimestampMicrosecond(
                Some(now),
                Some("UTC".into()),
            )),
        )
        .await?;
    let fresh = vec![
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    ];
    let table = table
        .write(vec![new_products(&fresh, &seller)?])
        .with_save_mode(deltalake::protocol::SaveMode::Append)
        .await?;
    let (table, deleted) = table
        .delete()
        .with_predicate(col("product_id").eq(lit(deleted_id.as_str())))
        .await?;
    assert_eq!(deleted.num_deleted_rows, Some(1));
    let p = lakeshop(&pipeline, &["extract", "products"])?;
    assert_eq!(p["method"].as_str(), Some(method), "{p}");
    assert_eq!(
        (num(&p, "changed"), num(&p, "inserted"), num(&p, "updated")),
        (3, 2, 1),
        "{p}"
    );
    assert_eq!(p["to_version"].as_u64(), table.version());
    let after = stage_rows(&stage).await?;
    assert_eq!(after.len(), 202, "two new products, the deleted one kept");
    assert!(after.values().all(|n| *n == 1), "one row per product");
    let by_id = |id: &str| after.keys().find(|k| k.starts_with(id)).cloned();
    assert!(
        by_id(&updated_id).is_some_and(|r| r.contains("|Renamed product|")),
        "the update reached the stage"
    );
    for id in &fresh {
        assert!(
            by_id(id).is_some_and(|r| r.contains("|Fresh product|19.99|7|")),
            "the insert of {id} reached the stage"
        );
    }
    // The deleted product stays as it was (old purchases still join to it).
    assert_eq!(
        by_id(&deleted_id),
        first.keys().find(|k| k.starts_with(&deleted_id)).cloned()
    );
    let differ = first.keys().filter(|k| !after.contains_key(*k)).count();
    assert_eq!(differ, 1, "only the updated product's row changed");
    // Nothing new: up to date, nothing staged twice.
    let p = lakeshop(&pipeline, &["extract", "products"])?;
    assert_eq!(p["method"].as_str(), Some("up_to_date"), "{p}");
    assert_eq!(stage_rows(&stage).await?, after);

    // OPTIMIZE: files rewritten, no row changed.
    let (table, metrics) = table.optimize().await?;
    assert!(metrics.num_files_removed > 1, "{metrics:?}");
    let p = assert_no_op(&pipeline, &stage, &after, table.version(), "optimize").await?;
    assert_eq!(p["method"].as_str(), Some(method), "optimize: {p}");

    // ADD COLUMN only: a metadata version, no row changed; the column is reported.
    let table = table
        .add_columns()
        .with_fields([deltalake::kernel::StructField::new(
            "discount_percent",
            deltalake::kernel::DataType::Primitive(deltalake::kernel::PrimitiveType::Integer),
            true,
        )])
        .await?;
    let p = assert_no_op(&pipeline, &stage, &after, table.version(), "add column").await?;
    assert_eq!(
        p["ignored_columns"],
        serde_json::json!(["discount_percent"]),
        "{p}"
    );

    // A change after the schema change still arrives, once.
    let later = chrono::Utc::now().timestamp_micros();
    let (table, _) = table
        .update()
        .with_predicate(col("product_id").eq(lit(fresh[0].as_str())))
        .with_update("available_stock", lit(3_i32))
        .with_update(
            "updated_at",
            lit(ScalarValue::TimestampMicrosecond(
                Some(later),
                Some("UTC".into()),
            )),
        )
        .await?;
    let p = lakeshop(&pipeline, &["extract", "products"])?;
    assert_eq!(
        (num(&p, "changed"), num(&p, "inserted"), num(&p, "updated")),
        (1, 0, 1),
        "{p}"
    );
    assert_eq!(p["to_version"].as_u64(), table.version());
    let last = stage_rows(&stage).await?;
    assert_eq!(last.len(), 202);
    assert!(last
        .keys()
        .any(|k| k.starts_with(&fresh[0]) && k.contains("|Fresh product|19.99|3|")));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn products_change_data_feed_on_a_folder() -> Result<()> {
    products_extract(true, false).await
}

#[tokio::test(flavor = "multi_thread")]
async fn products_change_data_feed_on_s3() -> Result<()> {
    products_extract(true, true).await
}

#[tokio::test(flavor = "multi_thread")]
async fn products_diff_on_a_folder() -> Result<()> {
    products_extract(false, false).await
}

#[tokio::test(flavor = "multi_thread")]
async fn products_diff_on_s3() -> Result<()> {
    products_extract(false, true).await
}
