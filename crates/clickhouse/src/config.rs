//! Connection settings and the client.

use crate::{tsv, Error, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where ClickHouse is and who lakeshop is there.
#[derive(Clone)]
pub struct ClickHouseOptions {
    /// HTTP URL of the server, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    /// Database holding lakeshop's tables; `migrate` creates it.
    pub database: String,
    pub user: String,
    /// Empty for none.
    pub password: String,
    /// How request and response bodies travel.
    pub compression: Compression,
}

/// Compression of the bodies sent to and read from the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// LZ4 blocks, ClickHouse's own: a few times smaller over a network, at some CPU on
    /// both ends.
    #[default]
    Lz4,
    /// Plain bodies: cheapest when the server is on the same host or a fast local link.
    None,
}

impl From<Compression> for clickhouse::Compression {
    fn from(c: Compression) -> Self {
        match c {
            Compression::Lz4 => clickhouse::Compression::Lz4,
            Compression::None => clickhouse::Compression::None,
        }
    }
}

impl std::fmt::Debug for ClickHouseOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseOptions")
            .field("url", &lakeshop_model::mask_url(&self.url))
            .field("database", &self.database)
            .field("user", &self.user)
            .field(
                "password",
                &if self.password.is_empty() { "" } else { "***" },
            )
            .field("compression", &self.compression)
            .finish()
    }
}

/// The oldest server lakeshop's SQL is written for (`ALTER TABLE ... REPLACE PARTITION`,
/// `Decimal`, `LIMIT n BY` are all there).
pub const MIN_SERVER: ServerVersion = ServerVersion {
    major: 18,
    minor: 16,
    patch: 0,
};

/// A server's `version()`, e.g. `18.16.1` or `24.8.4.13`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl ServerVersion {
    /// Parses `major.minor[.patch[.build]]`.
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.trim().split('.').map(|p| p.parse::<u32>());
        let major = parts.next()?.ok()?;
        let minor = parts.next()?.ok()?;
        let patch = match parts.next() {
            Some(p) => p.ok()?,
            None => 0,
        };
        Some(Self {
            major,
            minor,
            patch,
        })
    }

    /// Whether the client's typed-row validation can be used: it reads
    /// `RowBinaryWithNamesAndTypes`, which 18.16 does not have. lakeshop checks columns
    /// itself (`DESCRIBE TABLE`) on every server, so this only decides the client setting.
    pub fn has_typed_row_binary(&self) -> bool {
        self.major >= 21
    }
}

impl std::fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Checks a database or table name: ASCII letters, digits and `_`, not starting with a
/// digit. Names are never taken from data; this keeps configured ones from breaking SQL.
pub fn check_identifier(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "{what} {name:?} must be ASCII letters, digits and '_', not starting with a digit"
        )))
    }
}

/// A ClickHouse server and lakeshop's database on it.
#[derive(Clone)]
pub struct ClickHouse {
    /// Queries in the database.
    pub(crate) client: clickhouse::Client,
    /// Queries outside any database (creating it).
    pub(crate) server: clickhouse::Client,
    pub(crate) database: String,
    pub(crate) url: String,
}

impl std::fmt::Debug for ClickHouse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouse")
            .field("url", &lakeshop_model::mask_url(&self.url))
            .field("database", &self.database)
            .finish()
    }
}

/// TLS of an `https://` server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM file of the CA certificates that sign the server's certificate (a private CA).
    /// When set, only these are trusted; when not, the system's roots are.
    pub ca_file: Option<PathBuf>,
}

/// How long an idle connection stays in the pool: ClickHouse closes keep-alive
/// connections after 3 s, so reuse ends before the server's own cut (as the client crate's
/// default connector does).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// The root certificates of an HTTPS client: the CA file's, else the system's.
fn root_store(ca_file: Option<&Path>) -> Result<rustls::RootCertStore> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let bad = |e: &dyn std::fmt::Display| {
                Error::Config(format!("clickhouse.ca_file {}: {e}", path.display()))
            };
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(&e))?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| bad(&e))?;
            if certs.is_empty() {
                return Err(bad(&"no PEM certificate in the file"));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| bad(&e))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                // A system root rustls cannot parse is skipped, as every client does.
                let _ = roots.add(cert);
            }
        }
    }
    Ok(roots)
}

/// An HTTPS-only client (rustls with ring, HTTP/1.1) trusting `ca_file` or the system roots.
fn https_client(ca_file: Option<&Path>) -> Result<clickhouse::Client> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS setup: {e}")))?
        .with_root_certificates(root_store(ca_file)?)
        .with_no_client_auth();
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_keepalive(Some(TCP_KEEPALIVE));
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(connector);
    Ok(clickhouse::Client::with_http_client(client))
}

impl ClickHouse {
    /// A client for the configured server and database; connects on first use. An
    /// `https://` URL trusts the system's roots.
    pub fn new(options: &ClickHouseOptions) -> Result<Self> {
        Self::with_tls(options, &TlsOptions::default())
    }

    /// A client for the configured server and database, with TLS settings for an
    /// `https://` URL; connects on first use.
    pub fn with_tls(options: &ClickHouseOptions, tls: &TlsOptions) -> Result<Self> {
        check_identifier("clickhouse.database", &options.database)?;
        let url = url::Url::parse(&options.url)
            .map_err(|e| Error::Config(format!("clickhouse.url {:?}: {e}", options.url)))?;
        let base = match url.scheme() {
            "http" => {
                if tls.ca_file.is_some() {
                    return Err(Error::Config(format!(
                        "clickhouse.ca_file is set but clickhouse.url {:?} is plain http://; use https://",
                        options.url
                    )));
                }
                clickhouse::Client::default()
            }
            "https" => https_client(tls.ca_file.as_deref())?,
            other => {
                return Err(Error::Config(format!(
                    "clickhouse.url {:?}: scheme {other:?} is not http or https",
                    options.url
                )))
            }
        };
        let mut server = base
            .with_url(options.url.trim_end_matches('/'))
            .with_user(&options.user)
            // Plain RowBinary everywhere: 18.16 lacks RowBinaryWithNamesAndTypes, and
            // columns are checked against DESCRIBE TABLE before every load instead.
            .with_validation(false)
            .with_compression(options.compression.into());
        if !options.password.is_empty() {
            server = server.with_password(&options.password);
        }
        let client = server.clone().with_database(&options.database);
        Ok(Self {
            client,
            server,
            database: options.database.clone(),
            url: options.url.clone(),
        })
    }

    /// The database name.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// Runs one statement in the database.
    pub async fn execute(&self, operation: &str, sql: &str) -> Result<()> {
        self.client
            .query_raw(sql)
            .execute()
            .await
            .map_err(Error::query(operation))
    }

    /// Runs a query in the database and reads its `TabSeparated` answer.
    pub async fn rows(&self, operation: &str, sql: &str) -> Result<Vec<Vec<String>>> {
        Self::rows_of(&self.client, operation, sql).await
    }

    /// Runs a query in the database and calls `f` with each row of its `TabSeparated` answer
    /// as it arrives: a large answer is never held whole. An error of `f` ends the read.
    pub async fn each_row(
        &self,
        operation: &str,
        sql: &str,
        mut f: impl FnMut(&[&str]) -> std::result::Result<(), String>,
    ) -> Result<()> {
        let mut cursor = self
            .client
            .query_raw(sql)
            .fetch_bytes("TabSeparated")
            .map_err(Error::query(operation))?;
        let answer = |message: String| Error::Answer {
            operation: operation.to_string(),
            message,
        };
        let mut lines = tsv::Lines::default();
        while let Some(piece) = cursor.next().await.map_err(Error::query(operation))? {
            lines.feed(&piece, &mut f).map_err(answer)?;
        }
        lines.finish(&mut f).map_err(answer)
    }

    pub(crate) async fn rows_of(
        client: &clickhouse::Client,
        operation: &str,
        sql: &str,
    ) -> Result<Vec<Vec<String>>> {
        let body = client
            .query_raw(sql)
            .fetch_bytes("TabSeparated")
            .map_err(Error::query(operation))?
            .collect()
            .await
            .map_err(Error::query(operation))?;
        tsv::parse(&body).map_err(|message| Error::Answer {
            operation: operation.to_string(),
            message,
        })
    }

    /// The server's version (`SELECT version()`), checked against [`MIN_SERVER`].
    pub async fn server_version(&self) -> Result<(ServerVersion, String)> {
        let rows = Self::rows_of(&self.server, "version", "SELECT version()").await?;
        let text = rows
            .first()
            .and_then(|r| r.first())
            .cloned()
            .unwrap_or_default();
        let version = ServerVersion::parse(&text).ok_or_else(|| Error::Answer {
            operation: "version".into(),
            message: format!("cannot read version {text:?}"),
        })?;
        if version < MIN_SERVER {
            return Err(Error::Config(format!(
                "ClickHouse {text} is older than {MIN_SERVER}, the oldest lakeshop supports"
            )));
        }
        Ok((version, text))
    }

    /// Fails with a clear error unless every table in `tables` exists in the database
    /// (the tables `migrate` creates).
    pub async fn require_tables(&self, tables: &[&str]) -> Result<()> {
        // Asked outside the database, which may not exist yet; its name is a checked
        // identifier, so it is safe inside the quotes.
        let rows = Self::rows_of(
            &self.server,
            "list tables",
            &format!(
                "SELECT name FROM system.tables WHERE database = '{}'",
                self.database
            ),
        )
        .await?;
        let have: std::collections::BTreeSet<&str> = rows
            .iter()
            .filter_map(|r| r.first())
            .map(String::as_str)
            .collect();
        let missing: Vec<&str> = tables
            .iter()
            .copied()
            .filter(|t| !have.contains(t))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Error::Config(format!(
                "database {} lacks {}: run `lakeshop migrate` first",
                self.database,
                missing.join(", ")
            )))
        }
    }

    /// The columns of a table, in table order, as (name, type).
    pub async fn columns(&self, table: &str) -> Result<Vec<(String, String)>> {
        check_identifier("table", table)?;
        let rows = self
            .rows(
                &format!("describe {table}"),
                &format!("DESCRIBE TABLE {table}"),
            )
            .await?;
        rows.into_iter()
            .map(|r| match (r.first(), r.get(1)) {
                (Some(n), Some(t)) => Ok((n.clone(), t.clone())),
                _ => Err(Error::Answer {
                    operation: format!("describe {table}"),
                    message: "a row without name and type".into(),
                }),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_versions() {
        let old = ServerVersion::parse("18.16.1").expect("18.16.1");
        let new = ServerVersion::parse("24.8.4.13").expect("24.8");
        assert!(old >= MIN_SERVER && new > old);
        assert!(!old.has_typed_row_binary() && new.has_typed_row_binary());
        assert_eq!(
            ServerVersion::parse("18.14").map(|v| v < MIN_SERVER),
            Some(true)
        );
        assert_eq!(ServerVersion::parse("x.1"), None);
    }

    #[test]
    fn checks_names_and_urls() {
        assert!(check_identifier("db", "lakeshop_test_1").is_ok());
        for bad in ["", "1db", "a-b", "a;DROP", "a b", "`x`"] {
            assert!(check_identifier("db", bad).is_err(), "{bad}");
        }
        let opts = |url: &str, db: &str| ClickHouseOptions {
            url: url.into(),
            database: db.into(),
            user: "default".into(),
            password: "secret".into(),
            compression: Compression::default(),
        };
        assert!(ClickHouse::new(&opts("http://127.0.0.1:8123", "lakeshop")).is_ok());
        assert!(ClickHouse::new(&opts("not a url", "lakeshop")).is_err());
        assert!(ClickHouse::new(&opts("ftp://h", "lakeshop")).is_err());
        assert!(ClickHouse::new(&opts("https://127.0.0.1:8443", "lakeshop")).is_ok());
        let missing = TlsOptions {
            ca_file: Some("/nonexistent/ca.pem".into()),
        };
        let err = ClickHouse::with_tls(&opts("https://h:8443", "lakeshop"), &missing)
            .expect_err("a CA file that is not there");
        assert!(err.to_string().contains("clickhouse.ca_file"), "{err}");
        let err = ClickHouse::with_tls(&opts("http://h:8123", "lakeshop"), &missing)
            .expect_err("a CA file with plain HTTP");
        assert!(err.to_string().contains("plain http://"), "{err}");
        assert!(ClickHouse::new(&opts("http://h", "x;y")).is_err());
        assert!(!format!("{:?}", opts("http://h", "d")).contains("secret"));
        // A password in the URL's user info is hidden too, in the options and the client.
        let with_pw = opts("http://u:url-secret@h:8123", "d");
        assert!(!format!("{with_pw:?}").contains("url-secret"));
        let client = ClickHouse::new(&with_pw).expect("client");
        assert!(!format!("{client:?}").contains("url-secret"), "{client:?}");
    }
}
