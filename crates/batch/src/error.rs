//! Errors of the batch job.

use chrono::NaiveDate;

/// What can go wrong in a batch run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The days asked for make no sense (`--from` after `--to`, a range too long).
    #[error("{0}")]
    Range(String),
    /// The stage layer failed (opening, registering or writing a table).
    #[error(transparent)]
    Stage(#[from] lakeshop_stage::Error),
    /// ClickHouse failed.
    #[error(transparent)]
    ClickHouse(#[from] lakeshop_clickhouse::Error),
    /// A query over the stage failed.
    #[error("day {day}, {step}: {source}")]
    Query {
        day: NaiveDate,
        step: &'static str,
        #[source]
        source: Box<deltalake::datafusion::error::DataFusionError>,
    },
    /// A writing task ended without an answer (the runtime is shutting down).
    #[error("day {day}: {step} was cancelled")]
    Cancelled { day: NaiveDate, step: &'static str },
    /// Reading a dimension table the sales rows join failed.
    #[error("reading stage.{table}: {source}")]
    Dimension {
        table: &'static str,
        #[source]
        source: Box<deltalake::datafusion::error::DataFusionError>,
    },
    /// Converting the query results to a table's schema failed.
    #[error("day {day}, {step}: {source}")]
    Arrow {
        day: NaiveDate,
        step: &'static str,
        #[source]
        source: deltalake::arrow::error::ArrowError,
    },
    /// Joining the dimensions made more rows than purchases: a dimension table holds an id
    /// twice, which the stage's upserts should never allow.
    #[error("day {day}: {purchases} purchases became {rows} sales rows: a stage dimension table (clients, sellers or products) holds an id more than once")]
    DimensionFanOut {
        day: NaiveDate,
        purchases: u64,
        rows: u64,
    },
}

impl Error {
    /// Whether the same run may succeed later (storage or network trouble, commit races);
    /// bad input and broken invariants never do.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Stage(e) => e.is_retryable(),
            Error::ClickHouse(e) => e.is_retryable(),
            _ => false,
        }
    }
}

/// Result of the batch job.
pub type Result<T, E = Error> = std::result::Result<T, E>;
