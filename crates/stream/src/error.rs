//! Errors of the streaming loader, classified for the runner: what a retry may fix and what
//! it never will.

/// What can stop the loader.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The settings cannot work (bad topic name, missing tables).
    #[error("stream settings: {0}")]
    Config(String),
    /// The Kafka client failed.
    #[error("kafka topic {topic}: {source}")]
    Kafka {
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The Kafka consumer stopped (client, rebalance or checkpoint read).
    #[error(transparent)]
    Consumer(#[from] lakeshop_sources::kafka::ConsumerError),
    /// ClickHouse failed.
    #[error(transparent)]
    ClickHouse(#[from] lakeshop_clickhouse::Error),
    /// The stage (dimension tables) failed.
    #[error(transparent)]
    Stage(#[from] lakeshop_stage::Error),
    /// The dimension tables could not be read.
    #[error("dimension cache: {0}")]
    Dimensions(String),
    /// A dead letter could not be forwarded (the loader stops; a restart forwards again).
    #[error("dead letters: {0}")]
    DeadLetters(String),
    /// A bug or a broken invariant.
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    /// Whether running the same step again may succeed (a server that stopped answering).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::ClickHouse(e) => e.is_retryable(),
            Error::Kafka { .. } => true,
            Error::Consumer(e) => e.is_retryable(),
            _ => false,
        }
    }
}

/// Result of the streaming loader.
pub type Result<T, E = Error> = std::result::Result<T, E>;
