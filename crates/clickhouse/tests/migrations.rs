//! Upgrades keep the live history: a database that holds the rows a loader of schema 0003
//! wrote (minute, hour and day windows in `stream_windows`, counted purchases) reads the same
//! totals from `stream_sales_v` after every later migration as before them. Seen failing
//! without `0005_stream_windows_moved.sql`: the views read no window at all.

use anyhow::Result;
use lakeshop_clickhouse::migrate::Migration;
use lakeshop_clickhouse::ClickHouse;
use lakeshop_testkit::world::clickhouse;

/// Every window of the view, in order, as text.
async fn sales(ch: &ClickHouse) -> Result<Vec<Vec<String>>> {
    Ok(ch
        .rows(
            "stream sales",
            "SELECT granularity, toString(window_start), dim, key, toString(revenue), \
             toString(purchases), toString(items), toString(distinct_clients) \
             FROM stream_sales_v ORDER BY granularity, window_start, dim, key",
        )
        .await?)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_from_0003_keeps_every_live_total() -> Result<()> {
    let database = lakeshop_testkit::unique("lakeshop_migrations");
    let ch = clickhouse(&database)?;
    let all = Migration::all()?;
    let upto_0003: Vec<Migration> = all
        .iter()
        .filter(|m| m.name.as_str() < "0004")
        .cloned()
        .collect();
    assert_eq!(upto_0003.len(), 3);
    let result = async {
        ch.migrate(&upto_0003).await?;
        // Two partitions of a 0003 loader: purchases in two minutes of one hour (business
        // time zone UTC+1, so the day starts at 23:00 UTC), every granularity written.
        ch.execute(
            "0003 purchases",
            "INSERT INTO stream_purchases VALUES \
             ('11111111-1111-4111-8111-111111111111', 'purchases', 0, 5, '2026-12-01 10:01:05', '2026-12-01', '2026-12-01 10:01:00', '2026-12-01 10:00:00', '2026-11-30 23:00:00', 'c1', 's1', 'lighting', 'p1', 2, 25.00, 1), \
             ('22222222-1111-4111-8111-111111111111', 'purchases', 1, 9, '2026-12-01 10:02:05', '2026-12-01', '2026-12-01 10:02:00', '2026-12-01 10:00:00', '2026-11-30 23:00:00', 'c2', 's1', 'lighting', 'p1', 1, 12.50, 2), \
             ('33333333-1111-4111-8111-111111111111', 'purchases', 1, 10, '2026-12-01 10:02:35', '2026-12-01', '2026-12-01 10:02:00', '2026-12-01 10:00:00', '2026-11-30 23:00:00', 'c1', 'unknown', 'lighting', 'p1', 3, 30.00, 3)",
        )
        .await?;
        let mut windows = Vec::new();
        for (g, start, date) in [
            ("minute", "2026-12-01 10:01:00", "2026-12-01"),
            ("hour", "2026-12-01 10:00:00", "2026-12-01"),
            ("day", "2026-11-30 23:00:00", "2026-12-01"),
        ] {
            // Partition 0: the first purchase; an older version of its row first.
            for (dim, key) in [("total", ""), ("seller", "s1"), ("category", "lighting"), ("product", "p1")] {
                windows.push(format!(
                    "('{g}', '{start}', '{date}', '{dim}', '{key}', 'purchases', 0, 1.00, 1, 1, 3)"
                ));
                windows.push(format!(
                    "('{g}', '{start}', '{date}', '{dim}', '{key}', 'purchases', 0, 25.00, 1, 2, 6)"
                ));
            }
        }
        for (g, start, date) in [
            ("minute", "2026-12-01 10:02:00", "2026-12-01"),
            ("hour", "2026-12-01 10:00:00", "2026-12-01"),
            ("day", "2026-11-30 23:00:00", "2026-12-01"),
        ] {
            // Partition 1: the second and third purchases.
            for (dim, key, revenue, purchases, items) in [
                ("total", "", "42.50", 2, 4),
                ("seller", "s1", "12.50", 1, 1),
                ("seller", "unknown", "30.00", 1, 3),
                ("category", "lighting", "42.50", 2, 4),
                ("product", "p1", "42.50", 2, 4),
            ] {
                windows.push(format!(
                    "('{g}', '{start}', '{date}', '{dim}', '{key}', 'purchases', 1, {revenue}, {purchases}, {items}, 11)"
                ));
            }
        }
        ch.execute(
            "0003 windows",
            &format!("INSERT INTO stream_windows VALUES {}", windows.join(", ")),
        )
        .await?;
        let before = sales(&ch).await?;
        // 3 granularities: minute × 2 starts, hour, day; 5 keys each but the first minute's 4.
        assert_eq!(before.len(), 4 + 5 + 5 + 5, "{before:?}");
        assert!(
            before.contains(&[
                "day", "2026-11-30 23:00:00", "total", "", "67.50", "3", "6", "2"
            ]
            .map(String::from)
            .to_vec()),
            "{before:?}"
        );
        let report = ch.migrate(&all).await?;
        assert_eq!(report.applied.len(), all.len() - 3, "{report:?}");
        assert_eq!(sales(&ch).await?, before, "the same totals after the upgrade");
        // A second `migrate` changes nothing.
        ch.migrate(&all).await?;
        assert_eq!(sales(&ch).await?, before, "after a second migrate");
        anyhow::Ok(())
    }
    .await;
    ch.execute(
        "drop test database",
        &format!("DROP DATABASE IF EXISTS {database}"),
    )
    .await?;
    result
}
