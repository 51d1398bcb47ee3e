//! The daily batch job: SQL over the stage tables into `stage.sales` and ClickHouse,
//! replacing one business day atomically; replay is the same job over a range of days.
//!
//! A day D runs in three steps:
//!
//! 1. **Query** (DataFusion over the stage's Delta tables, [`sql`]): the day's
//!    `stage.purchases` arrivals are numbered per `purchase_id` in arrival order; the first
//!    arrival counts, later ones are duplicates (those with other content are counted as
//!    conflicting and ignored), and an id whose first arrival lies on another day counts
//!    there. The counted purchases are left-joined to `clients`, `products` and `sellers`:
//!    missing dimensions keep the purchase under `unknown`. PII (e-mail, address) is kept,
//!    hashed or dropped. The day's aggregates are computed from those rows.
//! 2. **Stage**: `stage.sales` partition D is replaced in one Delta commit, its rows in
//!    ClickHouse's sorting order of `sales` (seller, purchase id), so the server does not
//!    sort them again.
//! 3. **ClickHouse**: every batch table's day D is swapped in atomically per table
//!    ([`lakeshop_clickhouse::ClickHouse::replace_day`]).
//!
//! Every step replaces the day as a whole from what the stage holds, so running a day again
//! gives the same tables, and purchases staged late are picked up by running it again.

mod error;
mod job;
mod keys;
mod order;
pub mod sql;

pub use error::{Error, Result};
pub use job::{
    days, yesterday, BatchJob, BatchOptions, Built, DaySummary, CLICKHOUSE_TABLES, MAX_DAYS,
};
pub use sql::PiiMode;
