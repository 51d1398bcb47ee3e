//! The whole batch path against the local stack, into a local folder stage and an `s3://`
//! stage: `lakeshop gen` (3 days, re-sent duplicates, unknown products and sellers, invalid
//! records) → `extract clients | sellers | products | purchases` → `migrate` → `batch run`
//! over the 3 days. Every ClickHouse aggregate equals the generator's ground truth exactly
//! (duplicates counted once, unknowns in their bucket); a second `batch run` and a `replay`
//! of the range leave every table identical (digests of the sorted rows).

use anyhow::{Context as _, Result};
use lakeshop_batch::CLICKHOUSE_TABLES;
use lakeshop_testkit::world::{buckets, ch_digest, stage_sales_digest, Setup, StageKind, World};
use rust_decimal::Decimal;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Instant;

fn truth_buckets(day: &Value, key: &str) -> Result<BTreeMap<String, (Decimal, u64, u64)>> {
    day[key]
        .as_object()
        .context("buckets")?
        .iter()
        .map(|(k, b)| {
            Ok((
                k.clone(),
                (
                    b["revenue"].as_str().context("revenue")?.parse()?,
                    b["purchases"].as_u64().context("purchases")?,
                    b["items"].as_u64().context("items")?,
                ),
            ))
        })
        .collect()
}

async fn digests(world: &World) -> Result<Vec<(String, (usize, String))>> {
    let mut out = Vec::new();
    for t in CLICKHOUSE_TABLES {
        out.push((t.to_string(), ch_digest(&world.ch, t).await?));
    }
    out.push((
        "stage.sales".into(),
        stage_sales_digest(&world.stage()).await?,
    ));
    Ok(out)
}

async fn end_to_end(kind: StageKind) -> Result<()> {
    let started = Instant::now();
    let world = World::new(kind, Setup::all_sources("batch_test").await?)?;
    let truth_path = world.dir.path().join("truth.json");
    world.run(&[
        "gen",
        "--clients",
        "2000",
        "--sellers",
        "30",
        "--products",
        "300",
        "--purchases",
        "20000",
        "--interactions",
        "100",
        "--days",
        "3",
        "--duplicate-fraction",
        "0.02",
        "--unknown-fraction",
        "0.01",
        "--bad-fraction",
        "0.02",
        "--seed",
        "5",
        "--quiet",
        "--truth",
        &truth_path.to_string_lossy(),
    ])?;
    let truth: Value = serde_json::from_slice(&std::fs::read(&truth_path)?)?;
    let counts = &truth["counts"];
    for source in ["clients", "sellers", "products", "purchases"] {
        world.run(&["extract", source])?;
    }
    let prepared = started.elapsed();

    world.json(&["migrate"])?;
    let days: Vec<String> = truth["days"]
        .as_object()
        .context("days")?
        .keys()
        .cloned()
        .collect();
    assert_eq!(days.len(), 3);
    let (from, to) = (days[0].as_str(), days[2].as_str());
    let t = Instant::now();
    let summary = world.json(&["batch", "run", "--from", from, "--to", to, "--json"])?;
    let batch_seconds = t.elapsed().as_secs_f64();
    assert_eq!(summary["ok"], true, "{summary}");

    // The summary adds up, and matches what the generator sent.
    let tot = &summary["totals"];
    let n = |v: &Value| v.as_u64().unwrap_or(u64::MAX);
    let conflicts = counts["bad_by_reason"]["conflicting_duplicate"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(n(&tot["rows_out"]), n(&counts["purchases"]), "{summary}");
    assert_eq!(
        n(&tot["duplicates"]),
        n(&counts["duplicates"]) + conflicts,
        "{summary}"
    );
    assert_eq!(n(&tot["conflicting_duplicates"]), conflicts, "{summary}");
    assert_eq!(
        n(&tot["rows_in"]),
        n(&tot["rows_out"]) + n(&tot["duplicates"])
    );
    assert_eq!(
        n(&tot["counted_on_other_day"]),
        0,
        "gen keeps a purchase's copies on its day"
    );
    assert_eq!(n(&tot["unknown_clients"]), 0, "{summary}");

    // Every aggregate of every day equals the ground truth exactly.
    for day in &days {
        let td = &truth["days"][day];
        let total = world
            .ch
            .rows("total", &format!("SELECT toString(revenue), purchases, items, distinct_clients FROM daily_total WHERE event_date = toDate('{day}')"))
            .await?;
        let t = &td["total"];
        assert_eq!(
            total,
            vec![vec![
                t["revenue"]
                    .as_str()
                    .map(|r| format!("{:.2}", r.parse::<Decimal>().unwrap_or_default()))
                    .unwrap_or_default(),
                t["purchases"].to_string(),
                t["items"].to_string(),
                td["distinct_clients"].to_string(),
            ]],
            "{day} total"
        );
        assert_eq!(
            buckets(&world, "daily_seller", "seller_id", day).await?,
            truth_buckets(td, "by_seller")?,
            "{day} by seller"
        );
        assert_eq!(
            buckets(&world, "daily_category", "category", day).await?,
            truth_buckets(td, "by_category")?,
            "{day} by category"
        );
        assert_eq!(
            buckets(&world, "daily_product", "product_id", day).await?,
            truth_buckets(td, "by_product")?,
            "{day} by product"
        );
        let unknown = world
            .ch
            .rows("unknown", &format!("SELECT countIf(unknown_product = 1 OR unknown_seller = 1) FROM sales WHERE event_date = toDate('{day}')"))
            .await?;
        assert_eq!(
            unknown,
            vec![vec![td["unknown_purchases"].to_string()]],
            "{day} unknown"
        );
        // The hourly series and the sales rows add up to the day.
        let hourly = world
            .ch
            .rows("hourly", &format!("SELECT toString(sum(revenue)), sum(purchases) FROM hourly_sales WHERE event_date = toDate('{day}')"))
            .await?;
        assert_eq!(hourly[0][1], t["purchases"].to_string(), "{day} hourly");
        assert_eq!(
            hourly[0][0].parse::<Decimal>()?,
            t["revenue"].as_str().unwrap_or("").parse::<Decimal>()?
        );
        // Top products: the best known products by revenue, rank 1 first.
        let mut known: Vec<(Decimal, String)> = truth_buckets(td, "by_product")?
            .into_iter()
            .filter(|(k, _)| k != "unknown")
            .map(|(k, (r, _, _))| (r, k))
            .collect();
        known.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let top = world
            .ch
            .rows("top", &format!("SELECT product_id FROM daily_top_products WHERE event_date = toDate('{day}') ORDER BY rank"))
            .await?;
        let want: Vec<Vec<String>> = known
            .iter()
            .take(100)
            .map(|(_, k)| vec![k.clone()])
            .collect();
        assert_eq!(top, want, "{day} top products");
        // Average check per shop: revenue / purchases, half up to cents.
        let avg = world
            .ch
            .rows("avg", &format!("SELECT seller_id, toString(avg_check) FROM daily_seller_v WHERE event_date = toDate('{day}')"))
            .await?;
        let by_seller = truth_buckets(td, "by_seller")?;
        for row in &avg {
            let (r, p, _) = &by_seller[&row[0]];
            let want = (r / Decimal::from(*p))
                .round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
            assert_eq!(
                row[1].parse::<Decimal>()?,
                want,
                "{day} avg check of {}",
                row[0]
            );
        }
    }
    // Monthly roll-up = the sum of the days of each month.
    let mut months: BTreeMap<String, (Decimal, u64)> = BTreeMap::new();
    for day in &days {
        let t = &truth["days"][day]["total"];
        let m = months.entry(format!("{}-01", &day[..7])).or_default();
        m.0 += t["revenue"].as_str().unwrap_or("0").parse::<Decimal>()?;
        m.1 += t["purchases"].as_u64().unwrap_or(0);
    }
    let monthly = world
        .ch
        .rows(
            "monthly",
            "SELECT toString(month), toString(revenue), purchases FROM monthly_total_v",
        )
        .await?;
    let got: BTreeMap<String, (Decimal, u64)> = monthly
        .into_iter()
        .map(|r| Ok((r[0].clone(), (r[1].parse()?, r[2].parse()?))))
        .collect::<Result<_>>()?;
    assert_eq!(got, months);

    // Reports agree with the tables.
    let report: Value = serde_json::from_str(
        world
            .run(&[
                "report", "daily", "--from", from, "--to", to, "--format", "json",
            ])?
            .trim(),
    )?;
    assert_eq!(report.as_array().map(Vec::len), Some(3));
    assert_eq!(
        report[0]["purchases"],
        truth["days"][from]["total"]["purchases"]
    );

    // A second run and a replay leave every table identical.
    let first = digests(&world).await?;
    assert_eq!(first[0].1 .0 as u64, n(&counts["purchases"]), "sales rows");
    let t = Instant::now();
    let again = world.json(&["batch", "run", "--from", from, "--to", to, "--json"])?;
    let rerun_seconds = t.elapsed().as_secs_f64();
    let counts_of = |v: &Value| -> Value {
        let mut o = v["totals"].as_object().cloned().unwrap_or_default();
        o.retain(|k, _| !k.ends_with("seconds"));
        Value::Object(o)
    };
    assert_eq!(counts_of(&again), counts_of(&summary));
    assert_eq!(
        digests(&world).await?,
        first,
        "a second batch run changes nothing"
    );
    let replay = world.json(&["replay", "--from", from, "--to", to])?;
    assert_eq!(replay["totals"]["rows_out"], summary["totals"]["rows_out"]);
    assert_eq!(
        digests(&world).await?,
        first,
        "replay drops and duplicates nothing"
    );

    eprintln!(
        "batch e2e ({kind:?}): gen+extract {:.1}s, batch 3 days {batch_seconds:.1}s (query {:.2}s, stage {:.2}s, clickhouse {:.2}s), rerun {rerun_seconds:.1}s, rows in {} out {}, tables {:?}",
        prepared.as_secs_f64(),
        tot["query_seconds"].as_f64().unwrap_or(0.0),
        tot["stage_seconds"].as_f64().unwrap_or(0.0),
        tot["clickhouse_seconds"].as_f64().unwrap_or(0.0),
        tot["rows_in"],
        tot["rows_out"],
        first.iter().map(|(t, (n, _))| format!("{t}={n}")).collect::<Vec<_>>()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_matches_truth_with_a_local_folder_stage() -> Result<()> {
    end_to_end(StageKind::Local).await
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_matches_truth_with_an_s3_stage() -> Result<()> {
    end_to_end(StageKind::S3).await
}
