//! Helpers shared by the integration tests: SQL over a stage table.

use anyhow::Result;
use deltalake::arrow::array::AsArray;
use deltalake::arrow::datatypes::{DataType, Int64Type};
use std::collections::BTreeMap;

/// Runs `sql` over one stage table (registered under its own name).
pub async fn query(
    stage_uri: &str,
    table: &str,
    sql: &str,
) -> Result<Vec<deltalake::arrow::record_batch::RecordBatch>> {
    let uri = format!("{}/{table}", stage_uri.trim_end_matches('/'));
    let url = deltalake::table::builder::ensure_table_uri(&uri)?;
    let t = deltalake::DeltaTable::try_from_url_with_storage_options(
        url,
        lakeshop_testkit::s3_options(),
    )
    .await?;
    let ctx = deltalake::datafusion::prelude::SessionContext::new();
    t.update_datafusion_session(&ctx.state())?;
    ctx.register_table(table, t.table_provider().await?)?;
    Ok(ctx.sql(sql).await?.collect().await?)
}

/// (key, count) rows of a two-column query.
pub async fn counts(stage_uri: &str, table: &str, sql: &str) -> Result<BTreeMap<String, i64>> {
    let mut out = BTreeMap::new();
    for b in query(stage_uri, table, sql).await? {
        let k = deltalake::arrow::compute::cast(b.column(0), &DataType::Utf8)?;
        let v = deltalake::arrow::compute::cast(b.column(1), &DataType::Int64)?;
        let (k, v) = (k.as_string::<i32>(), v.as_primitive::<Int64Type>());
        for i in 0..b.num_rows() {
            out.insert(k.value(i).to_string(), v.value(i));
        }
    }
    Ok(out)
}

/// Runs the `lakeshop` binary with a pipeline file; its stdout, failing with its stderr
/// when it exits non-zero.
#[allow(dead_code)]
pub fn lakeshop_stdout(config: &std::path::Path, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lakeshop"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "lakeshop {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// The last stdout line of a `lakeshop` run as JSON (the command's summary).
#[allow(dead_code)]
pub fn lakeshop(config: &std::path::Path, args: &[&str]) -> Result<serde_json::Value> {
    Ok(lakeshop_stdout(config, args)?
        .lines()
        .last()
        .map(serde_json::from_str)
        .transpose()?
        .unwrap_or(serde_json::Value::Null))
}

/// Every JSON stdout line of a `lakeshop` run (commands that print one line per source).
#[allow(dead_code)]
pub fn lakeshop_lines(config: &std::path::Path, args: &[&str]) -> Result<Vec<serde_json::Value>> {
    lakeshop_stdout(config, args)?
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}
