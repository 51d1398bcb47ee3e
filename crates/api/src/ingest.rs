//! `POST /api/purchases`: one purchase object or an array of them, validated by the same
//! code and reasons as the extractors and the loader, produced to the purchases topic keyed
//! by purchase id (as `gen` does), and answered 202 only after the broker acknowledged every
//! purchase of the request.
//!
//! A request is all or nothing on validation: one invalid purchase (400, each listed with
//! its reason) or one conflicting re-send (409) and nothing is produced. An identical
//! re-send of an id the API acknowledged lately is answered as a duplicate and not produced
//! again; downstream, the loader and the batch job count each purchase id once anyway.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use chrono::Utc;
use lakeshop_model::{parse_purchase, Purchase, Reason};
use rdkafka::producer::FutureRecord;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::hash::Hasher as _;
use std::sync::Arc;
use std::time::Instant;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Access;
use crate::config::ApiConfig;
use crate::error::{ApiError, ErrorBody, FieldError};
use crate::recent::Seen;
use crate::AppState;

/// Producer settings of the API on top of the cluster's: every replica acknowledges, a
/// short linger (requests wait for their acknowledgement), the configured timeout and
/// idempotence. The pipeline's pass-through properties win.
pub fn producer_config(kafka: &rdkafka::ClientConfig, api: &ApiConfig) -> rdkafka::ClientConfig {
    let mut c = rdkafka::ClientConfig::new();
    c.set("acks", "all")
        .set("linger.ms", "2")
        .set("message.max.bytes", "4194304")
        .set(
            "message.timeout.ms",
            api.produce_timeout.as_millis().to_string(),
        )
        .set("enable.idempotence", api.idempotent_producer.to_string());
    for (k, v) in kafka.config_map() {
        c.set(k, v);
    }
    c
}

/// A purchase as the API takes it: the Kafka event of `schemas/kafka/purchase.schema.json`.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)] // documentation only: the body is read by the model's validator
pub struct PurchaseIn {
    /// Unique id of the purchase; a re-send is counted once.
    #[schema(format = Uuid, pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    purchase_id: String,
    /// The buyer.
    #[schema(format = Uuid, pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    client_id: String,
    /// The product bought.
    #[schema(format = Uuid, pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    product_id: String,
    /// The shop; absent or null counts under `unknown`.
    #[schema(format = Uuid, pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    seller_id: Option<String>,
    /// Items bought.
    #[schema(minimum = 1, maximum = 1000000)]
    quantity: i64,
    /// Unit price, a JSON number with at most two decimals (kept exact).
    #[schema(minimum = 0, maximum = 1000000000000_f64, multiple_of = 0.01)]
    price: f64,
    /// When the purchase happened: RFC 3339 with an offset, not before 2000-01-01 and at
    /// most one day ahead.
    #[schema(format = DateTime)]
    timestamp: String,
}

/// One purchase or an array of them (up to `api.max_batch`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // documentation only
pub enum PurchasesIn {
    One(PurchaseIn),
    Many(Vec<PurchaseIn>),
}

/// The answer to an accepted request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Receipt {
    /// Purchases in the request.
    pub received: usize,
    /// Purchases produced and acknowledged by the broker now.
    pub accepted: usize,
    /// Identical re-sends (within the request, or of an id acknowledged lately): not
    /// produced again.
    pub duplicates: usize,
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

/// 415 unless the request says it sends JSON.
pub(crate) fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    if is_json(headers) {
        Ok(())
    } else {
        Err(ApiError::unsupported_media_type(
            "send Content-Type: application/json",
        ))
    }
}

/// The body, or 413 over the limit.
pub(crate) fn read_body(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(format!(
                "the body is larger than {} bytes",
                state.config.max_body_bytes
            ))
        } else {
            ApiError::invalid(format!("reading the body: {e}"), Vec::new())
        }
    })
}

/// The request's objects as raw JSON texts, and whether it was an array (of at most
/// `max_batch`; `plural` names them in errors).
pub(crate) fn split<'a>(
    body: &'a [u8],
    max_batch: usize,
    plural: &str,
) -> Result<(bool, Vec<&'a [u8]>), ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'[') {
        return Ok((false, vec![body]));
    }
    let items: Vec<&RawValue> = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(
            format!("the body is not a JSON array of {plural}"),
            vec![FieldError {
                index: None,
                field: None,
                reason: Reason::MalformedJson.as_str().into(),
                detail: e.to_string(),
            }],
        )
    })?;
    if items.is_empty() {
        return Err(ApiError::invalid(
            format!("the array holds no {plural}"),
            Vec::new(),
        ));
    }
    if items.len() > max_batch {
        return Err(ApiError::too_large(format!(
            "{} {plural} in one request; at most {max_batch}",
            items.len()
        )));
    }
    Ok((true, items.iter().map(|r| r.get().as_bytes()).collect()))
}

/// Fingerprint of a purchase's content: its canonical JSON, so a re-send with other
/// whitespace or key order is the same purchase.
fn fingerprint(canonical: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    h.write(canonical.as_bytes());
    h.finish()
}

/// Send purchases to Kafka.
#[utoipa::path(
    post,
    path = "/api/purchases",
    tag = "ingest",
    request_body(content = PurchasesIn, content_type = "application/json",
        description = "One purchase object, or an array of them"),
    responses(
        (status = 202, description = "Every purchase is acknowledged by the broker (or was, lately: duplicates)", body = Receipt),
        (status = 400, description = "Invalid JSON or purchases: each listed with its reason; nothing was produced", body = ErrorBody),
        (status = 401, description = "No or unknown bearer token", body = ErrorBody),
        (status = 403, description = "A read-only token", body = ErrorBody),
        (status = 409, description = "A purchase id sent before with other content; nothing was produced", body = ErrorBody),
        (status = 413, description = "Body or array larger than the limits", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
        (status = 503, description = "The broker did not acknowledge in time; retrying is safe", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn post_purchases(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Receipt>), ApiError> {
    state.tokens.require(&headers, Access::Write)?;
    require_json(&headers)?;
    let body = read_body(&state, body)?;
    let (array, items) = split(&body, state.config.max_batch, "purchases")?;
    let received = items.len();
    let m = &state.metrics;

    // 1. Validate every purchase.
    let now = Utc::now();
    let mut purchases: Vec<Purchase> = Vec::with_capacity(received);
    let mut errors = Vec::new();
    for (i, raw) in items.iter().enumerate() {
        match parse_purchase(raw, now) {
            Ok(p) => purchases.push(p),
            Err(r) => {
                m.rejected(r.reason.as_str());
                errors.push(FieldError {
                    index: array.then_some(i),
                    field: r.field.map(String::from),
                    reason: r.reason.as_str().into(),
                    detail: r.detail,
                });
            }
        }
    }
    if !errors.is_empty() {
        m.purchases("rejected", received);
        return Err(ApiError::invalid(
            format!(
                "{} of {received} purchases are invalid; none was sent",
                errors.len()
            ),
            errors,
        ));
    }

    // 2. Re-sends: identical ones are answered, not produced again; others conflict.
    let mut in_request: HashMap<Uuid, u64> = HashMap::with_capacity(received);
    let mut to_send: Vec<(Uuid, u64, String, String)> = Vec::with_capacity(received);
    let mut duplicates = 0;
    let mut conflicts = Vec::new();
    for (i, p) in purchases.iter().enumerate() {
        let json = p.to_json();
        let fp = fingerprint(&json);
        let conflict = |detail: &str| FieldError {
            index: array.then_some(i),
            field: Some("purchase_id".into()),
            reason: Reason::ConflictingDuplicate.as_str().into(),
            detail: format!("{} {detail}", p.purchase_id),
        };
        match in_request.get(&p.purchase_id) {
            Some(f) if *f == fp => duplicates += 1,
            Some(_) => conflicts.push(conflict("appears twice in this request with other content")),
            None => {
                in_request.insert(p.purchase_id, fp);
                match state.recent.seen(&p.purchase_id, fp) {
                    Seen::Same => duplicates += 1,
                    Seen::Other => conflicts.push(conflict("was sent before with other content")),
                    Seen::New => to_send.push((p.purchase_id, fp, p.purchase_id.to_string(), json)),
                }
            }
        }
    }
    if !conflicts.is_empty() {
        for _ in &conflicts {
            m.rejected(Reason::ConflictingDuplicate.as_str());
        }
        m.purchases("rejected", received);
        return Err(ApiError::conflict(
            format!(
                "{} of {received} purchases reuse an id with other content; none was sent",
                conflicts.len()
            ),
            conflicts,
        ));
    }

    // 3. Produce and wait for every acknowledgement.
    let started = Instant::now();
    let sends = to_send.iter().map(|(_, _, key, json)| {
        state.producer.send(
            FutureRecord::to(&state.purchases_topic)
                .key(key.as_str())
                .payload(json.as_str()),
            state.config.produce_timeout,
        )
    });
    let results = futures::future::join_all(sends).await;
    m.produce_seconds.observe(started.elapsed().as_secs_f64());
    let mut acked = Vec::with_capacity(to_send.len());
    let mut failed = None;
    for ((id, fp, _, _), result) in to_send.iter().zip(results) {
        match result {
            Ok(_) => acked.push((*id, *fp)),
            Err((e, _)) => failed = failed.or(Some(e)),
        }
    }
    // Acknowledged ones are remembered even when others failed: the client's retry of the
    // whole request then produces only the missing ones.
    state.recent.acknowledged(acked.iter().copied());
    if let Some(e) = failed {
        m.purchases("accepted", acked.len());
        return Err(ApiError::unavailable("kafka", &e));
    }
    m.purchases("accepted", acked.len());
    m.purchases("duplicate", duplicates);
    Ok((
        StatusCode::ACCEPTED,
        Json(Receipt {
            received,
            accepted: acked.len(),
            duplicates,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_objects_and_arrays() {
        let (array, items) = split(br#" {"a":1} "#, 10, "purchases").expect("object");
        assert!(!array);
        assert_eq!(items.len(), 1);
        let (array, items) =
            split(br#" [ {"a":1}, {"b": [2]} ] "#, 10, "purchases").expect("array");
        assert!(array);
        assert_eq!(items, vec![&br#"{"a":1}"#[..], &br#"{"b": [2]}"#[..]]);
        assert_eq!(
            split(b"[1,2,3]", 2, "purchases").err().map(|e| e.status()),
            Some(StatusCode::PAYLOAD_TOO_LARGE)
        );
        assert_eq!(
            split(b"[]", 2, "purchases").err().map(|e| e.status()),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            split(b"[{", 2, "purchases")
                .err()
                .map(|e| e.body().errors[0].reason.clone()),
            Some("malformed_json".to_string())
        );
    }

    #[test]
    fn content_type_must_be_json() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, v.parse().expect("header"));
            is_json(&h)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(!with("text/plain"));
        assert!(!with("application/jsonx"));
        assert!(!is_json(&HeaderMap::new()));
    }
}
