//! `[api]` of the pipeline file: where `lakeshop serve` listens (HTTP or HTTPS), its tokens
//! and its limits.

use lakeshop_service::Sensitive;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

/// `[api]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Listen address. Default `127.0.0.1:8080`.
    pub listen: String,
    /// Bearer tokens that may write (and read), comma-separated, from
    /// `${LAKESHOP_API_WRITE_TOKENS}`. None set: every write is refused with 401.
    pub write_tokens: Sensitive<String>,
    /// Bearer tokens that may only read, comma-separated, from `${LAKESHOP_API_READ_TOKENS}`.
    pub read_tokens: Sensitive<String>,
    /// Reads need a read or write token too. Default `false` (reads are open).
    pub reads_need_token: bool,
    /// Most purchases in one `POST /api/purchases` array. Default 10000.
    pub max_batch: usize,
    /// Largest request body in bytes (413 above it). Default 16 MiB.
    pub max_body_bytes: usize,
    /// How long a purchase may wait for the broker's acknowledgement before the request
    /// fails with 503 (librdkafka's `message.timeout.ms`). Default `10s`.
    #[serde(with = "humantime_serde")]
    pub produce_timeout: Duration,
    /// Ask the broker for idempotent produce (`enable.idempotence`): no duplicates from the
    /// producer's own retries. Brokers without it need `false`;
    /// the loader and the batch job count each purchase id once either way. Default `true`.
    pub idempotent_producer: bool,
    /// Purchase ids (with a fingerprint of their content) kept to answer a re-send: an
    /// identical one is acknowledged without producing it again, one with other content
    /// gets 409. Older ids are forgotten; the loader still counts each id once and rejects
    /// conflicting re-sends it sees. Default 1000000 (about 40 MiB).
    pub remember_purchase_ids: usize,
    /// Most rows an analytics answer holds (`limit` may ask for fewer). Default 100000.
    pub max_rows: usize,
    /// Requests per second each client may send (by bearer token, else by IP address);
    /// over it the answer is 429 with `Retry-After`. 0 turns limits off. Default 0.
    pub rate_limit: f64,
    /// Requests a client may send at once above the rate. Default 100.
    pub rate_limit_burst: u32,
    /// Serve HTTPS with this PEM certificate chain (with `tls_key_file`). Default: HTTP.
    pub tls_cert_file: Option<PathBuf>,
    /// The PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            write_tokens: Sensitive::default(),
            read_tokens: Sensitive::default(),
            reads_need_token: false,
            max_batch: 10_000,
            max_body_bytes: 16 * 1024 * 1024,
            produce_timeout: Duration::from_secs(10),
            idempotent_producer: true,
            remember_purchase_ids: 1_000_000,
            max_rows: 100_000,
            rate_limit: 0.0,
            rate_limit_burst: 100,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

impl ApiConfig {
    /// The checks types alone cannot make.
    pub fn check(&self) -> Result<()> {
        self.listen
            .parse::<std::net::SocketAddr>()
            .map_err(|e| Error::Config(format!("api.listen {:?}: {e}", self.listen)))?;
        if self.max_batch == 0 {
            return Err(Error::Config("api.max_batch: must be at least 1".into()));
        }
        if self.max_body_bytes < 1024 {
            return Err(Error::Config(
                "api.max_body_bytes: must be at least 1024".into(),
            ));
        }
        if !(self.rate_limit >= 0.0 && self.rate_limit.is_finite()) {
            return Err(Error::Config(
                "api.rate_limit: must be 0 (off) or a positive rate".into(),
            ));
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err(Error::Config(
                "api.tls_cert_file and api.tls_key_file: set both or neither".into(),
            ));
        }
        if self.max_rows == 0 {
            return Err(Error::Config("api.max_rows: must be at least 1".into()));
        }
        if self.produce_timeout < Duration::from_millis(100) {
            return Err(Error::Config(
                "api.produce_timeout: must be at least 100ms".into(),
            ));
        }
        Ok(())
    }
}
