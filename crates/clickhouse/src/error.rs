//! Errors of the ClickHouse sink.

/// What can go wrong talking to ClickHouse.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection settings cannot work (bad URL, bad database name).
    #[error("clickhouse settings: {0}")]
    Config(String),
    /// A statement or query failed on the server or on the way there.
    #[error("clickhouse {operation}: {source}")]
    Query {
        operation: String,
        #[source]
        source: clickhouse::error::Error,
    },
    /// A migration file cannot be read or split into statements.
    #[error("migration {file}: {message}")]
    MigrationFile { file: String, message: String },
    /// A statement of a migration failed on the server.
    #[error("migration {file}, statement {statement}: {source}")]
    Migration {
        file: String,
        statement: usize,
        #[source]
        source: clickhouse::error::Error,
    },
    /// An applied migration's file changed afterwards; files are append-only.
    #[error("migration {file} was applied with checksum {applied} but the file now has {now}: applied migrations never change, add a new file instead")]
    MigrationChanged {
        file: String,
        applied: String,
        now: String,
    },
    /// The Arrow data does not fit the ClickHouse table's columns.
    #[error("table {table}, column {column}: {message}")]
    Schema {
        table: String,
        column: String,
        message: String,
    },
    /// The server answered something lakeshop cannot read.
    #[error("clickhouse answer to {operation}: {message}")]
    Answer { operation: String, message: String },
}

impl Error {
    pub(crate) fn query(
        operation: impl Into<String>,
    ) -> impl FnOnce(clickhouse::error::Error) -> Error {
        let operation = operation.into();
        move |source| Error::Query { operation, source }
    }

    /// Whether the same operation may succeed when run again (network trouble, timeouts);
    /// user and schema errors never do.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Query {
                source: clickhouse::error::Error::Network(_) | clickhouse::error::Error::TimedOut,
                ..
            }
        )
    }
}

/// Result of the ClickHouse sink.
pub type Result<T, E = Error> = std::result::Result<T, E>;
