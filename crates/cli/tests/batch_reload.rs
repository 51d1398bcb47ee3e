//! A reader polling a day's totals while `lakeshop batch run` reloads that day (with late
//! purchases added, then again unchanged) only ever sees the whole old day or the whole new
//! day, in every table: never a partial total, never an empty day. Local folder and `s3://`
//! stages.

use anyhow::Result;
use lakeshop_testkit::world::{
    append_clients, append_products, append_purchases, append_sellers, StageKind, World, P,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const DAY: &str = "2026-04-02";

fn uuid(kind: u32, n: u32) -> String {
    format!("00000000-0000-4000-{kind:04x}-{n:012x}")
}

fn purchases(from: u32, to: u32, offset0: i64) -> Vec<P> {
    (from..to)
        .map(|i| P {
            id: uuid(1, i),
            client: uuid(2, i % 500),
            product: uuid(3, i % 50),
            seller: Some(uuid(4, i % 10)),
            quantity: (i % 7 + 1) as i32,
            price: i64::from(i % 10_000 + 1),
            ts: format!("{DAY}T{:02}:{:02}:00Z", i % 24, i % 60),
            partition: 0,
            offset: offset0 + i64::from(i - from),
            ingested: 1_700_000_000_000_000 + offset0 + i64::from(i - from),
        })
        .collect()
}

async fn reload(kind: StageKind) -> Result<()> {
    let world = World::new(kind, Default::default())?;
    world.json(&["migrate"])?;
    let stage = world.stage();
    let clients: Vec<String> = (0..500).map(|i| uuid(2, i)).collect();
    let rows: Vec<(&str, &str, bool)> = clients
        .iter()
        .map(|c| (c.as_str(), "x@example.com", false))
        .collect();
    append_clients(&stage, &rows).await?;
    let sellers: Vec<String> = (0..10).map(|i| uuid(4, i)).collect();
    let rows: Vec<(&str, &str)> = sellers.iter().map(|s| (s.as_str(), "shop")).collect();
    append_sellers(&stage, &rows).await?;
    let products: Vec<String> = (0..50).map(|i| uuid(3, i)).collect();
    let rows: Vec<(&str, &str, &str, &str)> = products
        .iter()
        .zip(sellers.iter().cycle())
        .map(|(p, s)| (p.as_str(), "thing", "cat", s.as_str()))
        .collect();
    append_products(&stage, &rows).await?;
    append_purchases(&stage, &purchases(0, 20_000, 0)).await?;

    let first = world.json(&["batch", "run", "--date", DAY, "--json"])?;
    let old = (
        first["days"][0]["revenue"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        first["days"][0]["rows_out"].as_u64().unwrap_or(0),
    );
    assert_eq!(old.1, 20_000, "{first}");

    // The reader: the day's revenue and purchases from three tables, as fast as it can.
    let queries = [
        ("sales", format!("SELECT toString(sum(amount)), count() FROM sales WHERE event_date = toDate('{DAY}')")),
        ("daily_total", format!("SELECT toString(sum(revenue)), sum(purchases) FROM daily_total WHERE event_date = toDate('{DAY}')")),
        ("daily_seller", format!("SELECT toString(sum(revenue)), sum(purchases) FROM daily_seller WHERE event_date = toDate('{DAY}')")),
        ("hourly_sales", format!("SELECT toString(sum(revenue)), sum(purchases) FROM hourly_sales WHERE event_date = toDate('{DAY}')")),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        let ch = world.ch.clone();
        tokio::spawn(async move {
            let mut seen: BTreeMap<&'static str, BTreeSet<(String, u64)>> = BTreeMap::new();
            let mut polls = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for (table, sql) in &queries {
                    let rows = ch.rows("poll", sql).await?;
                    let (r, n) = match rows.first().map(|r| r.as_slice()) {
                        Some([r, n]) => (r.clone(), n.parse().unwrap_or(u64::MAX)),
                        _ => ("?".into(), u64::MAX),
                    };
                    seen.entry(table).or_default().insert((r, n));
                }
                polls += 1;
            }
            anyhow::Ok((seen, polls))
        })
    };

    // Late purchases, then the reloads: one that changes the day, two that do not.
    append_purchases(&stage, &purchases(20_000, 25_000, 20_000)).await?;
    let mut new = None;
    for _ in 0..3 {
        let s = world.json(&["batch", "run", "--date", DAY, "--json"])?;
        let got = (
            s["days"][0]["revenue"].as_str().unwrap_or("").to_string(),
            s["days"][0]["rows_out"].as_u64().unwrap_or(0),
        );
        assert_eq!(got.1, 25_000, "{s}");
        assert!(new.is_none() || new.as_ref() == Some(&got));
        new = Some(got);
    }
    stop.store(true, Ordering::Relaxed);
    let (seen, polls) = reader.await??;
    let new = new.unwrap_or_default();
    assert!(polls >= 20, "the reader polled {polls} times");
    for (table, values) in &seen {
        let allowed: BTreeSet<(String, u64)> = [old.clone(), new.clone()].into();
        assert!(
            values.is_subset(&allowed),
            "{table}: saw {values:?}, only {allowed:?} are whole days"
        );
        assert!(values.contains(&new), "{table}: the new day was seen");
    }
    eprintln!("reader: {polls} polls of 4 tables during 3 reloads, values seen: {seen:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_is_atomic_with_a_local_folder_stage() -> Result<()> {
    reload(StageKind::Local).await
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_is_atomic_with_an_s3_stage() -> Result<()> {
    reload(StageKind::S3).await
}
