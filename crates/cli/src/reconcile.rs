//! Wiring of `reconcile`: the stream's aggregates of a day range against the batch job's
//! ([`lakeshop_stream::reconcile`]), printed as a table or JSON.
//!
//! Exit status: 0 every day equal (differences, if any, are dimension drift); 1 a difference
//! drift does not explain (or an error); 3 a day the stream has not closed yet, refused
//! before anything is compared (`--force` compares it anyway); 4 a day neither side holds
//! anything of (nothing was compared).

use anyhow::{bail, Context as _, Result};
use lakeshop_stream::reconcile::{DayReport, Measures, Reconciliation, Row};
use std::process::ExitCode;

use crate::config::Config;
use crate::ReconcileArgs;

/// A day the stream has not closed: refused.
const EXIT_OPEN_DAY: u8 = 3;
/// A day with nothing on either side: nothing compared.
const EXIT_NOTHING: u8 = 4;

pub async fn run(config: &Config, args: ReconcileArgs) -> Result<ExitCode> {
    let (from, to) = crate::analytics::range(
        config,
        args.date.as_deref(),
        args.from.as_deref(),
        args.to.as_deref(),
    )?;
    if from > to {
        bail!("--from {from} is after --to {to}");
    }
    let ch = crate::analytics::clickhouse(config)?;
    let (pipeline, topic) = (&config.pipeline.name, config.kafka.topic("purchases"));
    let checkpoints = ch
        .stream_checkpoints(pipeline, &topic)
        .await
        .with_context(|| {
            format!(
                "reading the stream's checkpoints in {} at {} (has `lakeshop migrate` created the stream tables?)",
                ch.database(),
                config.clickhouse.url
            )
        })?;
    let (tz, lateness) = (
        config.timezone()?,
        config.stream.allowed_lateness.as_secs() as i64,
    );
    let open: Vec<String> = from
        .iter_days()
        .take_while(|d| *d <= to)
        .filter_map(|d| {
            lakeshop_stream::reconcile::closure_of(&checkpoints, tz, lateness, d)
                .why_open(pipeline, &topic)
        })
        .collect();
    if !open.is_empty() {
        if !args.force {
            for why in &open {
                eprintln!("reconcile: {why}");
            }
            eprintln!(
                "reconcile: refused: the stream's totals of an open day may still grow; \
                 run it again once the day is closed, or with --force to compare anyway"
            );
            return Ok(ExitCode::from(EXIT_OPEN_DAY));
        }
        for why in &open {
            eprintln!("reconcile: --force: {why}");
        }
    }
    let result = lakeshop_stream::reconcile::reconcile(&ch, from, to)
        .await
        .with_context(|| {
            format!(
                "reconcile {from}..{to} in {} at {} (has `lakeshop migrate` created the stream tables?)",
                ch.database(),
                config.clickhouse.url
            )
        })?;
    if args.json {
        outln!("{}", serde_json::to_string(&result)?);
    } else {
        out!("{}", text(&result));
    }
    let empty = result.empty_days();
    Ok(if result.has_unexplained_difference() {
        ExitCode::FAILURE
    } else if !empty.is_empty() {
        let days: Vec<String> = empty.iter().map(|d| d.to_string()).collect();
        eprintln!(
            "reconcile: nothing to compare on {}: neither the stream nor the batch tables hold \
             the day",
            days.join(", ")
        );
        ExitCode::from(EXIT_NOTHING)
    } else {
        ExitCode::SUCCESS
    })
}

/// Per day: a line per check, the rows that differ, the drifted products; then a verdict.
fn text(r: &Reconciliation) -> String {
    let mut out = String::new();
    for day in &r.days {
        out.push_str(&day_text(day));
    }
    let unexplained: usize = r
        .days
        .iter()
        .flat_map(|d| d.rows.iter())
        .filter(|row| row.is_unexplained())
        .count();
    if unexplained == 0 {
        out.push_str(&format!(
            "ok {}..{}: the stream equals the batch job (differences, if any, are dimension drift)\n",
            r.from, r.to
        ));
    } else {
        out.push_str(&format!(
            "DIFFERENT {}..{}: {unexplained} unexplained difference(s)\n",
            r.from, r.to
        ));
    }
    out
}

fn day_text(d: &DayReport) -> String {
    let checks: Vec<String> = d
        .summary
        .iter()
        .map(|c| {
            let mut s = format!("{} {}/{}", c.check, c.equal, c.rows);
            if c.drift > 0 {
                s.push_str(&format!(" ({} drift)", c.drift));
            }
            s
        })
        .collect();
    let rejects: Vec<String> = d.rejects.iter().map(|(r, n)| format!("{r}={n}")).collect();
    let mut out = format!(
        "{}: equal/compared: {}; counted late {}, stamped ahead {}{}\n",
        d.date,
        checks.join(", "),
        d.too_late,
        d.future,
        if rejects.is_empty() {
            String::new()
        } else {
            format!(" (stream rejects: {})", rejects.join(" "))
        }
    );
    if d.is_empty() {
        out.push_str("  nothing on either side: neither the stream nor the batch holds this day\n");
    } else if !d.batch_loaded {
        out.push_str(
            "  the batch tables have no row for this day: has `lakeshop batch run` built it?\n",
        );
    }
    if !d.stream_loaded && d.batch_loaded {
        out.push_str(
            "  the stream has no window of this day: has `lakeshop stream run` read it?\n",
        );
    }
    let diffs: Vec<&Row> = d.differences().collect();
    if !diffs.is_empty() {
        out.push_str(&table(&diffs));
    }
    for drift in &d.drift {
        let side = |m: &std::collections::BTreeMap<String, lakeshop_stream::reconcile::Sums>| {
            m.iter()
                .map(|(c, s)| format!("{c:?} ({} purchases, {})", s.purchases, s.revenue))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push_str(&format!(
            "  drift: product {} is {} in the stream, {} in batch\n",
            drift.product,
            side(&drift.stream),
            side(&drift.batch)
        ));
    }
    /// Moved purchases listed one per line, up to this many.
    const MOVES_SHOWN: usize = 20;
    for m in d.moves.iter().take(MOVES_SHOWN) {
        let keys = |k: &lakeshop_stream::reconcile::PurchaseKeys| {
            format!(
                "seller {}, category {:?}, product {}",
                k.seller, k.category, k.product
            )
        };
        out.push_str(&format!(
            "  drift: purchase {} of product {} ({}, {} items) is {} in the stream, {} in batch\n",
            m.purchase_id,
            m.product_id,
            m.amount,
            m.items,
            keys(&m.stream),
            keys(&m.batch)
        ));
    }
    if d.moves.len() > MOVES_SHOWN {
        out.push_str(&format!(
            "  drift: {} more purchases counted under other keys (--json lists them all)\n",
            d.moves.len() - MOVES_SHOWN
        ));
    }
    out
}

/// The differing rows, aligned: both sides of every measure and a verdict.
fn table(rows: &[&Row]) -> String {
    let header = [
        "",
        "check",
        "key",
        "revenue",
        "(batch)",
        "purchases",
        "(batch)",
        "items",
        "(batch)",
        "clients",
        "(batch)",
    ];
    let cells = |m: &Option<Measures>| -> [String; 4] {
        match m {
            Some(m) => [
                m.revenue.to_string(),
                m.purchases.to_string(),
                m.items.to_string(),
                m.distinct_clients.to_string(),
            ],
            None => ["-".into(), "-".into(), "-".into(), "-".into()],
        }
    };
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for row in rows {
        let (s, b) = (cells(&row.stream), cells(&row.batch));
        let clean = row.key.replace(['\n', '\r', '\t'], " ");
        let mut line = vec![
            if row.drift { "drift" } else { "DIFF" }.to_string(),
            row.check.to_string(),
            if clean.is_empty() { "-".into() } else { clean },
        ];
        for (stream, batch) in s.into_iter().zip(b) {
            line.push(stream);
            line.push(batch);
        }
        lines.push(line);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in lines {
        let parts: Vec<String> = line
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i < 3 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        out.push_str(&format!("  {}\n", parts.join("  ").trim_end()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;
    use lakeshop_stream::reconcile::{compare, Check};
    use std::collections::BTreeMap;

    #[test]
    fn prints_differences_and_a_verdict() {
        let m = |revenue: &str, purchases: u64| Measures {
            revenue: revenue.parse().unwrap_or_default(),
            purchases,
            items: purchases,
            distinct_clients: 1,
        };
        let day = NaiveDate::from_ymd_opt(2026, 11, 21).unwrap_or_default();
        let stream = BTreeMap::from([("".to_string(), m("10.00", 2))]);
        let batch = BTreeMap::from([("".to_string(), m("10.01", 2))]);
        let rows = compare(Check::Total, &stream, &batch);
        let d = DayReport::new(day, rows, vec![], BTreeMap::new());
        let r = Reconciliation::new(day, day, vec![d]);
        let t = text(&r);
        assert!(t.contains("total 0/1"), "{t}");
        assert!(t.contains("DIFF  total"), "{t}");
        assert!(t.contains("10.00") && t.contains("10.01"), "{t}");
        assert!(t.ends_with("1 unexplained difference(s)\n"), "{t}");

        let rows = compare(Check::Total, &stream, &stream);
        let d = DayReport::new(day, rows, vec![], BTreeMap::new());
        let t = text(&Reconciliation::new(day, day, vec![d]));
        assert!(
            t.starts_with("2026-11-21: equal/compared: total 1/1"),
            "{t}"
        );
        assert!(t.contains("ok 2026-11-21..2026-11-21"), "{t}");
    }
}
