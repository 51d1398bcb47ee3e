//! Plumbing shared by lakeshop's long-running commands: the `/metrics` + `/healthz` server
//! (with the process's CPU and memory) and named health checks, SIGTERM / Ctrl-C drain, and secrets whose `Debug` masks them.
//!
//! The binary wires these together; nothing here knows about a particular source or sink
//! (a ClickHouse or PostgreSQL check is a closure the caller passes to [`Health::check`]).

pub mod error;
pub mod health;
pub mod http;
pub mod process;
pub mod secret;
pub mod shutdown;

pub use error::{Error, Result};
pub use health::{CheckStatus, Health, HealthReport, CHECK_TIMEOUT, KAFKA_METADATA_TIMEOUT};
pub use http::{router, serve, Server};
pub use process::ProcessCollector;
pub use secret::{Blank, Sensitive};
pub use shutdown::{stop_on_signal, wait_for_shutdown};
