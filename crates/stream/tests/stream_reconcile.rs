//! `reconcile` through a shop's ordinary day: a product created during the day (the stream
//! counted its first purchases under `unknown`, the batch job knows it) is dimension drift,
//! listed purchase by purchase, and the day reconciles (exit 0); a day the stream has not
//! closed yet is refused (exit 3) unless `--force`; a day neither side holds says so (exit 4).

use anyhow::{Context as _, Result};
use chrono::{DateTime, TimeDelta, Utc};
use lakeshop_model::Purchase;
use lakeshop_testkit::world::{append_clients, append_products, World};
use rust_decimal::Decimal;
use std::str::FromStr;

const PRODUCT: &str = lakeshop_testkit::world::STREAM_PRODUCT;
const SELLER: &str = lakeshop_testkit::world::STREAM_SELLER;
const CLIENT: &str = "0d3a5b7c-9e1f-4a2b-8c4d-6e8f0a1b2c03";
/// The product created during the day.
const NEW_PRODUCT: &str = "7a2d8b63-2e8f-4b64-8b54-1a6c3d1e2f03";

fn purchase(id: u128, product: &str, ts: DateTime<Utc>) -> Purchase {
    Purchase {
        purchase_id: uuid::Uuid::from_u128(id),
        client_id: uuid::Uuid::parse_str(CLIENT).expect("uuid"),
        product_id: uuid::Uuid::parse_str(product).expect("uuid"),
        seller_id: Some(uuid::Uuid::parse_str(SELLER).expect("uuid")),
        quantity: 2,
        price: Decimal::from_str("12.50").expect("decimal"),
        timestamp: ts,
    }
}

/// `lakeshop reconcile` with `args`: (exit code, stdout, stderr).
fn reconcile(world: &World, args: &[&str]) -> Result<(Option<i32>, String, String)> {
    world.try_run_status(&[&["reconcile"], args].concat())
}

/// Seen failing before purchase-level drift: exit 1, the `unknown` and the new product's
/// rows unexplained.
#[tokio::test(flavor = "multi_thread")]
async fn a_product_created_mid_day_is_drift_and_an_open_day_is_refused() -> Result<()> {
    let (world, topic) = World::for_stream(1).await?;
    let stage = world.stage();
    append_clients(&stage, &[(CLIENT, "ann@example.com", false)]).await?;
    let now = Utc::now();
    let today = now.date_naive();
    let day = today - TimeDelta::days(2);
    let at = |h: i64| -> Result<DateTime<Utc>> {
        Ok(day.and_hms_opt(0, 0, 0).context("midnight")?.and_utc() + TimeDelta::hours(h))
    };
    // Two purchases of the new product before the stage knew it, one of the old product,
    // and one of today that closes the day (the watermark passes its end plus lateness).
    let records: Vec<(i32, Vec<u8>, i64)> = [
        purchase(1, PRODUCT, at(10)?),
        purchase(2, NEW_PRODUCT, at(11)?),
        purchase(3, NEW_PRODUCT, at(12)?),
        purchase(4, PRODUCT, now - TimeDelta::minutes(30)),
    ]
    .iter()
    .map(|p| (0, p.to_json().into_bytes(), now.timestamp_millis()))
    .collect();
    lakeshop_testkit::produce(&topic, &records).await?;
    let stats = world.stream_until_end()?;
    assert_eq!(stats["counted"], 4, "{stats}");

    // The product reaches the stage later that day; the batch job knows it.
    append_products(&stage, &[(NEW_PRODUCT, "Desk", "furniture", SELLER)]).await?;
    world.run(&["extract", "purchases", "--until-end", "--quiet"])?;
    let day_s = day.to_string();
    world.run(&["batch", "run", "--date", &day_s])?;

    let (code, stdout, stderr) = reconcile(&world, &["--date", &day_s, "--json"])?;
    assert_eq!(code, Some(0), "reconcile {day_s}: {stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim())?;
    let moves = report["days"][0]["moves"].as_array().context("moves")?;
    let listed: Vec<(&str, &str, &str, &str)> = moves
        .iter()
        .map(|m| {
            (
                m["product_id"].as_str().unwrap_or_default(),
                m["amount"].as_str().unwrap_or_default(),
                m["stream"]["product"].as_str().unwrap_or_default(),
                m["batch"]["category"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            (NEW_PRODUCT, "25.00", "unknown", "furniture"),
            (NEW_PRODUCT, "25.00", "unknown", "furniture"),
        ],
        "{stdout}"
    );
    let (code, text, _) = reconcile(&world, &["--date", &day_s])?;
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!(
            "drift: purchase 00000000-0000-0000-0000-000000000002 of product {NEW_PRODUCT}"
        )),
        "{text}"
    );

    // The closing purchase's day is open: the watermark is short of its end plus the
    // lateness.
    let today_s = (now - TimeDelta::minutes(30)).date_naive().to_string();
    let (code, _, stderr) = reconcile(&world, &["--date", &today_s])?;
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains("is not closed by the stream yet"),
        "{stderr}"
    );
    assert!(stderr.contains("partition 0 at"), "{stderr}");
    // --force compares it anyway: the batch job has not built today, so it differs.
    let (code, _, stderr) = reconcile(&world, &["--date", &today_s, "--force"])?;
    assert_eq!(code, Some(1), "{stderr}");

    // A closed day with nothing on either side is said, not passed.
    let empty = (day - TimeDelta::days(3)).to_string();
    let (code, text, stderr) = reconcile(&world, &["--date", &empty])?;
    assert_eq!(code, Some(4), "{text}\n{stderr}");
    assert!(text.contains("nothing on either side"), "{text}");
    assert!(stderr.contains("nothing to compare"), "{stderr}");
    Ok(())
}
