//! ClickHouse: ordered DDL migrations, typed rows and idempotent writes that run on the
//! 18.16 server as well as on current releases.
//!
//! - [`ClickHouse::migrate`] applies `schemas/clickhouse/*.sql` (compiled in, see
//!   [`migrate::MIGRATIONS`]) in order and records each file once applied.
//! - [`ClickHouse::replace_day`] swaps one business day of the batch tables in atomically
//!   per table (`ALTER TABLE ... REPLACE PARTITION` from a load table), from Arrow batches
//!   encoded as `Native` blocks and checked against `DESCRIBE TABLE` first.
//! - [`ClickHouse::report`] runs the canned reports.
//!
//! Server versions: [`ClickHouse::server_version`] reads `SELECT version()` and refuses
//! servers older than [`MIN_SERVER`]. The one difference lakeshop meets, typed-row
//! validation needing `RowBinaryWithNamesAndTypes` (not in 18.16), is avoided on every
//! version: loads go as `Native` blocks with lakeshop's own column check.

mod config;
mod error;
pub mod migrate;
mod native;
pub mod report;
pub mod sink;
pub mod stream;
mod tsv;

pub use config::{
    check_identifier, ClickHouse, ClickHouseOptions, Compression, ServerVersion, TlsOptions,
    MIN_SERVER,
};
pub use error::{Error, Result};
pub use migrate::{MigrateReport, Migration};
pub use report::{Kind, Report, ReportTable};
pub use sink::TableRows;
pub use stream::{RowBinary, StreamTable};
