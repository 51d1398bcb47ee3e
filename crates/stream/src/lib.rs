//! The streaming loader: Kafka purchases, enriched from a dimension cache read from the
//! stage, into event-time windows (minute, hour, day × total, seller, category, product)
//! upserted into ClickHouse exactly once, and `reconcile` against the batch job.
//!
//! - [`state`]: one partition's state, a pure function of its records in offset order.
//! - [`loader`]: the consumer loop, flushes, checkpoints and restore.
//! - [`dims`]: the dimension cache, refreshed when the stage tables' versions move.
//! - [`calendar`]: window boundaries in the business time zone.
//! - [`dead_letters`]: rejected records forwarded to the dead-letters topic (optional).

pub mod calendar;
pub mod dead_letters;
pub mod dims;
mod error;
pub mod loader;
pub mod metrics;
pub mod reconcile;
pub mod state;

pub use error::{Error, Result};
pub use loader::{run, StreamOptions, StreamStats};
pub use metrics::StreamMetrics;
