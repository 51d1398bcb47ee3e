//! Every kind of bad record reaches `stream run` and is counted under its reason, in the
//! run's summary and in `stream_rejects_v`, while the good records around them are counted
//! in their windows: each validation reason, a re-sent purchase, a re-send with other
//! content, and one of an unknown product (which counts, under `unknown`). Each rejected
//! record is forwarded to the dead-letters topic with its reason. A second run over the same
//! topic reads nothing again.
//!
//! Clocks and arrival order never lose a valid purchase: one later than the allowed lateness
//! still reaches its minute, hour and day (a correction row), and is counted once even when
//! it is a re-send of one counted hours before; one stamped ahead of its Kafka time does not
//! make the purchases after it late.

use anyhow::{Context as _, Result};
use chrono::{DateTime, TimeDelta, Utc};
use lakeshop_gen::BadKind;
use lakeshop_model::Purchase;
use lakeshop_testkit::world::World;
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

const PRODUCT: &str = lakeshop_testkit::world::STREAM_PRODUCT;
const SELLER: &str = lakeshop_testkit::world::STREAM_SELLER;
const CLIENT: &str = "0d3a5b7c-9e1f-4a2b-8c4d-6e8f0a1b2c03";

fn purchase(id: u128, product: &str, seller: Option<&str>, ts: DateTime<Utc>) -> Purchase {
    Purchase {
        purchase_id: uuid::Uuid::from_u128(id),
        client_id: uuid::Uuid::parse_str(CLIENT).expect("uuid"),
        product_id: uuid::Uuid::parse_str(product).expect("uuid"),
        seller_id: seller.map(|s| uuid::Uuid::parse_str(s).expect("uuid")),
        quantity: 2,
        price: Decimal::from_str("12.50").expect("decimal"),
        timestamp: ts,
    }
}

async fn sum_by_reason(world: &World) -> Result<BTreeMap<String, u64>> {
    lakeshop_testkit::world::stream_rejects_by_reason(&world.ch).await
}

/// (key → (revenue, purchases)) of the day windows of `dim`.
async fn day_windows(world: &World, dim: &str) -> Result<BTreeMap<String, (Decimal, u64)>> {
    // `dim` is one of this test's constants, never data.
    world
        .ch
        .rows(
            "stream windows",
            &format!(
                "SELECT key, toString(revenue), purchases FROM stream_sales_v \
                 WHERE granularity = 'day' AND dim = '{dim}'"
            ),
        )
        .await?
        .into_iter()
        .map(|r| Ok((r[0].clone(), (Decimal::from_str(&r[1])?, r[2].parse()?))))
        .collect()
}

/// (start → purchases) of the total's minute windows.
async fn total_minutes(world: &World) -> Result<BTreeMap<i64, u64>> {
    world
        .ch
        .rows(
            "minute totals",
            "SELECT toUnixTimestamp(window_start), purchases FROM stream_sales_v \
             WHERE granularity = 'minute' AND dim = 'total'",
        )
        .await?
        .into_iter()
        .map(|r| Ok((r[0].parse()?, r[1].parse()?)))
        .collect()
}

/// ((flag, event minute) → records) of `stream_flags_v`.
async fn flags(world: &World) -> Result<BTreeMap<(String, i64), u64>> {
    world
        .ch
        .rows(
            "stream flags",
            "SELECT flag, toUnixTimestamp(minute_start), records FROM stream_flags_v",
        )
        .await?
        .into_iter()
        .map(|r| Ok(((r[0].clone(), r[1].parse()?), r[2].parse()?)))
        .collect()
}

/// (revenue, purchases) of every day's total window.
async fn day_totals(world: &World) -> Result<Vec<(Decimal, u64)>> {
    Ok(day_windows(world, "total").await?.into_values().collect())
}

/// A till an hour fast: its purchase counts in its own window and is flagged `future`, and
/// the purchase after it on the partition (minutes old, within the lateness of the
/// watermark its Kafka time allows) is counted as on time, not late. Seen failing when the watermark
/// follows the event's own stamp: the last purchase came out `late`.
#[tokio::test(flavor = "multi_thread")]
async fn a_future_stamp_does_not_make_the_purchases_after_it_late() -> Result<()> {
    let (world, topic) = World::for_stream(1).await?;
    let now = Utc::now();
    let now_ms = now.timestamp_millis();
    let records: Vec<(i32, Vec<u8>, i64)> = [
        (1, now - TimeDelta::minutes(10)),
        (2, now + TimeDelta::hours(1)),
        // Within the lateness (5 minutes) of the bounded watermark (now + 1 minute), not
        // of the purchase's own stamp (an hour ahead).
        (3, now - TimeDelta::minutes(3)),
    ]
    .into_iter()
    .map(|(id, ts)| {
        let p = purchase(id, PRODUCT, Some(SELLER), ts);
        (0, p.to_json().into_bytes(), now_ms)
    })
    .collect();
    lakeshop_testkit::produce(&topic, &records).await?;
    let stats = world.stream_until_end()?;
    assert_eq!(stats["counted"], 3, "{stats}");
    assert_eq!(stats["late"], 0, "nothing is late: {stats}");
    assert_eq!(stats["future"], 1, "{stats}");
    assert!(sum_by_reason(&world).await?.is_empty(), "no rejects");
    let future_minute = (now + TimeDelta::hours(1)).timestamp() / 60 * 60;
    assert_eq!(
        flags(&world).await?,
        BTreeMap::from([(("future".to_string(), future_minute), 1)]),
        "stream_flags_v"
    );
    let minutes = total_minutes(&world).await?;
    assert_eq!(minutes.values().sum::<u64>(), 3, "{minutes:?}");
    assert_eq!(minutes.get(&future_minute), Some(&1), "its own minute");
    Ok(())
}

/// Re-sends long after the original, past the lateness: an identical one, one with other
/// content, and one with other content and a new stamp (not late at all) are not counted,
/// named `duplicate` and `conflicting_duplicate` as the batch job names them; a new
/// purchase as late is counted, in its own minute, and flagged `too_late`. Seen failing
/// with re-sends decided within the lateness only: the new-stamp copy counted a second time
/// (day 5), the late copies as corrections.
#[tokio::test(flavor = "multi_thread")]
async fn re_sends_past_the_lateness_count_once_and_late_purchases_count() -> Result<()> {
    let (world, topic) = World::for_stream(1).await?;
    let now = Utc::now();
    let now_ms = now.timestamp_millis();
    // Whole hours, three back: every event below lies in one hour and one day.
    let t0 = DateTime::from_timestamp(now.timestamp() / 3600 * 3600 - 3 * 3600, 0).context("t0")?;
    let a = purchase(1, PRODUCT, Some(SELLER), t0 + TimeDelta::minutes(1));
    let mut other = a.clone();
    other.quantity = 7;
    let mut new_stamp = a.clone();
    new_stamp.quantity = 9;
    new_stamp.timestamp = t0 + TimeDelta::minutes(31);
    let b = purchase(2, PRODUCT, Some(SELLER), t0 + TimeDelta::minutes(3));
    let late_new = purchase(3, PRODUCT, Some(SELLER), t0 + TimeDelta::minutes(2));
    // c moves the watermark half an hour on, past a's, b's and late_new's minutes plus the
    // 5-minute lateness, before the re-sends and late_new arrive.
    let c = purchase(4, PRODUCT, Some(SELLER), t0 + TimeDelta::minutes(30));
    let records = |ps: &[&Purchase]| -> Vec<(i32, Vec<u8>, i64)> {
        ps.iter()
            .map(|p| (0, p.to_json().into_bytes(), now_ms))
            .collect()
    };
    lakeshop_testkit::produce(&topic, &records(&[&a, &b, &c])).await?;
    let stats = world.stream_until_end()?;
    assert_eq!(stats["counted"], 3, "{stats}");
    // A second run: a is no longer held exactly (past the lateness); its id is found
    // through the filter restored from ClickHouse and a look-up there.
    lakeshop_testkit::produce(&topic, &records(&[&a, &other, &new_stamp, &late_new])).await?;
    let stats = world.stream_until_end()?;
    // late_new late; the three copies of a not counted.
    assert_eq!(stats["counted"], 1, "{stats}");
    assert_eq!(stats["late"], 1, "{stats}");
    assert_eq!(
        stats["rejected_by_reason"],
        serde_json::json!({"duplicate": 1, "conflicting_duplicate": 2}),
        "{stats}"
    );
    assert!(stats["lookups"].as_u64() >= Some(3), "{stats}");
    assert_eq!(
        sum_by_reason(&world).await?,
        BTreeMap::from([
            ("conflicting_duplicate".to_string(), 2),
            ("duplicate".to_string(), 1)
        ]),
        "stream_rejects"
    );
    let amount = Decimal::from_str("25.00")?;
    assert_eq!(
        day_totals(&world).await?,
        vec![(amount * Decimal::from(4), 4)],
        "a, b, c and the late new purchase, once each"
    );
    let minutes = total_minutes(&world).await?;
    assert_eq!(
        minutes.get(&(t0 + TimeDelta::minutes(1)).timestamp()),
        Some(&1),
        "a once: {minutes:?}"
    );
    assert_eq!(
        minutes.get(&(t0 + TimeDelta::minutes(2)).timestamp()),
        Some(&1),
        "the late purchase in its minute: {minutes:?}"
    );
    let minute = |m: i64| (t0 + TimeDelta::minutes(m)).timestamp();
    assert_eq!(
        flags(&world).await?,
        BTreeMap::from([(("too_late".to_string(), minute(2)), 1)]),
        "stream_flags_v"
    );
    // Distinct clients follow the purchases that count (one client here).
    let clients = world
        .ch
        .rows(
            "day clients",
            "SELECT distinct_clients FROM stream_sales_v WHERE granularity = 'day' AND dim = 'total'",
        )
        .await?;
    assert_eq!(clients, vec![vec!["1".to_string()]]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_of_bad_record_is_counted_under_its_reason() -> Result<()> {
    let (world, topic) = World::for_stream(1).await?;
    let dead_letters = lakeshop_testkit::unique("dead_letters");
    lakeshop_testkit::create_topic(&dead_letters, 1).await?;
    world.append_pipeline(&format!(
        "[kafka.topics.dead_letters]\nname = \"{dead_letters}\"\npartitions = 1\n\
         [stream]\nforward_dead_letters = true\n"
    ))?;

    let now = Utc::now();
    let now_ms = now.timestamp_millis();
    // Whole minutes, so that every event below falls in a known minute.
    let t0 = DateTime::from_timestamp(now.timestamp() / 3600 * 3600 - 3 * 3600, 0).context("t0")?;
    let at = |m: i64| t0 + TimeDelta::minutes(m);
    let a = purchase(1, PRODUCT, Some(SELLER), at(0));
    let unknown_product = "11111111-2222-4333-8444-555555555555";
    let b = purchase(2, unknown_product, None, at(0) + TimeDelta::seconds(10));
    let mut conflicting = a.clone();
    conflicting.quantity = 3;
    let mut records: Vec<Vec<u8>> = vec![
        a.to_json().into_bytes(),
        b.to_json().into_bytes(),
        a.to_json().into_bytes(),
        conflicting.to_json().into_bytes(),
    ];
    let mut want: BTreeMap<String, u64> = BTreeMap::from([
        ("duplicate".to_string(), 1),
        ("conflicting_duplicate".to_string(), 1),
    ]);
    let mut rng = rand::rng();
    for (i, (kind, _)) in BadKind::WEIGHTED.iter().enumerate() {
        let p = purchase(100 + i as u128, PRODUCT, Some(SELLER), at(1));
        records.push(kind.corrupt(&mut rng, &p, now));
        *want.entry(kind.reason().as_str().to_string()).or_default() += 1;
    }
    // The watermark moves to minute 20; minute 1 is then past the 5-minute lateness,
    // minute 16 is not.
    records.push(
        purchase(3, PRODUCT, Some(SELLER), at(20))
            .to_json()
            .into_bytes(),
    );
    records.push(
        purchase(4, PRODUCT, Some(SELLER), at(1))
            .to_json()
            .into_bytes(),
    );
    // Purchase 4 is later than the lateness: counted all the same, as a correction.
    records.push(
        purchase(5, PRODUCT, Some(SELLER), at(16))
            .to_json()
            .into_bytes(),
    );
    let total = records.len() as u64;
    let counted = 5;
    let sent = records.clone();
    lakeshop_testkit::produce(
        &topic,
        &records
            .into_iter()
            .map(|r| (0, r, now_ms))
            .collect::<Vec<_>>(),
    )
    .await?;

    let stats = world.stream_until_end()?;
    let by_reason: BTreeMap<String, u64> =
        serde_json::from_value(stats["rejected_by_reason"].clone())?;
    assert_eq!(by_reason, want, "summary: rejected by reason");
    assert_eq!(stats["read"], total, "summary: read");
    assert_eq!(stats["counted"], counted, "summary: counted");
    assert_eq!(stats["late"], 1, "summary: counted late");
    assert_eq!(
        stats["partitions"]["0"],
        serde_json::json!([total, counted, total - counted]),
        "partition 0: read, counted, rejected"
    );
    assert_eq!(sum_by_reason(&world).await?, want, "stream_rejects_v");
    // Each rejected record is in the dead-letters topic once, raw, with its reason.
    let letters = lakeshop_testkit::read_topic(&dead_letters, Duration::from_secs(2))?;
    let mut forwarded: BTreeMap<String, u64> = BTreeMap::new();
    for l in &letters {
        let header = |k: &str| {
            l.headers
                .iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| String::from_utf8_lossy(v).to_string())
                .unwrap_or_default()
        };
        let offset: usize = header("source_offset").parse()?;
        assert_eq!(header("source_topic"), topic);
        assert_eq!(l.payload, sent[offset], "dead letter at offset {offset}");
        *forwarded.entry(header("reason")).or_default() += 1;
    }
    assert_eq!(forwarded, want, "dead letters by reason");

    let amount = Decimal::from_str("25.00")?;
    let total_day = day_windows(&world, "total").await?;
    assert_eq!(
        total_day.values().copied().collect::<Vec<_>>(),
        vec![(amount * Decimal::from(counted), counted)],
        "day total"
    );
    assert_eq!(
        day_windows(&world, "product").await?,
        BTreeMap::from([
            (PRODUCT.to_string(), (amount * Decimal::from(4), 4)),
            ("unknown".to_string(), (amount, 1)),
        ]),
        "by product"
    );
    assert_eq!(
        day_windows(&world, "seller").await?,
        BTreeMap::from([
            (SELLER.to_string(), (amount * Decimal::from(4), 4)),
            ("unknown".to_string(), (amount, 1)),
        ]),
        "by seller"
    );
    // Hours and days are summed from the minutes, each under its own start (UTC here).
    let starts = |granularity: &'static str| {
        let ch = world.ch.clone();
        async move {
            ch.rows(
                "window starts",
                &format!(
                    "SELECT toUnixTimestamp(window_start), purchases FROM stream_sales_v \
                     WHERE granularity = '{granularity}' AND dim = 'total' ORDER BY window_start"
                ),
            )
            .await
        }
    };
    let midnight = t0.timestamp().div_euclid(86_400) * 86_400;
    assert_eq!(
        starts("day").await?,
        vec![vec![midnight.to_string(), counted.to_string()]],
        "day"
    );
    assert_eq!(
        starts("hour").await?,
        vec![vec![t0.timestamp().to_string(), counted.to_string()]],
        "hour"
    );
    // The late-but-allowed purchase updated its own minute.
    let minute16 = world
        .ch
        .rows(
            "minute 16",
            &format!(
                "SELECT purchases FROM stream_sales_v WHERE granularity = 'minute' \
                 AND dim = 'total' AND window_start = toDateTime({})",
                at(16).timestamp()
            ),
        )
        .await?;
    assert_eq!(minute16, vec![vec!["1".to_string()]], "minute 16");
    // The too-late purchase reached its own minute, and is flagged there by event time.
    assert_eq!(
        total_minutes(&world).await?.get(&at(1).timestamp()),
        Some(&1),
        "minute 1: the late purchase"
    );
    assert_eq!(
        flags(&world).await?,
        BTreeMap::from([(("too_late".to_string(), at(1).timestamp()), 1)]),
        "stream_flags_v"
    );

    // From the checkpoint: nothing is read or counted again.
    let again = world.stream_until_end()?;
    assert_eq!(again["read"], 0, "second run read again: {again}");
    assert_eq!(
        sum_by_reason(&world).await?,
        want,
        "rejects after a second run"
    );
    assert_eq!(day_windows(&world, "total").await?, total_day);
    Ok(())
}

/// The stream rows are keyed by topic and partition: a second pipeline over a topic whose
/// rows another pipeline wrote in the same database is refused at start, naming it, rather
/// than writing over its windows. Seen failing without the check: the second run exited 0.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_pipeline_over_the_same_topic_and_database_is_refused() -> Result<()> {
    let (world, topic) = World::for_stream(1).await?;
    let now = Utc::now();
    let p = purchase(1, PRODUCT, Some(SELLER), now - TimeDelta::seconds(10));
    lakeshop_testkit::produce(
        &topic,
        &[(0, p.to_json().into_bytes(), now.timestamp_millis())],
    )
    .await?;
    world.stream_until_end()?;
    let text = std::fs::read_to_string(&world.pipeline)?;
    let renamed = text.replacen("[pipeline]\nname = \"", "[pipeline]\nname = \"other-", 1);
    anyhow::ensure!(renamed != text, "no pipeline name in {text}");
    std::fs::write(&world.pipeline, renamed)?;
    let (ok, stdout, stderr) = world.try_stream_until_end()?;
    assert!(!ok, "a second pipeline ran: {stdout}");
    assert!(
        stderr.contains(&topic) && stderr.contains("one pipeline's stream"),
        "{stderr}"
    );
    Ok(())
}
