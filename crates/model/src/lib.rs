//! lakeshop's shared vocabulary.
//!
//! One set of names and types for every component: the entities ([`Client`], [`Seller`],
//! [`Product`], [`Purchase`], [`Interaction`]), exact [money](money) as `Decimal(18,2)`,
//! typed validation that explains every rejection with a [`Reason`], and the Arrow schemas
//! of the stage tables. The schema files under `schemas/` describe the same records; tests
//! prove that code and files accept and reject alike.

pub mod arrow_schema;
pub mod entities;
pub mod event;
pub mod input;
pub mod money;
pub mod reason;
pub mod redact;

pub use entities::{Client, Product, Seller};
pub use event::{parse_interaction, parse_purchase, Interaction, InteractionKind, Purchase};
pub use input::{
    parse_client, parse_product, parse_seller, ClientInput, ProductInput, SellerInput,
};
pub use money::{Money, AMOUNT_PRECISION, MAX_PRICE, MONEY_PRECISION, MONEY_SCALE};
pub use reason::{Reason, Rejection};
pub use redact::mask_url;

/// Version of every schema in `schemas/`. Changes are additive: a new optional field keeps
/// old records valid; anything else is a new version.
pub const SCHEMA_VERSION: u32 = 1;

/// Largest accepted event payload, in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

/// Smallest and largest accepted purchase quantity.
pub const QUANTITY_RANGE: std::ops::RangeInclusive<i64> = 1..=1_000_000;

/// Events stamped before this instant (2000-01-01T00:00:00Z) are rejected.
pub fn min_event_time() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(946_684_800, 0).unwrap_or_default()
}

/// Events stamped more than this far after the validation clock are rejected.
pub const MAX_FUTURE: chrono::TimeDelta = chrono::TimeDelta::days(1);

/// The seller (shop) key under which purchases without a known seller are counted.
pub const UNKNOWN: &str = "unknown";
