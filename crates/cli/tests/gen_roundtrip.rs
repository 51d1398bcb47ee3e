//! `lakeshop gen` against the real local stack: reads PostgreSQL, the source Delta table on
//! S3 and the Kafka topics back (counting records, not offsets) and checks them against the
//! ground-truth file, aggregate by aggregate.
//!
//! Needs `make up`. Size: `LAKESHOP_GEN_TEST_PURCHASES` (default 200000, the size the
//! generator is specified at).

use anyhow::{Context as _, Result};
use chrono::{NaiveDate, Utc};
use deltalake::arrow::array::{Array, AsArray};
use deltalake::arrow::datatypes::{Decimal128Type, Int32Type};
use lakeshop_model::{parse_purchase, Reason, UNKNOWN};
use rust_decimal::Decimal;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Command;
use std::time::Duration;

#[derive(Default, Debug, PartialEq)]
struct Agg {
    purchases: u64,
    items: u64,
    revenue: Decimal,
}

fn bucket(v: &Value) -> Agg {
    Agg {
        purchases: v["purchases"].as_u64().unwrap_or(u64::MAX),
        items: v["items"].as_u64().unwrap_or(u64::MAX),
        revenue: v["revenue"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(Decimal::MIN),
    }
}

/// Per day: total, distinct clients, by seller, by category, by product.
type DayAgg = (
    Agg,
    HashSet<String>,
    BTreeMap<String, Agg>,
    BTreeMap<String, Agg>,
    BTreeMap<String, Agg>,
);

async fn read_products(uri: &str) -> Result<(u64, HashMap<String, (String, String)>)> {
    let url = deltalake::table::builder::ensure_table_uri(uri)?;
    let table = deltalake::DeltaTable::try_from_url_with_storage_options(
        url,
        lakeshop_testkit::s3_options(),
    )
    .await?;
    let version = table.version().context("no version")?;
    let ctx = deltalake::datafusion::prelude::SessionContext::new();
    table.update_datafusion_session(&ctx.state())?;
    ctx.register_table("products", table.table_provider().await?)?;
    let batches = ctx
        .sql("SELECT product_id, category, seller_id, price, available_stock FROM products")
        .await?
        .collect()
        .await?;
    let mut out = HashMap::new();
    for b in batches {
        // Strings may come back as Utf8View; read them as plain Utf8.
        let utf8 = |i: usize| {
            deltalake::arrow::compute::cast(
                b.column(i),
                &deltalake::arrow::datatypes::DataType::Utf8,
            )
        };
        let (ids, cats, sellers) = (utf8(0)?, utf8(1)?, utf8(2)?);
        let (ids, cats, sellers) = (
            ids.as_string::<i32>(),
            cats.as_string::<i32>(),
            sellers.as_string::<i32>(),
        );
        let prices = b.column(3).as_primitive::<Decimal128Type>();
        let stock = b.column(4).as_primitive::<Int32Type>();
        for i in 0..b.num_rows() {
            assert!(prices.value(i) > 0, "price must be positive");
            assert!(stock.value(i) >= 0 && !stock.is_null(i));
            let dup = out.insert(
                ids.value(i).to_string(),
                (cats.value(i).to_string(), sellers.value(i).to_string()),
            );
            assert!(dup.is_none(), "product ids are unique");
        }
    }
    Ok((version, out))
}

#[tokio::test(flavor = "multi_thread")]
async fn gen_matches_its_ground_truth() -> Result<()> {
    let purchases: u64 = std::env::var("LAKESHOP_GEN_TEST_PURCHASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let db = lakeshop_testkit::fresh_database("gen_test").await?;
    let purchases_topic = lakeshop_testkit::unique("purchases");
    let interactions_topic = lakeshop_testkit::unique("interactions");
    lakeshop_testkit::create_topic(&purchases_topic, 3).await?;
    lakeshop_testkit::create_topic(&interactions_topic, 2).await?;
    let products_uri = format!(
        "s3://lakeshop/{}/products",
        lakeshop_testkit::unique("test")
    );
    let dir = tempfile::tempdir()?;
    let pipeline = dir.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[postgres]\nurl = \"{db}\"\n[kafka]\nbrokers = \"{}\"\n[kafka.topics.purchases]\nname = \"{purchases_topic}\"\npartitions = 3\n[kafka.topics.interactions]\nname = \"{interactions_topic}\"\npartitions = 2\n[s3]\nendpoint = \"{}\"\n[products]\nuri = \"{products_uri}\"\n",
            lakeshop_testkit::kafka_brokers(),
            lakeshop_testkit::s3_endpoint()
        ),
    )?;
    let truth_path = dir.path().join("truth.json");
    let status = Command::new(env!("CARGO_BIN_EXE_lakeshop"))
        .args(["--config"])
        .arg(&pipeline)
        .args([
            "gen",
            "--clients",
            "10000",
            "--products",
            "1000",
            "--sellers",
            "40",
        ])
        .args([
            "--purchases",
            &purchases.to_string(),
            "--interactions",
            &(purchases / 4).to_string(),
        ])
        .args([
            "--duplicate-fraction",
            "0.01",
            "--unknown-fraction",
            "0.005",
            "--bad-fraction",
            "0.01",
            "--seed",
            "7",
            "--quiet",
        ])
        .arg("--truth")
        .arg(&truth_path)
        .status()?;
    assert!(status.success(), "gen failed: {status}");
    let truth: Value = serde_json::from_slice(&std::fs::read(&truth_path)?)?;
    let counts = &truth["counts"];
    let run_id = truth["run_id"].as_str().context("run_id")?.to_string();

    // PostgreSQL: every client and seller, with the trigger-kept columns.
    let pg = lakeshop_testkit::pg(&db).await?;
    let clients: i64 = pg
        .query_one(
            "SELECT count(*) FROM clients WHERE deleted_at IS NULL AND email LIKE '%@%'",
            &[],
        )
        .await?
        .get(0);
    let sellers_rows = pg.query("SELECT seller_id::text FROM sellers", &[]).await?;
    assert_eq!(
        clients as u64,
        counts["clients"].as_u64().context("clients")?
    );
    assert_eq!(
        sellers_rows.len() as u64,
        counts["sellers"].as_u64().context("sellers")?
    );
    let sellers: HashSet<String> = sellers_rows.iter().map(|r| r.get::<_, String>(0)).collect();
    let client_ids: HashSet<String> = pg
        .query("SELECT client_id::text FROM clients", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();

    // The source product table on S3.
    let (version, products) = read_products(&products_uri).await?;
    assert_eq!(
        products.len() as u64,
        counts["products"].as_u64().context("products")?
    );
    assert_eq!(Some(version), truth["products_version"].as_u64());
    assert!(
        products.values().all(|(_, s)| sellers.contains(s)),
        "every product's seller exists"
    );

    // Kafka purchases: count records, then rebuild every aggregate independently.
    let topic = purchases_topic.clone();
    let records = tokio::task::spawn_blocking(move || {
        lakeshop_testkit::read_topic(&topic, Duration::from_secs(2))
    })
    .await??;
    assert_eq!(
        records.len() as u64,
        counts["purchase_messages"].as_u64().context("messages")?
    );
    assert!(records.iter().all(|r| r
        .headers
        .iter()
        .any(|(k, v)| k == "lakeshop-run" && v == run_id.as_bytes())));
    let now = Utc::now();
    let mut first: HashMap<String, Vec<u8>> = HashMap::new();
    let (mut dups, mut bad): (u64, BTreeMap<String, u64>) = (0, BTreeMap::new());
    let mut by_partition: HashMap<i32, Vec<(i64, usize)>> = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        by_partition
            .entry(r.partition)
            .or_default()
            .push((r.offset, i));
    }
    // Arrival order per partition decides which copy is the original.
    let mut ordered: Vec<usize> = Vec::new();
    for (_, mut v) in by_partition {
        v.sort();
        ordered.extend(v.into_iter().map(|(_, i)| i));
    }
    let mut days: BTreeMap<NaiveDate, DayAgg> = BTreeMap::new();
    for i in ordered {
        let r = &records[i];
        match parse_purchase(&r.payload, now) {
            Err(rej) => *bad.entry(rej.reason.to_string()).or_default() += 1,
            Ok(p) => {
                let id = p.purchase_id.to_string();
                if let Some(prev) = first.get(&id) {
                    if *prev == r.payload {
                        dups += 1;
                    } else {
                        *bad.entry(Reason::ConflictingDuplicate.to_string())
                            .or_default() += 1;
                    }
                    continue;
                }
                first.insert(id, r.payload.clone());
                assert!(
                    client_ids.contains(&p.client_id.to_string()),
                    "purchases are by known clients"
                );
                let amount = p.amount();
                let add = |a: &mut Agg| {
                    a.purchases += 1;
                    a.items += u64::from(p.quantity);
                    a.revenue += amount;
                };
                let day = p.timestamp.date_naive(); // the pipeline's time zone is UTC
                let e = days.entry(day).or_default();
                add(&mut e.0);
                e.1.insert(p.client_id.to_string());
                let (product, category) = match products.get(&p.product_id.to_string()) {
                    Some((c, _)) => (p.product_id.to_string(), c.clone()),
                    None => (UNKNOWN.to_string(), UNKNOWN.to_string()),
                };
                let seller = p
                    .seller_id
                    .map(|s| s.to_string())
                    .filter(|s| sellers.contains(s))
                    .unwrap_or_else(|| UNKNOWN.to_string());
                add(e.2.entry(seller).or_default());
                add(e.3.entry(category).or_default());
                add(e.4.entry(product).or_default());
            }
        }
    }
    assert_eq!(
        first.len() as u64,
        counts["purchases"].as_u64().context("purchases")?
    );
    assert_eq!(dups, counts["duplicates"].as_u64().context("duplicates")?);
    let truth_bad: BTreeMap<String, u64> = serde_json::from_value(counts["bad_by_reason"].clone())?;
    assert_eq!(bad, truth_bad);
    assert!(
        truth_bad.len() >= 12,
        "invalid records of many kinds: {truth_bad:?}"
    );
    assert_eq!(
        first.len() as u64 + dups + bad.values().sum::<u64>(),
        records.len() as u64,
        "counts add up"
    );

    let truth_days = truth["days"].as_object().context("days")?;
    assert_eq!(truth_days.len(), days.len());
    assert_eq!(truth_days.len(), 3, "three days of history by default");
    for (day, (total, clients, by_seller, by_category, by_product)) in &days {
        let t = &truth_days[&day.to_string()];
        assert_eq!(*total, bucket(&t["total"]), "{day} total");
        assert_eq!(
            clients.len() as u64,
            t["distinct_clients"].as_u64().unwrap_or(0),
            "{day} distinct clients"
        );
        for (name, ours, theirs) in [
            ("seller", by_seller, &t["by_seller"]),
            ("category", by_category, &t["by_category"]),
            ("product", by_product, &t["by_product"]),
        ] {
            let theirs = theirs.as_object().context("buckets")?;
            assert_eq!(ours.len(), theirs.len(), "{day} {name} buckets");
            for (k, a) in ours {
                assert_eq!(*a, bucket(&theirs[k]), "{day} {name} {k}");
            }
        }
        assert!(
            by_seller.contains_key(UNKNOWN) && by_product.contains_key(UNKNOWN),
            "{day} has unknown buckets"
        );
    }

    // Interactions.
    let topic = interactions_topic.clone();
    let inter = tokio::task::spawn_blocking(move || {
        lakeshop_testkit::read_topic(&topic, Duration::from_secs(2))
    })
    .await??;
    assert_eq!(
        inter.len() as u64,
        counts["interactions"].as_u64().context("interactions")?
    );
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    for r in &inter {
        let i = lakeshop_model::parse_interaction(&r.payload, now)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        *kinds.entry(i.kind.as_str().to_string()).or_default() += 1;
    }
    let truth_kinds: BTreeMap<String, u64> =
        serde_json::from_value(counts["interactions_by_kind"].clone())?;
    assert_eq!(kinds, truth_kinds);
    Ok(())
}
