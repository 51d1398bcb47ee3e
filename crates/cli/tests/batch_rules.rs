//! `lakeshop batch run` on a hand-made stage, into a local folder stage and an `s3://`
//! stage: each purchase id counts once (exact and conflicting re-sends, a copy whose first
//! arrival is on another day), unknown clients, products and sellers land in `unknown`,
//! soft-deleted clients still join, averages round half up, PII is kept, hashed or dropped,
//! a late purchase is picked up by a re-run, an empty day loads empty, and bad input fails
//! with a clear message and a non-zero exit.

use anyhow::Result;
use lakeshop_stage::Table;
use lakeshop_testkit::world::{
    append_clients, append_products, append_purchases, append_sellers, buckets, ch_digest,
    last_json, stage_query, StageKind, World, P,
};
use rust_decimal::Decimal;
use std::collections::BTreeMap;

const D1: &str = "2026-03-10";
const D2: &str = "2026-03-11";
const D3: &str = "2026-03-12";

/// A purchase: (quantity, price in cents), and its Kafka (partition, offset).
fn p(
    id: &str,
    client: &str,
    product: &str,
    seller: Option<&str>,
    (q, cents): (i32, i64),
    ts: &str,
    (partition, offset): (i32, i64),
) -> P {
    P {
        id: id.into(),
        client: client.into(),
        product: product.into(),
        seller: seller.map(str::to_string),
        quantity: q,
        price: cents,
        ts: ts.into(),
        partition,
        offset,
        // Arrival order follows the offsets within a partition, partition 1 after 0.
        ingested: 1_700_000_000_000_000 + i64::from(partition) * 1_000_000_000 + offset * 1000,
    }
}

// Ids: canonical UUIDs, as the extractors write them.
const A: &str = "00000000-0000-4000-8000-00000000000a";
const B: &str = "00000000-0000-4000-8000-00000000000b";
const C: &str = "00000000-0000-4000-8000-00000000000c";
const D: &str = "00000000-0000-4000-8000-00000000000d";
const E: &str = "00000000-0000-4000-8000-00000000000e";
const F: &str = "00000000-0000-4000-8000-00000000000f";
const G: &str = "00000000-0000-4000-8000-000000000010";
const C1: &str = "00000000-0000-4000-8000-0000000000c1";
const C2: &str = "00000000-0000-4000-8000-0000000000c2";
const C3: &str = "00000000-0000-4000-8000-0000000000c3";
const S1: &str = "00000000-0000-4000-8000-0000000000a1";
const S9: &str = "00000000-0000-4000-8000-0000000000a9";
const P1: &str = "00000000-0000-4000-8000-0000000000b1";
const P2: &str = "00000000-0000-4000-8000-0000000000b2";
const P9: &str = "00000000-0000-4000-8000-0000000000b9";

async fn seed(world: &World) -> Result<()> {
    let stage = world.stage();
    append_clients(
        &stage,
        &[
            (C1, "one@example.com", false),
            (C2, "two@example.com", true),
        ],
    )
    .await?;
    append_sellers(&stage, &[(S1, "Shop One")]).await?;
    append_products(
        &stage,
        &[(P1, "Book", "books", S1), (P2, "Kite", "toys", S1)],
    )
    .await?;
    append_purchases(
        &stage,
        &[
            p(
                A,
                C1,
                P1,
                Some(S1),
                (2, 1000),
                "2026-03-10T09:15:00Z",
                (0, 0),
            ),
            p(
                B,
                C2,
                P2,
                Some(S1),
                (1, 555),
                "2026-03-10T09:45:00Z",
                (0, 1),
            ),
            p(C, C3, P9, None, (1, 101), "2026-03-10T10:05:00Z", (0, 2)),
            p(D, C1, P1, Some(S9), (4, 25), "2026-03-10T23:59:59Z", (0, 3)),
            // E arrives first on D2 ...
            p(
                E,
                C1,
                P2,
                Some(S1),
                (1, 200),
                "2026-03-11T08:00:00Z",
                (0, 4),
            ),
            // ... an exact re-send of A, a conflicting copy of B, a copy of E stamped D1.
            p(
                A,
                C1,
                P1,
                Some(S1),
                (2, 1000),
                "2026-03-10T09:15:00Z",
                (0, 5),
            ),
            p(
                B,
                C2,
                P2,
                Some(S1),
                (3, 555),
                "2026-03-10T09:45:00Z",
                (0, 6),
            ),
            p(
                E,
                C1,
                P2,
                Some(S1),
                (1, 200),
                "2026-03-10T12:00:00Z",
                (0, 7),
            ),
            p(
                F,
                C1,
                P1,
                Some(S1),
                (1, 300),
                "2026-03-11T08:30:00Z",
                (1, 0),
            ),
        ],
    )
    .await
}

fn b(revenue: &str, purchases: u64, items: u64) -> (Decimal, u64, u64) {
    (revenue.parse().unwrap_or_default(), purchases, items)
}

async fn rules(kind: StageKind) -> Result<()> {
    let world = World::new(kind, Default::default())?;

    // Before `migrate` there are no tables: a clear error and a non-zero exit.
    seed(&world).await?;
    let (ok, stdout, stderr) = world.try_run(&["batch", "run", "--date", D1, "--json"])?;
    assert!(!ok, "batch without tables must fail: {stdout}");
    let summary = last_json(&stdout)?;
    assert_eq!(summary["ok"], false);
    assert!(stderr.contains("lakeshop migrate"), "{stderr}");

    let m = world.json(&["migrate"])?;
    let files = lakeshop_clickhouse::migrate::MIGRATIONS.len();
    assert_eq!(m["applied"].as_array().map(Vec::len), Some(files), "{m}");
    let again = world.json(&["migrate"])?;
    assert_eq!(
        again["applied"].as_array().map(Vec::len),
        Some(0),
        "{again}"
    );
    assert_eq!(
        again["already_applied"].as_array().map(Vec::len),
        Some(files),
        "{again}"
    );

    let s = world.json(&["batch", "run", "--from", D1, "--to", D3, "--json"])?;
    assert_eq!(s["ok"], true, "{s}");
    let d1 = &s["days"][0];
    assert_eq!(d1["date"], D1);
    assert_eq!(d1["rows_in"], 7, "{d1}");
    assert_eq!(d1["rows_out"], 4, "{d1}");
    assert_eq!(d1["duplicates"], 3, "{d1}");
    assert_eq!(d1["conflicting_duplicates"], 1, "{d1}");
    assert_eq!(d1["counted_on_other_day"], 1, "{d1}");
    assert_eq!(d1["unknown_clients"], 1, "{d1}");
    assert_eq!(d1["unknown_products"], 1, "{d1}");
    assert_eq!(d1["unknown_sellers"], 2, "{d1}");
    assert_eq!(d1["revenue"], "27.56", "{d1}");
    let d2 = &s["days"][1];
    assert_eq!(
        (d2["rows_in"].as_u64(), d2["rows_out"].as_u64()),
        (Some(2), Some(2)),
        "{d2}"
    );
    assert_eq!(d2["revenue"], "5.00");
    let d3 = &s["days"][2];
    assert_eq!(
        (d3["rows_in"].as_u64(), d3["rows_out"].as_u64()),
        (Some(0), Some(0)),
        "{d3}"
    );
    assert_eq!(s["totals"]["rows_in"], 9);
    assert_eq!(s["totals"]["revenue"], "32.56");

    // ClickHouse: the buckets, with unknowns under `unknown`.
    let sellers = buckets(&world, "daily_seller", "seller_id", D1).await?;
    assert_eq!(
        sellers,
        BTreeMap::from([
            (S1.into(), b("25.55", 2, 3)),
            ("unknown".into(), b("2.01", 2, 5))
        ])
    );
    let categories = buckets(&world, "daily_category", "category", D1).await?;
    assert_eq!(
        categories,
        BTreeMap::from([
            ("books".into(), b("21.00", 2, 6)),
            ("toys".into(), b("5.55", 1, 1)),
            ("unknown".into(), b("1.01", 1, 1))
        ])
    );
    let products = buckets(&world, "daily_product", "product_id", D1).await?;
    assert_eq!(
        products,
        BTreeMap::from([
            (P1.into(), b("21.00", 2, 6)),
            (P2.into(), b("5.55", 1, 1)),
            ("unknown".into(), b("1.01", 1, 1))
        ])
    );
    let total = world
        .ch
        .rows("total", &format!("SELECT toString(revenue), purchases, items, distinct_clients, unknown_clients, unknown_products, unknown_sellers, toString(avg_check) FROM daily_total_v WHERE event_date = toDate('{D1}')"))
        .await?;
    assert_eq!(
        total,
        vec![vec!["27.56", "4", "8", "3", "1", "1", "2", "6.89"]]
    );
    // Half up: 25.55 / 2 = 12.775 -> 12.78; 2.01 / 2 = 1.005 -> 1.01.
    let avg = world
        .ch
        .rows("avg", &format!("SELECT seller_id, toString(avg_check) FROM daily_seller_v WHERE event_date = toDate('{D1}') ORDER BY seller_id"))
        .await?;
    assert_eq!(
        avg,
        vec![
            vec![S1.to_string(), "12.78".into()],
            vec!["unknown".into(), "1.01".into()]
        ]
    );
    let top = world
        .ch
        .rows("top", &format!("SELECT rank, product_id, product_name, category, toString(revenue) FROM daily_top_products WHERE event_date = toDate('{D1}') ORDER BY rank"))
        .await?;
    assert_eq!(
        top,
        vec![
            vec![
                "1".to_string(),
                P1.into(),
                "Book".into(),
                "books".into(),
                "21.00".into()
            ],
            vec![
                "2".into(),
                P2.into(),
                "Kite".into(),
                "toys".into(),
                "5.55".into()
            ]
        ]
    );
    let hourly = world
        .ch
        .rows("hourly", &format!("SELECT toString(hour), toString(revenue), purchases FROM hourly_sales WHERE event_date = toDate('{D1}') ORDER BY hour"))
        .await?;
    assert_eq!(
        hourly,
        vec![
            vec![
                "2026-03-10 09:00:00".to_string(),
                "25.55".into(),
                "2".into()
            ],
            vec!["2026-03-10 10:00:00".into(), "1.01".into(), "1".into()],
            vec!["2026-03-10 23:00:00".into(), "1.00".into(), "1".into()],
        ]
    );
    let month = world.ch.rows("monthly", "SELECT toString(month), toString(revenue), purchases, distinct_clients FROM monthly_total_v").await?;
    assert_eq!(month, vec![vec!["2026-03-01", "32.56", "6", "3"]]);

    // The sales rows: the soft-deleted client joins, the unknowns are flagged.
    let sales = world
        .ch
        .rows("sales", &format!("SELECT purchase_id, seller_id, quantity, ifNull(first_name, '-'), ifNull(category, '-'), unknown_client, unknown_product, unknown_seller FROM sales WHERE event_date = toDate('{D1}') ORDER BY purchase_id"))
        .await?;
    assert_eq!(
        sales,
        vec![
            vec![
                A,
                S1,
                "2",
                "First 00000000-0000-4000-8000-0000000000c1",
                "books",
                "0",
                "0",
                "0"
            ],
            vec![
                B,
                S1,
                "1",
                "First 00000000-0000-4000-8000-0000000000c2",
                "toys",
                "0",
                "0",
                "0"
            ],
            vec![C, "unknown", "1", "-", "-", "1", "1", "1"],
            vec![
                D,
                S9,
                "4",
                "First 00000000-0000-4000-8000-0000000000c1",
                "books",
                "0",
                "0",
                "1"
            ],
        ]
    );
    let stage_sales = stage_query(&world.stage(), &[Table::Sales], "SELECT CAST(event_date AS VARCHAR) AS d, count(*) AS n, CAST(sum(amount) AS VARCHAR) AS r FROM sales GROUP BY event_date ORDER BY d").await?;
    let pretty = deltalake::arrow::util::pretty::pretty_format_batches(&stage_sales)?.to_string();
    assert!(
        pretty.contains("| 2026-03-10 | 4 | 27.56 |")
            && pretty.contains("| 2026-03-11 | 2 | 5.00  |"),
        "{pretty}"
    );

    // Reports read ClickHouse.
    let daily = world.run(&[
        "report", "daily", "--from", D1, "--to", D3, "--format", "json",
    ])?;
    let daily: serde_json::Value = serde_json::from_str(daily.trim())?;
    assert_eq!(daily.as_array().map(Vec::len), Some(2), "{daily}");
    assert_eq!(daily[0]["revenue"], "27.56");
    assert_eq!(daily[0]["purchases"], 4);
    let csv = world.run(&["report", "top", "--date", D1, "--format", "csv"])?;
    assert_eq!(csv.lines().next(), Some("event_date,rank,product_id,product_name,category,revenue,purchases,items,distinct_clients"));
    assert_eq!(csv.lines().count(), 3, "{csv}");
    for report in ["products", "categories", "shops", "avg-check"] {
        let text = world.run(&["report", report, "--date", D1])?;
        assert!(text.lines().count() >= 3, "{report}: {text}");
    }
    let (ok, _, err) = world.try_run(&["report", "daily", "--date", D1, "--format", "xml"])?;
    assert!(!ok && err.contains("--format"), "{err}");
    // --limit: the top N of each day; the batch job keeps 100.
    let top1 = world.run(&[
        "report", "top", "--date", D1, "--format", "csv", "--limit", "1",
    ])?;
    assert_eq!(top1.lines().count(), 2, "{top1}");
    assert!(
        top1.lines().nth(1).is_some_and(|l| l.contains(",1,")),
        "{top1}"
    );
    let (ok, _, err) = world.try_run(&["report", "top", "--date", D1, "--limit", "101"])?;
    assert!(!ok && err.contains("100"), "{err}");
    // Monthly and yearly: the whole range in one month and one year.
    for (report, key) in [("monthly", "month"), ("yearly", "year")] {
        let text = world.run(&[
            "report", report, "--from", D1, "--to", D3, "--format", "json",
        ])?;
        let rows: serde_json::Value = serde_json::from_str(text.trim())?;
        assert_eq!(rows.as_array().map(Vec::len), Some(1), "{report}: {rows}");
        assert_eq!(rows[0]["revenue"], "32.56", "{report}: {rows}");
        assert_eq!(rows[0]["purchases"], 6, "{report}: {rows}");
        assert!(
            rows[0][key]
                .as_str()
                .is_some_and(|d| d.starts_with("2026-")),
            "{rows}"
        );
    }

    // Running the range again changes nothing.
    let tables = lakeshop_batch::CLICKHOUSE_TABLES;
    let mut before = Vec::new();
    for t in tables {
        before.push(ch_digest(&world.ch, t).await?);
    }
    world.json(&["replay", "--from", D1, "--to", D3])?;
    for (t, want) in tables.iter().zip(&before) {
        assert_eq!(&ch_digest(&world.ch, t).await?, want, "{t} after replay");
    }

    // A late purchase is picked up by a re-run of its day.
    append_purchases(
        &world.stage(),
        &[p(
            G,
            C1,
            P2,
            Some(S1),
            (1, 100),
            "2026-03-10T11:00:00Z",
            (1, 1),
        )],
    )
    .await?;
    let late = world.json(&["batch", "run", "--date", D1, "--json"])?;
    assert_eq!(late["days"][0]["rows_out"], 5, "{late}");
    assert_eq!(late["days"][0]["revenue"], "28.56", "{late}");
    let total = world
        .ch
        .rows(
            "total",
            &format!("SELECT toString(revenue) FROM daily_total WHERE event_date = toDate('{D1}')"),
        )
        .await?;
    assert_eq!(total, vec![vec!["28.56"]]);

    // PII: kept, hashed (hex SHA-256), dropped; in ClickHouse and stage.sales alike.
    let email_of_a = || async {
        let ch = world.ch.rows("email", &format!("SELECT ifNull(email, 'NULL'), ifNull(address, 'NULL') FROM sales WHERE purchase_id = '{A}'")).await?;
        let st = stage_query(
            &world.stage(),
            &[Table::Sales],
            &format!("SELECT COALESCE(email, 'NULL') AS e FROM sales WHERE purchase_id = '{A}'"),
        )
        .await?;
        let st = deltalake::arrow::util::pretty::pretty_format_batches(&st)?.to_string();
        anyhow::Ok((ch, st))
    };
    let (ch, st) = email_of_a().await?;
    assert_eq!(ch, vec![vec!["one@example.com", "1 Main St, Town"]]);
    assert!(st.contains("one@example.com"), "{st}");
    let text = std::fs::read_to_string(&world.pipeline)?;
    std::fs::write(
        &world.pipeline,
        text.replace("pii = \"keep\"", "pii = \"hash\""),
    )?;
    world.json(&["batch", "run", "--date", D1, "--json"])?;
    let (ch, st) = email_of_a().await?;
    // printf '%s' one@example.com | sha256sum
    let email = "d25354f658256d3988a0a1f07ae2dbfa64c0141b3eaa5650fd268b3fdd903b7d";
    let address = "a9f7e6f623956c0bc92ef071fcf9d0c6d25252f9f7123b4b63b0f600c3f233f3";
    assert_eq!(ch, vec![vec![email, address]]);
    assert!(st.contains(email), "{st}");
    let text = std::fs::read_to_string(&world.pipeline)?;
    std::fs::write(
        &world.pipeline,
        text.replace("pii = \"hash\"", "pii = \"drop\""),
    )?;
    world.json(&["batch", "run", "--date", D1, "--json"])?;
    let (ch, st) = email_of_a().await?;
    assert_eq!(ch, vec![vec!["NULL", "NULL"]]);
    assert!(st.contains("NULL") && !st.contains("example.com"), "{st}");

    // Bad input: clear errors, non-zero exits.
    for args in [
        vec!["batch", "run", "--date", "2026-13-01"],
        vec!["batch", "run", "--from", D2, "--to", D1],
        vec!["replay", "--from", "yesterday", "--to", D1],
    ] {
        let (ok, _, err) = world.try_run(&args)?;
        assert!(!ok, "{args:?}");
        assert!(
            err.contains("--") && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn rules_on_a_local_folder_stage() -> Result<()> {
    rules(StageKind::Local).await
}

#[tokio::test(flavor = "multi_thread")]
async fn rules_on_an_s3_stage() -> Result<()> {
    rules(StageKind::S3).await
}
