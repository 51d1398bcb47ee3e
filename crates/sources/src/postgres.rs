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
use std::path::{Path, PathBuf};
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
    /// Always encrypt, and check the certificate chain (the CA file, else the system roots)
    /// and that it names the host connected to.
    VerifyFull,
}

impl TlsMode {
    /// libpq's name of the mode (`sslmode`).
    pub fn name(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::Prefer => "prefer",
            TlsMode::Require => "require",
            TlsMode::VerifyFull => "verify-full",
        }
    }

    fn from_sslmode(value: &str) -> Result<Self> {
        match value {
            "disable" => Ok(TlsMode::Disable),
            "prefer" => Ok(TlsMode::Prefer),
            "require" => Ok(TlsMode::Require),
            "verify-full" => Ok(TlsMode::VerifyFull),
            other => Err(Error::Config(format!(
                "sslmode={other} in the URL is not supported: use disable, prefer, require or verify-full"
            ))),
        }
    }
}

/// TLS settings of a PostgreSQL connection as configured (the pipeline file's
/// `[postgres]` keys). libpq's own URL parameters (`sslmode`, `sslrootcert`, `sslcert`,
/// `sslkey`) are honoured too; a setting given both ways with different values is refused
/// (see [`resolve_tls`]), never silently overridden.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PgTls {
    /// None: the URL's `sslmode`, else `prefer`.
    pub mode: Option<TlsMode>,
    /// PEM file of the CA(s) trusted under `verify-full` (only these then); None: the
    /// URL's `sslrootcert`, else the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) presented to the server, with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
}

/// TLS settings after merging the URL with the configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedTls {
    pub mode: TlsMode,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// libpq's TLS parameters of a URL and the URL without them (tokio-postgres knows
/// `sslmode` only up to `require` and refuses the others as unknown options).
fn split_url_tls(url: &str) -> Result<(String, Vec<(String, String)>)> {
    const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let Some((base, query)) = url.split_once('?').filter(|_| is_url) else {
        return Ok((url.to_string(), Vec::new()));
    };
    let mut kept = Vec::new();
    let mut tls = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if TLS_KEYS.contains(&key) {
            let value = percent_decode(value).ok_or_else(|| {
                Error::Config(format!("{key} in the URL: not valid percent-encoded UTF-8"))
            })?;
            tls.push((key.to_string(), value));
        } else {
            kept.push(pair);
        }
    }
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, tls))
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Merges the URL's libpq TLS parameters with the configured settings: a setting given in
/// one place is taken from there; given in both with different values, it is an error
/// naming both, so a pipeline file never silently overrides the URL (or the reverse).
/// Returns the URL tokio-postgres can parse (without those parameters) and the settings.
pub fn resolve_tls(url: &str, configured: &PgTls) -> Result<(String, ResolvedTls)> {
    let (url, params) = split_url_tls(url)?;
    let mut from_url = PgTls::default();
    for (key, value) in params {
        match key.as_str() {
            "sslmode" => from_url.mode = Some(TlsMode::from_sslmode(&value)?),
            "sslrootcert" => from_url.ca_file = Some(value.into()),
            "sslcert" => from_url.cert_file = Some(value.into()),
            _ => from_url.key_file = Some(value.into()),
        }
    }
    fn pick<T: PartialEq + Clone>(
        config_key: &str,
        url_key: &str,
        configured: &Option<T>,
        in_url: &Option<T>,
        show: impl Fn(&T) -> String,
    ) -> Result<Option<T>> {
        match (configured, in_url) {
            (Some(c), Some(u)) if c != u => Err(Error::Config(format!(
                "postgres.{config_key} = {:?} conflicts with {url_key}={} in postgres.url: set it in one place",
                show(c),
                show(u)
            ))),
            (Some(c), _) => Ok(Some(c.clone())),
            (None, u) => Ok(u.clone()),
        }
    }
    let path = |p: &PathBuf| p.display().to_string();
    let mode = pick("tls", "sslmode", &configured.mode, &from_url.mode, |m| {
        m.name().to_string()
    })?
    .unwrap_or_default();
    let resolved = ResolvedTls {
        mode,
        ca_file: pick(
            "ca_file",
            "sslrootcert",
            &configured.ca_file,
            &from_url.ca_file,
            path,
        )?,
        cert_file: pick(
            "cert_file",
            "sslcert",
            &configured.cert_file,
            &from_url.cert_file,
            path,
        )?,
        key_file: pick(
            "key_file",
            "sslkey",
            &configured.key_file,
            &from_url.key_file,
            path,
        )?,
    };
    if resolved.ca_file.is_some() && mode != TlsMode::VerifyFull {
        return Err(Error::Config(format!(
            "a CA file (postgres.ca_file or sslrootcert) is only used by verify-full, but the TLS mode is {}",
            mode.name()
        )));
    }
    if resolved.cert_file.is_some() != resolved.key_file.is_some() {
        return Err(Error::Config(
            "a client certificate needs both postgres.cert_file and postgres.key_file (or sslcert and sslkey)".into(),
        ));
    }
    if resolved.cert_file.is_some() && mode == TlsMode::Disable {
        return Err(Error::Config(
            "a client certificate is set but the TLS mode is disable".into(),
        ));
    }
    Ok((url, resolved))
}

/// The rustls client configuration of the resolved settings.
fn client_tls_config(tls: &ResolvedTls) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
        Error::Config(format!("{what} {}: {e}", path.display()))
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(format!("TLS setup: {e}")))?;
    let builder = if tls.mode == TlsMode::VerifyFull {
        let mut roots = rustls::RootCertStore::empty();
        match &tls.ca_file {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| bad("CA file", path, &e))?
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| bad("CA file", path, &e))?;
                if certs.is_empty() {
                    return Err(bad("CA file", path, &"no PEM certificate in the file"));
                }
                for cert in certs {
                    roots.add(cert).map_err(|e| bad("CA file", path, &e))?;
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
    };
    match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| bad("client certificate", cert, &e))?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| bad("client certificate", cert, &e))?;
            let key_der =
                PrivateKeyDer::from_pem_file(key).map_err(|e| bad("client key", key, &e))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| bad("client certificate", cert, &e))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
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
    pub tls: PgTls,
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

/// Connects with the given TLS settings merged with the URL's (see [`resolve_tls`]):
/// `verify-full` checks the server certificate against the CA file (else the system roots)
/// and the host name; `prefer` and `require` encrypt without checking it, as libpq does; a
/// client certificate is presented when one is set.
pub async fn connect(url: &str, tls: &PgTls) -> Result<tokio_postgres::Client> {
    let (url, tls) = resolve_tls(url, tls)?;
    let mut config: tokio_postgres::Config = url.parse().map_err(pg_err("connect"))?;
    config.ssl_mode(match tls.mode {
        TlsMode::Disable => tokio_postgres::config::SslMode::Disable,
        TlsMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        TlsMode::Require | TlsMode::VerifyFull => tokio_postgres::config::SslMode::Require,
    });
    let tls_config = client_tls_config(&tls)?;
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

    let mut client = connect(&source.url, &source.tls).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_tls_parameters_are_honoured_and_conflicts_refused() {
        let none = PgTls::default();
        // Nothing anywhere: prefer, the URL untouched.
        let (url, tls) = resolve_tls("postgres://u@h:5432/db", &none).expect("plain");
        assert_eq!(
            (url.as_str(), tls.mode),
            ("postgres://u@h:5432/db", TlsMode::Prefer)
        );
        // The URL's libpq parameters are taken out and honoured; others stay.
        let (url, tls) = resolve_tls(
            "postgres://u@h/db?application_name=x&sslmode=verify-full&sslrootcert=%2Fca%20dir%2Fca.pem&sslcert=/c.pem&sslkey=/k.pem",
            &none,
        )
        .expect("from the URL");
        assert_eq!(url, "postgres://u@h/db?application_name=x");
        assert_eq!(tls.mode, TlsMode::VerifyFull);
        assert_eq!(tls.ca_file, Some(PathBuf::from("/ca dir/ca.pem")));
        assert_eq!(tls.cert_file, Some(PathBuf::from("/c.pem")));
        assert_eq!(tls.key_file, Some(PathBuf::from("/k.pem")));
        // The same value in both places is no conflict; different ones are refused.
        let configured = PgTls {
            mode: Some(TlsMode::VerifyFull),
            ..PgTls::default()
        };
        assert!(resolve_tls("postgres://h/db?sslmode=verify-full", &configured).is_ok());
        let err =
            resolve_tls("postgres://h/db?sslmode=require", &configured).expect_err("a conflict");
        let text = err.to_string();
        assert!(
            text.contains("postgres.tls") && text.contains("sslmode=require"),
            "{text}"
        );
        let with_ca = PgTls {
            ca_file: Some("/a.pem".into()),
            ..configured.clone()
        };
        let err =
            resolve_tls("postgres://h/db?sslrootcert=/b.pem", &with_ca).expect_err("two CA files");
        assert!(err.to_string().contains("sslrootcert=/b.pem"), "{err}");
        // Settings that cannot work together.
        for (url, why) in [
            ("postgres://h/db?sslmode=verify-ca", "verify-ca"),
            (
                "postgres://h/db?sslmode=require&sslrootcert=/a.pem",
                "only used by",
            ),
            ("postgres://h/db?sslcert=/c.pem", "both"),
            (
                "postgres://h/db?sslmode=disable&sslcert=/c.pem&sslkey=/k.pem",
                "disable",
            ),
        ] {
            let err = resolve_tls(url, &none).expect_err(url);
            assert!(err.to_string().contains(why), "{url}: {err}");
        }
        // Key=value connection strings are left to tokio-postgres.
        let (url, _) = resolve_tls("host=h dbname=db", &none).expect("key=value");
        assert_eq!(url, "host=h dbname=db");
    }
}
