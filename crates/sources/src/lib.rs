//! Extractors that fill the stage layer: clients and sellers from PostgreSQL, products from
//! the source Delta table, purchases and interactions from Kafka, each incremental and
//! exactly once.

pub mod dead_letters;
pub mod error;
pub mod kafka;
pub mod postgres;
pub mod products;
pub mod writes;

pub use error::{Error, Result};
