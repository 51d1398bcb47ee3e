//! Kafka events: purchases and interactions, parsed from JSON bytes with typed validation.
//!
//! Parsing never panics and never goes through a float: each field is taken as raw JSON
//! text and checked on its own, so a rejection names the field and the rule it broke.

use chrono::{DateTime, Utc};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt::Write as _;
use uuid::Uuid;

use crate::money::{read_number, significant_scale, Number};
use crate::reason::{Reason, Rejection};
use crate::{min_event_time, MAX_FUTURE, MAX_PAYLOAD_BYTES, MAX_PRICE, QUANTITY_RANGE};

/// A purchase event (topic `purchases`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purchase {
    /// Unique per purchase; producers may send it more than once.
    pub purchase_id: Uuid,
    /// The buyer.
    pub client_id: Uuid,
    /// The product bought.
    pub product_id: Uuid,
    /// The shop; absent means `unknown`.
    pub seller_id: Option<Uuid>,
    /// Items bought, 1..=1,000,000.
    pub quantity: u32,
    /// Unit price at purchase, exact, at most two decimals.
    pub price: Decimal,
    /// When the purchase happened (UTC).
    pub timestamp: DateTime<Utc>,
}

impl Purchase {
    /// Line amount: quantity × price.
    pub fn amount(&self) -> Decimal {
        Decimal::from(self.quantity) * self.price
    }

    /// The canonical JSON of this event; `price` is a JSON number written exactly.
    pub fn to_json(&self) -> String {
        let mut s = String::with_capacity(256);
        let _ = write!(
            s,
            r#"{{"purchase_id":"{}","client_id":"{}","product_id":"{}","#,
            self.purchase_id, self.client_id, self.product_id
        );
        if let Some(seller) = self.seller_id {
            let _ = write!(s, r#""seller_id":"{seller}","#);
        }
        let _ = write!(
            s,
            r#""quantity":{},"price":{},"timestamp":"{}"}}"#,
            self.quantity,
            self.price,
            format_ts(self.timestamp)
        );
        s
    }
}

/// Kind of an interaction event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InteractionKind {
    /// A product page was viewed.
    View,
    /// A product was added to the cart.
    CartAdd,
    /// A product was clicked in a listing.
    Click,
}

impl InteractionKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            InteractionKind::View => "view",
            InteractionKind::CartAdd => "cart_add",
            InteractionKind::Click => "click",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "view" => Some(Self::View),
            "cart_add" => Some(Self::CartAdd),
            "click" => Some(Self::Click),
            _ => None,
        }
    }
}

/// An interaction event (topic `interactions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interaction {
    /// Unique per event.
    pub event_id: Uuid,
    /// Who.
    pub client_id: Uuid,
    /// Which product.
    pub product_id: Uuid,
    /// What happened.
    pub kind: InteractionKind,
    /// When (UTC).
    pub timestamp: DateTime<Utc>,
}

impl Interaction {
    /// The canonical JSON of this event.
    pub fn to_json(&self) -> String {
        format!(
            r#"{{"event_id":"{}","client_id":"{}","product_id":"{}","kind":"{}","timestamp":"{}"}}"#,
            self.event_id,
            self.client_id,
            self.product_id,
            self.kind.as_str(),
            format_ts(self.timestamp)
        )
    }
}

/// RFC 3339 in UTC with a `Z`, with as many fractional digits as the instant needs (none,
/// 3, 6 or 9), so the event reads back as the same instant.
pub fn format_ts(ts: DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

#[derive(Deserialize)]
struct RawPurchase<'a> {
    #[serde(borrow)]
    purchase_id: Option<&'a RawValue>,
    #[serde(borrow)]
    client_id: Option<&'a RawValue>,
    #[serde(borrow)]
    product_id: Option<&'a RawValue>,
    #[serde(borrow)]
    seller_id: Option<&'a RawValue>,
    #[serde(borrow)]
    quantity: Option<&'a RawValue>,
    #[serde(borrow)]
    price: Option<&'a RawValue>,
    #[serde(borrow)]
    timestamp: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawInteraction<'a> {
    #[serde(borrow)]
    event_id: Option<&'a RawValue>,
    #[serde(borrow)]
    client_id: Option<&'a RawValue>,
    #[serde(borrow)]
    product_id: Option<&'a RawValue>,
    #[serde(borrow)]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    timestamp: Option<&'a RawValue>,
}

/// Parses and validates a purchase event. `now` is the clock the future bound is measured
/// from (the time the record is read).
pub fn parse_purchase(bytes: &[u8], now: DateTime<Utc>) -> Result<Purchase, Rejection> {
    match canonical_purchase(bytes, now) {
        Some(p) => Ok(p),
        None => parse_purchase_general(bytes, now),
    }
}

/// Any JSON object: fields in any order, whitespace, escapes, numbers in any notation.
/// The only path that rejects, so a rejection's reason never depends on the layout.
fn parse_purchase_general(bytes: &[u8], now: DateTime<Utc>) -> Result<Purchase, Rejection> {
    let raw: RawPurchase<'_> = parse_object(bytes)?;
    // Field order of checks is fixed so a record with several faults always gets the same
    // reason: presence and type first, then ranges.
    let purchase_id = uuid_field("purchase_id", required("purchase_id", raw.purchase_id)?)?;
    let client_id = uuid_field("client_id", required("client_id", raw.client_id)?)?;
    let product_id = uuid_field("product_id", required("product_id", raw.product_id)?)?;
    let seller_id = match raw.seller_id {
        None => None,
        Some(v) if v.get() == "null" => None,
        Some(v) => Some(uuid_field("seller_id", v)?),
    };
    let quantity = integer_field("quantity", required("quantity", raw.quantity)?)?;
    let price_raw = required("price", raw.price)?;
    let price = number_field("price", price_raw)?;
    let timestamp = timestamp_field("timestamp", required("timestamp", raw.timestamp)?, now)?;
    if !QUANTITY_RANGE.contains(&quantity) {
        return Err(Rejection::field(
            Reason::QuantityOutOfRange,
            "quantity",
            format!("{quantity} is outside 1..=1000000"),
        ));
    }
    let price = price_value(price, price_raw.get())?;
    Ok(Purchase {
        purchase_id,
        client_id,
        product_id,
        seller_id,
        quantity: quantity as u32,
        price,
        timestamp,
    })
}

/// Parses and validates an interaction event.
pub fn parse_interaction(bytes: &[u8], now: DateTime<Utc>) -> Result<Interaction, Rejection> {
    let raw: RawInteraction<'_> = parse_object(bytes)?;
    let event_id = uuid_field("event_id", required("event_id", raw.event_id)?)?;
    let client_id = uuid_field("client_id", required("client_id", raw.client_id)?)?;
    let product_id = uuid_field("product_id", required("product_id", raw.product_id)?)?;
    let kind_raw = string_field("kind", required("kind", raw.kind)?)?;
    let kind = InteractionKind::parse(&kind_raw).ok_or_else(|| {
        Rejection::field(
            Reason::BadKind,
            "kind",
            format!("{kind_raw:?} is not view|cart_add|click"),
        )
    })?;
    let timestamp = timestamp_field("timestamp", required("timestamp", raw.timestamp)?, now)?;
    Ok(Interaction {
        event_id,
        client_id,
        product_id,
        kind,
        timestamp,
    })
}

/// A purchase in the layout producers write ([`Purchase::to_json`]: keys in that order, no
/// whitespace, no escapes, plain numbers), read without a JSON tokenizer and checked by the
/// same rules as [`parse_purchase_general`]. `None` for anything else, valid or not: the
/// general path then reads it or gives the reason. Every byte is matched by the layout,
/// so a payload read here is valid JSON and the general path would read it the same.
fn canonical_purchase(bytes: &[u8], now: DateTime<Utc>) -> Option<Purchase> {
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return None;
    }
    let mut c = Layout { rest: bytes };
    c.literal(br#"{"purchase_id":""#)?;
    let purchase_id = c.uuid()?;
    c.literal(br#"","client_id":""#)?;
    let client_id = c.uuid()?;
    c.literal(br#"","product_id":""#)?;
    let product_id = c.uuid()?;
    let seller_id = match c.literal(br#"","seller_id":""#) {
        Some(()) => Some(c.uuid()?),
        None => None,
    };
    c.literal(br#"","quantity":"#)?;
    let quantity = c.plain_number(false)?;
    c.literal(b",\"price\":")?;
    let price_text = c.plain_number(true)?;
    c.literal(br#","timestamp":""#)?;
    let ts_text = c.string()?;
    c.literal(br#""}"#)?;
    if !c.rest.is_empty() {
        return None;
    }
    let quantity: i64 = quantity.parse().ok()?;
    if !QUANTITY_RANGE.contains(&quantity) {
        return None;
    }
    let price = match plain_cents(price_text) {
        Some(cents) => Decimal::new(cents, 2),
        None => price_value(read_number(price_text)?, price_text).ok()?,
    };
    let timestamp = timestamp_text("timestamp", ts_text, now).ok()?;
    Some(Purchase {
        purchase_id,
        client_id,
        product_id,
        seller_id,
        quantity: quantity as u32,
        price,
        timestamp,
    })
}

/// A plain price (digits without a leading zero, then optionally `.` and one or two
/// digits) below 1e12, in cents,
/// read without a decimal parser: what [`price_value`] makes of it, at scale 2. `None` for
/// any other text.
fn plain_cents(text: &str) -> Option<i64> {
    let (int, frac) = match text.split_once('.') {
        Some((_, "")) => return None,
        Some(parts) => parts,
        None => (text, ""),
    };
    if int.is_empty() || int.len() > 12 || frac.len() > 2 || (int.len() > 1 && int.starts_with('0'))
    {
        return None;
    }
    let digits = |s: &str| {
        s.bytes().try_fold(0i64, |n, d| {
            d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0'))
        })
    };
    let scale = if frac.len() == 1 { 10 } else { 1 };
    let frac = if frac.is_empty() { 0 } else { digits(frac)? };
    Some(digits(int)? * 100 + frac * scale)
}

/// What is left of a payload read by [`canonical_purchase`].
struct Layout<'a> {
    rest: &'a [u8],
}

impl<'a> Layout<'a> {
    /// Consumes `lit` if the rest starts with it.
    fn literal(&mut self, lit: &[u8]) -> Option<()> {
        self.rest = self.rest.strip_prefix(lit)?;
        Some(())
    }

    /// A UUID's 36 characters (`Uuid::try_parse` on them, as the general path).
    fn uuid(&mut self) -> Option<Uuid> {
        let (text, rest) = self.rest.split_at_checked(36)?;
        let id = Uuid::try_parse_ascii(text).ok()?;
        self.rest = rest;
        Some(id)
    }

    /// JSON number text without sign or exponent: `0` or digits not starting with `0`,
    /// then, if `fraction`, optionally `.` and digits.
    fn plain_number(&mut self, fraction: bool) -> Option<&'a str> {
        let b = self.rest;
        let int = b.iter().take_while(|d| d.is_ascii_digit()).count();
        if int == 0 || (int > 1 && b[0] == b'0') {
            return None;
        }
        let mut end = int;
        if fraction && b.get(end) == Some(&b'.') {
            let frac = b[end + 1..]
                .iter()
                .take_while(|d| d.is_ascii_digit())
                .count();
            if frac == 0 {
                return None;
            }
            end += 1 + frac;
        }
        let (text, rest) = b.split_at(end);
        self.rest = rest;
        std::str::from_utf8(text).ok()
    }

    /// The text of a string up to its closing quote, printable ASCII without escapes.
    fn string(&mut self) -> Option<&'a str> {
        let b = self.rest;
        let len = b.iter().position(|&c| c == b'"')?;
        let text = &b[..len];
        if !text
            .iter()
            .all(|&c| (0x20..0x7f).contains(&c) && c != b'\\')
        {
            return None;
        }
        self.rest = &b[len..];
        std::str::from_utf8(text).ok()
    }
}

pub(crate) fn parse_object<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, Rejection> {
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Err(Rejection::record(
            Reason::PayloadTooLarge,
            format!("{} bytes > {MAX_PAYLOAD_BYTES}", bytes.len()),
        ));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|e| Rejection::record(Reason::MalformedJson, format!("not UTF-8: {e}")))?;
    let first = text.trim_start().as_bytes().first().copied();
    if first != Some(b'{') {
        // Tell "valid JSON but not an object" from "not JSON".
        return Err(match serde_json::from_str::<&RawValue>(text) {
            Ok(_) => Rejection::record(Reason::NotAnObject, "the payload is not a JSON object"),
            Err(e) => Rejection::record(Reason::MalformedJson, e.to_string()),
        });
    }
    serde_json::from_str(text).map_err(|e| Rejection::record(Reason::MalformedJson, e.to_string()))
}

pub(crate) fn required<'a>(
    field: &'static str,
    v: Option<&'a RawValue>,
) -> Result<&'a RawValue, Rejection> {
    match v {
        Some(v) if v.get() != "null" => Ok(v),
        _ => Err(Rejection::field(Reason::MissingField, field, "required")),
    }
}

pub(crate) fn string_field<'a>(
    field: &'static str,
    v: &'a RawValue,
) -> Result<Cow<'a, str>, Rejection> {
    let text = v.get();
    if !text.starts_with('"') {
        return Err(Rejection::field(
            Reason::WrongType,
            field,
            "expected a string",
        ));
    }
    let inner = &text[1..text.len() - 1];
    if !inner.contains('\\') {
        return Ok(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(text)
        .map(Cow::Owned)
        .map_err(|e| Rejection::field(Reason::MalformedJson, field, e.to_string()))
}

pub(crate) fn uuid_field(field: &'static str, v: &RawValue) -> Result<Uuid, Rejection> {
    let s = string_field(field, v)?;
    // The canonical hyphenated form only, as JSON Schema's `format: uuid`.
    if s.len() != 36 {
        return Err(Rejection::field(
            Reason::BadUuid,
            field,
            format!("{s:?} is not a UUID"),
        ));
    }
    Uuid::try_parse(&s)
        .map_err(|_| Rejection::field(Reason::BadUuid, field, format!("{s:?} is not a UUID")))
}

/// An integer, judged by value as JSON Schema does: `2.0` and `1e3` are integers, `2.5` is
/// not; a whole number beyond `i64` is out of range.
fn integer_field(field: &'static str, v: &RawValue) -> Result<i64, Rejection> {
    let text = v.get();
    if let Ok(n) = text.parse::<i64>() {
        return Ok(n);
    }
    let out_of_range = || {
        Rejection::field(
            Reason::QuantityOutOfRange,
            field,
            format!("{text} is outside 1..=1000000"),
        )
    };
    match read_number(text) {
        Some(Number::Exact(d)) if d.fract().is_zero() => d.to_i64().ok_or_else(out_of_range),
        Some(Number::Beyond { integral: true, .. }) => Err(out_of_range()),
        _ => Err(Rejection::field(
            Reason::WrongType,
            field,
            "expected an integer",
        )),
    }
}

/// A number, read exactly from its text; ranges are checked later.
pub(crate) fn number_field(field: &'static str, v: &RawValue) -> Result<Number, Rejection> {
    read_number(v.get())
        .ok_or_else(|| Rejection::field(Reason::WrongType, field, "expected a number"))
}

/// The unit price: range first (a price too large or below zero is out of range whatever
/// its decimals), then scale; returned with exactly two decimals.
pub(crate) fn price_value(price: Number, text: &str) -> Result<Decimal, Rejection> {
    let out_of_range = || {
        Rejection::field(
            Reason::PriceOutOfRange,
            "price",
            format!("{text} is outside 0..=1e12"),
        )
    };
    let too_precise = || {
        Rejection::field(
            Reason::PriceScale,
            "price",
            format!("{text} has more than 2 decimals"),
        )
    };
    match price {
        Number::Exact(price) => {
            if price.is_sign_negative() && !price.is_zero() || price > MAX_PRICE {
                return Err(out_of_range());
            }
            if significant_scale(price) > 2 {
                return Err(too_precise());
            }
            let mut price = price.normalize();
            price.rescale(2);
            Ok(price)
        }
        // Beyond a Decimal with 13 or more integer digits is above 1e12 (1e12 itself is
        // exact); with fewer, it has more than 28 significant digits or decimals.
        Number::Beyond {
            negative,
            integer_digits,
            ..
        } if negative || integer_digits >= 13 => Err(out_of_range()),
        Number::Beyond { .. } => Err(too_precise()),
    }
}

pub(crate) fn timestamp_field(
    field: &'static str,
    v: &RawValue,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, Rejection> {
    let s = string_field(field, v)?;
    timestamp_text(field, &s, now)
}

/// A timestamp's text (without quotes), checked.
fn timestamp_text(
    field: &'static str,
    s: &str,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, Rejection> {
    let ts = match utc_timestamp(s.as_bytes()) {
        Some(ts) => ts,
        None => {
            if !rfc3339_shape(s) {
                return Err(Rejection::field(
                    Reason::BadTimestamp,
                    field,
                    format!("{s:?} is not RFC 3339 date-time with an offset"),
                ));
            }
            DateTime::parse_from_rfc3339(s)
                .map_err(|e| Rejection::field(Reason::BadTimestamp, field, format!("{s:?}: {e}")))?
                .with_timezone(&Utc)
        }
    };
    if ts < min_event_time() {
        return Err(Rejection::field(
            Reason::TimestampTooOld,
            field,
            format!("{s} is before 2000-01-01"),
        ));
    }
    if ts > now + MAX_FUTURE {
        return Err(Rejection::field(
            Reason::TimestampInFuture,
            field,
            format!("{s} is more than a day ahead"),
        ));
    }
    Ok(ts)
}

/// The layout [`format_ts`] writes, `YYYY-MM-DDThh:mm:ss[.f]Z` with one to nine fraction
/// digits, read without chrono's general parser: the time it denotes when that is a real
/// date and time of day, `None` for anything else (chrono then reads it or says why not).
fn utc_timestamp(b: &[u8]) -> Option<DateTime<Utc>> {
    let num = |from: usize, to: usize| -> Option<u32> {
        b.get(from..to)?.iter().try_fold(0u32, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
        })
    };
    let seps = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if seps.iter().any(|&(i, c)| b.get(i) != Some(&c)) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let nanos = match b.len() {
        20 => 0,
        22..=30 if b[19] == b'.' => num(20, b.len() - 1)? * 10u32.pow(30 - b.len() as u32),
        _ => return None,
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        1..=12 => 31,
        _ => return None,
    };
    if b[b.len() - 1] != b'Z' || day == 0 || day > month_days || hour > 23 || minute > 59 {
        return None;
    }
    if second > 59 {
        return None;
    }
    // Days since 1970-01-01 of the proleptic Gregorian date (years counted from March).
    let (y, m) = if month <= 2 {
        (i64::from(year) - 1, i64::from(month) + 9)
    } else {
        (i64::from(year), i64::from(month) - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + i64::from(day) - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second);
    DateTime::from_timestamp(secs, nanos)
}

/// The shape of RFC 3339 `date-time` as the JSON Schemas' pattern has it:
/// `YYYY-MM-DD`, `T` or `t`, `hh:mm:ss` with seconds 00-59 (no leap second), optional
/// fraction, then `Z`, `z` or `+hh:mm`/`-hh:mm` in ASCII. chrono also takes a space for the
/// `T`, a Unicode minus and second 60; the schema does not, so neither does this. Value
/// ranges and the calendar are left to chrono.
fn rfc3339_shape(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |from: usize, to: usize| b[from..to].iter().all(u8::is_ascii_digit);
    if b.len() < 20
        || !(digits(0, 4) && b[4] == b'-' && digits(5, 7) && b[7] == b'-' && digits(8, 10))
        || !matches!(b[10], b'T' | b't')
        || !(digits(11, 13) && b[13] == b':' && digits(14, 16) && b[16] == b':' && digits(17, 19))
        || b[17] > b'5'
    {
        return false;
    }
    let mut i = 19;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match &b[i..] {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|d| d.is_ascii_digit()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2025-04-07T00:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    const OK: &str = r#"{"purchase_id":"123e4567-e89b-12d3-a456-426614174000","client_id":"987e6543-e21b-45d3-b123-526714174000","product_id":"543e2198-e89b-12d3-a456-426614174000","quantity":2,"price":49.99,"timestamp":"2025-04-06T12:00:00Z"}"#;

    fn reason(json: &str) -> Option<Reason> {
        parse_purchase(json.as_bytes(), now())
            .err()
            .map(|r| r.reason)
    }

    #[test]
    fn accepts_the_reference_example_and_round_trips() {
        let p = parse_purchase(OK.as_bytes(), now()).expect("valid");
        assert_eq!(p.quantity, 2);
        assert_eq!(p.price.to_string(), "49.99");
        assert_eq!(p.amount().to_string(), "99.98");
        assert_eq!(p.seller_id, None);
        let again = parse_purchase(p.to_json().as_bytes(), now()).expect("round trip");
        assert_eq!(again, p);
    }

    #[test]
    fn the_canonical_layout_reads_as_the_general_path_does() {
        let seller = OK.replace(
            r#","quantity""#,
            r#","seller_id":"0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d","quantity""#,
        );
        let bases = [
            OK.to_string(),
            seller.clone(),
            seller.replace("49.99", "0").replace(":2,", ":1000000,"),
            seller
                .replace("49.99", "7.50")
                .replace("12:00:00Z", "12:00:00.123456+02:00"),
            OK.replace("49.99", "1000000000000"),
        ];
        // Every base and random one- to three-byte edits of it: whenever the fast path
        // reads a payload it reads what the general path reads, and `parse_purchase`
        // always answers as the general path.
        let alphabet = b"0123456789abcdefABCDEF-.,:\"{}\\ eEzZtT+nul\x7f\xff\t";
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut fast = 0;
        for base in &bases {
            let p = canonical_purchase(base.as_bytes(), now()).expect(base);
            assert_eq!(Ok(p), parse_purchase_general(base.as_bytes(), now()));
            for _ in 0..20_000 {
                let mut b = base.clone().into_bytes();
                for _ in 0..1 + next(3) {
                    let at = next(b.len());
                    let c = alphabet[next(alphabet.len())];
                    match next(3) {
                        0 => b[at] = c,
                        1 => b.insert(at, c),
                        _ => {
                            b.remove(at);
                        }
                    }
                }
                let general = parse_purchase_general(&b, now());
                if let Some(p) = canonical_purchase(&b, now()) {
                    fast += 1;
                    assert_eq!(Ok(p), general, "{}", String::from_utf8_lossy(&b));
                }
                assert_eq!(parse_purchase(&b, now()), general);
            }
        }
        // Edits inside ids, digits and times often leave a valid canonical event.
        assert!(fast > 1_000, "{fast}");
    }

    /// Random edits of timestamps and prices: the readers without chrono and without a
    /// decimal parser agree with them on every text they read, and read every text in
    /// their layout that chrono (or the decimal parser) reads.
    #[test]
    fn the_fast_timestamp_and_price_readers_agree_with_the_general_ones() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut edit = |base: &str, alphabet: &[u8]| {
            let mut b = base.as_bytes().to_vec();
            for _ in 0..next(3) {
                let c = alphabet[next(alphabet.len())];
                if b.is_empty() {
                    b.push(c);
                    continue;
                }
                let at = next(b.len());
                match next(4) {
                    0 | 1 => b[at] = c,
                    2 => b.insert(at, c),
                    _ => {
                        b.remove(at);
                    }
                }
            }
            String::from_utf8(b).unwrap_or_default()
        };
        let times = [
            "2024-02-29T23:59:59.999999999Z",
            "2025-12-31T00:00:00Z",
            "2023-02-28T12:00:00.5Z",
            "1999-03-01T00:00:00Z",
            "2100-02-28T00:00:00.123Z",
            "2000-01-01T00:00:00.000001Z",
        ];
        let (mut read, mut layout) = (0, 0);
        for base in times {
            for _ in 0..20_000 {
                let t = edit(base, b"0123456789-:.TZtz+ ");
                let chrono = DateTime::parse_from_rfc3339(&t).map(|t| t.with_timezone(&Utc));
                let in_layout = t.ends_with('Z')
                    && t.as_bytes().get(10) == Some(&b'T')
                    && (t.len() == 20 || (22..=30).contains(&t.len()));
                match utc_timestamp(t.as_bytes()) {
                    Some(ts) => {
                        read += 1;
                        assert_eq!(Ok(ts), chrono, "{t}");
                    }
                    None if in_layout && chrono.is_ok() => {
                        // Only chrono's wider shapes: a second 60 (leap second).
                        assert_eq!(&t[17..19], "60", "{t} is read by chrono only");
                    }
                    None => {}
                }
                layout += usize::from(in_layout);
            }
        }
        assert!(read > 10_000 && layout > read, "{read} of {layout}");
        let prices = [
            "49.99",
            "0",
            "7.5",
            "999999999999.99",
            "1000000000000",
            "10.00",
        ];
        let mut cents = 0;
        for base in prices {
            for _ in 0..20_000 {
                let t = edit(base, b"0123456789.");
                let general = read_number(&t).and_then(|n| price_value(n, &t).ok());
                if let Some(c) = plain_cents(&t) {
                    cents += 1;
                    assert_eq!(Some(Decimal::new(c, 2)), general, "{t}");
                    assert_eq!(general.map(|d| d.scale()), Some(2), "{t}");
                }
            }
        }
        assert!(cents > 10_000, "{cents}");
    }

    #[test]
    fn every_rule_has_its_reason() {
        let with = |k: &str, v: &str| {
            OK.replacen(
                &format!("\"{k}\":"),
                &format!("\"{k}\":{v},\"_old_{k}\":"),
                1,
            )
        };
        assert_eq!(reason("{"), Some(Reason::MalformedJson));
        assert_eq!(reason("[1]"), Some(Reason::NotAnObject));
        assert_eq!(
            reason(&OK.replace("\"quantity\":2,", "")),
            Some(Reason::MissingField)
        );
        assert_eq!(reason(&with("quantity", "\"2\"")), Some(Reason::WrongType));
        assert_eq!(reason(&with("client_id", "\"abc\"")), Some(Reason::BadUuid));
        assert_eq!(
            reason(&with("quantity", "0")),
            Some(Reason::QuantityOutOfRange)
        );
        assert_eq!(
            reason(&with("quantity", "1000001")),
            Some(Reason::QuantityOutOfRange)
        );
        assert_eq!(
            reason(&with("price", "-0.01")),
            Some(Reason::PriceOutOfRange)
        );
        assert_eq!(
            reason(&with("price", "1000000000000.01")),
            Some(Reason::PriceOutOfRange)
        );
        assert_eq!(reason(&with("price", "1.999")), Some(Reason::PriceScale));
        assert_eq!(
            reason(&with("timestamp", "\"1999-12-31T23:59:59Z\"")),
            Some(Reason::TimestampTooOld)
        );
        assert_eq!(
            reason(&with("timestamp", "\"2025-04-08T00:00:01Z\"")),
            Some(Reason::TimestampInFuture)
        );
        assert_eq!(
            reason(&with("timestamp", "\"yesterday\"")),
            Some(Reason::BadTimestamp)
        );
        let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(crate::MAX_PAYLOAD_BYTES));
        assert_eq!(reason(&big), Some(Reason::PayloadTooLarge));
        assert_eq!(reason(&with("price", "1.990")), None);
        assert_eq!(reason(&with("price", "0")), None);
    }

    #[test]
    fn reads_numbers_and_times_as_the_schema_does() {
        let with = |k: &str, v: &str| {
            OK.replacen(
                &format!("\"{k}\":"),
                &format!("\"{k}\":{v},\"_old_{k}\":"),
                1,
            )
        };
        // Integers by value; exact decimal text.
        assert_eq!(reason(&with("quantity", "2.0")), None);
        assert_eq!(reason(&with("quantity", "1E6")), None);
        assert_eq!(reason(&with("quantity", "2.5")), Some(Reason::WrongType));
        assert_eq!(
            reason(&with("quantity", "1e400")),
            Some(Reason::QuantityOutOfRange)
        );
        assert_eq!(reason(&with("price", "1e-400")), Some(Reason::PriceScale));
        assert_eq!(
            reason(&with("price", "-1e-400")),
            Some(Reason::PriceOutOfRange)
        );
        assert_eq!(
            reason(&with("price", "1e400")),
            Some(Reason::PriceOutOfRange)
        );
        assert_eq!(
            reason(&with("price", &format!("7.{}", "0".repeat(40)))),
            None
        );
        // RFC 3339 as JSON Schema's date-time: no space, no Unicode minus, no leap second.
        for ts in [
            "2025-04-06 12:00:00Z",
            "2025-04-06T12:00:00\u{2212}03:00",
            "2016-12-31T23:59:60Z",
        ] {
            assert_eq!(
                reason(&with("timestamp", &format!("{ts:?}"))),
                Some(Reason::BadTimestamp),
                "{ts}"
            );
        }
        // The canonical JSON keeps every digit of the instant.
        let p = parse_purchase(
            with("timestamp", "\"2025-04-06T12:00:00.000123+02:00\"").as_bytes(),
            now(),
        )
        .expect("valid");
        assert!(
            p.to_json().contains("\"2025-04-06T10:00:00.000123Z\""),
            "{}",
            p.to_json()
        );
        assert_eq!(parse_purchase(p.to_json().as_bytes(), now()), Ok(p));
    }
}
