//! Dimension entities: clients and sellers (PostgreSQL), products (the source Delta table).

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A client (PostgreSQL `clients`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Client {
    pub client_id: Uuid,
    pub first_name: String,
    pub last_name: String,
    pub email: String,
    pub address: String,
    pub registration_date: DateTime<Utc>,
    /// Kept by a trigger in PostgreSQL.
    pub updated_at: DateTime<Utc>,
    /// Soft delete.
    pub deleted_at: Option<DateTime<Utc>>,
}

/// A seller, i.e. a shop (PostgreSQL `sellers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seller {
    pub seller_id: Uuid,
    pub name: String,
    pub region: String,
    pub created_at: DateTime<Utc>,
    /// Kept by a trigger in PostgreSQL.
    pub updated_at: DateTime<Utc>,
    /// Soft delete.
    pub deleted_at: Option<DateTime<Utc>>,
}

/// A product of the catalogue (the source Delta table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub product_id: Uuid,
    pub name: String,
    pub category: String,
    /// List price, exact `Decimal(18,2)`.
    pub price: Decimal,
    pub available_stock: i32,
    pub seller_id: Uuid,
    pub updated_at: DateTime<Utc>,
}
