//! PostgreSQL → stage: clients and sellers, incremental by a watermark column.
//!
//! Rows are read with binary `COPY (SELECT …) TO STDOUT` inside a read-only
//! repeatable-read transaction (one consistent snapshot) and decoded straight into Arrow
//! builders. The watermark is the largest `updated_at` staged so far; it lives in the stage
//! table as a Delta `txn` (app id `postgres:<table>:<column>`, version = microseconds), in
//! the same commit as the rows, so there is no local state file and a crash leaves either
//! both or neither. Every run re-reads a short overlap before the watermark: a transaction
//! that committed late with an earlier timestamp is still seen, and re-read rows that did not
//! change are no-ops of the upsert. `full` reads every row and marks rows the source no longer
//! has as deleted (hard deletes; soft deletes arrive as ordinary updates).
//!
//! Incremental runs read in watermark order and every commit is a resume point. A first
//! load reads the table unordered (no sort before the first row) and commits in chunks, each
//! written in the background while the next rows are read; its watermark is committed with
//! the last chunk, so an interrupted first load is read again whole, and what it staged
//! merges as no-ops.
//!
//! The watermark value reaches the server as a bind parameter (`set_config`), never as SQL
//! text; table and column names come from the pipeline file and are quoted as identifiers.

use deltalake::arrow::array::{ArrayRef, StringBuilder, TimestampMicrosecondBuilder};
use deltalake::arrow::datatypes::{DataType, SchemaRef};
use deltalake::arrow::record_batch::RecordBatch;
use futures::StreamExt as _;
use lakeshop_stage::{Stage, Table, UpdateWhen, Upsert, UpsertStats, Watermark};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::binary_copy::BinaryCopyOutStream;
use tokio_postgres::types::Type;

use crate::{Error, Result};

/// TLS to PostgreSQL, with libpq's meanings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TlsMode {
    Disable,
    /// Encrypt when the server offers TLS; the certificate is not checked (as libpq).
    #[default]
    Prefer,
    /// Always encrypt; the certificate is not checked (as libpq).
    Require,
    /// Always encrypt, and check the certificate chain (system roots) and host name.
    VerifyFull,
}

/// Accepts any server certificate but still checks the handshake signatures: encryption
/// without authentication, what libpq's `prefer` and `require` give.
#[derive(Debug)]
struct EncryptOnly(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Which dimension an extract fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dimension {
    Clients,
    Sellers,
}

impl Dimension {
    pub fn table(self) -> Table {
        match self {
            Dimension::Clients => Table::Clients,
            Dimension::Sellers => Table::Sellers,
        }
    }
}

/// One PostgreSQL extract.
#[derive(Debug, Clone)]
pub struct PgSourceConfig {
    pub url: String,
    pub tls: TlsMode,
    pub dimension: Dimension,
    /// Source table, optionally schema-qualified (`public.clients`).
    pub source_table: String,
    /// Column incremental runs follow (`updated_at`).
    pub watermark_column: String,
    /// Read every row and mark the ones the source lost as deleted.
    pub full: bool,
    /// Read and decode into Arrow, commit nothing.
    pub dry_run: bool,
    /// Rows per Arrow batch.
    pub batch_rows: usize,
    /// Incremental runs commit every this many rows (a crash resumes from the last commit).
    pub commit_rows: usize,
    /// How far before the watermark an incremental run re-reads.
    pub overlap: Duration,
    /// Rows read so far, for a progress display.
    pub progress: Arc<AtomicU64>,
}

/// What an extract did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PgExtractStats {
    /// Rows read from PostgreSQL.
    pub read: u64,
    pub inserted: u64,
    pub updated: u64,
    pub marked_deleted: u64,
    pub commits: u64,
    /// The watermark after the run, microseconds since the epoch (UTC).
    pub watermark: Option<i64>,
}

/// The watermark a first load records while it is under way: the rows are read in no
/// particular order (sorting a whole table first would only delay the first row), so no
/// real watermark can be committed until the last row is in. A run that finds it reads the
/// whole table again; what the interrupted load staged merges as no-ops.
const LOADING: i64 = i64::MIN;

/// First loads (into an empty table) commit every this many rows, each commit written
/// while the next rows are read.
const APPEND_COMMIT_ROWS: usize = 262_144;

/// Default overlap of incremental runs.
pub const DEFAULT_OVERLAP: Duration = Duration::from_secs(300);

/// The `txn` app id of a watermark.
pub fn watermark_app_id(source_table: &str, column: &str) -> String {
    format!("postgres:{source_table}:{column}")
}

/// Quotes a possibly schema-qualified identifier.
fn quote_ident(name: &str) -> String {
    name.split('.')
        .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

fn pg_err(table: &str) -> impl Fn(tokio_postgres::Error) -> Error + '_ {
    move |source| Error::Postgres {
        table: table.to_string(),
        source,
    }
}

/// Connects with the given TLS mode (`VerifyFull` checks the server certificate against the
/// system roots; `Prefer` and `Require` encrypt without checking it, as libpq does).
pub async fn connect(url: &str, tls: TlsMode) -> Result<tokio_postgres::Client> {
    let mut config: tokio_postgres::Config = url.parse().map_err(pg_err("connect"))?;
    config.ssl_mode(match tls {
        TlsMode::Disable => tokio_postgres::config::SslMode::Disable,
        TlsMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        TlsMode::Require | TlsMode::VerifyFull => tokio_postgres::config::SslMode::Require,
    });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(format!("TLS setup: {e}")))?;
    let tls_config = if tls == TlsMode::VerifyFull {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
            .with_no_client_auth()
    };
    let connector = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config);
    let (client, connection) = config.connect(connector).await.map_err(pg_err("connect"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// How a stage column is read from PostgreSQL.
#[derive(Debug, Clone, Copy)]
enum ColumnKind {
    Uuid,
    Text,
    Timestamp,
}

fn columns(schema: &SchemaRef) -> Result<Vec<(String, ColumnKind)>> {
    schema
        .fields()
        .iter()
        .map(|f| {
            let kind = match f.data_type() {
                DataType::Utf8 if f.name().ends_with("_id") => ColumnKind::Uuid,
                DataType::Utf8 => ColumnKind::Text,
                DataType::Timestamp(_, _) => ColumnKind::Timestamp,
                other => {
                    return Err(Error::Internal(format!(
                    "stage column {} has type {other}, which the PostgreSQL extract cannot read",
                    f.name()
                )))
                }
            };
            Ok((f.name().clone(), kind))
        })
        .collect()
}

/// Column builders of one batch.
enum Builder {
    Str(StringBuilder),
    Ts(TimestampMicrosecondBuilder),
}

struct Batcher {
    schema: SchemaRef,
    kinds: Vec<ColumnKind>,
    builders: Vec<Builder>,
    rows: usize,
    capacity: usize,
}

impl Batcher {
    fn new(schema: SchemaRef, kinds: Vec<ColumnKind>, capacity: usize) -> Self {
        let mut b = Self {
            schema,
            kinds,
            builders: Vec::new(),
            rows: 0,
            capacity,
        };
        b.reset();
        b
    }

    fn reset(&mut self) {
        self.builders =
            self.kinds
                .iter()
                .map(|k| match k {
                    ColumnKind::Uuid | ColumnKind::Text => Builder::Str(
                        StringBuilder::with_capacity(self.capacity, self.capacity * 24),
                    ),
                    ColumnKind::Timestamp => {
                        Builder::Ts(TimestampMicrosecondBuilder::with_capacity(self.capacity))
                    }
                })
                .collect();
        self.rows = 0;
    }

    /// Appends one COPY row; returns its watermark column value (µs) when `wm` is given.
    fn push(
        &mut self,
        row: &tokio_postgres::binary_copy::BinaryCopyOutRow,
        wm: usize,
    ) -> std::result::Result<Option<i64>, tokio_postgres::Error> {
        let mut watermark = None;
        for (i, (kind, builder)) in self.kinds.iter().zip(&mut self.builders).enumerate() {
            match (kind, builder) {
                (ColumnKind::Uuid, Builder::Str(b)) => {
                    match row.try_get::<Option<uuid::Uuid>>(i)? {
                        Some(u) => {
                            let mut buf = uuid::Uuid::encode_buffer();
                            b.append_value(u.hyphenated().encode_lower(&mut buf));
                        }
                        None => b.append_null(),
                    }
                }
                (ColumnKind::Text, Builder::Str(b)) => {
                    b.append_option(row.try_get::<Option<&str>>(i)?)
                }
                (ColumnKind::Timestamp, Builder::Ts(b)) => {
                    let v = row
                        .try_get::<Option<chrono::DateTime<chrono::Utc>>>(i)?
                        .map(|t| t.timestamp_micros());
                    if i == wm {
                        watermark = v;
                    }
                    b.append_option(v);
                }
                _ => unreachable!("builders follow the column kinds"),
            }
        }
        self.rows += 1;
        Ok(watermark)
    }

    fn finish(&mut self) -> Result<RecordBatch> {
        let columns: Vec<ArrayRef> = self
            .builders
            .iter_mut()
            .map(|b| -> ArrayRef {
                match b {
                    Builder::Str(b) => Arc::new(b.finish()),
                    Builder::Ts(b) => Arc::new(b.finish().with_timezone("UTC")),
                }
            })
            .collect();
        self.reset();
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

/// The result of a background commit.
async fn joined(
    h: tokio::task::JoinHandle<lakeshop_stage::Result<UpsertStats>>,
) -> Result<UpsertStats> {
    h.await
        .map_err(|e| Error::Internal(format!("stage commit task: {e}")))?
        .map_err(Error::from)
}

/// Runs one extract of a dimension into the stage.
pub async fn extract(stage: &Stage, source: &PgSourceConfig) -> Result<PgExtractStats> {
    let table = source.dimension.table();
    let schema = table.schema();
    let cols = columns(&schema)?;
    let key = table.key().unwrap_or("id");
    let wm_index = cols
        .iter()
        .position(|(name, _)| *name == source.watermark_column)
        .ok_or_else(|| {
            Error::Internal(format!(
                "watermark column {} is not a column of stage.{}",
                source.watermark_column,
                table.name()
            ))
        })?;
    let app_id = watermark_app_id(&source.source_table, &source.watermark_column);
    let committed = stage.watermark(table, &app_id).await?;
    let info = stage.info(table, &[]).await?;
    // The table had no rows when this run started: every id read is new (one snapshot
    // holds each id once), so batches are appended instead of merged.
    let known_new = info.files == 0;

    let mut client = connect(&source.url, source.tls).await?;
    let src = &source.source_table;
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg_err(src))?;
    let select_list = cols
        .iter()
        .map(|(name, kind)| {
            let cast = match kind {
                ColumnKind::Uuid => "uuid",
                ColumnKind::Text => "text",
                ColumnKind::Timestamp => "timestamptz",
            };
            format!("{}::{cast}", quote_ident(name))
        })
        .collect::<Vec<_>>()
        .join(", ");
    let wm_col = quote_ident(&source.watermark_column);
    let resumable = committed.filter(|w| *w != LOADING);
    let incremental_since = match (source.full, resumable) {
        (false, Some(micros)) => {
            let overlap = i64::try_from(source.overlap.as_micros()).unwrap_or(i64::MAX);
            chrono::DateTime::from_timestamp_micros(micros.saturating_sub(overlap))
        }
        _ => None,
    };
    let query = match incremental_since {
        Some(since) => {
            tx.query_one(
                "SELECT set_config('lakeshop.since', $1, true)",
                &[&since.to_rfc3339()],
            )
            .await
            .map_err(pg_err(src))?;
            format!(
                "COPY (SELECT {select_list} FROM {} WHERE {wm_col} > current_setting('lakeshop.since')::timestamptz ORDER BY {wm_col}, {}) TO STDOUT (FORMAT binary)",
                quote_ident(src),
                quote_ident(key)
            )
        }
        None => format!(
            "COPY (SELECT {select_list} FROM {}) TO STDOUT (FORMAT binary)",
            quote_ident(src)
        ),
    };
    tracing::info!(table = table.name(), source = %src, full = source.full, since = ?incremental_since, "extracting");
    let types: Vec<Type> = cols
        .iter()
        .map(|(_, k)| match k {
            ColumnKind::Uuid => Type::UUID,
            ColumnKind::Text => Type::TEXT,
            ColumnKind::Timestamp => Type::TIMESTAMPTZ,
        })
        .collect();
    let stream = tx.copy_out(&query).await.map_err(pg_err(src))?;
    let rows = BinaryCopyOutStream::new(stream, &types);
    futures::pin_mut!(rows);

    let started = Instant::now();
    let mut stats = PgExtractStats {
        watermark: committed,
        ..Default::default()
    };
    let mut batcher = Batcher::new(
        schema.clone(),
        cols.iter().map(|c| c.1).collect(),
        source.batch_rows,
    );
    let mut pending: Vec<RecordBatch> = Vec::new();
    let mut pending_rows = 0usize;
    let mut max_wm = committed;
    let mut expected = committed;
    let deleted_at = chrono::Utc::now().timestamp_micros();

    let upsert = |wm: Option<i64>, expected: Option<i64>, last: bool| Upsert {
        update_when: if known_new {
            UpdateWhen::NewerOrEqual
        } else {
            UpdateWhen::Newer
        },
        mark_missing_deleted: (source.full && last).then_some(deleted_at),
        watermark: wm.map(|version| Watermark {
            app_id: app_id.clone(),
            expected,
            version,
        }),
        known_new,
    };
    // Incremental runs read in watermark order, so every commit is a resume point. Other
    // runs (first loads, and a run after an interrupted first load) read unordered and
    // commit `LOADING` until the last commit; `--full` commits once, as marking deletions
    // needs every id.
    let ordered = incremental_since.is_some();
    let commit_rows = if source.full {
        usize::MAX
    } else if known_new {
        source.commit_rows.min(APPEND_COMMIT_ROWS)
    } else {
        source.commit_rows
    };
    // One commit at a time runs in the background while the next rows are read.
    let mut in_flight: Option<tokio::task::JoinHandle<lakeshop_stage::Result<UpsertStats>>> = None;
    let add = |stats: &mut PgExtractStats, s: UpsertStats| {
        stats.inserted += s.inserted;
        stats.updated += s.updated;
        stats.marked_deleted += s.marked_deleted;
        if s.version.is_some() {
            stats.commits += 1;
        }
    };

    while let Some(row) = rows.next().await {
        let row = row.map_err(pg_err(src))?;
        if let Some(v) = batcher.push(&row, wm_index).map_err(pg_err(src))? {
            max_wm = Some(max_wm.map_or(v, |m| m.max(v)));
        }
        stats.read += 1;
        if batcher.rows >= source.batch_rows {
            pending_rows += batcher.rows;
            let batch = batcher.finish()?;
            if source.dry_run {
                source.progress.store(stats.read, Ordering::Relaxed);
                continue;
            }
            pending.push(batch);
            source.progress.store(stats.read, Ordering::Relaxed);
            if pending_rows >= commit_rows {
                if let Some(h) = in_flight.take() {
                    add(&mut stats, joined(h).await?);
                }
                let wm = if ordered { max_wm } else { Some(LOADING) };
                let batches = std::mem::take(&mut pending);
                let (stage, upsert) = (stage.clone(), upsert(wm, expected, false));
                in_flight = Some(tokio::spawn(async move {
                    stage.upsert(table, batches, &upsert).await
                }));
                expected = wm;
                pending_rows = 0;
            }
        }
    }
    if batcher.rows > 0 {
        pending.push(batcher.finish()?);
    }
    source.progress.store(stats.read, Ordering::Relaxed);
    if source.dry_run {
        tx.commit().await.map_err(pg_err(src))?;
        stats.watermark = max_wm;
        return Ok(stats);
    }
    if let Some(h) = in_flight.take() {
        add(&mut stats, joined(h).await?);
    }
    let s = stage
        .upsert(table, pending, &upsert(max_wm, expected, true))
        .await?;
    add(&mut stats, s);
    tx.commit().await.map_err(pg_err(src))?;
    stats.watermark = max_wm;
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        table = table.name(),
        read = stats.read,
        inserted = stats.inserted,
        updated = stats.updated,
        marked_deleted = stats.marked_deleted,
        rows_per_s = (stats.read as f64 / secs.max(1e-9)) as u64,
        "extract done"
    );
    Ok(stats)
}
