//! Replacing one business day of the batch tables.
//!
//! Commit contract of [`ClickHouse::replace_day`]: for each table the day's rows are built
//! in a private load table (`CREATE TABLE <t>__load_<day>_<id> AS <t>`), counted there, and
//! swapped in with one `ALTER TABLE <t> REPLACE PARTITION ID '<yyyymmdd>' FROM <load>`,
//! which ClickHouse applies atomically: a reader of `<t>` sees the whole old day or the
//! whole new day, never a part (an empty load table empties the day). Durable when it
//! returns; idempotent (running it again with the same rows leaves the same table). The
//! tables are swapped one after another, so a reader joining two tables during a reload can
//! see one new and one old day; each table on its own is always whole.

use chrono::NaiveDate;
use deltalake::arrow::record_batch::RecordBatch;

use crate::config::check_identifier;
use crate::native::{Encoder, TableColumn};
use crate::{ClickHouse, Error, Result};

/// The rows of one day for one table.
#[derive(Debug, Clone)]
pub struct TableRows {
    /// The target table (it has an `event_date Date` partition key).
    pub table: String,
    pub batches: Vec<RecordBatch>,
}

/// Bytes sent per chunk of an insert.
const CHUNK_BYTES: usize = 4 << 20;

/// Rows per `Native` block (the server squashes blocks into parts itself).
const BLOCK_ROWS: usize = 8192;

/// Load tables older than this are left-overs of a crashed run and are dropped.
const STALE_LOAD_HOURS: u32 = 24;

/// The partition id of a day in a table partitioned by a `Date` column: `YYYYMMDD`.
/// Formatted from a typed date, never from user text.
pub fn partition_id(day: NaiveDate) -> String {
    day.format("%Y%m%d").to_string()
}

/// A `toDate('YYYY-MM-DD')` literal. Formatted from a typed date, never from user text, so
/// it cannot carry anything but digits and dashes.
pub fn date_literal(day: NaiveDate) -> String {
    format!("toDate('{}')", day.format("%Y-%m-%d"))
}

impl ClickHouse {
    /// Replaces the day `day` of every table in `tables` with the given rows (see the
    /// module's commit contract). Returns the rows now in each table's day.
    pub async fn replace_day(
        &self,
        day: NaiveDate,
        tables: &[TableRows],
    ) -> Result<Vec<(String, u64)>> {
        self.drop_stale_loads().await;
        let run = uuid::Uuid::new_v4().simple().to_string();
        let mut loads: Vec<(String, String)> = Vec::new();
        let result = self
            .build_and_swap(day, tables, &run[..8], &mut loads)
            .await;
        for (_, load) in &loads {
            if let Err(e) = self
                .execute("drop load table", &format!("DROP TABLE IF EXISTS {load}"))
                .await
            {
                tracing::warn!(table = %load, error = %e, "cannot drop a load table");
            }
        }
        result
    }

    async fn build_and_swap(
        &self,
        day: NaiveDate,
        tables: &[TableRows],
        run: &str,
        loads: &mut Vec<(String, String)>,
    ) -> Result<Vec<(String, u64)>> {
        let mut counts = Vec::new();
        for t in tables {
            check_identifier("table", &t.table)?;
            let load = format!("{}__load_{}_{run}", t.table, partition_id(day));
            self.execute(
                &format!("create {load}"),
                &format!("CREATE TABLE {load} AS {}", t.table),
            )
            .await?;
            loads.push((t.table.clone(), load.clone()));
            let sent = self.insert_arrow(&t.table, &load, &t.batches).await?;
            // Everything sent arrived, and nothing belongs to another day (REPLACE PARTITION
            // would silently leave such rows behind).
            let rows = self
                .rows(
                    &format!("count {load}"),
                    &format!(
                        "SELECT count(), countIf(event_date != {}) FROM {load}",
                        date_literal(day)
                    ),
                )
                .await?;
            let (n, other_days) = match rows.first().map(|r| r.as_slice()) {
                Some([n, o]) => (n.parse::<u64>().ok(), o.parse::<u64>().ok()),
                _ => (None, None),
            };
            if n != Some(sent) || other_days != Some(0) {
                return Err(Error::Answer {
                    operation: format!("load {}", t.table),
                    message: format!(
                        "sent {sent} rows of {day}, the load table holds {n:?} ({other_days:?} of other days)"
                    ),
                });
            }
            counts.push((t.table.clone(), sent));
        }
        let id = partition_id(day);
        for (table, load) in loads.iter() {
            self.execute(
                &format!("replace {table} day {day}"),
                &format!("ALTER TABLE {table} REPLACE PARTITION ID '{id}' FROM {load}"),
            )
            .await?;
        }
        Ok(counts)
    }

    /// Inserts `batches` into `into` as `Native` blocks, checked against the columns of
    /// `table`. Returns the rows sent.
    pub(crate) async fn insert_arrow(
        &self,
        table: &str,
        into: &str,
        batches: &[RecordBatch],
    ) -> Result<u64> {
        let columns: Vec<TableColumn> = self
            .columns(table)
            .await?
            .into_iter()
            .map(|(name, ty)| {
                TableColumn::parse(&name, &ty).ok_or_else(|| Error::Schema {
                    table: table.to_string(),
                    column: name,
                    message: format!("type {ty} is not one lakeshop writes"),
                })
            })
            .collect::<Result<_>>()?;
        let names = columns
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let encoder = Encoder::new(table, &columns);
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        if rows == 0 {
            return Ok(0);
        }
        let operation = format!("insert into {into}");
        let mut insert = self
            .client
            .insert_formatted_with(format!("INSERT INTO {into} ({names}) FORMAT Native"));
        let mut buf = Vec::with_capacity(CHUNK_BYTES + (1 << 20));
        for batch in batches {
            // A block per slice, so one chunk stays near CHUNK_BYTES.
            let mut offset = 0;
            while offset < batch.num_rows() {
                let len = (batch.num_rows() - offset).min(BLOCK_ROWS);
                encoder.encode(&batch.slice(offset, len), &mut buf)?;
                offset += len;
                if buf.len() >= CHUNK_BYTES {
                    let chunk = bytes::Bytes::from(std::mem::take(&mut buf));
                    insert.send(chunk).await.map_err(Error::query(&operation))?;
                    buf.reserve(CHUNK_BYTES + (1 << 20));
                }
            }
        }
        if !buf.is_empty() {
            insert
                .send(bytes::Bytes::from(buf))
                .await
                .map_err(Error::query(&operation))?;
        }
        insert.end().await.map_err(Error::query(&operation))?;
        Ok(rows as u64)
    }

    /// Drops load tables a crashed run left behind (best effort: a failure is logged).
    async fn drop_stale_loads(&self) {
        let sql = format!(
            "SELECT name FROM system.tables WHERE database = currentDatabase() \
             AND match(name, '__load_[0-9]{{8}}_[0-9a-f]{{8}}$') \
             AND metadata_modification_time < now() - {}",
            STALE_LOAD_HOURS * 3600
        );
        let names = match self.rows("list load tables", &sql).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list left-over load tables");
                return;
            }
        };
        for name in names.into_iter().filter_map(|r| r.into_iter().next()) {
            if check_identifier("table", &name).is_err() {
                continue;
            }
            match self
                .execute("drop load table", &format!("DROP TABLE IF EXISTS {name}"))
                .await
            {
                Ok(()) => tracing::info!(table = %name, "dropped a left-over load table"),
                Err(e) => {
                    tracing::warn!(table = %name, error = %e, "cannot drop a left-over load table")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_and_literals_come_from_typed_dates() {
        let d = NaiveDate::from_ymd_opt(2026, 1, 9).expect("date");
        assert_eq!(partition_id(d), "20260109");
        assert_eq!(date_literal(d), "toDate('2026-01-09')");
    }
}
