//! Arrow schemas of the source product table and the stage tables.
//!
//! Ids are UTF-8 strings in canonical UUID form (joins, ClickHouse and every engine read
//! them alike), money is `Decimal128(18,2)`, instants are microseconds in UTC, and the
//! append-only tables carry the business day as a `Date32` partition column.

use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use std::sync::Arc;

use crate::money::{AMOUNT_PRECISION, MONEY_PRECISION, MONEY_SCALE};

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn money() -> DataType {
    DataType::Decimal128(MONEY_PRECISION, MONEY_SCALE)
}

/// Line amounts and sums: `quantity × price` reaches 1e18, past `Decimal(18,2)`.
fn amount() -> DataType {
    DataType::Decimal128(AMOUNT_PRECISION, MONEY_SCALE)
}

fn id(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}

/// The source product catalogue (`schemas/delta/product.avsc`).
pub fn product() -> SchemaRef {
    Arc::new(Schema::new(vec![
        id("product_id", false),
        Field::new("name", DataType::Utf8, false),
        Field::new("category", DataType::Utf8, false),
        Field::new("price", money(), false),
        Field::new("available_stock", DataType::Int32, false),
        id("seller_id", false),
        Field::new("updated_at", ts(), false),
    ]))
}

/// `stage.products`: the product catalogue as extracted, upserted by `product_id` (latest
/// `updated_at` wins). The same columns as the source table.
pub fn stage_product() -> SchemaRef {
    product()
}

/// Kafka position columns shared by the append-only stage tables.
fn source_position() -> Vec<Field> {
    vec![
        Field::new("source_topic", DataType::Utf8, false),
        Field::new("source_partition", DataType::Int32, false),
        Field::new("source_offset", DataType::Int64, false),
        Field::new("ingested_at", ts(), false),
        Field::new("event_date", DataType::Date32, false),
    ]
}

/// `stage.purchases`: the purchase log as received, partitioned by `event_date`.
pub fn stage_purchase() -> SchemaRef {
    let mut fields = vec![
        id("purchase_id", false),
        id("client_id", false),
        id("product_id", false),
        id("seller_id", true),
        Field::new("quantity", DataType::Int32, false),
        Field::new("price", money(), false),
        Field::new("timestamp", ts(), false),
    ];
    fields.extend(source_position());
    Arc::new(Schema::new(fields))
}

/// `stage.interactions`, partitioned by `event_date`.
pub fn stage_interaction() -> SchemaRef {
    let mut fields = vec![
        id("event_id", false),
        id("client_id", false),
        id("product_id", false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("timestamp", ts(), false),
    ];
    fields.extend(source_position());
    Arc::new(Schema::new(fields))
}

/// `stage.clients`, upserted by `client_id`.
pub fn stage_client() -> SchemaRef {
    Arc::new(Schema::new(vec![
        id("client_id", false),
        Field::new("first_name", DataType::Utf8, true),
        Field::new("last_name", DataType::Utf8, true),
        Field::new("email", DataType::Utf8, true),
        Field::new("address", DataType::Utf8, true),
        Field::new("registration_date", ts(), true),
        Field::new("updated_at", ts(), false),
        Field::new("deleted_at", ts(), true),
    ]))
}

/// `stage.sellers`, upserted by `seller_id`.
pub fn stage_seller() -> SchemaRef {
    Arc::new(Schema::new(vec![
        id("seller_id", false),
        Field::new("name", DataType::Utf8, true),
        Field::new("region", DataType::Utf8, true),
        Field::new("created_at", ts(), true),
        Field::new("updated_at", ts(), false),
        Field::new("deleted_at", ts(), true),
    ]))
}

/// `stage.dead_letters`: what could not be staged, with where it came from and why.
pub fn stage_dead_letter() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("source", DataType::Utf8, false),
        Field::new("source_topic", DataType::Utf8, true),
        Field::new("source_partition", DataType::Int32, true),
        Field::new("source_offset", DataType::Int64, true),
        Field::new("payload", DataType::Binary, true),
        Field::new("reason", DataType::Utf8, false),
        Field::new("detail", DataType::Utf8, false),
        Field::new("dead_lettered_at", ts(), false),
        Field::new("event_date", DataType::Date32, false),
    ]))
}

/// `stage.sales`: the unified client + purchase + product record, one row per `purchase_id`
/// (duplicates counted once), written by the batch job and partitioned by `event_date`.
///
/// A purchase without `seller_id` has `seller_id = "unknown"`. Dimension attributes are taken
/// as of the batch run and are null when the dimension row is missing; the `unknown_*` flags
/// say so without looking at every column. `amount` is `Decimal128(38,2)`
/// ([`AMOUNT_PRECISION`]). Described by `schemas/stage/sales.json`.
pub fn stage_sale() -> SchemaRef {
    Arc::new(Schema::new(vec![
        id("purchase_id", false),
        id("client_id", false),
        id("product_id", false),
        id("seller_id", false),
        Field::new("quantity", DataType::Int32, false),
        Field::new("price", money(), false),
        Field::new("amount", amount(), false),
        Field::new("timestamp", ts(), false),
        Field::new("event_date", DataType::Date32, false),
        Field::new("first_name", DataType::Utf8, true),
        Field::new("last_name", DataType::Utf8, true),
        Field::new("email", DataType::Utf8, true),
        Field::new("address", DataType::Utf8, true),
        Field::new("product_name", DataType::Utf8, true),
        Field::new("category", DataType::Utf8, true),
        Field::new("list_price", money(), true),
        Field::new("seller_name", DataType::Utf8, true),
        Field::new("seller_region", DataType::Utf8, true),
        Field::new("unknown_client", DataType::Boolean, false),
        Field::new("unknown_product", DataType::Boolean, false),
        Field::new("unknown_seller", DataType::Boolean, false),
    ]))
}
