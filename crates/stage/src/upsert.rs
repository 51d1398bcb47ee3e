//! Dimension upserts: one row per id, the latest `updated_at` wins, soft deletes kept.
//!
//! A run's rows and its source watermark land in one Delta commit (a `txn` action whose
//! version is the watermark), so a crash between the two cannot happen and a rerun resumes
//! from what is committed.

use deltalake::arrow::record_batch::RecordBatch;
use deltalake::datafusion::prelude::{col, lit, SessionContext};
use deltalake::datafusion::scalar::ScalarValue;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::Transaction;
use deltalake::operations::merge::{InsertBuilder, UpdateBuilder};
use deltalake::protocol::SaveMode;

use crate::{Error, Result, Stage, Table};

/// The names of `schema`'s columns, in order: what a MERGE sets.
pub fn column_names(schema: &deltalake::arrow::datatypes::Schema) -> Vec<String> {
    schema.fields().iter().map(|f| f.name().clone()).collect()
}

/// A MERGE insert clause setting each of `columns` from the `source` alias.
pub fn insert_all(i: InsertBuilder, columns: &[String]) -> InsertBuilder {
    columns
        .iter()
        .fold(i, |i, c| i.set(c.as_str(), col(format!("source.{c}"))))
}

/// A MERGE update clause setting each of `columns` from the `source` alias.
pub fn update_all(u: UpdateBuilder, columns: &[String]) -> UpdateBuilder {
    columns
        .iter()
        .fold(u, |u, c| u.update(c.as_str(), col(format!("source.{c}"))))
}

/// When a matched row is replaced by the incoming one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateWhen {
    /// Incoming `updated_at` is strictly newer: re-reading an unchanged row is a no-op.
    Newer,
    /// Incoming `updated_at` is newer or equal: for rows known to have changed.
    NewerOrEqual,
}

/// The source position a commit moves to, kept as a Delta `txn` (app id + version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watermark {
    pub app_id: String,
    /// The version this writer read before (`None`: never committed); checked before the
    /// commit so two writers cannot both move it.
    pub expected: Option<i64>,
    /// The new version (e.g. microseconds of the last `updated_at`, or a source version).
    pub version: i64,
}

/// One upsert of dimension rows.
#[derive(Debug, Clone)]
pub struct Upsert {
    pub update_when: UpdateWhen,
    /// Full extract: rows of the table missing from `batches` are marked deleted
    /// (`deleted_at` set to `deleted_at`, microseconds UTC) unless they already are.
    pub mark_missing_deleted: Option<i64>,
    pub watermark: Option<Watermark>,
    /// The caller knows none of these ids is in the table (it was empty when the caller's
    /// consistent read began): rows are appended without a join.
    pub known_new: bool,
}

/// What an upsert changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct UpsertStats {
    /// Incoming rows.
    pub source_rows: u64,
    pub inserted: u64,
    pub updated: u64,
    /// Rows marked deleted because the full source no longer has them.
    pub marked_deleted: u64,
    /// Table version after the commit (`None`: nothing to commit).
    pub version: Option<u64>,
}

impl Stage {
    /// Reads the version of a `txn` app id in `table` (`None`: never committed).
    pub async fn watermark(&self, table: Table, app_id: &str) -> Result<Option<i64>> {
        let handle = self.open(table).await?;
        let snapshot = handle
            .snapshot()
            .map_err(Self::delta_err("snapshot", table))?;
        snapshot
            .transaction_version(handle.log_store().as_ref(), app_id)
            .await
            .map_err(Self::delta_err("read watermark", table))
    }

    /// Upserts dimension rows by the table's key (see [`Upsert`]). An empty table takes a
    /// plain append (the first load of a large dimension needs no join).
    pub async fn upsert(
        &self,
        table: Table,
        batches: Vec<RecordBatch>,
        upsert: &Upsert,
    ) -> Result<UpsertStats> {
        let key = table.key().ok_or_else(|| Error::Location {
            uri: self.table_uri(table),
            message: "not a dimension table".into(),
        })?;
        let source_rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        let mut handle = self.open(table).await?;
        let snapshot = handle
            .snapshot()
            .map_err(Self::delta_err("snapshot", table))?;
        if let Some(w) = &upsert.watermark {
            let found = snapshot
                .transaction_version(handle.log_store().as_ref(), &w.app_id)
                .await
                .map_err(Self::delta_err("read watermark", table))?;
            if found != w.expected {
                return Err(Error::OffsetsMoved {
                    table: table.name().to_string(),
                    app_id: w.app_id.clone(),
                    expected: w.expected,
                    found,
                });
            }
        }
        let empty = snapshot.log_data().num_files() == 0;
        let mut props = CommitProperties::default().with_max_retries(20);
        if let Some(w) = &upsert.watermark {
            props = props.with_application_transactions(vec![Transaction {
                app_id: w.app_id.clone(),
                version: w.version,
                last_updated: Some(chrono::Utc::now().timestamp_millis()),
            }]);
        }
        if source_rows == 0 && upsert.mark_missing_deleted.is_none() {
            // Nothing read: move only the watermark, if it moves.
            if upsert
                .watermark
                .as_ref()
                .is_some_and(|w| w.expected != Some(w.version))
            {
                // A commit of the `txn` action alone (a write needs rows).
                let version = self
                    .commit_append(table, &mut handle, Vec::new(), props, "upsert")
                    .await?;
                return Ok(UpsertStats {
                    version: Some(version),
                    ..Default::default()
                });
            }
            return Ok(UpsertStats::default());
        }
        if empty || upsert.known_new {
            let new = handle
                .write(batches)
                .with_save_mode(SaveMode::Append)
                .with_writer_properties(table.writer_properties())
                .with_commit_properties(props)
                .await
                .map_err(Self::delta_err("upsert", table))?;
            return Ok(UpsertStats {
                source_rows,
                inserted: source_rows,
                version: new.version(),
                ..Default::default()
            });
        }

        let columns = column_names(&table.schema());
        let ctx = SessionContext::new();
        let source = ctx.read_batches(batches).map_err(|e| Error::Delta {
            operation: "upsert source",
            table: table.name().to_string(),
            source: Box::new(e.into()),
        })?;
        // Read once: the merge and the count of missing rows both scan it.
        let source = source.cache().await.map_err(|e| Error::Delta {
            operation: "upsert source",
            table: table.name().to_string(),
            source: Box::new(e.into()),
        })?;
        let newer = match upsert.update_when {
            UpdateWhen::Newer => col("source.updated_at").gt(col("target.updated_at")),
            UpdateWhen::NewerOrEqual => col("source.updated_at").gt_eq(col("target.updated_at")),
        };
        let err = Self::delta_err("upsert", table);
        let ctx_err = |e: deltalake::datafusion::error::DataFusionError| Error::Delta {
            operation: "upsert source",
            table: table.name().to_string(),
            source: Box::new(e.into()),
        };
        // Rows a full extract will mark deleted: live in the table, absent from the source.
        let mut missing = 0u64;
        if upsert.mark_missing_deleted.is_some() {
            handle
                .update_datafusion_session(&ctx.state())
                .map_err(Self::delta_err("upsert", table))?;
            let provider = handle.table_provider().await.map_err(ctx_err)?;
            ctx.register_table("target", provider).map_err(ctx_err)?;
            ctx.register_table("source", source.clone().into_view())
                .map_err(ctx_err)?;
            let counted = ctx
                .sql(&format!(
                    "SELECT count(*) FROM target t LEFT ANTI JOIN source s ON t.{key} = s.{key} \
                     WHERE t.deleted_at IS NULL"
                ))
                .await
                .map_err(ctx_err)?
                .collect()
                .await
                .map_err(ctx_err)?;
            missing = counted
                .first()
                .and_then(|b| {
                    b.column(0)
                        .as_any()
                        .downcast_ref::<deltalake::arrow::array::Int64Array>()
                        .map(|a| a.value(0) as u64)
                })
                .unwrap_or(0);
        }
        let on = col(format!("target.{key}")).eq(col(format!("source.{key}")));
        let mut merge = handle
            .clone()
            .merge(source, on)
            .with_source_alias("source")
            .with_target_alias("target")
            .with_writer_properties(table.writer_properties())
            .with_commit_properties(props)
            .when_matched_update(|u| update_all(u.predicate(newer), &columns))
            .map_err(Self::delta_err("upsert", table))?
            .when_not_matched_insert(|i| insert_all(i, &columns))
            .map_err(Self::delta_err("upsert", table))?;
        if let Some(at) = upsert.mark_missing_deleted {
            let at = lit(ScalarValue::TimestampMicrosecond(
                Some(at),
                Some("UTC".into()),
            ));
            merge = merge
                .when_not_matched_by_source_update(|u| {
                    u.predicate(col("target.deleted_at").is_null())
                        .update("deleted_at", at)
                })
                .map_err(Self::delta_err("upsert", table))?;
        }
        let (new, metrics) = merge.await.map_err(err)?;
        handle = new;
        // Merge counts the rows marked deleted among its updates.
        let updated = (metrics.num_target_rows_updated as u64).saturating_sub(missing);
        Ok(UpsertStats {
            source_rows,
            inserted: metrics.num_target_rows_inserted as u64,
            updated,
            marked_deleted: missing,
            version: handle.version(),
        })
    }
}
