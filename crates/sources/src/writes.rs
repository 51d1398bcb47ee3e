//! Writes into the sources themselves (what `lakeshop serve` takes): sellers and clients
//! upserted into PostgreSQL, products merged into the source Delta table. The extractors then
//! pick the changes up like any other: PostgreSQL's trigger moves `updated_at` on a real
//! change, and each product write is a new source table version with `updated_at` set now.
//!
//! Every value is a bound parameter or an Arrow value; table names come from the pipeline
//! file and are quoted as identifiers.

use chrono::{DateTime, Utc};
use deltalake::arrow::array::{
    ArrayRef, Decimal128Builder, Int32Array, StringArray, TimestampMicrosecondArray,
};
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::datafusion::prelude::{col, SessionContext};
use deltalake::DeltaTable;
use lakeshop_model::{arrow_schema, money, ClientInput, ProductInput, SellerInput};
use std::collections::HashMap;
use std::sync::Arc;

use crate::{Error, Result};

/// What one write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct WriteStats {
    /// Rows that did not exist.
    pub inserted: u64,
    /// Rows that existed (changed or not: PostgreSQL's trigger moves `updated_at` only on a
    /// real change).
    pub updated: u64,
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn pg_err(table: &str) -> impl Fn(tokio_postgres::Error) -> Error + '_ {
    move |source| Error::Postgres {
        table: table.to_string(),
        source,
    }
}

/// Counts `(xmax = 0)` flags of `RETURNING`: true for an inserted row.
fn count(rows: &[bool]) -> WriteStats {
    let inserted = rows.iter().filter(|i| **i).count() as u64;
    WriteStats {
        inserted,
        updated: rows.len() as u64 - inserted,
    }
}

/// Runs `sql` (an upsert `RETURNING (xmax = 0)`) once per row in one transaction.
async fn upsert_each<T>(
    client: &mut tokio_postgres::Client,
    table: &str,
    sql: &str,
    rows: &[T],
    params: impl Fn(&T) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)>,
) -> Result<WriteStats> {
    let tx = client.transaction().await.map_err(pg_err(table))?;
    let stmt = tx.prepare(sql).await.map_err(pg_err(table))?;
    let mut flags = Vec::with_capacity(rows.len());
    for r in rows {
        let row = tx
            .query_one(&stmt, &params(r))
            .await
            .map_err(pg_err(table))?;
        flags.push(row.get::<_, bool>(0));
    }
    tx.commit().await.map_err(pg_err(table))?;
    Ok(count(&flags))
}

/// Upserts sellers by id in one transaction (a soft-deleted seller written again is live).
pub async fn upsert_sellers(
    client: &mut tokio_postgres::Client,
    table: &str,
    rows: &[SellerInput],
) -> Result<WriteStats> {
    let sql = format!(
        "INSERT INTO {t} AS cur (seller_id, name, region, created_at) \
         VALUES ($1, $2, $3, coalesce($4, now())) \
         ON CONFLICT (seller_id) DO UPDATE SET name = EXCLUDED.name, region = EXCLUDED.region, \
           created_at = coalesce($4, cur.created_at), deleted_at = NULL \
         RETURNING (xmax = 0)",
        t = quote_ident(table)
    );
    upsert_each(client, table, &sql, rows, |r| {
        vec![&r.seller_id, &r.name, &r.region, &r.created_at]
    })
    .await
}

/// Upserts clients by id in one transaction (a soft-deleted client written again is live).
pub async fn upsert_clients(
    client: &mut tokio_postgres::Client,
    table: &str,
    rows: &[ClientInput],
) -> Result<WriteStats> {
    let sql = format!(
        "INSERT INTO {t} AS cur (client_id, first_name, last_name, email, address, registration_date) \
         VALUES ($1, $2, $3, $4, $5, coalesce($6, now())) \
         ON CONFLICT (client_id) DO UPDATE SET first_name = EXCLUDED.first_name, \
           last_name = EXCLUDED.last_name, email = EXCLUDED.email, address = EXCLUDED.address, \
           registration_date = coalesce($6, cur.registration_date), deleted_at = NULL \
         RETURNING (xmax = 0)",
        t = quote_ident(table)
    );
    upsert_each(client, table, &sql, rows, |r| {
        vec![
            &r.client_id,
            &r.first_name,
            &r.last_name,
            &r.email,
            &r.address,
            &r.registration_date,
        ]
    })
    .await
}

/// The products as a batch of the source table's schema, `updated_at` = `now`.
fn product_batch(rows: &[ProductInput], now: DateTime<Utc>) -> Result<RecordBatch> {
    let mut price = Decimal128Builder::with_capacity(rows.len());
    for r in rows {
        price.append_value(money::to_decimal128(r.price));
    }
    let price = price
        .finish()
        .with_precision_and_scale(money::MONEY_PRECISION, money::MONEY_SCALE)?;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.product_id.to_string()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.name.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.category.as_str()),
        )),
        Arc::new(price),
        Arc::new(Int32Array::from_iter_values(
            rows.iter().map(|r| r.available_stock),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.seller_id.to_string()),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(
                rows.iter().map(|_| now.timestamp_micros()),
            )
            .with_timezone("UTC"),
        ),
    ];
    Ok(RecordBatch::try_new(arrow_schema::product(), columns)?)
}

/// Merges products into the source Delta table by `product_id` as one new version (created
/// when the table does not exist yet); every written row gets `updated_at` = now. Returns
/// what it did and the new version.
pub async fn upsert_products(
    uri: &str,
    storage_options: &HashMap<String, String>,
    rows: &[ProductInput],
) -> Result<(WriteStats, Option<u64>)> {
    let err = |source| Error::SourceTable {
        uri: uri.to_string(),
        source: Box::new(source),
    };
    let batch = product_batch(rows, Utc::now())?;
    let url = deltalake::table::builder::ensure_table_uri(uri).map_err(err)?;
    let table = DeltaTable::try_from_url_with_storage_options(url, storage_options.clone())
        .await
        .map_err(err)?;
    if table.version().is_none() {
        let table = table.write(vec![batch]).await.map_err(err)?;
        return Ok((
            WriteStats {
                inserted: rows.len() as u64,
                updated: 0,
            },
            table.version(),
        ));
    }
    let ctx = SessionContext::new();
    let source = ctx
        .read_batch(batch)
        .map_err(|e| err(deltalake::DeltaTableError::from(e)))?;
    let columns = lakeshop_stage::column_names(&arrow_schema::product());
    let (table, metrics) = table
        .merge(
            source,
            col("target.product_id").eq(col("source.product_id")),
        )
        .with_source_alias("source")
        .with_target_alias("target")
        .when_matched_update(|u| lakeshop_stage::update_all(u, &columns))
        .map_err(err)?
        .when_not_matched_insert(|i| lakeshop_stage::insert_all(i, &columns))
        .map_err(err)?
        .await
        .map_err(err)?;
    Ok((
        WriteStats {
            inserted: metrics.num_target_rows_inserted as u64,
            updated: metrics.num_target_rows_updated as u64,
        },
        table.version(),
    ))
}
