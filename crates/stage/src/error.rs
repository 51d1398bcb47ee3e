//! Errors of the stage layer.

/// What can go wrong in the stage layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The stage root or a table location is not a usable URI.
    #[error("stage location {uri}: {message}")]
    Location { uri: String, message: String },
    /// A Delta operation on a stage table failed.
    #[error("{operation} on stage table {table}: {source}")]
    Delta {
        operation: &'static str,
        table: String,
        #[source]
        source: Box<deltalake::DeltaTableError>,
    },
    /// Building or converting Arrow data failed.
    #[error("arrow data for stage table {table}: {source}")]
    Arrow {
        table: String,
        #[source]
        source: deltalake::arrow::error::ArrowError,
    },
    /// A maintenance operation was refused (it could hurt readers).
    #[error("{0}")]
    Maintenance(String),
    /// Another writer committed offsets this writer did not expect: it must re-read.
    #[error("offsets of {app_id} in stage table {table} moved to {found:?} (expected {expected:?}): another writer owns them")]
    OffsetsMoved {
        table: String,
        app_id: String,
        expected: Option<i64>,
        found: Option<i64>,
    },
}

impl Error {
    /// Whether running the same operation again may succeed (commit races, storage hiccups).
    pub fn is_retryable(&self) -> bool {
        use deltalake::DeltaTableError as D;
        match self {
            Error::Delta { source, .. } => {
                matches!(
                    source.as_ref(),
                    D::VersionAlreadyExists(_)
                        | D::ObjectStore { .. }
                        | D::Io { .. }
                        | D::CommitValidation { .. }
                ) || source.to_string().contains("conflict")
            }
            _ => false,
        }
    }
}

/// Result of the stage layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;
