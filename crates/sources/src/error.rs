//! Errors of the extractors.

/// What can go wrong while extracting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kafka client failed.
    #[error("kafka topic {topic}: {source}")]
    Kafka {
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The Kafka consumer stopped (client, rebalance or position read).
    #[error(transparent)]
    Consumer(#[from] crate::kafka::ConsumerError),
    /// PostgreSQL failed.
    #[error("postgres {table}: {source}")]
    Postgres {
        table: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// The source Delta table failed.
    #[error("source delta table {uri}: {source}")]
    SourceTable {
        uri: String,
        #[source]
        source: Box<deltalake::DeltaTableError>,
    },
    /// The stage layer failed.
    #[error(transparent)]
    Stage(#[from] lakeshop_stage::Error),
    /// Building Arrow data failed.
    #[error("arrow: {0}")]
    Arrow(#[from] deltalake::arrow::error::ArrowError),
    /// Connection settings that cannot work (a TLS file that is not there, a conflict
    /// between the URL and the pipeline file).
    #[error("postgres settings: {0}")]
    Config(String),
    /// The runtime failed (a task panicked or was cancelled).
    #[error("internal: {0}")]
    Internal(String),
}

/// Result of the extractors.
pub type Result<T, E = Error> = std::result::Result<T, E>;
