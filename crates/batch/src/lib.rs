//! The daily batch job: SQL over the stage tables into `stage.sales` and ClickHouse,
//! replacing one business day atomically; replay is the same job over a range of days.
