//! Source Delta table → `stage.products`: only versions newer than the last one extracted.
//!
//! The last extracted source version is a Delta `txn` in `stage.products` (app id
//! `delta:<source uri>`), committed with the rows. When the source has Change Data Feed on,
//! the changes between the two versions are read from it (the latest post-image per
//! product); otherwise the new version is compared with the stage (rows that differ in any
//! stage column), which also works after the source was vacuumed or rewritten. Either way
//! the rows upserted are the rows that changed. Columns the source gained later (schema
//! evolution) are ignored and reported; a stage column missing from the source is an error.

use deltalake::arrow::datatypes::SchemaRef;
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::datafusion::prelude::{cast, col, SessionContext};
use deltalake::DeltaTable;
use lakeshop_stage::{Stage, Table, UpdateWhen, Upsert, Watermark};
use std::collections::HashMap;
use std::sync::Arc;

use crate::{Error, Result};

/// The source product table.
#[derive(Debug, Clone)]
pub struct ProductsSourceConfig {
    pub uri: String,
    pub storage_options: HashMap<String, String>,
}

/// How the changed rows were found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeMethod {
    /// Nothing new since the last extract.
    UpToDate,
    /// First extract: every row.
    Full,
    /// Change Data Feed between the versions.
    ChangeDataFeed,
    /// The new version compared with the stage.
    Diff,
}

/// What an extract did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProductsExtractStats {
    pub method: ChangeMethod,
    /// Source version extracted before this run.
    pub from_version: Option<u64>,
    /// Source version extracted now.
    pub to_version: Option<u64>,
    /// Rows found changed.
    pub changed: u64,
    pub inserted: u64,
    pub updated: u64,
    /// Source columns the stage does not have.
    pub ignored_columns: Vec<String>,
}

/// The `txn` app id of a source table.
pub fn source_app_id(uri: &str) -> String {
    format!("delta:{}", uri.trim_end_matches('/'))
}

fn src_err(uri: &str) -> impl Fn(deltalake::DeltaTableError) -> Error + '_ {
    move |source| Error::SourceTable {
        uri: uri.to_string(),
        source: Box::new(source),
    }
}

fn df_err(uri: &str) -> impl Fn(deltalake::datafusion::error::DataFusionError) -> Error + '_ {
    move |e| Error::SourceTable {
        uri: uri.to_string(),
        source: Box::new(e.into()),
    }
}

/// Registers `table` in `ctx` under `name`.
async fn register(ctx: &SessionContext, name: &str, table: &DeltaTable, uri: &str) -> Result<()> {
    table
        .update_datafusion_session(&ctx.state())
        .map_err(src_err(uri))?;
    let provider = table.table_provider().await.map_err(df_err(uri))?;
    ctx.register_table(name, provider).map_err(df_err(uri))?;
    Ok(())
}

/// The stage columns of the table registered as `name`, each cast to its stage type.
async fn stage_columns(
    ctx: &SessionContext,
    name: &str,
    schema: &SchemaRef,
    uri: &str,
) -> Result<deltalake::datafusion::prelude::DataFrame> {
    ctx.table(name)
        .await
        .map_err(df_err(uri))?
        .select(projection(schema))
        .map_err(df_err(uri))
}

/// Expressions selecting the stage columns, each cast to its stage type.
fn projection(schema: &SchemaRef) -> Vec<deltalake::datafusion::prelude::Expr> {
    schema
        .fields()
        .iter()
        .map(|f| cast(col(format!("\"{}\"", f.name())), f.data_type().clone()).alias(f.name()))
        .collect()
}

/// Runs one products extract.
pub async fn extract(stage: &Stage, source: &ProductsSourceConfig) -> Result<ProductsExtractStats> {
    let uri = source.uri.as_str();
    let url = deltalake::table::builder::ensure_table_uri(uri).map_err(src_err(uri))?;
    let src = DeltaTable::try_from_url_with_storage_options(url, source.storage_options.clone())
        .await
        .map_err(src_err(uri))?;
    let to_version = src.version();
    let app_id = source_app_id(uri);
    let last = stage.watermark(Table::Products, &app_id).await?;
    let from_version = last.and_then(|v| u64::try_from(v).ok());
    let mut stats = ProductsExtractStats {
        method: ChangeMethod::UpToDate,
        from_version,
        to_version,
        changed: 0,
        inserted: 0,
        updated: 0,
        ignored_columns: Vec::new(),
    };
    let Some(to) = to_version else {
        return Err(Error::SourceTable {
            uri: uri.to_string(),
            source: Box::new(deltalake::DeltaTableError::NotATable(uri.to_string())),
        });
    };
    if from_version == Some(to) {
        tracing::info!(version = to, "products up to date");
        return Ok(stats);
    }

    let stage_schema = Table::Products.schema();
    let snapshot = src.snapshot().map_err(src_err(uri))?;
    let source_fields: Vec<String> = snapshot
        .schema()
        .fields()
        .map(|f| f.name().to_string())
        .collect();
    for f in stage_schema.fields() {
        if !source_fields.iter().any(|s| s == f.name()) {
            return Err(Error::Internal(format!(
                "source product table {uri} has no column {} (stage.products needs it)",
                f.name()
            )));
        }
    }
    stats.ignored_columns = source_fields
        .iter()
        .filter(|s| stage_schema.field_with_name(s).is_err())
        .cloned()
        .collect();
    if !stats.ignored_columns.is_empty() {
        tracing::info!(columns = ?stats.ignored_columns, "source product columns not in the stage, ignored");
    }
    let cdf = snapshot.table_config().enable_change_data_feed == Some(true);

    let ctx = SessionContext::new();
    let changed: Vec<RecordBatch> = match from_version {
        None => {
            stats.method = ChangeMethod::Full;
            register(&ctx, "source", &src, uri).await?;
            stage_columns(&ctx, "source", &stage_schema, uri)
                .await?
                .collect()
                .await
                .map_err(df_err(uri))?
        }
        Some(from) => {
            let via_cdf = if cdf {
                match changes_from_cdf(&ctx, &src, from + 1, to, &stage_schema).await {
                    Ok(rows) => Some(rows),
                    Err(e) => {
                        tracing::warn!(error = %e, "change data feed unreadable for these versions, comparing with the stage instead");
                        None
                    }
                }
            } else {
                None
            };
            let ctx = SessionContext::new();
            let candidates = match via_cdf {
                // Versions that changed no row (OPTIMIZE, a schema or property change)
                // have no change records: nothing to compare.
                Some(rows) if rows.iter().all(|b| b.num_rows() == 0) => {
                    stats.method = ChangeMethod::ChangeDataFeed;
                    None
                }
                Some(rows) => {
                    stats.method = ChangeMethod::ChangeDataFeed;
                    Some(ctx.read_batches(rows).map_err(df_err(uri))?)
                }
                None => {
                    stats.method = ChangeMethod::Diff;
                    register(&ctx, "source", &src, uri).await?;
                    Some(stage_columns(&ctx, "source", &stage_schema, uri).await?)
                }
            };
            match candidates {
                None => Vec::new(),
                Some(candidates) => {
                    // Only rows that differ from the stage in some column: a rewrite of
                    // unchanged rows (an overwrite, or a change data feed of delete +
                    // insert) moves nothing.
                    let staged = stage.open(Table::Products).await?;
                    register(&ctx, "staged", &staged, uri).await?;
                    let old = stage_columns(&ctx, "staged", &stage_schema, uri).await?;
                    candidates
                        .except(old)
                        .map_err(df_err(uri))?
                        .collect()
                        .await
                        .map_err(df_err(uri))?
                }
            }
        }
    };
    stats.changed = changed.iter().map(|b| b.num_rows() as u64).sum();
    let staged_info = stage.info(Table::Products, &[]).await?;
    let upsert = Upsert {
        update_when: UpdateWhen::NewerOrEqual,
        mark_missing_deleted: None,
        watermark: Some(Watermark {
            app_id,
            expected: last,
            version: i64::try_from(to).unwrap_or(i64::MAX),
        }),
        known_new: staged_info.files == 0,
    };
    let done = stage.upsert(Table::Products, changed, &upsert).await?;
    stats.inserted = done.inserted;
    stats.updated = done.updated;
    tracing::info!(
        method = ?stats.method,
        from = ?stats.from_version,
        to,
        changed = stats.changed,
        inserted = stats.inserted,
        updated = stats.updated,
        "products extracted"
    );
    Ok(stats)
}

/// The latest post-image of every product changed in versions `from..=to`.
async fn changes_from_cdf(
    ctx: &SessionContext,
    src: &DeltaTable,
    from: u64,
    to: u64,
    stage_schema: &SchemaRef,
) -> std::result::Result<Vec<RecordBatch>, deltalake::DeltaTableError> {
    let plan = src
        .clone()
        .scan_cdf()
        .with_starting_version(from)
        .with_ending_version(to)
        .build(&ctx.state(), None)
        .await?;
    let batches = deltalake::datafusion::physical_plan::collect(plan, ctx.task_ctx()).await?;
    let schema = match batches.first() {
        Some(b) => b.schema(),
        None => return Ok(Vec::new()),
    };
    let mem = deltalake::datafusion::datasource::MemTable::try_new(schema, vec![batches])?;
    ctx.register_table("changes", Arc::new(mem))?;
    let cols = stage_schema
        .fields()
        .iter()
        .map(|f| format!("\"{}\"", f.name()))
        .collect::<Vec<_>>()
        .join(", ");
    // Latest change per product wins; a delete as the latest change leaves the stage row.
    let sql = format!(
        "SELECT {cols} FROM (SELECT *, row_number() OVER (PARTITION BY product_id ORDER BY _commit_version DESC, \
         CASE _change_type WHEN 'update_postimage' THEN 0 WHEN 'insert' THEN 0 ELSE 1 END) AS lakeshop_rank \
         FROM changes WHERE _change_type <> 'update_preimage') WHERE lakeshop_rank = 1 AND _change_type <> 'delete'"
    );
    let df = ctx.sql(&sql).await?.select(projection(stage_schema))?;
    Ok(df.collect().await?)
}
