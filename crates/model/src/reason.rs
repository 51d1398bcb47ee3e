//! Why a record was rejected: a closed set of reasons, stable as snake_case strings in
//! dead letters, metrics and the generator's ground truth.

use serde::{Deserialize, Serialize};

/// The reason a record is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Not JSON at all, or not UTF-8.
    MalformedJson,
    /// JSON, but not an object.
    NotAnObject,
    /// A required field is absent or null.
    MissingField,
    /// A field has the wrong JSON type (a string for a number, ...).
    WrongType,
    /// An id is not a UUID.
    BadUuid,
    /// A timestamp is not ISO 8601 / RFC 3339 with an offset.
    BadTimestamp,
    /// Quantity outside 1..=1,000,000.
    QuantityOutOfRange,
    /// Price outside 0..=1e12.
    PriceOutOfRange,
    /// Price with more than two decimals.
    PriceScale,
    /// Timestamp before 2000-01-01.
    TimestampTooOld,
    /// Timestamp more than one day in the future.
    TimestampInFuture,
    /// Payload larger than 1 MiB.
    PayloadTooLarge,
    /// Interaction kind not one of view, cart_add, click.
    BadKind,
    /// The same purchase_id arrived before with different content.
    ConflictingDuplicate,
    /// A text longer than its column allows (dimension writes).
    TooLong,
    /// A number outside its field's range other than quantity and price (dimension writes).
    OutOfRange,
}

impl Reason {
    /// Every reason, in a stable order.
    pub const ALL: [Reason; 16] = [
        Reason::MalformedJson,
        Reason::NotAnObject,
        Reason::MissingField,
        Reason::WrongType,
        Reason::BadUuid,
        Reason::BadTimestamp,
        Reason::QuantityOutOfRange,
        Reason::PriceOutOfRange,
        Reason::PriceScale,
        Reason::TimestampTooOld,
        Reason::TimestampInFuture,
        Reason::PayloadTooLarge,
        Reason::BadKind,
        Reason::ConflictingDuplicate,
        Reason::TooLong,
        Reason::OutOfRange,
    ];

    /// The snake_case name used in dead letters and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MalformedJson => "malformed_json",
            Reason::NotAnObject => "not_an_object",
            Reason::MissingField => "missing_field",
            Reason::WrongType => "wrong_type",
            Reason::BadUuid => "bad_uuid",
            Reason::BadTimestamp => "bad_timestamp",
            Reason::QuantityOutOfRange => "quantity_out_of_range",
            Reason::PriceOutOfRange => "price_out_of_range",
            Reason::PriceScale => "price_scale",
            Reason::TimestampTooOld => "timestamp_too_old",
            Reason::TimestampInFuture => "timestamp_in_future",
            Reason::PayloadTooLarge => "payload_too_large",
            Reason::BadKind => "bad_kind",
            Reason::ConflictingDuplicate => "conflicting_duplicate",
            Reason::TooLong => "too_long",
            Reason::OutOfRange => "out_of_range",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected record: the reason, the field at fault when there is one, and a readable
/// detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}{}: {detail}", field.map(|f| format!(" ({f})")).unwrap_or_default())]
pub struct Rejection {
    /// Why.
    pub reason: Reason,
    /// The field at fault, if any.
    pub field: Option<&'static str>,
    /// Human-readable detail (never the whole payload).
    pub detail: String,
}

impl Rejection {
    /// A rejection for a field.
    pub fn field(reason: Reason, field: &'static str, detail: impl Into<String>) -> Self {
        Self {
            reason,
            field: Some(field),
            detail: detail.into(),
        }
    }

    /// A rejection of the whole record.
    pub fn record(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            field: None,
            detail: detail.into(),
        }
    }
}
