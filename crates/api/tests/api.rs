//! The API's handlers through `Router` + `oneshot`, against the local broker and ClickHouse:
//! what `POST /api/purchases` puts on the topic (and what it refuses), auth, limits, the
//! reports and the live series with their exact money, JSON and CSV, `/openapi.json`, and
//! what dimension writes check before they reach a source.

use anyhow::{Context as _, Result};
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt as _;
use lakeshop_api::{Api, ApiConfig, ApiParts};
use lakeshop_clickhouse::{ClickHouse, ClickHouseOptions, Migration};
use lakeshop_service::Sensitive;
use serde_json::{json, Value};
use std::time::Duration;
use tower::ServiceExt as _;

const WRITER: &str = "writer-token-0123456789";
const READER: &str = "reader-token-0123456789";

fn clickhouse(database: &str) -> Result<ClickHouse> {
    Ok(ClickHouse::new(&ClickHouseOptions {
        url: std::env::var("CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into()),
        database: database.into(),
        user: std::env::var("CLICKHOUSE_USER").unwrap_or_else(|_| "default".into()),
        password: std::env::var("CLICKHOUSE_PASSWORD").unwrap_or_default(),
        compression: Default::default(),
    })?)
}

struct World {
    app: Router,
    topic: String,
    ch: ClickHouse,
}

/// Drops the test's ClickHouse database, whether the test passed or not: on a thread of
/// its own with a client of its own (the test's runtime may be busy dropping this).
impl Drop for World {
    fn drop(&mut self) {
        let db = self.ch.database().to_string();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let ch = clickhouse(&db)?;
            rt.block_on(ch.execute(
                "drop test database",
                &format!("DROP DATABASE IF EXISTS {db}"),
            ))?;
            anyhow::Ok(())
        })
        .join();
    }
}

async fn world(config: ApiConfig) -> Result<World> {
    let topic = lakeshop_testkit::unique("api_purchases");
    lakeshop_testkit::create_topic(&topic, 2).await?;
    let ch = clickhouse(&lakeshop_testkit::unique("lakeshop_api_test"))?;
    ch.migrate(&Migration::all()?).await?;
    let mut kafka = rdkafka::ClientConfig::new();
    kafka.set("bootstrap.servers", lakeshop_testkit::kafka_brokers());
    let api = Api::new(
        ApiConfig {
            write_tokens: Sensitive::new(WRITER.into()),
            read_tokens: Sensitive::new(READER.into()),
            ..config
        },
        ApiParts {
            kafka,
            purchases_topic: topic.clone(),
            clickhouse: ch.clone(),
            timezone: chrono_tz::UTC,
            postgres: None,
            products: None,
        },
    )?;
    Ok(World {
        app: api.router(),
        topic,
        ch,
    })
}

/// Sends a request; returns the status, the content type and the body.
async fn send(app: &Router, req: Request<Body>) -> Result<(StatusCode, String, Vec<u8>)> {
    let res = app.clone().oneshot(req).await?;
    let status = res.status();
    let ctype = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = res.into_body().collect().await?.to_bytes().to_vec();
    Ok((status, ctype, body))
}

fn post(body: impl Into<Body>, token: Option<&str>, ctype: &str) -> Result<Request<Body>> {
    let mut b = Request::post("/api/purchases").header(header::CONTENT_TYPE, ctype);
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    Ok(b.body(body.into())?)
}

fn get(uri: &str, accept: Option<&str>) -> Result<Request<Body>> {
    let mut b = Request::get(uri);
    if let Some(a) = accept {
        b = b.header(header::ACCEPT, a);
    }
    Ok(b.body(Body::empty())?)
}

const CLIENT: &str = "6f1c2f4e-9a57-4b0a-9d2b-0c8f3e7a1d11";
const PRODUCT: &str = "0b6f8a3e-2c1d-4e5f-8a9b-7c6d5e4f3a21";

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A purchase's JSON text (the price written as given, as producers do).
fn purchase(id: u128, quantity: u32, price: &str, at: &str) -> String {
    format!(
        r#"{{"purchase_id":"{}","client_id":"{CLIENT}","product_id":"{PRODUCT}","seller_id":null,"quantity":{quantity},"price":{price},"timestamp":"{at}"}}"#,
        uuid::Uuid::from_u128(id)
    )
}

fn array(items: &[String]) -> String {
    format!("[{}]", items.join(","))
}

fn json_of(body: &[u8]) -> Result<Value> {
    serde_json::from_slice(body).with_context(|| String::from_utf8_lossy(body).to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn purchases_reach_the_topic_once_and_bad_requests_reach_nothing() -> Result<()> {
    let w = world(ApiConfig {
        max_batch: 3,
        max_body_bytes: 4096,
        ..ApiConfig::default()
    })
    .await?;
    let app = &w.app;
    let at = now();
    let one = purchase(1, 2, "19.99", &at);
    let json_ct = "application/json";

    // Auth and content type come first; none of these produce anything.
    let (s, _, b) = send(app, post(one.clone(), None, json_ct)?).await?;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "{}",
        String::from_utf8_lossy(&b)
    );
    assert_eq!(json_of(&b)?["error"], "unauthorized");
    let (s, _, _) = send(app, post(one.clone(), Some(READER), json_ct)?).await?;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _, _) = send(app, post(one.clone(), Some(WRITER), "text/plain")?).await?;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // One purchase: produced once, keyed by its id, in canonical form.
    let (s, _, b) = send(app, post(one.clone(), Some(WRITER), json_ct)?).await?;
    assert_eq!(s, StatusCode::ACCEPTED, "{}", String::from_utf8_lossy(&b));
    assert_eq!(
        json_of(&b)?,
        json!({"received": 1, "accepted": 1, "duplicates": 0})
    );
    // The identical re-send (other key order and spacing) is answered, not produced again.
    let reordered = format!(
        "{{ \"timestamp\": \"{at}\", \"price\": 19.990, \"quantity\": 2, \"product_id\": \"{PRODUCT}\", \"client_id\": \"{CLIENT}\", \"purchase_id\": \"{}\" }}",
        uuid::Uuid::from_u128(1)
    );
    let (s, _, b) = send(app, post(reordered, Some(WRITER), json_ct)?).await?;
    assert_eq!(s, StatusCode::ACCEPTED, "{}", String::from_utf8_lossy(&b));
    assert_eq!(
        json_of(&b)?,
        json!({"received": 1, "accepted": 0, "duplicates": 1})
    );
    // The same id with other content conflicts.
    let (s, _, b) = send(
        app,
        post(purchase(1, 3, "19.99", &at), Some(WRITER), json_ct)?,
    )
    .await?;
    assert_eq!(s, StatusCode::CONFLICT, "{}", String::from_utf8_lossy(&b));
    assert_eq!(json_of(&b)?["errors"][0]["reason"], "conflicting_duplicate");

    // An array with one invalid purchase: 400 naming it, nothing produced.
    let batch = array(&[
        purchase(2, 1, "5.00", &at),
        purchase(3, 1, "5.001", &at),
        purchase(4, 0, "1", &at),
    ]);
    let (s, _, b) = send(app, post(batch, Some(WRITER), json_ct)?).await?;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let errors = json_of(&b)?["errors"].clone();
    assert_eq!(
        errors,
        json!([
            {"index": 1, "field": "price", "reason": "price_scale", "detail": errors[0]["detail"]},
            {"index": 2, "field": "quantity", "reason": "quantity_out_of_range", "detail": errors[1]["detail"]},
        ])
    );
    let (s, _, b) = send(app, post("{\"purchase_id\": ", Some(WRITER), json_ct)?).await?;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(json_of(&b)?["errors"][0]["reason"], "malformed_json");
    // Limits: more purchases than max_batch, a body over max_body_bytes.
    let four = array(&[5, 6, 7, 8].map(|i| purchase(i, 1, "1", &at)));
    let (s, _, _) = send(app, post(four, Some(WRITER), json_ct)?).await?;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    let (s, _, b) = send(app, post(vec![b' '; 5000], Some(WRITER), json_ct)?).await?;
    assert_eq!(
        s,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        String::from_utf8_lossy(&b)
    );

    // A valid array with an identical repeat inside: two produced, one duplicate.
    let batch = array(&[
        purchase(9, 1, "0.07", &at),
        purchase(10, 4, "1234567.89", &at),
        purchase(9, 1, "0.07", &at),
    ]);
    let (s, _, b) = send(app, post(batch, Some(WRITER), json_ct)?).await?;
    assert_eq!(s, StatusCode::ACCEPTED, "{}", String::from_utf8_lossy(&b));
    assert_eq!(
        json_of(&b)?,
        json!({"received": 3, "accepted": 2, "duplicates": 1})
    );

    let topic = w.topic.clone();
    let records = tokio::task::spawn_blocking(move || {
        lakeshop_testkit::read_topic(&topic, Duration::from_secs(2))
    })
    .await??;
    let mut got: Vec<(String, Value)> = records
        .iter()
        .map(|r| {
            Ok((
                String::from_utf8(r.key.clone().context("a record without key")?)?,
                json_of(&r.payload)?,
            ))
        })
        .collect::<Result<_>>()?;
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let ids: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
    assert_eq!(
        ids,
        [1u128, 9, 10].map(|i| uuid::Uuid::from_u128(i).to_string()),
        "exactly the accepted purchases, each once"
    );
    for (key, payload) in &got {
        assert_eq!(payload["purchase_id"].as_str(), Some(key.as_str()));
    }
    // Prices travel exactly.
    assert_eq!(got[1].1["price"].to_string(), "0.07");
    assert_eq!(got[2].1["price"].to_string(), "1234567.89");
    assert_eq!(got[0].1["quantity"], 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn reports_and_series_read_exact_numbers() -> Result<()> {
    let w = world(ApiConfig {
        reads_need_token: true,
        ..ApiConfig::default()
    })
    .await?;
    let app = &w.app;
    w.ch.execute(
        "fill daily_seller",
        "INSERT INTO daily_seller VALUES \
         ('2026-11-20', 'aaaaaaaa-0000-0000-0000-000000000001', 100.10, 3, 5, 2), \
         ('2026-11-20', 'bbbbbbbb-0000-0000-0000-000000000002', 200.20, 1, 1, 1), \
         ('2026-11-21', 'aaaaaaaa-0000-0000-0000-000000000001', 0.07, 1, 1, 1)",
    )
    .await?;
    // Two partitions of one minute window; partition 0 was written twice, the later version
    // (10) holds its state.
    w.ch.execute(
        "fill stream_minutes",
        "INSERT INTO stream_minutes VALUES \
         (toDateTime('2026-11-21 10:00:00', 'UTC'), toDateTime('2026-11-21 10:00:00', 'UTC'), toDateTime('2026-11-21 00:00:00', 'UTC'), '2026-11-21', 'total', '', 'purchases', 0, 5.00, 1, 1, 4), \
         (toDateTime('2026-11-21 10:00:00', 'UTC'), toDateTime('2026-11-21 10:00:00', 'UTC'), toDateTime('2026-11-21 00:00:00', 'UTC'), '2026-11-21', 'total', '', 'purchases', 0, 15.50, 3, 4, 10), \
         (toDateTime('2026-11-21 10:00:00', 'UTC'), toDateTime('2026-11-21 10:00:00', 'UTC'), toDateTime('2026-11-21 00:00:00', 'UTC'), '2026-11-21', 'total', '', 'purchases', 1, 0.25, 1, 2, 7), \
         (toDateTime('2026-11-21 10:01:00', 'UTC'), toDateTime('2026-11-21 10:00:00', 'UTC'), toDateTime('2026-11-21 00:00:00', 'UTC'), '2026-11-21', 'total', '', 'purchases', 1, 1.00, 1, 1, 9), \
         (toDateTime('2026-11-21 11:00:00', 'UTC'), toDateTime('2026-11-21 11:00:00', 'UTC'), toDateTime('2026-11-21 00:00:00', 'UTC'), '2026-11-21', 'total', '', 'purchases', 1, 9.00, 1, 1, 12)",
    )
    .await?;

    let shops = "/api/analytics/shops?from=2026-11-20&to=2026-11-20";
    let (s, _, _) = send(app, get(shops, None)?).await?;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "reads need a token here");
    let with_token = |uri: &str, accept: Option<&str>| -> Result<Request<Body>> {
        let mut r = get(uri, accept)?;
        r.headers_mut()
            .insert(header::AUTHORIZATION, format!("Bearer {READER}").parse()?);
        Ok(r)
    };
    let (s, _, b) = send(app, with_token(shops, None)?).await?;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let t = json_of(&b)?;
    assert_eq!(t["truncated"], false);
    assert_eq!(
        t["rows"],
        json!([
            {"event_date": "2026-11-20", "seller_id": "bbbbbbbb-0000-0000-0000-000000000002", "revenue": "200.20", "purchases": 1, "items": 1, "avg_check": "200.20", "distinct_clients": 1},
            {"event_date": "2026-11-20", "seller_id": "aaaaaaaa-0000-0000-0000-000000000001", "revenue": "100.10", "purchases": 3, "items": 5, "avg_check": "33.37", "distinct_clients": 2},
        ])
    );
    let (s, ctype, b) = send(
        app,
        with_token(&format!("{shops}&limit=1"), Some("text/csv"))?,
    )
    .await?;
    assert_eq!(s, StatusCode::OK);
    assert!(ctype.starts_with("text/csv"), "{ctype}");
    assert_eq!(
        String::from_utf8(b)?,
        "event_date,seller_id,revenue,purchases,items,avg_check,distinct_clients\n\
         2026-11-20,bbbbbbbb-0000-0000-0000-000000000002,200.20,1,1,200.20,1\n"
    );
    for (uri, status) in [
        (
            "/api/analytics/shops?from=2026-11-21&to=2026-11-20",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/analytics/shops?from=yesterday",
            StatusCode::BAD_REQUEST,
        ),
        ("/api/analytics/shops?limit=0", StatusCode::BAD_REQUEST),
        ("/api/analytics/nope", StatusCode::NOT_FOUND),
        (
            "/api/analytics/series?granularity=week",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/analytics/series?granularity=minute&dim=product&key=x'%20OR%201",
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (s, _, b) = send(app, with_token(uri, None)?).await?;
        assert_eq!(s, status, "{uri}: {}", String::from_utf8_lossy(&b));
        assert!(json_of(&b)?["message"].is_string(), "{uri}");
    }

    let series = "/api/analytics/series?granularity=minute&from=2026-11-21T10:00:00Z&to=2026-11-21T11:00:00Z";
    let (s, _, b) = send(app, with_token(series, None)?).await?;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert_eq!(
        json_of(&b)?["rows"],
        json!([
            {"window_start": "2026-11-21T10:00:00Z", "key": "", "revenue": "15.75", "purchases": 4, "items": 6},
            {"window_start": "2026-11-21T10:01:00Z", "key": "", "revenue": "1.00", "purchases": 1, "items": 1},
        ]),
        "the latest version of each partition, summed; 11:00 is outside the range"
    );
    // Hours and days are the sums of their minutes.
    let hours =
        "/api/analytics/series?granularity=hour&from=2026-11-21T10:00:00Z&to=2026-11-21T12:00:00Z";
    let (s, _, b) = send(app, with_token(hours, None)?).await?;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert_eq!(
        json_of(&b)?["rows"],
        json!([
            {"window_start": "2026-11-21T10:00:00Z", "key": "", "revenue": "16.75", "purchases": 5, "items": 7},
            {"window_start": "2026-11-21T11:00:00Z", "key": "", "revenue": "9.00", "purchases": 1, "items": 1},
        ]),
        "hours"
    );
    let days =
        "/api/analytics/series?granularity=day&from=2026-11-21T00:00:00Z&to=2026-11-22T00:00:00Z";
    let (s, _, b) = send(app, with_token(days, None)?).await?;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert_eq!(
        json_of(&b)?["rows"],
        json!([
            {"window_start": "2026-11-21T00:00:00Z", "key": "", "revenue": "25.75", "purchases": 6, "items": 8},
        ]),
        "days"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn openapi_document_lists_every_route() -> Result<()> {
    let w = world(ApiConfig::default()).await?;
    let (s, _, b) = send(&w.app, get("/openapi.json", None)?).await?;
    assert_eq!(s, StatusCode::OK);
    let doc = json_of(&b)?;
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );
    for path in [
        "/api/purchases",
        "/api/analytics/{report}",
        "/api/analytics/series",
        "/api/sellers",
        "/api/sellers/{id}",
        "/api/clients",
        "/api/clients/{id}",
        "/api/products",
        "/api/products/{id}",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    let post = &doc["paths"]["/api/purchases"]["post"];
    for status in ["202", "400", "401", "403", "409", "413", "415", "503"] {
        assert!(
            post["responses"][status].is_object(),
            "POST /api/purchases {status}"
        );
    }
    assert_eq!(
        doc["components"]["schemas"]["PurchaseIn"]["properties"]["purchase_id"]["format"],
        "uuid"
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let (s, _, b) = send(&w.app, get("/nowhere", None)?).await?;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(json_of(&b)?["error"], "not_found");
    Ok(())
}

fn write_req(
    method: &str,
    uri: &str,
    body: &str,
    token: Option<&str>,
    ctype: &str,
) -> Result<Request<Body>> {
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, ctype);
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    Ok(b.body(Body::from(body.to_string()))?)
}

#[tokio::test(flavor = "multi_thread")]
async fn dimension_writes_check_auth_type_and_fields_before_any_source() -> Result<()> {
    // No PostgreSQL and no product table configured: whatever passes the checks gets 503.
    let w = world(ApiConfig {
        max_batch: 2,
        ..ApiConfig::default()
    })
    .await?;
    let seller =
        r#"{"seller_id":"6a3f2b1c-1d2e-4f5a-8b9c-0d1e2f3a4b5c","name":"Shop","region":"EU"}"#;
    let json = "application/json";
    let code = |b: &[u8]| json_of(b).map(|v| v["error"].as_str().unwrap_or("").to_string());
    for (method, uri) in [
        ("POST", "/api/sellers"),
        ("PUT", "/api/sellers/6a3f2b1c-1d2e-4f5a-8b9c-0d1e2f3a4b5c"),
    ] {
        let (s, _, b) = send(&w.app, write_req(method, uri, seller, None, json)?).await?;
        assert_eq!(
            (s, code(&b)?.as_str()),
            (StatusCode::UNAUTHORIZED, "unauthorized")
        );
        let (s, _, _) = send(&w.app, write_req(method, uri, seller, Some(READER), json)?).await?;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (s, _, _) = send(
            &w.app,
            write_req(method, uri, seller, Some(WRITER), "text/plain")?,
        )
        .await?;
        assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let (s, _, b) = send(&w.app, write_req(method, uri, seller, Some(WRITER), json)?).await?;
        assert_eq!(
            (s, code(&b)?.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        );
    }
    // Every fault of every object, with its index.
    let bad = r#"[{"client_id":"x","first_name":"A","last_name":"B","email":"a@b","address":"r"},
                  {"client_id":"6a3f2b1c-1d2e-4f5a-8b9c-0d1e2f3a4b5c","first_name":"A","last_name":"B","email":"nope","address":""}]"#;
    let (s, _, b) = send(
        &w.app,
        write_req("POST", "/api/clients", bad, Some(WRITER), json)?,
    )
    .await?;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let faults: Vec<(u64, String, String)> = json_of(&b)?["errors"]
        .as_array()
        .context("errors")?
        .iter()
        .map(|e| {
            (
                e["index"].as_u64().unwrap_or(99),
                e["field"].as_str().unwrap_or("").into(),
                e["reason"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    assert_eq!(
        faults,
        vec![
            (0, "client_id".into(), "bad_uuid".into()),
            (1, "email".into(), "wrong_type".into()),
            (1, "address".into(), "missing_field".into()),
        ]
    );
    // Over max_batch: 413; a product with a third decimal: 400 price_scale.
    let three = format!("[{seller},{seller},{seller}]");
    let (s, _, _) = send(
        &w.app,
        write_req("POST", "/api/sellers", &three, Some(WRITER), json)?,
    )
    .await?;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    let product = r#"{"product_id":"6a3f2b1c-1d2e-4f5a-8b9c-0d1e2f3a4b5c","name":"Mug","category":"home","price":1.005,"available_stock":1,"seller_id":"6a3f2b1c-1d2e-4f5a-8b9c-0d1e2f3a4b5c"}"#;
    let (s, _, b) = send(
        &w.app,
        write_req("POST", "/api/products", product, Some(WRITER), json)?,
    )
    .await?;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(json_of(&b)?["errors"][0]["reason"], "price_scale");
    Ok(())
}
