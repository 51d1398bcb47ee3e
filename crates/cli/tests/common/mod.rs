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
