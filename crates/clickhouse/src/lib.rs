//! ClickHouse: ordered DDL migrations, typed rows and idempotent writes that run on the
//! 18.16 server as well as on current releases.
