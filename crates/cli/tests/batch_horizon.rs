//! `lakeshop batch run` and the dedup horizon (`[stream] dedup_horizon`, default 7 days): a
//! copy of a purchase id stamped 6 days after its first arrival is a re-send and counts on
//! the first arrival's day only; one stamped 9 days after is a new purchase and counts on
//! its own day too, as the streaming loader decides (`stream/src/state/tests.rs`,
//! `re_sends_are_decided_within_the_dedup_horizon_not_the_lateness`). A shorter horizon in
//! the pipeline file moves the line.

use anyhow::Result;
use lakeshop_testkit::world::{
    append_clients, append_products, append_purchases, append_sellers, StageKind, World, P,
};

const C1: &str = "00000000-0000-4000-8000-0000000000c1";
const S1: &str = "00000000-0000-4000-8000-0000000000a1";
const P1: &str = "00000000-0000-4000-8000-0000000000b1";
/// First arrival 2026-03-01, copy stamped 2026-03-07 (6 days on).
const X: &str = "00000000-0000-4000-8000-00000000000a";
/// First arrival 2026-03-01, copy stamped 2026-03-10 (9 days on).
const Y: &str = "00000000-0000-4000-8000-00000000000b";

fn p(id: &str, quantity: i32, ts: &str, offset: i64) -> P {
    P {
        id: id.into(),
        client: C1.into(),
        product: P1.into(),
        seller: Some(S1.into()),
        quantity,
        price: 100,
        ts: ts.into(),
        partition: 0,
        offset,
        ingested: 1_700_000_000_000_000 + offset * 1000,
    }
}

async fn seed(world: &World) -> Result<()> {
    let stage = world.stage();
    append_clients(&stage, &[(C1, "one@example.com", false)]).await?;
    append_sellers(&stage, &[(S1, "Shop One")]).await?;
    append_products(&stage, &[(P1, "Book", "books", S1)]).await?;
    append_purchases(
        &stage,
        &[
            p(X, 1, "2026-03-01T10:00:00Z", 0),
            p(Y, 1, "2026-03-01T11:00:00Z", 1),
            // Re-sent later with other content and a new stamp.
            p(X, 2, "2026-03-07T10:00:00Z", 2),
            p(Y, 3, "2026-03-10T12:00:00Z", 3),
        ],
    )
    .await
}

/// Purchases counted per day, from the run's summary.
fn counted(summary: &serde_json::Value) -> Vec<(String, u64)> {
    summary["days"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["rows_in"].as_u64() > Some(0))
        .map(|d| {
            (
                d["date"].as_str().unwrap_or_default().to_string(),
                d["rows_out"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

/// Seen failing with the horizon left out of `claimed_elsewhere`: 2026-03-10 counted 0.
#[tokio::test(flavor = "multi_thread")]
async fn a_re_send_within_the_horizon_counts_once_and_one_beyond_it_again() -> Result<()> {
    let world = World::new(StageKind::Local, Default::default())?;
    seed(&world).await?;
    world.json(&["migrate"])?;
    let run = || {
        world.json(&[
            "batch",
            "run",
            "--from",
            "2026-03-01",
            "--to",
            "2026-03-10",
            "--json",
        ])
    };
    let s = run()?;
    assert_eq!(s["ok"], true, "{s}");
    assert_eq!(
        counted(&s),
        [
            ("2026-03-01".to_string(), 2),
            ("2026-03-07".to_string(), 0),
            ("2026-03-10".to_string(), 1),
        ],
        "{s}"
    );
    assert_eq!(s["days"][6]["counted_on_other_day"], 1, "{s}");

    // A 5-day horizon: the copy stamped 6 days on is a new purchase too.
    world.append_pipeline("[stream]\ndedup_horizon = \"5d\"\n")?;
    let s = run()?;
    assert_eq!(
        counted(&s),
        [
            ("2026-03-01".to_string(), 2),
            ("2026-03-07".to_string(), 1),
            ("2026-03-10".to_string(), 1),
        ],
        "{s}"
    );
    Ok(())
}
