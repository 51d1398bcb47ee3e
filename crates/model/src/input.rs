//! Dimension writes as the API takes them: a seller, a client or a product as a JSON object,
//! checked field by field against the columns they land in (`schemas/postgres/*.sql` and the
//! product table's Arrow schema) with the same field readers and reasons as the events.
//!
//! Unlike an event, which stops at its first fault, a write lists every invalid field, so a
//! client can fix them all at once. Server-kept columns (`updated_at`, `deleted_at`) are not
//! taken from the body.

use chrono::{DateTime, Utc};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::event::{
    number_field, parse_object, price_value, required, string_field, timestamp_field, uuid_field,
};
use crate::money::{read_number, Number};
use crate::reason::{Reason, Rejection};

/// A seller (shop) to insert or update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SellerInput {
    pub seller_id: Uuid,
    pub name: String,
    pub region: String,
    /// Kept as it is on an update when absent; now on an insert.
    pub created_at: Option<DateTime<Utc>>,
}

/// A client to insert or update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInput {
    pub client_id: Uuid,
    pub first_name: String,
    pub last_name: String,
    pub email: String,
    pub address: String,
    /// Kept as it is on an update when absent; now on an insert.
    pub registration_date: Option<DateTime<Utc>>,
}

/// A catalogue product to insert or update (its `updated_at` is the server's time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductInput {
    pub product_id: Uuid,
    pub name: String,
    pub category: String,
    /// Exact, two decimals.
    pub price: Decimal,
    pub available_stock: i32,
    pub seller_id: Uuid,
}

/// Longest texts, in characters, as the PostgreSQL columns declare them (products: the same
/// limits, so a catalogue stays printable).
pub mod limits {
    pub const SELLER_NAME: usize = 200;
    pub const REGION: usize = 100;
    pub const FIRST_NAME: usize = 100;
    pub const LAST_NAME: usize = 100;
    pub const EMAIL: usize = 150;
    pub const ADDRESS: usize = 250;
    pub const PRODUCT_NAME: usize = 200;
    pub const CATEGORY: usize = 100;
}

#[derive(Deserialize)]
struct RawSeller<'a> {
    #[serde(borrow)]
    seller_id: Option<&'a RawValue>,
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow)]
    region: Option<&'a RawValue>,
    #[serde(borrow)]
    created_at: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawClient<'a> {
    #[serde(borrow)]
    client_id: Option<&'a RawValue>,
    #[serde(borrow)]
    first_name: Option<&'a RawValue>,
    #[serde(borrow)]
    last_name: Option<&'a RawValue>,
    #[serde(borrow)]
    email: Option<&'a RawValue>,
    #[serde(borrow)]
    address: Option<&'a RawValue>,
    #[serde(borrow)]
    registration_date: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawProduct<'a> {
    #[serde(borrow)]
    product_id: Option<&'a RawValue>,
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow)]
    category: Option<&'a RawValue>,
    #[serde(borrow)]
    price: Option<&'a RawValue>,
    #[serde(borrow)]
    available_stock: Option<&'a RawValue>,
    #[serde(borrow)]
    seller_id: Option<&'a RawValue>,
}

/// Collects the faults of one object's fields.
#[derive(Default)]
struct Faults(Vec<Rejection>);

impl Faults {
    fn take<T>(&mut self, r: Result<T, Rejection>) -> Option<T> {
        r.map_err(|e| self.0.push(e)).ok()
    }

    /// A required text of 1..=`max` characters (not only whitespace).
    fn text(&mut self, field: &'static str, v: Option<&RawValue>, max: usize) -> Option<String> {
        let s = self.take(required(field, v).and_then(|v| string_field(field, v)))?;
        let chars = s.chars().count();
        if s.trim().is_empty() {
            self.0
                .push(Rejection::field(Reason::MissingField, field, "empty"));
            return None;
        }
        if chars > max {
            self.0.push(Rejection::field(
                Reason::TooLong,
                field,
                format!("{chars} characters; at most {max}"),
            ));
            return None;
        }
        if s.contains('\0') {
            self.0.push(Rejection::field(
                Reason::WrongType,
                field,
                "holds a NUL character",
            ));
            return None;
        }
        Some(s.into_owned())
    }

    fn id(&mut self, field: &'static str, v: Option<&RawValue>) -> Option<Uuid> {
        self.take(required(field, v).and_then(|v| uuid_field(field, v)))
    }

    /// An optional past timestamp (absent or null: none).
    fn time(
        &mut self,
        field: &'static str,
        v: Option<&RawValue>,
        now: DateTime<Utc>,
    ) -> Option<Option<DateTime<Utc>>> {
        match v {
            None => Some(None),
            Some(v) if v.get() == "null" => Some(None),
            Some(v) => self.take(timestamp_field(field, v, now)).map(Some),
        }
    }

    fn finish<T>(self, value: Option<T>) -> Result<T, Vec<Rejection>> {
        match value {
            Some(v) if self.0.is_empty() => Ok(v),
            _ => Err(self.0),
        }
    }
}

/// Checks a seller object.
pub fn parse_seller(bytes: &[u8], now: DateTime<Utc>) -> Result<SellerInput, Vec<Rejection>> {
    let raw: RawSeller<'_> = parse_object(bytes).map_err(|e| vec![e])?;
    let mut f = Faults::default();
    let seller_id = f.id("seller_id", raw.seller_id);
    let name = f.text("name", raw.name, limits::SELLER_NAME);
    let region = f.text("region", raw.region, limits::REGION);
    let created_at = f.time("created_at", raw.created_at, now);
    let value = (|| {
        Some(SellerInput {
            seller_id: seller_id?,
            name: name?,
            region: region?,
            created_at: created_at?,
        })
    })();
    f.finish(value)
}

/// Checks a client object.
pub fn parse_client(bytes: &[u8], now: DateTime<Utc>) -> Result<ClientInput, Vec<Rejection>> {
    let raw: RawClient<'_> = parse_object(bytes).map_err(|e| vec![e])?;
    let mut f = Faults::default();
    let client_id = f.id("client_id", raw.client_id);
    let first_name = f.text("first_name", raw.first_name, limits::FIRST_NAME);
    let last_name = f.text("last_name", raw.last_name, limits::LAST_NAME);
    let email = f.text("email", raw.email, limits::EMAIL);
    let email = email.and_then(|e| {
        let ok = e
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty());
        if ok {
            Some(e)
        } else {
            f.0.push(Rejection::field(
                Reason::WrongType,
                "email",
                "not an address (local@domain)",
            ));
            None
        }
    });
    let address = f.text("address", raw.address, limits::ADDRESS);
    let registration_date = f.time("registration_date", raw.registration_date, now);
    let value = (|| {
        Some(ClientInput {
            client_id: client_id?,
            first_name: first_name?,
            last_name: last_name?,
            email: email?,
            address: address?,
            registration_date: registration_date?,
        })
    })();
    f.finish(value)
}

/// Checks a product object.
pub fn parse_product(bytes: &[u8]) -> Result<ProductInput, Vec<Rejection>> {
    let raw: RawProduct<'_> = parse_object(bytes).map_err(|e| vec![e])?;
    let mut f = Faults::default();
    let product_id = f.id("product_id", raw.product_id);
    let name = f.text("name", raw.name, limits::PRODUCT_NAME);
    let category = f.text("category", raw.category, limits::CATEGORY);
    let price = f.take(required("price", raw.price).and_then(|v| {
        let n = number_field("price", v)?;
        price_value(n, v.get())
    }));
    let stock = f.take(required("available_stock", raw.available_stock).and_then(stock_value));
    let seller_id = f.id("seller_id", raw.seller_id);
    let value = (|| {
        Some(ProductInput {
            product_id: product_id?,
            name: name?,
            category: category?,
            price: price?,
            available_stock: stock?,
            seller_id: seller_id?,
        })
    })();
    f.finish(value)
}

/// Stock: a whole number in 0..=2^31-1 (the column is a 32-bit integer).
fn stock_value(v: &RawValue) -> Result<i32, Rejection> {
    let field = "available_stock";
    let text = v.get();
    let out_of_range = || {
        Rejection::field(
            Reason::OutOfRange,
            field,
            format!("{text} is outside 0..={}", i32::MAX),
        )
    };
    match read_number(text) {
        Some(Number::Exact(d)) if d.fract().is_zero() => {
            d.to_i32().filter(|n| *n >= 0).ok_or_else(out_of_range)
        }
        Some(Number::Beyond { integral: true, .. }) => Err(out_of_range()),
        _ => Err(Rejection::field(
            Reason::WrongType,
            field,
            "expected an integer",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reasons(r: Result<impl std::fmt::Debug, Vec<Rejection>>) -> Vec<(String, &'static str)> {
        r.expect_err("invalid")
            .into_iter()
            .map(|e| (e.field.unwrap_or("").to_string(), e.reason.as_str()))
            .collect()
    }

    #[test]
    fn a_valid_seller_reads_back() {
        let s = parse_seller(
            br#"{"seller_id":"6a3f2b1c-1d2e-4f5a-8b9c-0d1e2f3a4b5c","name":"Shop","region":"EU"}"#,
            Utc::now(),
        )
        .expect("valid");
        assert_eq!(s.name, "Shop");
        assert_eq!(s.created_at, None);
    }

    #[test]
    fn every_invalid_field_is_listed() {
        let long = "x".repeat(201);
        let body = format!(
            r#"{{"seller_id":"nope","name":"{long}","region":7,"created_at":"yesterday"}}"#
        );
        assert_eq!(
            reasons(parse_seller(body.as_bytes(), Utc::now())),
            vec![
                ("seller_id".into(), "bad_uuid"),
                ("name".into(), "too_long"),
                ("region".into(), "wrong_type"),
                ("created_at".into(), "bad_timestamp"),
            ]
        );
        assert_eq!(
            reasons(parse_client(
                br#"{"email":"no-at","first_name":"  "}"#,
                Utc::now()
            )),
            vec![
                ("client_id".into(), "missing_field"),
                ("first_name".into(), "missing_field"),
                ("last_name".into(), "missing_field"),
                ("email".into(), "wrong_type"),
                ("address".into(), "missing_field"),
            ]
        );
        assert_eq!(
            reasons(parse_product(br#"[1]"#)),
            vec![("".into(), "not_an_object")]
        );
    }

    #[test]
    fn product_prices_and_stock_are_exact_and_in_range() {
        let p = |price: &str, stock: &str| {
            parse_product(
                format!(
                    r#"{{"product_id":"6a3f2b1c-1d2e-4f5a-8b9c-0d1e2f3a4b5c","name":"Mug","category":"home","price":{price},"available_stock":{stock},"seller_id":"7a3f2b1c-1d2e-4f5a-8b9c-0d1e2f3a4b5c"}}"#
                )
                .as_bytes(),
            )
        };
        let ok = p("12.5", "3.0").expect("valid");
        assert_eq!(
            (ok.price.to_string().as_str(), ok.available_stock),
            ("12.50", 3)
        );
        assert_eq!(
            reasons(p("1.005", "1")),
            vec![("price".into(), "price_scale")]
        );
        assert_eq!(
            reasons(p("-1", "1")),
            vec![("price".into(), "price_out_of_range")]
        );
        assert_eq!(
            reasons(p("1", "-1")),
            vec![("available_stock".into(), "out_of_range")]
        );
        assert_eq!(
            reasons(p("1", "2147483648")),
            vec![("available_stock".into(), "out_of_range")]
        );
        assert_eq!(
            reasons(p("1", "1.5")),
            vec![("available_stock".into(), "wrong_type")]
        );
        assert_eq!(
            reasons(p("1", "\"1\"")),
            vec![("available_stock".into(), "wrong_type")]
        );
        assert_eq!(p("1", "2147483647").expect("max").available_stock, i32::MAX);
    }
}
