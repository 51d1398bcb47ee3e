//! Stage maintenance: compaction, checkpoints, vacuum, and what `stage show` prints.
//!
//! The purchases extractor commits about once a second, so a table gathers many small
//! files and a long log. `optimize` rewrites small files into large ones and writes a
//! checkpoint; both are ordinary Delta commits, retried on conflict, so they run safely
//! beside a live extractor (compaction only removes files it rewrote, appends never
//! conflict with it). `vacuum` deletes files no retained version references.

use deltalake::kernel::transaction::CommitProperties;
use std::time::Duration;

use crate::{Error, Result, Stage, Table};

/// What `optimize` did to one table.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct OptimizeReport {
    pub table: String,
    pub files_added: u64,
    pub files_removed: u64,
    pub partitions_optimized: u64,
    /// Version a checkpoint was written at.
    pub checkpoint_version: Option<u64>,
}

/// What `vacuum` did to one table.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct VacuumReport {
    pub table: String,
    pub files_deleted: u64,
    pub dry_run: bool,
}

/// One line of `stage show`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct TableInfo {
    pub table: String,
    pub uri: String,
    pub version: Option<u64>,
    pub files: u64,
    pub rows: u64,
    pub bytes: u64,
    /// Committed positions by `txn` app id (Kafka offsets, dimension watermarks) among the
    /// app ids asked for.
    pub positions: std::collections::BTreeMap<String, i64>,
}

/// Retries of a maintenance commit that lost a race with a writer.
const MAINTENANCE_RETRIES: usize = 20;

impl Stage {
    /// Compacts small files of `table` (every partition) and writes a checkpoint.
    pub async fn optimize(&self, table: Table) -> Result<OptimizeReport> {
        let mut attempt = 0;
        let (handle, metrics) = loop {
            let handle = self.open(table).await?;
            match handle
                .optimize()
                .with_writer_properties(table.writer_properties())
                .with_commit_properties(
                    CommitProperties::default().with_max_retries(MAINTENANCE_RETRIES),
                )
                .await
            {
                Ok(done) => break done,
                Err(e) => {
                    let e = Self::delta_err("optimize", table)(e);
                    attempt += 1;
                    if !e.is_retryable() || attempt >= MAINTENANCE_RETRIES {
                        return Err(e);
                    }
                    tracing::info!(table = table.name(), attempt, error = %e, "optimize lost a commit race, retrying");
                    tokio::time::sleep(Duration::from_millis(200 * attempt as u64)).await;
                }
            }
        };
        let mut report = OptimizeReport {
            table: table.name().to_string(),
            files_added: metrics.num_files_added,
            files_removed: metrics.num_files_removed,
            partitions_optimized: metrics.partitions_optimized,
            checkpoint_version: None,
        };
        // Checkpoint the latest version, whoever wrote it: readers then skip the log.
        let mut handle = handle;
        handle
            .update_state()
            .await
            .map_err(Self::delta_err("refresh", table))?;
        if let Some(v) = handle.version() {
            deltalake::checkpoints::create_checkpoint(&handle, None)
                .await
                .map_err(Self::delta_err("checkpoint", table))?;
            report.checkpoint_version = Some(v);
        }
        Ok(report)
    }

    /// Deletes files no version within `retention` references (Delta's own rule keeps
    /// every file a reader of a retained version may need). A retention shorter than the
    /// table's `delta.deletedFileRetentionDuration` (7 days by default) is refused unless
    /// `force`.
    pub async fn vacuum(
        &self,
        table: Table,
        retention: Duration,
        dry_run: bool,
        force: bool,
    ) -> Result<VacuumReport> {
        let handle = self.open(table).await?;
        let minimum = {
            use deltalake::table::config::TablePropertiesExt as _;
            handle
                .snapshot()
                .ok()
                .map(|s| s.table_config().deleted_file_retention_duration())
                .unwrap_or_else(|| Duration::from_secs(7 * 24 * 3600))
        };
        if retention < minimum && !force {
            return Err(Error::Maintenance(format!(
                "{}: --retain {} is shorter than the table's retention ({}): a reader that \
                 started before the vacuum, or time travel, may still need those files; \
                 give --force to vacuum anyway",
                table.name(),
                humantime_like(retention),
                humantime_like(minimum)
            )));
        }
        let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
        let (_, metrics) = handle
            .vacuum()
            .with_retention_period(retention)
            .with_enforce_retention_duration(false)
            .with_dry_run(dry_run)
            .with_commit_properties(
                CommitProperties::default().with_max_retries(MAINTENANCE_RETRIES),
            )
            .await
            .map_err(Self::delta_err("vacuum", table))?;
        Ok(VacuumReport {
            table: table.name().to_string(),
            files_deleted: metrics.files_deleted.len() as u64,
            dry_run,
        })
    }
}

/// A duration as whole days, hours, minutes or seconds (`7d`, `1h`, `90s`).
fn humantime_like(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "0s".into(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

impl Stage {
    /// Version, files, rows and bytes of `table` from its log (no data read), and the
    /// committed versions of the given `txn` app ids.
    pub async fn info(&self, table: Table, app_ids: &[String]) -> Result<TableInfo> {
        let handle = self.open(table).await?;
        let snapshot = handle
            .snapshot()
            .map_err(Self::delta_err("snapshot", table))?;
        let mut info = TableInfo {
            table: table.name().to_string(),
            uri: self.table_uri(table),
            version: handle.version(),
            ..Default::default()
        };
        for file in snapshot.log_data().iter() {
            info.files += 1;
            info.bytes += file.size().max(0) as u64;
            info.rows += file.num_records().unwrap_or(0) as u64;
        }
        for id in app_ids {
            if let Some(v) = snapshot
                .transaction_version(handle.log_store().as_ref(), id)
                .await
                .map_err(Self::delta_err("read offsets", table))?
            {
                info.positions.insert(id.clone(), v);
            }
        }
        Ok(info)
    }
}
