//! `dead-letters count | show | export | replay` on a stage whose dead letters hold records
//! an earlier rule refused but today's validator takes, and records still invalid: counts
//! and filters are right, exports keep the exact bytes, a replay stages the now-valid ones
//! under their Kafka positions exactly once (a second replay, or one after a replay killed
//! between its two writes, stages nothing more) and leaves the rest.

use anyhow::{Context as _, Result};
use base64::Engine as _;
use deltalake::arrow::array::{
    ArrayRef, BinaryArray, Date32Array, Int32Array, Int64Array, StringArray,
    TimestampMicrosecondArray,
};
use deltalake::arrow::record_batch::RecordBatch;
use lakeshop_stage::{Stage, Table};
use lakeshop_testkit::world::{stage_query, Setup, StageKind, World};
use serde_json::Value;
use std::sync::Arc;

const TOPIC: &str = "purchases_t";

fn purchase(id: u128, price: &str) -> String {
    format!(
        r#"{{"purchase_id":"{}","client_id":"6f1c2f4e-9a57-4b0a-9d2b-0c8f3e7a1d11","product_id":"0b6f8a3e-2c1d-4e5f-8a9b-7c6d5e4f3a21","quantity":1,"price":{price},"timestamp":"2026-11-20T10:00:00Z"}}"#,
        uuid::Uuid::from_u128(id)
    )
}

/// Appends dead letters of `TOPIC` partition 0: (offset, payload, reason).
async fn dead_letters(stage: &Stage, rows: &[(i64, Vec<u8>, &str)]) -> Result<()> {
    let n = rows.len();
    let at = chrono::DateTime::parse_from_rfc3339("2026-11-20T10:00:05Z")?.timestamp_micros();
    let day = (chrono::NaiveDate::from_ymd_opt(2026, 11, 20).context("date")?
        - chrono::NaiveDate::default())
    .num_days() as i32;
    let batch = RecordBatch::try_new(
        Table::DeadLetters.schema(),
        vec![
            Arc::new(StringArray::from(vec!["purchases"; n])) as ArrayRef,
            Arc::new(StringArray::from(vec![TOPIC; n])),
            Arc::new(Int32Array::from(vec![0; n])),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(BinaryArray::from_iter_values(
                rows.iter().map(|r| r.1.as_slice()),
            )),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2))),
            Arc::new(StringArray::from(vec!["an older rule"; n])),
            Arc::new(TimestampMicrosecondArray::from(vec![at; n]).with_timezone("UTC")),
            Arc::new(Date32Array::from(vec![day; n])),
        ],
    )?;
    let mut handle = stage.open(Table::DeadLetters).await?;
    stage
        .append(Table::DeadLetters, &mut handle, vec![batch], &[])
        .await?;
    Ok(())
}

async fn staged_offsets(world: &World) -> Result<Vec<i64>> {
    let b = stage_query(
        &world.stage(),
        &[Table::Purchases],
        "SELECT source_offset FROM purchases ORDER BY source_offset",
    )
    .await?;
    let mut out = Vec::new();
    for b in b {
        let c = b
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .context("i64")?;
        out.extend(c.values().iter().copied());
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_count_show_export_and_replay_exactly_once() -> Result<()> {
    let world = World::new(StageKind::Local, Setup::default())?;
    let stage = world.stage();
    let not_json = b"{\"purchase_id\": \xff not json".to_vec();
    dead_letters(
        &stage,
        &[
            // Valid by today's rules (an older rule refused them).
            (10, purchase(1, "12.50").into_bytes(), "malformed_json"),
            (11, purchase(2, "3").into_bytes(), "price_scale"),
            // Still invalid.
            (12, not_json.clone(), "malformed_json"),
            (13, purchase(3, "1.005").into_bytes(), "price_scale"),
        ],
    )
    .await?;

    let counts = world.json(&["dead-letters", "count", "--json"])?;
    let by_reason: Vec<(String, u64)> = counts
        .as_array()
        .context("array")?
        .iter()
        .map(|c| {
            (
                c["reason"].as_str().unwrap_or("").to_string(),
                c["records"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        by_reason,
        vec![("malformed_json".into(), 2), ("price_scale".into(), 2)],
        "{counts}"
    );
    let shown = world.run(&["dead-letters", "show", "--reason", "price_scale", "--json"])?;
    let shown: Vec<Value> = shown
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(shown.len(), 2);
    assert_eq!(shown[0]["source_offset"], 11);
    assert_eq!(shown[0]["payload"], purchase(2, "3"));
    // Export keeps the exact bytes (base64), even of a payload that is not UTF-8.
    let out = world.dir.path().join("dl.jsonl");
    world.run(&[
        "dead-letters",
        "export",
        "--base64",
        "--out",
        out.to_str().context("path")?,
    ])?;
    let exported: Vec<Value> = std::fs::read_to_string(&out)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(exported.len(), 4);
    let raw = base64::engine::general_purpose::STANDARD
        .decode(exported[2]["payload_base64"].as_str().context("b64")?)?;
    assert_eq!(raw, not_json);

    // A dry run writes nothing.
    let dry = world.json(&["dead-letters", "replay", "--dry-run", "--json"])?;
    assert_eq!(
        (dry["valid"].as_u64(), dry["staged"].as_u64()),
        (Some(2), Some(0)),
        "{dry}"
    );
    assert!(staged_offsets(&world).await?.is_empty());

    let first = world.json(&["dead-letters", "replay", "--json"])?;
    assert_eq!(
        (
            first["read"].as_u64(),
            first["valid"].as_u64(),
            first["staged"].as_u64(),
            first["removed"].as_u64()
        ),
        (Some(4), Some(2), Some(2), Some(2)),
        "{first}"
    );
    assert_eq!(first["still_invalid"]["malformed_json"], 1, "{first}");
    assert_eq!(first["still_invalid"]["price_scale"], 1, "{first}");
    assert_eq!(staged_offsets(&world).await?, vec![10, 11]);
    // Again: nothing more.
    let second = world.json(&["dead-letters", "replay", "--json"])?;
    assert_eq!(
        (second["read"].as_u64(), second["staged"].as_u64()),
        (Some(2), Some(0)),
        "{second}"
    );
    // A replay killed after staging, before removing: the dead letter is back; the next
    // replay removes it and stages nothing twice.
    dead_letters(
        &stage,
        &[(10, purchase(1, "12.50").into_bytes(), "malformed_json")],
    )
    .await?;
    let third = world.json(&["dead-letters", "replay", "--json"])?;
    assert_eq!(
        (
            third["valid"].as_u64(),
            third["staged"].as_u64(),
            third["removed"].as_u64()
        ),
        (Some(1), Some(0), Some(1)),
        "{third}"
    );
    assert_eq!(staged_offsets(&world).await?, vec![10, 11]);
    let left = world.json(&["dead-letters", "count", "--json"])?;
    let total: u64 = left
        .as_array()
        .context("array")?
        .iter()
        .filter_map(|c| c["records"].as_u64())
        .sum();
    assert_eq!(total, 2, "the still-invalid ones stay: {left}");
    Ok(())
}
