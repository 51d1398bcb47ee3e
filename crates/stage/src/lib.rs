//! The stage layer: Delta tables on object storage (a local folder by default, `s3://` in
//! production) that batch, replay and reconcile read as their single source of truth.
//!
//! Append-only tables (`purchases`, `interactions`, `dead_letters`) carry their Kafka
//! offsets in the same Delta commit as the data (`txn` actions, one app id per
//! topic-partition); dimension tables (`clients`, `sellers`, `products`) are upserted by id.
//!
//! Commit contract of [`Stage::append`]: durable when it returns; a writer whose view of the
//! offsets is stale (another writer committed the same partitions) gets
//! [`Error::OffsetsMoved`] or a commit conflict and must re-read, never a silent duplicate.

mod dead_letters;
mod error;
mod maintain;
mod upsert;

use deltalake::arrow::array::{Array as _, Date32Array, UInt32Array};
use deltalake::arrow::compute::take_record_batch;
use deltalake::arrow::datatypes::SchemaRef;
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake::kernel::scalars::ScalarExt;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, StructType, Transaction};
use deltalake::parquet::basic::Compression;
use deltalake::parquet::file::properties::{EnabledStatistics, WriterProperties};
use deltalake::parquet::schema::types::ColumnPath;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter as _, RecordBatchWriter, WriteMode};
use deltalake::DeltaTable;
use indexmap::IndexMap;
use lakeshop_model::arrow_schema;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

pub use dead_letters::{DeadLetterFilter, KafkaPosition};
pub use error::{Error, Result};
pub use maintain::{OptimizeReport, TableInfo, VacuumReport};
pub use upsert::{
    column_names, insert_all, update_all, UpdateWhen, Upsert, UpsertStats, Watermark,
};

/// Streams `batch` into `writer`, one partition at a time. Event rows arrive nearly in time
/// order, so a flush usually holds one day, sometimes two: the batch is split on the
/// `event_date` values directly (none of the general splitter's row encoding and hashing)
/// and, when it holds a single day, written as it is, without copying a column.
async fn write_by_partition(
    writer: &mut RecordBatchWriter,
    table: Table,
    batch: RecordBatch,
) -> deltalake::DeltaResult<()> {
    let [column] = table.partition_columns() else {
        return writer.write(batch).await;
    };
    let Some(days) = batch
        .column_by_name(column)
        .and_then(|c| c.as_any().downcast_ref::<Date32Array>())
        .filter(|d| d.null_count() == 0 && !d.is_empty())
    else {
        // Not the expected shape: the writer's own splitter reports what is wrong.
        return writer.write(batch).await;
    };
    let partition = |row: usize| -> deltalake::DeltaResult<IndexMap<String, _>> {
        let value = ScalarExt::from_array(days, row).ok_or_else(|| {
            deltalake::DeltaTableError::Generic(format!("{column}: no partition value"))
        })?;
        Ok(IndexMap::from([(column.to_string(), value)]))
    };
    let values = days.values();
    if values.iter().all(|d| *d == values[0]) {
        let key = partition(0)?;
        writer
            .write_partition(batch, &key, WriteMode::Default)
            .await?;
        return Ok(());
    }
    // Rows per day, days in ascending order.
    let mut rows: BTreeMap<i32, (usize, Vec<u32>)> = BTreeMap::new();
    for (row, day) in values.iter().enumerate() {
        rows.entry(*day)
            .or_insert_with(|| (row, Vec::new()))
            .1
            .push(row as u32);
    }
    for (first, indices) in rows.into_values() {
        let part = take_record_batch(&batch, &UInt32Array::from(indices))?;
        let key = partition(first)?;
        writer
            .write_partition(part, &key, WriteMode::Default)
            .await?;
    }
    Ok(())
}

/// The stage tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Clients,
    Sellers,
    Products,
    Purchases,
    Interactions,
    DeadLetters,
    Sales,
}

impl Table {
    /// Every table, in display order.
    pub const ALL: [Table; 7] = [
        Table::Clients,
        Table::Sellers,
        Table::Products,
        Table::Purchases,
        Table::Interactions,
        Table::DeadLetters,
        Table::Sales,
    ];

    /// Folder name under the stage root.
    pub fn name(self) -> &'static str {
        match self {
            Table::Clients => "clients",
            Table::Sellers => "sellers",
            Table::Products => "products",
            Table::Purchases => "purchases",
            Table::Interactions => "interactions",
            Table::DeadLetters => "dead_letters",
            Table::Sales => "sales",
        }
    }

    /// Arrow schema of the table (from `lakeshop-model`).
    pub fn schema(self) -> SchemaRef {
        match self {
            Table::Clients => arrow_schema::stage_client(),
            Table::Sellers => arrow_schema::stage_seller(),
            Table::Products => arrow_schema::product(),
            Table::Purchases => arrow_schema::stage_purchase(),
            Table::Interactions => arrow_schema::stage_interaction(),
            Table::DeadLetters => arrow_schema::stage_dead_letter(),
            Table::Sales => arrow_schema::stage_sale(),
        }
    }

    /// Key of an upserted dimension table (`None` for the append-only tables).
    pub fn key(self) -> Option<&'static str> {
        match self {
            Table::Clients => Some("client_id"),
            Table::Sellers => Some("seller_id"),
            Table::Products => Some("product_id"),
            _ => None,
        }
    }

    /// Parquet settings of the table's data files: Snappy (what Spark and pyarrow write
    /// by default, several times cheaper to encode than DataFusion's default zstd), no
    /// dictionary for columns that are (nearly) unique per row (ids, e-mails, addresses,
    /// timestamps, arrival times and Kafka offsets overflow the dictionary page anyway, or
    /// nearly, so trying costs a hash per value for nothing), and no compression of ids and
    /// offsets.
    pub fn writer_properties(self) -> WriterProperties {
        let mut b = WriterProperties::builder().set_compression(Compression::SNAPPY);
        for c in self.schema().fields() {
            let name = c.name().as_str();
            let unique = matches!(
                name,
                "purchase_id"
                    | "event_id"
                    | "client_id"
                    | "product_id"
                    | "email"
                    | "address"
                    | "timestamp"
                    | "ingested_at"
                    | "source_offset"
                    | "payload"
                    | "detail"
            ) || self.key() == Some(name)
                // A sales row carries its product's name and prices: as many distinct
                // values as products, more than a dictionary page holds.
                || (self == Table::Sales
                    && matches!(name, "product_name" | "price" | "amount" | "list_price"));
            if unique {
                b = b.set_column_dictionary_enabled(ColumnPath::from(name), false);
            }
            // Random hex (UUIDs) and per-row offsets give Snappy nothing to match: storing
            // them plain costs a few bytes and saves the encoder's time.
            if name.ends_with("_id") || name == "source_offset" {
                b = b.set_column_compression(ColumnPath::from(name), Compression::UNCOMPRESSED);
            }
            // Random ids in arrival order: every file's min and max span nearly the whole
            // id range, so their statistics prune nothing and cost a comparison per value.
            // (`stage.sales` is written in seller order: its statistics are kept.)
            if name.ends_with("_id") && matches!(self, Table::Purchases | Table::Interactions) {
                b = b
                    .set_column_statistics_enabled(ColumnPath::from(name), EnabledStatistics::None);
            }
        }
        b.build()
    }

    /// Partition columns: the business day for append-only tables.
    pub fn partition_columns(self) -> &'static [&'static str] {
        match self {
            Table::Purchases | Table::Interactions | Table::DeadLetters | Table::Sales => {
                &["event_date"]
            }
            _ => &[],
        }
    }
}

/// Where the stage lives and how to reach it.
#[derive(Debug, Clone)]
pub struct StageOptions {
    /// Root: a local folder, `file://...` or `s3://bucket/prefix`.
    pub uri: String,
    /// object_store / deltalake options (S3 endpoint, region, conditional put...).
    pub storage_options: HashMap<String, String>,
}

/// The next offset to read of each Kafka partition, as committed in a stage table.
pub type Offsets = BTreeMap<i32, i64>;

/// Offsets one commit moves forward, for one topic-partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommit {
    pub topic: String,
    pub partition: i32,
    /// The last offset this writer knows to be committed (`None`: never committed).
    pub expected: Option<i64>,
    /// The last offset included in this commit.
    pub last: i64,
}

/// The Delta `txn` app id of a topic-partition.
pub fn app_id(topic: &str, partition: i32) -> String {
    format!("kafka:{topic}:{partition}")
}

/// The `txn` versions a table version is known to hold, without reading its log: the app
/// ids this process committed at that version (and, through commits of its own in a row,
/// at the versions before it).
#[derive(Debug, Default)]
struct KnownTxns {
    version: u64,
    apps: HashMap<String, i64>,
}

/// The stage layer.
#[derive(Debug, Clone)]
pub struct Stage {
    options: StageOptions,
    /// Per table, what the last commit made through this stage left in the log: an
    /// extractor checks its offsets before every commit, and while nobody else committed
    /// in between, the answer is what it committed itself (reading it from the log replays
    /// every commit since the last checkpoint, for each partition, on every flush).
    known: Arc<Mutex<HashMap<Table, KnownTxns>>>,
}

impl Stage {
    pub fn new(options: StageOptions) -> Self {
        Self {
            options,
            known: Arc::default(),
        }
    }

    /// The version of `app` at `version` of `table`, when a commit of this stage left it.
    fn known_txn(&self, table: Table, version: u64, app: &str) -> Option<Option<i64>> {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let k = known.get(&table).filter(|k| k.version == version)?;
        k.apps.get(app).map(|v| Some(*v))
    }

    /// Records the `txns` committed at `version` of `table`, on top of what the version
    /// before it held when that is known too.
    fn remember_txns(&self, table: Table, version: u64, txns: &[Transaction]) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let k = known.entry(table).or_default();
        if k.version + 1 != version {
            k.apps.clear();
        }
        k.version = version;
        for t in txns {
            k.apps.insert(t.app_id.clone(), t.version);
        }
    }

    /// The root URI as given.
    pub fn uri(&self) -> &str {
        &self.options.uri
    }

    /// Location of a table.
    pub fn table_uri(&self, table: Table) -> String {
        format!(
            "{}/{}",
            self.options.uri.trim_end_matches('/'),
            table.name()
        )
    }

    fn url(&self, table: Table) -> Result<url::Url> {
        let uri = self.table_uri(table);
        if !uri.contains("://") {
            std::fs::create_dir_all(&uri).map_err(|e| Error::Location {
                uri: uri.clone(),
                message: e.to_string(),
            })?;
        }
        deltalake::table::builder::ensure_table_uri(&uri).map_err(|e| Error::Location {
            uri,
            message: e.to_string(),
        })
    }

    pub(crate) fn delta_err(
        operation: &'static str,
        table: Table,
    ) -> impl Fn(deltalake::DeltaTableError) -> Error + Copy {
        move |source| Error::Delta {
            operation,
            table: table.name().to_string(),
            source: Box::new(source),
        }
    }

    /// Opens a table at its latest version, creating it (empty, with its schema and
    /// partitioning) when it does not exist yet.
    pub async fn open(&self, table: Table) -> Result<DeltaTable> {
        let url = self.url(table)?;
        let t = DeltaTable::try_from_url_with_storage_options(
            url.clone(),
            self.options.storage_options.clone(),
        )
        .await
        .map_err(Self::delta_err("open", table))?;
        if t.version().is_some() {
            return Ok(t);
        }
        let schema: StructType = table.schema().try_into_kernel().map_err(|e| Error::Delta {
            operation: "schema",
            table: table.name().to_string(),
            source: Box::new(e.into()),
        })?;
        let created = t
            .create()
            .with_table_name(table.name())
            .with_columns(schema.fields().cloned())
            .with_partition_columns(table.partition_columns().iter().map(|s| s.to_string()))
            .with_configuration_property(deltalake::TableProperty::CheckpointInterval, Some("50"))
            .with_save_mode(SaveMode::Ignore)
            .await;
        match created {
            Ok(t) if t.version().is_some() => Ok(t),
            // Created by someone else meanwhile, or Ignore returned an unloaded handle.
            _ => DeltaTable::try_from_url_with_storage_options(
                url,
                self.options.storage_options.clone(),
            )
            .await
            .map_err(Self::delta_err("open", table)),
        }
    }

    /// The committed offsets of `topic` in a table: next offset to read per partition.
    pub async fn offsets(
        &self,
        table: &DeltaTable,
        topic: &str,
        partitions: &[i32],
    ) -> Result<Offsets> {
        let mut out = Offsets::new();
        let snapshot = match table.snapshot() {
            Ok(s) => s,
            Err(_) => return Ok(out),
        };
        for &p in partitions {
            let v = snapshot
                .transaction_version(table.log_store().as_ref(), app_id(topic, p))
                .await
                .map_err(|source| Error::Delta {
                    operation: "read offsets",
                    table: topic.to_string(),
                    source: Box::new(source),
                })?;
            if let Some(last) = v {
                out.insert(p, last + 1);
            }
        }
        Ok(out)
    }

    /// Appends `batches` to `table` together with the offsets in one Delta commit.
    ///
    /// Checks first that each partition's committed offset is still the one the writer
    /// expects; the commit itself conflicts if another writer commits the same partitions
    /// concurrently. Returns the new table version.
    pub async fn append(
        &self,
        table: Table,
        handle: &mut DeltaTable,
        batches: Vec<RecordBatch>,
        offsets: &[OffsetCommit],
    ) -> Result<u64> {
        handle
            .update_state()
            .await
            .map_err(Self::delta_err("refresh", table))?;
        if let Ok(snapshot) = handle.snapshot() {
            let version = snapshot.version();
            for o in offsets {
                let id = app_id(&o.topic, o.partition);
                let found = match self.known_txn(table, version, &id) {
                    Some(found) => found,
                    None => snapshot
                        .transaction_version(handle.log_store().as_ref(), &id)
                        .await
                        .map_err(Self::delta_err("read offsets", table))?,
                };
                if found != o.expected {
                    return Err(Error::OffsetsMoved {
                        table: table.name().to_string(),
                        app_id: id,
                        expected: o.expected,
                        found,
                    });
                }
            }
        }
        let now = chrono::Utc::now().timestamp_millis();
        let txns: Vec<Transaction> = offsets
            .iter()
            .map(|o| Transaction {
                app_id: app_id(&o.topic, o.partition),
                version: o.last,
                last_updated: Some(now),
            })
            .collect();
        // The streaming Parquet writer and a plain commit: an extractor appends about once
        // a second, and planning a query engine write for each commit would cost more CPU
        // than encoding the rows.
        let err = Self::delta_err("append", table);
        let mut writer = RecordBatchWriter::for_table(handle)
            .map_err(err)?
            .with_writer_properties(table.writer_properties());
        for batch in batches {
            write_by_partition(&mut writer, table, batch)
                .await
                .map_err(err)?;
        }
        let actions: Vec<Action> = writer
            .flush()
            .await
            .map_err(err)?
            .into_iter()
            .map(Action::Add)
            .collect();
        let props = CommitProperties::default()
            .with_application_transactions(txns.clone())
            .with_max_retries(20);
        let version = self
            .commit_append(table, handle, actions, props, "append")
            .await?;
        self.remember_txns(table, version, &txns);
        Ok(version)
    }

    /// Commits `actions` (added files, possibly none) as an append to `table`, with the
    /// `txn` actions `props` carries, and moves `handle` to the new version.
    pub(crate) async fn commit_append(
        &self,
        table: Table,
        handle: &mut DeltaTable,
        actions: Vec<Action>,
        props: CommitProperties,
        operation: &'static str,
    ) -> Result<u64> {
        let err = Self::delta_err(operation, table);
        let columns = table.partition_columns();
        let write = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: (!columns.is_empty())
                .then(|| columns.iter().map(|c| c.to_string()).collect()),
            predicate: None,
        };
        let snapshot = handle.snapshot().map_err(err)?;
        let done = CommitBuilder::from(props)
            .with_actions(actions)
            .build(Some(snapshot), handle.log_store(), write)
            .await
            .map_err(err)?;
        let version = done.version();
        handle.state = Some(done.snapshot());
        Ok(version)
    }
}

impl Stage {
    /// Registers `tables` (each under its own name, at its latest version) in a DataFusion
    /// session, creating missing tables empty so queries over a young stage still plan.
    pub async fn register(
        &self,
        ctx: &deltalake::datafusion::prelude::SessionContext,
        tables: &[Table],
    ) -> Result<()> {
        for &table in tables {
            let t = self.open(table).await?;
            t.update_datafusion_session(&ctx.state())
                .map_err(Self::delta_err("register", table))?;
            let provider = t.table_provider().await.map_err(|e| Error::Delta {
                operation: "register",
                table: table.name().to_string(),
                source: Box::new(e.into()),
            })?;
            ctx.register_table(table.name(), provider)
                .map_err(|e| Error::Delta {
                    operation: "register",
                    table: table.name().to_string(),
                    source: Box::new(e.into()),
                })?;
        }
        Ok(())
    }

    /// Replaces the rows matching `predicate` (SQL over partition columns, e.g.
    /// `event_date = '2026-11-21'`) with `batches` in one Delta commit: readers see the old
    /// rows or the new ones, never a mix. Returns the new version.
    pub async fn replace_where(
        &self,
        table: Table,
        batches: Vec<RecordBatch>,
        predicate: &str,
    ) -> Result<u64> {
        let handle = self.open(table).await?;
        let new = handle
            .write(batches)
            .with_save_mode(SaveMode::Overwrite)
            .with_replace_where(predicate.to_string())
            .with_writer_properties(table.writer_properties())
            .with_partition_columns(table.partition_columns().iter().map(|s| s.to_string()))
            .with_commit_properties(CommitProperties::default().with_max_retries(20))
            .await
            .map_err(Self::delta_err("replace", table))?;
        Ok(new.version().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;
    use deltalake::arrow::array::{
        ArrayRef, BinaryArray, Int32Array, Int64Array, StringArray, TimestampMicrosecondArray,
    };
    use deltalake::datafusion::prelude::SessionContext;

    /// Dead letters of partition 0 at `offsets`, one per (offset, day) pair.
    fn dead_letters(rows: &[(i64, i32)]) -> RecordBatch {
        let n = rows.len();
        let text = |s: &str| Arc::new(StringArray::from(vec![s; n])) as ArrayRef;
        RecordBatch::try_new(
            Table::DeadLetters.schema(),
            vec![
                text("purchases"),
                text("t"),
                Arc::new(Int32Array::from(vec![0; n])),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(BinaryArray::from_iter_values(rows.iter().map(|_| b"{"))),
                text("bad_json"),
                text("EOF while parsing"),
                Arc::new(TimestampMicrosecondArray::from(vec![0; n]).with_timezone("UTC")),
                Arc::new(Date32Array::from_iter_values(rows.iter().map(|r| r.1))),
            ],
        )
        .expect("dead letter batch")
    }

    fn commit(expected: Option<i64>, last: i64) -> Vec<OffsetCommit> {
        vec![OffsetCommit {
            topic: "t".to_string(),
            partition: 0,
            expected,
            last,
        }]
    }

    /// Rows per day and data files per day, read back through the Delta table.
    async fn per_day(stage: &Stage) -> Vec<(i32, i64, usize)> {
        let handle = stage.open(Table::DeadLetters).await.expect("open");
        let mut files: BTreeMap<String, usize> = BTreeMap::new();
        for path in handle.get_file_uris().expect("files") {
            let day = path
                .split('/')
                .find_map(|p| p.strip_prefix("event_date="))
                .expect("partition folder")
                .to_string();
            *files.entry(day).or_default() += 1;
        }
        let ctx = SessionContext::new();
        stage
            .register(&ctx, &[Table::DeadLetters])
            .await
            .expect("register");
        let sql = "SELECT CAST(event_date AS INT) AS d, count(*) AS n \
                   FROM dead_letters GROUP BY 1 ORDER BY 1";
        let batches = ctx
            .sql(sql)
            .await
            .expect("sql")
            .collect()
            .await
            .expect("rows");
        let mut out = Vec::new();
        for b in batches {
            let d = b
                .column(0)
                .as_any()
                .downcast_ref::<Int32Array>()
                .expect("d");
            let n = b
                .column(1)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("n");
            for i in 0..b.num_rows() {
                let day = NaiveDate::default() + chrono::Days::new(d.value(i) as u64);
                let day_files = files.get(&day.to_string()).copied().unwrap_or(0);
                out.push((d.value(i), n.value(i), day_files));
            }
        }
        out
    }

    #[tokio::test]
    async fn appends_split_rows_by_day_and_check_offsets_against_other_writers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = StageOptions {
            uri: dir.path().to_string_lossy().to_string(),
            storage_options: HashMap::new(),
        };
        let (a, b) = (Stage::new(options.clone()), Stage::new(options));
        let mut ha = a.open(Table::DeadLetters).await.expect("open a");
        // One day, then days interleaved (20001 before 20000 in the batch).
        let one_day = dead_letters(&[(0, 20000), (1, 20000)]);
        a.append(Table::DeadLetters, &mut ha, vec![one_day], &commit(None, 1))
            .await
            .expect("first append");
        let mixed = dead_letters(&[(2, 20001), (3, 20000), (4, 20002), (5, 20001)]);
        a.append(
            Table::DeadLetters,
            &mut ha,
            vec![mixed],
            &commit(Some(1), 5),
        )
        .await
        .expect("mixed append");
        assert_eq!(
            per_day(&a).await,
            vec![(20000, 3, 2), (20001, 2, 1), (20002, 1, 1)]
        );
        let offsets = a.offsets(&ha, "t", &[0]).await.expect("offsets");
        assert_eq!(offsets.get(&0), Some(&6));

        // Another writer moves the partition on; the first one's stale view is refused,
        // although its own last commit told it where the partition was.
        let mut hb = b.open(Table::DeadLetters).await.expect("open b");
        b.append(
            Table::DeadLetters,
            &mut hb,
            vec![dead_letters(&[(6, 20002)])],
            &commit(Some(5), 6),
        )
        .await
        .expect("other writer");
        let stale = a
            .append(
                Table::DeadLetters,
                &mut ha,
                vec![dead_letters(&[(6, 20002)])],
                &commit(Some(5), 6),
            )
            .await;
        assert!(
            matches!(
                stale,
                Err(Error::OffsetsMoved {
                    found: Some(6),
                    expected: Some(5),
                    ..
                })
            ),
            "{stale:?}"
        );
        // With the offsets it now reads, it goes on.
        a.append(
            Table::DeadLetters,
            &mut ha,
            vec![dead_letters(&[(7, 20002)])],
            &commit(Some(6), 7),
        )
        .await
        .expect("append after re-reading");
        assert_eq!(
            per_day(&a).await,
            vec![(20000, 3, 2), (20001, 2, 1), (20002, 3, 3)]
        );
    }
}
