//! Dimension writes: `POST /api/sellers|clients|products` (one object or an array, upserted
//! by id) and `PUT /api/sellers|clients|products/{id}` (one whole object, whose id must be
//! the path's). Sellers and clients go to PostgreSQL (its trigger keeps `updated_at`, so the
//! incremental extracts see the change), products to the source Delta table as one new
//! version per request with `updated_at` set by the server (the products extract picks it up).
//!
//! Validation is `lakeshop_model::input`: every invalid field of every object is listed (400)
//! and nothing is written; a request's rows are written together (one PostgreSQL
//! transaction, one Delta commit) or not at all.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use chrono::Utc;
use lakeshop_model::{parse_client, parse_product, parse_seller, Rejection};
use lakeshop_service::Sensitive;
use lakeshop_sources::postgres::PgTls;
use lakeshop_sources::writes;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Access;
use crate::error::{ApiError, ErrorBody, FieldError};
use crate::AppState;

/// Where sellers and clients are written.
#[derive(Debug, Clone)]
pub struct PostgresTarget {
    /// Connection URL (may hold a password: masked in `Debug`).
    pub url: Sensitive<String>,
    pub tls: PgTls,
    pub clients_table: String,
    pub sellers_table: String,
}

/// Where products are written.
#[derive(Clone)]
pub struct ProductsTarget {
    /// URI of the source product Delta table.
    pub uri: String,
    /// Object store options (may hold keys: not shown in `Debug`).
    pub storage_options: HashMap<String, String>,
}

impl std::fmt::Debug for ProductsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProductsTarget")
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

/// The dimension writers: one PostgreSQL connection (opened on first use, opened again
/// after it broke) and the product table, each behind a lock so writes of one kind are
/// applied one after the other (a Delta commit never races another of this server).
#[derive(Default)]
pub struct Writers {
    postgres: Option<PostgresTarget>,
    products: Option<ProductsTarget>,
    pg: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
    product_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Writers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writers")
            .field("postgres", &self.postgres)
            .field("products", &self.products)
            .finish_non_exhaustive()
    }
}

impl Writers {
    pub fn new(postgres: Option<PostgresTarget>, products: Option<ProductsTarget>) -> Self {
        Self {
            postgres,
            products,
            ..Self::default()
        }
    }
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WriteReceipt {
    /// Objects in the request.
    pub received: usize,
    /// Rows that did not exist.
    pub inserted: u64,
    /// Rows that existed and were written again.
    pub updated: u64,
    /// The source table's new version (products only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

/// A seller (shop) as written to PostgreSQL.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)] // documentation only: the body is read by the model's validator
pub struct SellerIn {
    /// On `PUT`, the path's id.
    #[schema(format = Uuid, pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    seller_id: String,
    #[schema(min_length = 1, max_length = 200)]
    name: String,
    #[schema(min_length = 1, max_length = 100)]
    region: String,
    /// Kept when absent on an update; now on an insert.
    #[schema(format = DateTime)]
    created_at: Option<String>,
}

/// A client as written to PostgreSQL.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)] // documentation only
pub struct ClientIn {
    /// On `PUT`, the path's id.
    #[schema(format = Uuid, pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    client_id: String,
    #[schema(min_length = 1, max_length = 100)]
    first_name: String,
    #[schema(min_length = 1, max_length = 100)]
    last_name: String,
    /// `local@domain`.
    #[schema(min_length = 3, max_length = 150, pattern = "^[^@]+@.+$")]
    email: String,
    #[schema(min_length = 1, max_length = 250)]
    address: String,
    /// Kept when absent on an update; now on an insert.
    #[schema(format = DateTime)]
    registration_date: Option<String>,
}

/// A catalogue product as written to the source Delta table (`updated_at` is the server's).
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)] // documentation only
pub struct ProductIn {
    /// On `PUT`, the path's id.
    #[schema(format = Uuid, pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    product_id: String,
    #[schema(min_length = 1, max_length = 200)]
    name: String,
    #[schema(min_length = 1, max_length = 100)]
    category: String,
    /// List price, a JSON number with at most two decimals (kept exact).
    #[schema(minimum = 0, maximum = 1000000000000_f64, multiple_of = 0.01)]
    price: f64,
    #[schema(minimum = 0, maximum = 2147483647)]
    available_stock: i64,
    #[schema(format = Uuid, pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    seller_id: String,
}

/// One entity kind: its name, id field and validator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Seller,
    Client,
    Product,
}

impl Kind {
    fn id_field(self) -> &'static str {
        match self {
            Kind::Seller => "seller_id",
            Kind::Client => "client_id",
            Kind::Product => "product_id",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Kind::Seller => "sellers",
            Kind::Client => "clients",
            Kind::Product => "products",
        }
    }
}

/// Validated rows of one request.
enum Rows {
    Sellers(Vec<lakeshop_model::SellerInput>),
    Clients(Vec<lakeshop_model::ClientInput>),
    Products(Vec<lakeshop_model::ProductInput>),
}

fn field_errors(index: Option<usize>, rejections: Vec<Rejection>) -> Vec<FieldError> {
    rejections
        .into_iter()
        .map(|r| FieldError {
            index,
            field: r.field.map(String::from),
            reason: r.reason.as_str().into(),
            detail: r.detail,
        })
        .collect()
}

/// Validates every object; an id sent twice in one request is refused (which one wins
/// would be a guess).
fn validate(kind: Kind, array: bool, items: &[&[u8]]) -> Result<(Rows, usize), ApiError> {
    let now = Utc::now();
    let mut errors = Vec::new();
    let mut ids = HashSet::new();
    let mut twice = |i: usize, id: Uuid, errors: &mut Vec<FieldError>| {
        if !ids.insert(id) {
            errors.push(FieldError {
                index: array.then_some(i),
                field: Some(kind.id_field().into()),
                reason: "duplicate_id".into(),
                detail: format!("{id} appears more than once in this request"),
            });
        }
    };
    let rows = match kind {
        Kind::Seller => {
            let mut v = Vec::with_capacity(items.len());
            for (i, raw) in items.iter().enumerate() {
                match parse_seller(raw, now) {
                    Ok(s) => {
                        twice(i, s.seller_id, &mut errors);
                        v.push(s);
                    }
                    Err(r) => errors.extend(field_errors(array.then_some(i), r)),
                }
            }
            Rows::Sellers(v)
        }
        Kind::Client => {
            let mut v = Vec::with_capacity(items.len());
            for (i, raw) in items.iter().enumerate() {
                match parse_client(raw, now) {
                    Ok(c) => {
                        twice(i, c.client_id, &mut errors);
                        v.push(c);
                    }
                    Err(r) => errors.extend(field_errors(array.then_some(i), r)),
                }
            }
            Rows::Clients(v)
        }
        Kind::Product => {
            let mut v = Vec::with_capacity(items.len());
            for (i, raw) in items.iter().enumerate() {
                match parse_product(raw) {
                    Ok(p) => {
                        twice(i, p.product_id, &mut errors);
                        v.push(p);
                    }
                    Err(r) => errors.extend(field_errors(array.then_some(i), r)),
                }
            }
            Rows::Products(v)
        }
    };
    if !errors.is_empty() {
        return Err(ApiError::invalid(
            format!(
                "invalid {}: {} fault(s); nothing was written",
                kind.plural(),
                errors.len()
            ),
            errors,
        ));
    }
    Ok((rows, items.len()))
}

/// The body of a `PUT`: one whole object whose id must be the path's.
fn with_path_id(kind: Kind, id: &str, body: &[u8]) -> Result<Vec<u8>, ApiError> {
    let invalid = |reason: &str, detail: String| {
        ApiError::invalid(
            format!("invalid {} id", kind.plural()),
            vec![FieldError {
                index: None,
                field: Some(kind.id_field().into()),
                reason: reason.into(),
                detail,
            }],
        )
    };
    let path_id = Uuid::try_parse(id)
        .ok()
        .filter(|_| id.len() == 36)
        .ok_or_else(|| invalid("bad_uuid", format!("{id:?} in the path is not a UUID")))?;
    let Ok(object) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body)
    else {
        // Not an object: the validator explains it.
        return Ok(body.to_vec());
    };
    match object.get(kind.id_field()) {
        // The body is the whole record, id included: the validator says what is missing.
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::String(s))
            if Uuid::try_parse(s).ok() == Some(path_id) && s.len() == 36 => {}
        Some(other) => {
            return Err(invalid(
                "id_mismatch",
                format!("{other} in the body is not the path's {path_id}"),
            ))
        }
    }
    Ok(body.to_vec())
}

async fn write(
    state: &AppState,
    kind: Kind,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    path_id: Option<&str>,
) -> Result<WriteReceipt, ApiError> {
    state.tokens.require(headers, Access::Write)?;
    crate::ingest::require_json(headers)?;
    let body = crate::ingest::read_body(state, body)?;
    let body = match path_id {
        Some(id) => with_path_id(kind, id, &body)?,
        None => body.to_vec(),
    };
    let (array, items) = crate::ingest::split(&body, state.config.max_batch, kind.plural())?;
    let (rows, received) = validate(kind, array, &items)?;
    let w = &state.writers;
    let pg_err = |e: lakeshop_sources::Error| ApiError::unavailable("postgres", &e);
    let (stats, version) = match rows {
        Rows::Sellers(rows) => {
            let (mut conn, target) = pg_connection(w).await?;
            let client = conn.as_mut().ok_or_else(no_connection)?;
            let stats = writes::upsert_sellers(client, &target.sellers_table, &rows)
                .await
                .map_err(pg_err)?;
            (stats, None)
        }
        Rows::Clients(rows) => {
            let (mut conn, target) = pg_connection(w).await?;
            let client = conn.as_mut().ok_or_else(no_connection)?;
            let stats = writes::upsert_clients(client, &target.clients_table, &rows)
                .await
                .map_err(pg_err)?;
            (stats, None)
        }
        Rows::Products(rows) => {
            let target = w.products.as_ref().ok_or_else(|| {
                ApiError::unavailable_msg("products", "no source product table is configured")
            })?;
            let _one_at_a_time = w.product_lock.lock().await;
            writes::upsert_products(&target.uri, &target.storage_options, &rows)
                .await
                .map_err(|e| ApiError::unavailable("products", &e))?
        }
    };
    state.metrics.dimension_writes(kind.plural(), received);
    tracing::info!(
        kind = kind.plural(),
        received,
        inserted = stats.inserted,
        updated = stats.updated,
        version,
        "dimension write"
    );
    Ok(WriteReceipt {
        received,
        inserted: stats.inserted,
        updated: stats.updated,
        version,
    })
}

fn no_connection() -> ApiError {
    ApiError::unavailable_msg("postgres", "no connection")
}

/// The PostgreSQL connection (opened when there is none or it broke), held until the guard
/// drops, and where to write.
async fn pg_connection(
    w: &Writers,
) -> Result<
    (
        tokio::sync::MutexGuard<'_, Option<tokio_postgres::Client>>,
        &PostgresTarget,
    ),
    ApiError,
> {
    let target = w.postgres.as_ref().ok_or_else(|| {
        ApiError::unavailable_msg("postgres", "no PostgreSQL source is configured")
    })?;
    let mut guard = w.pg.lock().await;
    if guard.as_ref().is_none_or(|c| c.is_closed()) {
        let client = lakeshop_sources::postgres::connect(target.url.expose(), &target.tls)
            .await
            .map_err(|e| ApiError::unavailable("postgres", &e))?;
        *guard = Some(client);
    }
    Ok((guard, target))
}

macro_rules! handlers {
    ($kind:expr, $post:ident, $put:ident, $path:literal, $path_id:literal, $schema:ty, $post_doc:literal, $put_doc:literal) => {
        #[doc = $post_doc]
        #[utoipa::path(
            post,
            path = $path,
            tag = "dimensions",
            request_body(content = $schema, content_type = "application/json",
                description = "One object, or an array of them (up to api.max_batch)"),
            responses(
                (status = 200, description = "Written (all of them, together)", body = WriteReceipt),
                (status = 400, description = "Invalid JSON or fields: each listed with its reason; nothing was written", body = ErrorBody),
                (status = 401, description = "No or unknown bearer token", body = ErrorBody),
                (status = 403, description = "A read-only token", body = ErrorBody),
                (status = 413, description = "Body or array larger than the limits", body = ErrorBody),
                (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
                (status = 503, description = "The source is not configured or does not answer; nothing was written", body = ErrorBody),
            ),
            security(("bearer" = []))
        )]
        pub async fn $post(
            State(state): State<Arc<AppState>>,
            headers: HeaderMap,
            body: Result<Bytes, BytesRejection>,
        ) -> Result<Json<WriteReceipt>, ApiError> {
            write(&state, $kind, &headers, body, None).await.map(Json)
        }

        #[doc = $put_doc]
        #[utoipa::path(
            put,
            path = $path_id,
            tag = "dimensions",
            params(("id" = String, Path, description = "The id (a UUID); the body's, when given, must be the same")),
            request_body(content = $schema, content_type = "application/json"),
            responses(
                (status = 200, description = "Written", body = WriteReceipt),
                (status = 400, description = "Invalid JSON, fields or id: each listed with its reason; nothing was written", body = ErrorBody),
                (status = 401, description = "No or unknown bearer token", body = ErrorBody),
                (status = 403, description = "A read-only token", body = ErrorBody),
                (status = 413, description = "Body larger than the limit", body = ErrorBody),
                (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
                (status = 503, description = "The source is not configured or does not answer; nothing was written", body = ErrorBody),
            ),
            security(("bearer" = []))
        )]
        pub async fn $put(
            State(state): State<Arc<AppState>>,
            Path(id): Path<String>,
            headers: HeaderMap,
            body: Result<Bytes, BytesRejection>,
        ) -> Result<Json<WriteReceipt>, ApiError> {
            write(&state, $kind, &headers, body, Some(&id)).await.map(Json)
        }
    };
}

handlers!(
    Kind::Seller,
    post_sellers,
    put_seller,
    "/api/sellers",
    "/api/sellers/{id}",
    SellerIn,
    "Insert or update sellers by id (one object or an array).",
    "Insert or update one seller under the path's id."
);
handlers!(
    Kind::Client,
    post_clients,
    put_client,
    "/api/clients",
    "/api/clients/{id}",
    ClientIn,
    "Insert or update clients by id (one object or an array).",
    "Insert or update one client under the path's id."
);
handlers!(
    Kind::Product,
    post_products,
    put_product,
    "/api/products",
    "/api/products/{id}",
    ProductIn,
    "Insert or update products by id (one object or an array); one new source table version.",
    "Insert or update one product under the path's id; one new source table version."
);

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn a_put_body_must_carry_the_paths_id() {
        let id = "6a3f2b1c-1d2e-4f5a-8b9c-0d1e2f3a4b5c";
        assert!(with_path_id(
            Kind::Seller,
            id,
            format!(r#"{{"seller_id":"{id}"}}"#).as_bytes()
        )
        .is_ok());
        let other = with_path_id(
            Kind::Seller,
            id,
            br#"{"seller_id":"7a3f2b1c-1d2e-4f5a-8b9c-0d1e2f3a4b5c"}"#,
        )
        .expect_err("mismatch");
        assert_eq!(other.body().errors[0].reason, "id_mismatch");
        let bad = with_path_id(Kind::Seller, "nope", b"{}").expect_err("bad path id");
        assert_eq!(bad.body().errors[0].reason, "bad_uuid");
        // Without the id, the validator refuses it as missing.
        let body =
            with_path_id(Kind::Seller, id, br#"{"name":"x","region":"r"}"#).expect("passed on");
        let err = validate(Kind::Seller, false, &[&body])
            .err()
            .expect("missing id");
        assert_eq!(err.body().errors[0].reason, "missing_field");
    }

    #[test]
    fn an_id_twice_in_one_request_is_refused() {
        let one =
            br#"{"seller_id":"6a3f2b1c-1d2e-4f5a-8b9c-0d1e2f3a4b5c","name":"a","region":"r"}"#;
        let err = validate(Kind::Seller, true, &[one, one])
            .err()
            .expect("duplicate id");
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert_eq!(err.body().errors[0].reason, "duplicate_id");
        assert_eq!(err.body().errors[0].index, Some(1));
    }
}
