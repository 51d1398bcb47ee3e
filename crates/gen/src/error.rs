//! Errors of the generator.

/// What can go wrong while generating.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The options do not make sense.
    #[error("invalid options: {0}")]
    Options(String),
    /// PostgreSQL failed.
    #[error("writing {table} to PostgreSQL: {source}")]
    Postgres {
        table: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// Writing the product Delta table failed.
    #[error("writing the product table {uri}: {source}")]
    Products {
        uri: String,
        #[source]
        source: deltalake::DeltaTableError,
    },
    /// Building the product batch failed.
    #[error("building the product batch: {0}")]
    Arrow(#[from] deltalake::arrow::error::ArrowError),
    /// Kafka failed.
    #[error("producing to {topic}: {message}")]
    Kafka { topic: String, message: String },
    /// The generator produced a record its own validation disagrees with (a bug).
    #[error("internal: {0}")]
    Internal(String),
}

/// Result of the generator.
pub type Result<T, E = Error> = std::result::Result<T, E>;
