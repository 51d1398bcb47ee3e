//! The pipeline file: one TOML per pipeline, `${VAR}` / `${VAR:-default}` interpolated from
//! the environment (and `.env`), unknown keys rejected, every key defaulted.
//!
//! Errors name the key path (`kafka.topics.purchases.partitions: ...`) so a typo is found
//! without reading the code.

use anyhow::{bail, Context as _, Result};
use rust_decimal::Decimal;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A whole pipeline.
// `batch`, `stream` and `alerts` are validated now and read by the commands that use them.
#[allow(dead_code)]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Version of this file's format.
    #[serde(default = "one")]
    pub schema_version: u32,
    #[serde(default)]
    pub pipeline: PipelineConfig,
    #[serde(default)]
    pub postgres: PostgresConfig,
    #[serde(default)]
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub s3: S3Config,
    #[serde(default)]
    pub products: ProductsConfig,
    #[serde(default)]
    pub stage: StageConfig,
    #[serde(default)]
    pub clickhouse: ClickHouseConfig,
    #[serde(default)]
    pub batch: BatchConfig,
    #[serde(default)]
    pub stream: StreamConfig,
    #[serde(default)]
    pub alerts: AlertsConfig,
    #[serde(default)]
    pub api: lakeshop_api::ApiConfig,
}

fn one() -> u32 {
    1
}

/// `[pipeline]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Name of the pipeline; consumer groups and Delta `txn` app ids derive from it.
    pub name: String,
    /// IANA time zone of business days. Default `UTC`.
    pub timezone: String,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            name: "shop".into(),
            timezone: "UTC".into(),
        }
    }
}

/// PostgreSQL TLS mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    Disable,
    /// Encrypt when offered, certificate not checked (libpq's meaning).
    #[default]
    Prefer,
    /// Always encrypt, certificate not checked.
    Require,
    /// Always encrypt; certificate chain and host name checked against `ca_file` (else
    /// the system roots).
    #[serde(rename = "verify-full")]
    VerifyFull,
}

/// `[postgres]` (`Debug` hides the URL's password)
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// Connection URL. Default `postgres://postgres@127.0.0.1:5432/lakeshop`.
    pub url: String,
    /// TLS: disable | prefer | require | verify-full (libpq's meanings). Default: the
    /// URL's `sslmode`, else `prefer`; set in both places with different values is an error.
    pub tls: Option<TlsMode>,
    /// PEM file of the CA(s) `verify-full` trusts (only these then). Default: the URL's
    /// `sslrootcert`, else the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for servers that authenticate by certificate (`cert` in
    /// pg_hba.conf), with `key_file`. Default: the URL's `sslcert`, else none.
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) of `cert_file`. Default: the URL's `sslkey`, else none.
    pub key_file: Option<PathBuf>,
    /// Default `clients`.
    pub clients_table: String,
    /// Default `sellers`.
    pub sellers_table: String,
    /// Column incremental extracts follow. Default `updated_at`.
    pub watermark_column: String,
    /// Rows per stage commit of `extract clients|sellers`; an interrupted incremental
    /// extract resumes from its last commit. Default 1,000,000.
    pub commit_rows: usize,
    /// How often `extract clients|sellers --follow` extracts again. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub follow_interval: Duration,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/lakeshop".into(),
            tls: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            clients_table: "clients".into(),
            sellers_table: "sellers".into(),
            watermark_column: "updated_at".into(),
            commit_rows: 1_000_000,
            follow_interval: Duration::from_secs(5),
        }
    }
}

/// `[kafka.topics.<key>]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// Topic name.
    pub name: String,
    /// Partitions created by `make up`. Default 1.
    #[serde(default = "one_i32")]
    pub partitions: i32,
}

fn one_i32() -> i32 {
    1
}

/// `[kafka]` (`Debug` hides the values of secret properties)
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers. Default `127.0.0.1:9092`.
    pub brokers: String,
    /// Prefix of consumer groups. Default `lakeshop`.
    pub group_prefix: String,
    /// librdkafka properties passed through (SASL/SSL...).
    pub properties: BTreeMap<String, String>,
    /// Topics by role: purchases, interactions, sales_aggregate, notifications, dead_letters.
    pub topics: BTreeMap<String, TopicConfig>,
}

/// The topic roles lakeshop knows.
pub const TOPIC_ROLES: [&str; 5] = [
    "purchases",
    "interactions",
    "sales_aggregate",
    "notifications",
    "dead_letters",
];

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            group_prefix: "lakeshop".into(),
            properties: BTreeMap::new(),
            topics: TOPIC_ROLES
                .iter()
                .map(|r| {
                    (
                        r.to_string(),
                        TopicConfig {
                            name: r.to_string(),
                            partitions: 1,
                        },
                    )
                })
                .collect(),
        }
    }
}

impl KafkaConfig {
    /// The topic name for a role (the role's own name when not configured).
    pub fn topic(&self, role: &str) -> String {
        self.topics
            .get(role)
            .map(|t| t.name.clone())
            .unwrap_or_else(|| role.to_string())
    }

    /// A librdkafka client config with the brokers and pass-through properties.
    pub fn client_config(&self) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

/// `[s3]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// Endpoint URL; empty for AWS. Default `http://127.0.0.1:9100`.
    pub endpoint: String,
    /// Default `us-east-1`.
    pub region: String,
    /// Allow plain HTTP endpoints. Default true.
    pub allow_http: bool,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            endpoint: "http://127.0.0.1:9100".into(),
            region: "us-east-1".into(),
            allow_http: true,
        }
    }
}

impl PostgresConfig {
    /// The TLS settings as the PostgreSQL source takes them (merged with the URL's own
    /// `sslmode`, `sslrootcert`, `sslcert` and `sslkey` when connecting).
    pub fn tls_settings(&self) -> lakeshop_sources::postgres::PgTls {
        use lakeshop_sources::postgres::TlsMode as T;
        lakeshop_sources::postgres::PgTls {
            mode: self.tls.map(|m| match m {
                TlsMode::Disable => T::Disable,
                TlsMode::Prefer => T::Prefer,
                TlsMode::Require => T::Require,
                TlsMode::VerifyFull => T::VerifyFull,
            }),
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
        }
    }
}

impl S3Config {
    /// Storage options for deltalake / object_store. Credentials are left to the
    /// environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE).
    pub fn storage_options(&self) -> HashMap<String, String> {
        let mut o = HashMap::new();
        if !self.endpoint.is_empty() {
            o.insert("AWS_ENDPOINT_URL".into(), self.endpoint.clone());
        }
        o.insert("AWS_REGION".into(), self.region.clone());
        o.insert("AWS_ALLOW_HTTP".into(), self.allow_http.to_string());
        // Safe concurrent commits through conditional puts; never unsafe rename.
        o.insert("aws_conditional_put".into(), "etag".into());
        o
    }
}

/// `[products]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProductsConfig {
    /// URI of the source product Delta table. Default `s3://lakeshop/source/products`.
    pub uri: String,
    /// How often `extract products --follow` looks for new source versions. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub follow_interval: Duration,
}

impl Default for ProductsConfig {
    fn default() -> Self {
        Self {
            uri: "s3://lakeshop/source/products".into(),
            follow_interval: Duration::from_secs(5),
        }
    }
}

/// `[stage]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StageConfig {
    /// Root of the stage layer: a folder or `s3://bucket/prefix`. Default `./data/stage`.
    pub uri: String,
    /// Flush a commit at least this often. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Flush a commit at this many rows. Default 50000.
    pub flush_max_rows: usize,
}

impl Default for StageConfig {
    fn default() -> Self {
        Self {
            uri: "./data/stage".into(),
            flush_interval: Duration::from_secs(1),
            flush_max_rows: 50_000,
        }
    }
}

/// `[clickhouse]` (`Debug` hides the password and any credentials in the URL)
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP(S) URL. Default `http://127.0.0.1:8123`.
    pub url: String,
    /// Default `lakeshop`.
    pub database: String,
    /// Default `default`.
    pub user: String,
    /// From `${CLICKHOUSE_PASSWORD}` only.
    pub password: String,
    /// `lz4` (default) or `none` (a server on the same host: saves the CPU of both ends).
    pub compression: lakeshop_clickhouse::Compression,
    /// PEM file of the CA that signs an `https://` server's certificate (a private CA);
    /// only its certificates are trusted then. Default: none, the system's roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".into(),
            database: "lakeshop".into(),
            user: "default".into(),
            password: String::new(),
            compression: lakeshop_clickhouse::Compression::default(),
            ca_file: None,
        }
    }
}

/// What happens to PII (email, address) in `stage.sales` and ClickHouse.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PiiMode {
    #[default]
    Keep,
    Hash,
    Drop,
}

/// `[batch]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// keep | hash | drop. Default `keep`.
    pub pii: PiiMode,
}

/// `[stream]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// Lateness accepted before a window closes (measured on the watermark); later
    /// purchases are counted all the same, as corrections of their closed windows. Default
    /// `5m`.
    #[serde(with = "humantime_serde")]
    pub allowed_lateness: Duration,
    /// How far ahead of its Kafka timestamp a purchase may be stamped and still move the
    /// watermark to its own time; beyond, it counts in its own windows, moves the watermark
    /// no further than its Kafka timestamp plus this, and is flagged `future`. Default `1m`.
    #[serde(with = "humantime_serde")]
    pub max_clock_skew: Duration,
    /// A purchase id sent again is a duplicate of the arrival counted when it is stamped no
    /// more than this after it (an identical re-send, whatever its age, always is); later,
    /// it counts as a new purchase. The batch job decides the same way. At least a day and
    /// the lateness. The loader keeps the ids of this span (and a day more) in a filter of
    /// about 2 bytes per id, and looks an id up in ClickHouse only when the filter says
    /// "maybe". Default `7d`.
    #[serde(with = "humantime_serde")]
    pub dedup_horizon: Duration,
    /// Flush changed windows and the checkpoint at least this often while records flow:
    /// the pace of event-to-ClickHouse latency (each flush is up to four small inserts).
    /// Default `200ms`.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Records read but not yet acknowledged by ClickHouse before reading pauses
    /// (backpressure while ClickHouse is down). Default 500000.
    pub max_unacked_records: usize,
    /// How often the dimension tables' Delta versions are checked; the cache is read again
    /// when one moved. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub dims_refresh: Duration,
    /// Also forward each rejected record to the `dead_letters` topic (raw payload; reason
    /// and source position in headers), at least once. Default `false`.
    pub forward_dead_letters: bool,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            allowed_lateness: Duration::from_secs(300),
            max_clock_skew: Duration::from_secs(60),
            dedup_horizon: Duration::from_secs(7 * 86_400),
            flush_interval: Duration::from_millis(200),
            max_unacked_records: 500_000,
            dims_refresh: Duration::from_secs(5),
            forward_dead_letters: false,
        }
    }
}

/// `[alerts]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Alert when a shop's hourly revenue is below this; 0 turns it off. Default `0`.
    pub min_hourly_revenue: Decimal,
    /// Spike: a minute's revenue above this many times the trailing average. Default 5.
    pub spike_factor: f64,
    /// A purchase above this amount is suspicious. Default `100000`.
    pub suspicious_amount: Decimal,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            min_hourly_revenue: Decimal::ZERO,
            spike_factor: 5.0,
            suspicious_amount: Decimal::from(100_000),
        }
    }
}

impl Config {
    /// Reads, interpolates and checks a pipeline file. Nothing is connected to.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading pipeline file {}", path.display()))?;
        Self::parse(&text, &|k| std::env::var(k).ok())
            .with_context(|| format!("in pipeline file {}", path.display()))
    }

    /// Loads the pipeline file and applies the command line's overrides.
    pub fn load_with(path: &Path, overrides: &Overrides) -> Result<Self> {
        let mut config = Self::load(path)?;
        overrides
            .apply(&mut config)
            .with_context(|| format!("command-line overrides of {}", path.display()))?;
        Ok(config)
    }

    /// Parses a pipeline from text, resolving `${VAR}` through `env`.
    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let mut value: toml::Value = toml::from_str(text).context("not valid TOML")?;
        interpolate(&mut value, &mut Vec::new(), env)?;
        let config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            anyhow::anyhow!("{path}: {}", e.into_inner())
        })?;
        config.check()?;
        Ok(config)
    }

    /// The checks types alone cannot make.
    fn check(&self) -> Result<()> {
        if self.schema_version != 1 {
            bail!(
                "schema_version: {} is not supported (this lakeshop reads 1)",
                self.schema_version
            );
        }
        if self.pipeline.name.is_empty()
            || !self
                .pipeline
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            bail!(
                "pipeline.name: {:?} must be non-empty ASCII letters, digits, '-' or '_'",
                self.pipeline.name
            );
        }
        self.timezone()?;
        url::Url::parse(&self.postgres.url)
            .map_err(|e| anyhow::anyhow!("postgres.url: not a URL: {e}"))?;
        for (key, col) in [
            ("postgres.clients_table", &self.postgres.clients_table),
            ("postgres.sellers_table", &self.postgres.sellers_table),
            ("postgres.watermark_column", &self.postgres.watermark_column),
        ] {
            if col.is_empty()
                || !col
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
            {
                bail!("{key}: {col:?} is not a plain SQL identifier");
            }
        }
        if self.kafka.brokers.trim().is_empty() {
            bail!("kafka.brokers: empty");
        }
        for (role, topic) in &self.kafka.topics {
            if !TOPIC_ROLES.contains(&role.as_str()) {
                bail!(
                    "kafka.topics.{role}: unknown topic role (expected one of {})",
                    TOPIC_ROLES.join(", ")
                );
            }
            if topic.name.is_empty() {
                bail!("kafka.topics.{role}.name: empty");
            }
            if !(1..=10_000).contains(&topic.partitions) {
                bail!(
                    "kafka.topics.{role}.partitions: {} is outside 1..=10000",
                    topic.partitions
                );
            }
        }
        if !self.s3.endpoint.is_empty() {
            url::Url::parse(&self.s3.endpoint)
                .map_err(|e| anyhow::anyhow!("s3.endpoint: not a URL: {e}"))?;
        }
        if !self.products.uri.contains("://") && self.products.uri.is_empty() {
            bail!("products.uri: empty");
        }
        if self.stage.uri.is_empty() {
            bail!("stage.uri: empty");
        }
        lakeshop_sources::postgres::resolve_tls(&self.postgres.url, &self.postgres.tls_settings())
            .map_err(|e| anyhow::anyhow!("postgres: {e}"))?;
        if self.postgres.commit_rows == 0 {
            bail!("postgres.commit_rows: must be at least 1");
        }
        if self.stage.flush_max_rows == 0 {
            bail!("stage.flush_max_rows: must be at least 1");
        }
        let horizon = self.stream.dedup_horizon;
        if horizon < Duration::from_secs(86_400) || horizon < self.stream.allowed_lateness {
            bail!(
                "stream.dedup_horizon: {} must be at least a day and at least stream.allowed_lateness",
                humantime::format_duration(horizon)
            );
        }
        if self.stage.flush_interval.is_zero() {
            bail!("stage.flush_interval: must be more than 0s");
        }
        let clickhouse_url = url::Url::parse(&self.clickhouse.url)
            .map_err(|e| anyhow::anyhow!("clickhouse.url: not a URL: {e}"))?;
        if !matches!(clickhouse_url.scheme(), "http" | "https") {
            bail!(
                "clickhouse.url: {:?} is not http:// or https://",
                clickhouse_url.scheme()
            );
        }
        if self.clickhouse.ca_file.is_some() && clickhouse_url.scheme() != "https" {
            bail!("clickhouse.ca_file: set, but clickhouse.url is not https://");
        }
        if !(self.alerts.spike_factor > 1.0 && self.alerts.spike_factor.is_finite()) {
            bail!(
                "alerts.spike_factor: {} must be a number above 1",
                self.alerts.spike_factor
            );
        }
        if self.alerts.min_hourly_revenue.is_sign_negative() {
            bail!("alerts.min_hourly_revenue: must not be negative");
        }
        self.api.check()?;
        lakeshop_api::Tokens::from_config(&self.api)?;
        Ok(())
    }

    /// The business time zone.
    pub fn timezone(&self) -> Result<chrono_tz::Tz> {
        self.pipeline.timezone.parse().map_err(|_| {
            anyhow::anyhow!(
                "pipeline.timezone: {:?} is not an IANA time zone",
                self.pipeline.timezone
            )
        })
    }
}

/// Replaces `${VAR}` and `${VAR:-default}` in every string of the document.
fn interpolate(
    v: &mut toml::Value,
    path: &mut Vec<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<()> {
    match v {
        toml::Value::String(s) if s.contains("${") => {
            *s = expand(s, env).map_err(|e| anyhow::anyhow!("{}: {e}", path.join(".")))?;
        }
        toml::Value::Table(t) => {
            for (k, child) in t.iter_mut() {
                path.push(k.clone());
                interpolate(child, path, env)?;
                path.pop();
            }
        }
        toml::Value::Array(a) => {
            for (i, child) in a.iter_mut().enumerate() {
                path.push(i.to_string());
                interpolate(child, path, env)?;
                path.pop();
            }
        }
        _ => {}
    }
    Ok(())
}

fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed ${{ in {s:?}"))?;
        let expr = &after[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("bad variable name {name:?}"));
        }
        match (
            env(name).filter(|v| !v.is_empty() || default.is_none()),
            default,
        ) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => return Err(format!("environment variable {name} is not set")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

pub use lakeshop_model::mask_url;

/// Whether a librdkafka property holds a secret (its value is never shown).
fn secret_property(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "sasl.oauthbearer.config",
        "ssl.key.pem",
        "ssl_key",
        "token",
    ]
    .iter()
    .any(|s| k.contains(s))
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &mask_url(&self.url))
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("clients_table", &self.clients_table)
            .field("sellers_table", &self.sellers_table)
            .field("watermark_column", &self.watermark_column)
            .field("commit_rows", &self.commit_rows)
            .finish()
    }
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| {
                let v = if secret_property(k) {
                    "***"
                } else {
                    v.as_str()
                };
                (k.as_str(), v)
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("group_prefix", &self.group_prefix)
            .field("properties", &properties)
            .field("topics", &self.topics)
            .finish()
    }
}

impl std::fmt::Debug for ClickHouseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseConfig")
            .field("url", &mask_url(&self.url))
            .field("database", &self.database)
            .field("user", &self.user)
            .field(
                "password",
                &if self.password.is_empty() { "" } else { "***" },
            )
            .field("compression", &self.compression)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// Settings the command line overrides (global flags, before or after the subcommand).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// Root of the stage layer, instead of `[stage] uri`.
    #[arg(long, global = true, value_name = "URI")]
    pub stage_uri: Option<String>,
    /// Kafka bootstrap servers, instead of `[kafka] brokers`.
    #[arg(long, global = true, value_name = "HOST:PORT,...")]
    pub brokers: Option<String>,
    /// A topic's name, instead of `[kafka.topics.ROLE] name` (repeatable), e.g.
    /// `--topic purchases=shop_purchases`.
    #[arg(long = "topic", global = true, value_name = "ROLE=NAME")]
    pub topics: Vec<String>,
    /// ClickHouse URL, instead of `[clickhouse] url`.
    #[arg(long, global = true, value_name = "URL")]
    pub clickhouse_url: Option<String>,
    /// ClickHouse database, instead of `[clickhouse] database`.
    #[arg(long, global = true, value_name = "NAME")]
    pub clickhouse_database: Option<String>,
    /// The source product table, instead of `[products] uri`.
    #[arg(long, global = true, value_name = "URI")]
    pub products_uri: Option<String>,
}

impl Overrides {
    /// Applies the flags given to `config`, then checks it again.
    pub fn apply(&self, config: &mut Config) -> Result<()> {
        if let Some(v) = &self.stage_uri {
            config.stage.uri = v.clone();
        }
        if let Some(v) = &self.brokers {
            config.kafka.brokers = v.clone();
        }
        for t in &self.topics {
            let Some((role, name)) = t.split_once('=') else {
                bail!("--topic {t:?}: expected ROLE=NAME");
            };
            if !TOPIC_ROLES.contains(&role) {
                bail!(
                    "--topic {t:?}: {role:?} is not one of {}",
                    TOPIC_ROLES.join(", ")
                );
            }
            config
                .kafka
                .topics
                .entry(role.to_string())
                .and_modify(|t| t.name = name.to_string())
                .or_insert_with(|| TopicConfig {
                    name: name.to_string(),
                    partitions: 1,
                });
        }
        if let Some(v) = &self.clickhouse_url {
            config.clickhouse.url = v.clone();
        }
        if let Some(v) = &self.clickhouse_database {
            config.clickhouse.database = v.clone();
        }
        if let Some(v) = &self.products_uri {
            config.products.uri = v.clone();
        }
        config.check()
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn debug_never_shows_a_secret() {
        let env = |k: &str| {
            Some(match k {
                "PG" => "postgres://app:pg-secret-123@db:5432/shop".to_string(),
                "CH" => "ch-secret-456".to_string(),
                "SASL" => "sasl-secret-789".to_string(),
                _ => return None,
            })
        };
        let c = Config::parse(
            "[postgres]\nurl = \"${PG}\"\n[clickhouse]\npassword = \"${CH}\"\nurl = \"https://u:${CH}@ch:8443\"\n\
             [kafka.properties]\n\"sasl.password\" = \"${SASL}\"\n\"sasl.username\" = \"app\"\n",
            &env,
        )
        .expect("parses");
        let text = format!("{c:?}");
        for secret in ["pg-secret-123", "ch-secret-456", "sasl-secret-789"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("postgres://app:***@db:5432/shop"), "{text}");
        assert!(text.contains("\"sasl.username\": \"app\""), "{text}");
        assert_eq!(mask_url("http://127.0.0.1:8123"), "http://127.0.0.1:8123");
        assert_eq!(mask_url("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn kafka_security_properties_reach_the_client_unchanged_and_masked() {
        let env = |k: &str| (k == "SASL").then(|| "sasl-secret-789".to_string());
        let c = Config::parse(
            "[kafka]
brokers = \"b1:9093\"
[kafka.properties]
\"security.protocol\" = \"SASL_SSL\"
             \"sasl.mechanisms\" = \"SCRAM-SHA-512\"
\"sasl.username\" = \"app\"
             \"sasl.password\" = \"${SASL}\"
\"ssl.ca.location\" = \"/etc/ssl/kafka-ca.pem\"
",
            &env,
        )
        .expect("parses");
        let client = c.kafka.client_config();
        for (key, value) in [
            ("bootstrap.servers", "b1:9093"),
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", "app"),
            ("sasl.password", "sasl-secret-789"),
            ("ssl.ca.location", "/etc/ssl/kafka-ca.pem"),
        ] {
            assert_eq!(client.get(key), Some(value), "{key}");
        }
        // Neither lakeshop's config nor librdkafka's shows the password.
        for text in [format!("{:?}", c.kafka), format!("{client:?}")] {
            assert!(!text.contains("sasl-secret-789"), "{text}");
            assert!(text.contains("SASL_SSL"), "{text}");
        }
    }

    #[test]
    fn flags_override_the_file_and_are_checked() {
        let mut c = Config::parse("", &|_| None).expect("defaults");
        let o = Overrides {
            stage_uri: Some("s3://elsewhere/stage".into()),
            brokers: Some("b1:9092,b2:9092".into()),
            topics: vec!["purchases=shop_purchases".into()],
            clickhouse_url: Some("https://ch.example:8443".into()),
            clickhouse_database: Some("analytics".into()),
            products_uri: Some("s3://src/products".into()),
        };
        o.apply(&mut c).expect("valid overrides");
        assert_eq!(c.stage.uri, "s3://elsewhere/stage");
        assert_eq!(c.kafka.brokers, "b1:9092,b2:9092");
        assert_eq!(c.kafka.topic("purchases"), "shop_purchases");
        assert_eq!(c.kafka.topic("interactions"), "interactions");
        assert_eq!(
            (c.clickhouse.url.as_str(), c.clickhouse.database.as_str()),
            ("https://ch.example:8443", "analytics")
        );
        assert_eq!(c.products.uri, "s3://src/products");
        for bad in ["purchases", "nope=x"] {
            let o = Overrides {
                topics: vec![bad.into()],
                ..Overrides::default()
            };
            let err = o.apply(&mut c).expect_err(bad).to_string();
            assert!(err.contains(bad), "{err}");
        }
    }
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn every_pipeline_file_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("pipelines/") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).expect("read");
                Config::parse(&text, &no_env)
                    .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                seen += 1;
            }
        }
        assert!(seen >= 1);
    }

    #[test]
    fn shop_toml_matches_the_documented_defaults() {
        let text = include_str!("../../../pipelines/shop.toml");
        let c = Config::parse(text, &no_env).expect("parse");
        let d = Config::parse("", &no_env).expect("empty file is all defaults");
        assert_eq!(c.postgres.url, d.postgres.url);
        assert_eq!(c.kafka.brokers, d.kafka.brokers);
        assert_eq!(c.stage.uri, d.stage.uri);
        assert_eq!(c.stage.flush_interval, d.stage.flush_interval);
        assert_eq!(c.products.uri, d.products.uri);
        assert_eq!(c.kafka.topic("purchases"), "purchases");
        assert_eq!(c.kafka.topics["purchases"].partitions, 3);
    }

    #[test]
    fn interpolates_from_env_with_defaults() {
        let env = |k: &str| (k == "BROKERS").then(|| "k1:9092,k2:9092".to_string());
        let c = Config::parse(
            "[kafka]\nbrokers = \"${BROKERS}\"\n[postgres]\nurl = \"${PG:-postgres://x@h/db}\"\n",
            &env,
        )
        .expect("parse");
        assert_eq!(c.kafka.brokers, "k1:9092,k2:9092");
        assert_eq!(c.postgres.url, "postgres://x@h/db");
        let err =
            Config::parse("[clickhouse]\npassword = \"${CH_PW}\"\n", &no_env).expect_err("unset");
        assert!(format!("{err:#}")
            .contains("clickhouse.password: environment variable CH_PW is not set"));
    }

    #[test]
    fn errors_name_the_key_path() {
        let cases = [
            (
                "[kafka.topics.purchases]\nname = \"p\"\npartitions = \"three\"\n",
                "kafka.topics.purchases.partitions",
            ),
            ("[stage]\nflush_intervall = \"1s\"\n", "stage"),
            (
                "[stage]\nflush_interval = \"soon\"\n",
                "stage.flush_interval",
            ),
            (
                "[pipeline]\ntimezone = \"Mars/Olympus\"\n",
                "pipeline.timezone",
            ),
            ("[batch]\npii = \"shred\"\n", "batch.pii"),
            (
                "[kafka.topics.orders]\nname = \"o\"\n",
                "kafka.topics.orders",
            ),
            (
                "[kafka.topics.purchases]\nname = \"p\"\npartitions = 0\n",
                "kafka.topics.purchases.partitions",
            ),
        ];
        for (text, key) in cases {
            let err = format!("{:#}", Config::parse(text, &no_env).expect_err(text));
            assert!(
                err.starts_with(key),
                "{text:?} gave {err:?}, expected it to name {key}"
            );
        }
        let err = format!(
            "{:#}",
            Config::parse("[stage]\nflush_intervall = \"1s\"\n", &no_env).expect_err("unknown")
        );
        assert!(err.contains("flush_intervall"), "{err}");
    }
}
