//! Errors of the service plumbing: binding the HTTP listener, creating a health probe.

use std::net::SocketAddr;

/// What can go wrong while setting up the service plumbing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The `/metrics` + `/healthz` listener could not bind (address in use, not local, no
    /// permission).
    #[error("binding the metrics listener on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The Kafka client behind a broker health check could not be created (bad properties).
    #[error("creating the Kafka client of health check {check}: {source}")]
    KafkaProbe {
        check: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

impl Error {
    /// Whether trying again later may succeed: a port still held by a process that is
    /// exiting may be released; bad client properties stay bad.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Bind { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::AddrInUse | std::io::ErrorKind::AddrNotAvailable
            ),
            Error::KafkaProbe { .. } => false,
        }
    }
}

/// Result of the service plumbing.
pub type Result<T, E = Error> = std::result::Result<T, E>;
