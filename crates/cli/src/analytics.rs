//! Wiring of the analytics commands: `migrate`, `batch run`, `replay` and `report`.

use anyhow::{bail, Context as _, Result};
use chrono::NaiveDate;
use lakeshop_batch::{BatchJob, BatchOptions, DaySummary, PiiMode};
use lakeshop_clickhouse::{
    ClickHouse, ClickHouseOptions, Kind, Migration, Report, ReportTable, TlsOptions,
};
use std::process::ExitCode;
use std::time::Instant;

use crate::config::{self, Config};
use crate::{BatchRunArgs, RangeArgs, ReportArgs, ReportCommand};

pub(crate) fn clickhouse(config: &Config) -> Result<ClickHouse> {
    Ok(ClickHouse::with_tls(
        &ClickHouseOptions {
            url: config.clickhouse.url.clone(),
            database: config.clickhouse.database.clone(),
            user: config.clickhouse.user.clone(),
            password: config.clickhouse.password.clone(),
            compression: config.clickhouse.compression,
        },
        &TlsOptions {
            ca_file: config.clickhouse.ca_file.clone(),
        },
    )?)
}

/// A `YYYY-MM-DD` flag value.
fn parse_day(flag: &str, value: &str) -> Result<NaiveDate> {
    NaiveDate::parse_from_str(value.trim(), "%Y-%m-%d")
        .with_context(|| format!("{flag} {value:?}: not a YYYY-MM-DD date"))
}

fn yesterday(config: &Config) -> Result<NaiveDate> {
    Ok(lakeshop_batch::yesterday(
        config.timezone()?,
        chrono::Utc::now(),
    ))
}

/// `--date` / `--from` + `--to` / nothing (yesterday) as an inclusive range.
pub(crate) fn range(
    config: &Config,
    date: Option<&str>,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<(NaiveDate, NaiveDate)> {
    match (date, from, to) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            bail!("--date goes alone; use --from and --to for a range")
        }
        (Some(d), None, None) => {
            let d = parse_day("--date", d)?;
            Ok((d, d))
        }
        (None, Some(f), Some(t)) => Ok((parse_day("--from", f)?, parse_day("--to", t)?)),
        (None, Some(f), None) => Ok((parse_day("--from", f)?, yesterday(config)?)),
        (None, None, Some(_)) => bail!("--to needs --from"),
        (None, None, None) => {
            let d = yesterday(config)?;
            Ok((d, d))
        }
    }
}

pub async fn migrate(config: &Config) -> Result<ExitCode> {
    let ch = clickhouse(config)?;
    let report = ch
        .migrate(&Migration::all()?)
        .await
        .with_context(|| format!("migrate {} at {}", ch.database(), config.clickhouse.url))?;
    outln!(
        "{}",
        serde_json::json!({
            "server_version": report.server_version,
            "database": report.database,
            "applied": report.applied,
            "already_applied": report.already_applied,
        })
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn batch_run(config: &Config, args: BatchRunArgs) -> Result<ExitCode> {
    let (from, to) = range(
        config,
        args.date.as_deref(),
        args.from.as_deref(),
        args.to.as_deref(),
    )?;
    run_days(config, from, to, args.json, args.quiet).await
}

pub async fn replay(config: &Config, args: RangeArgs) -> Result<ExitCode> {
    let from = parse_day("--from", &args.from)?;
    let to = parse_day("--to", &args.to)?;
    // Replay is for scripts: the summary is always JSON.
    run_days(config, from, to, true, args.quiet).await
}

/// Runs the batch job over `from..=to` and prints the summary; a failed day stops the run
/// and makes the exit status non-zero, after the summary of the days done.
async fn run_days(
    config: &Config,
    from: NaiveDate,
    to: NaiveDate,
    json: bool,
    quiet: bool,
) -> Result<ExitCode> {
    let started = Instant::now();
    let days = lakeshop_batch::days(from, to)?;
    let options = BatchOptions {
        timezone: config.timezone()?,
        dedup_horizon: config.stream.dedup_horizon,
        pii: match config.batch.pii {
            config::PiiMode::Keep => PiiMode::Keep,
            config::PiiMode::Hash => PiiMode::Hash,
            config::PiiMode::Drop => PiiMode::Drop,
        },
    };
    let bar = crate::progress::steps(quiet, days.len() as u64, "batch days");
    let (done, error) =
        match BatchJob::new(crate::stage(config), clickhouse(config)?, options).await {
            Ok(job) => {
                let (done, failure) = job
                    .run_days_with_progress(&days, |day| {
                        bar.set_message(format!("batch {day}"));
                        bar.inc(1);
                    })
                    .await;
                (done, failure.map(|(day, e)| format!("day {day}: {e}")))
            }
            Err(e) => (Vec::new(), Some(format!("batch: {e}"))),
        };
    bar.finish_and_clear();
    let summary = RunSummary::new(from, to, options.pii, done, error, started);
    if json {
        outln!("{}", serde_json::to_string(&summary)?);
    } else {
        out!("{}", summary.text());
    }
    match &summary.error {
        Some(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::FAILURE)
        }
        None => Ok(ExitCode::SUCCESS),
    }
}

/// The summary a run ends with. `rows_in = rows_out + duplicates`, day by day and in
/// total; `conflicting_duplicates` and `counted_on_other_day` are parts of `duplicates`.
#[derive(Debug, serde::Serialize)]
struct RunSummary {
    ok: bool,
    from: NaiveDate,
    to: NaiveDate,
    pii: PiiMode,
    days_done: usize,
    days_asked: usize,
    totals: Totals,
    days: Vec<DaySummary>,
    seconds: f64,
    error: Option<String>,
}

#[derive(Debug, Default, serde::Serialize)]
struct Totals {
    rows_in: u64,
    rows_out: u64,
    duplicates: u64,
    conflicting_duplicates: u64,
    counted_on_other_day: u64,
    unknown_clients: u64,
    unknown_products: u64,
    unknown_sellers: u64,
    revenue: String,
    query_seconds: f64,
    stage_seconds: f64,
    clickhouse_seconds: f64,
}

impl RunSummary {
    fn new(
        from: NaiveDate,
        to: NaiveDate,
        pii: PiiMode,
        days: Vec<DaySummary>,
        error: Option<String>,
        started: Instant,
    ) -> Self {
        let mut t = Totals::default();
        let mut revenue = rust_decimal::Decimal::ZERO;
        for d in &days {
            t.rows_in += d.rows_in;
            t.rows_out += d.rows_out;
            t.duplicates += d.duplicates;
            t.conflicting_duplicates += d.conflicting_duplicates;
            t.counted_on_other_day += d.counted_on_other_day;
            t.unknown_clients += d.unknown_clients;
            t.unknown_products += d.unknown_products;
            t.unknown_sellers += d.unknown_sellers;
            revenue += d
                .revenue
                .parse::<rust_decimal::Decimal>()
                .unwrap_or_default();
            t.query_seconds += d.query_seconds;
            t.stage_seconds += d.stage_seconds;
            t.clickhouse_seconds += d.clickhouse_seconds;
        }
        revenue.rescale(2);
        t.revenue = revenue.to_string();
        let days_asked = usize::try_from((to - from).num_days() + 1).unwrap_or(0);
        Self {
            ok: error.is_none(),
            from,
            to,
            pii,
            days_done: days.len(),
            days_asked,
            totals: t,
            days,
            seconds: started.elapsed().as_secs_f64(),
            error,
        }
    }

    fn text(&self) -> String {
        let mut out = String::new();
        for d in &self.days {
            out.push_str(&format!(
                "{}: rows_in={} rows_out={} duplicates={} (conflicting={}) counted_on_other_day={} unknown_clients={} unknown_products={} unknown_sellers={} revenue={} seconds={:.2}\n",
                d.date, d.rows_in, d.rows_out, d.duplicates, d.conflicting_duplicates,
                d.counted_on_other_day, d.unknown_clients, d.unknown_products,
                d.unknown_sellers, d.revenue, d.seconds
            ));
        }
        let t = &self.totals;
        out.push_str(&format!(
            "{} {}..{}: {}/{} days, rows_in={} rows_out={} duplicates={} unknown_clients={} unknown_products={} unknown_sellers={} revenue={} seconds={:.2}\n",
            if self.ok { "ok" } else { "FAILED" },
            self.from, self.to, self.days_done, self.days_asked, t.rows_in, t.rows_out,
            t.duplicates, t.unknown_clients, t.unknown_products, t.unknown_sellers, t.revenue,
            self.seconds
        ));
        out
    }
}

pub async fn report(config: &Config, cmd: ReportCommand) -> Result<ExitCode> {
    let (report, args) = match cmd {
        ReportCommand::Daily(a) => (Report::Daily, a),
        ReportCommand::Products(a) => (Report::Products, a),
        ReportCommand::Categories(a) => (Report::Categories, a),
        ReportCommand::Shops(a) => (Report::Shops, a),
        ReportCommand::AvgCheck(a) => (Report::AvgCheck, a),
        ReportCommand::Top(a) => (Report::Top, a),
        ReportCommand::Monthly(a) => (Report::Monthly, a),
        ReportCommand::Yearly(a) => (Report::Yearly, a),
    };
    let ReportArgs {
        date,
        from,
        to,
        format,
        limit,
    } = args;
    let format = match format.as_str() {
        "table" | "json" | "csv" => format,
        other => bail!("--format {other:?}: use table, json or csv"),
    };
    let (from, to) = range(config, date.as_deref(), from.as_deref(), to.as_deref())?;
    if from > to {
        bail!("--from {from} is after --to {to}");
    }
    let table = clickhouse(config)?
        .report(report, from, to, limit)
        .await
        .with_context(|| format!("report {report:?} for {from}..{to}"))?;
    let text = match format.as_str() {
        "json" => format!("{}\n", serde_json::to_string(&as_json(&table)?)?),
        "csv" => as_csv(&table),
        _ => as_table(&table),
    };
    out!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// Rows as JSON objects: counts as numbers, money as exact decimal strings.
fn as_json(t: &ReportTable) -> Result<serde_json::Value> {
    let rows = t
        .rows
        .iter()
        .map(|row| {
            let mut obj = serde_json::Map::new();
            for ((name, kind), cell) in t.columns.iter().zip(row) {
                let v = match kind {
                    Kind::Count => serde_json::Value::from(
                        cell.parse::<u64>()
                            .with_context(|| format!("{name}: {cell:?} is not a count"))?,
                    ),
                    _ => serde_json::Value::from(cell.clone()),
                };
                obj.insert(name.to_string(), v);
            }
            Ok(serde_json::Value::Object(obj))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(serde_json::Value::Array(rows))
}

/// RFC 4180 CSV with a header.
fn as_csv(t: &ReportTable) -> String {
    fn field(s: &str) -> String {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    }
    let mut out = t
        .columns
        .iter()
        .map(|(n, _)| field(n))
        .collect::<Vec<_>>()
        .join(",");
    out.push('\n');
    for row in &t.rows {
        out.push_str(&row.iter().map(|c| field(c)).collect::<Vec<_>>().join(","));
        out.push('\n');
    }
    out
}

/// An aligned text table; numbers right-aligned.
fn as_table(t: &ReportTable) -> String {
    let clean = |s: &str| s.replace(['\n', '\r', '\t'], " ");
    let widths: Vec<usize> = t
        .columns
        .iter()
        .enumerate()
        .map(|(i, (n, _))| {
            t.rows
                .iter()
                .map(|r| r.get(i).map(|c| clean(c).chars().count()).unwrap_or(0))
                .chain([n.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| -> String {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .zip(&t.columns)
            .map(|((c, w), (_, kind))| match kind {
                Kind::Count | Kind::Money => format!("{c:>w$}"),
                _ => format!("{c:<w$}"),
            })
            .collect();
        format!("{}\n", parts.join("  ").trim_end())
    };
    let mut out = line(t.columns.iter().map(|(n, _)| n.to_string()).collect());
    out.push_str(&line(widths.iter().map(|w| "-".repeat(*w)).collect()));
    for row in &t.rows {
        out.push_str(&line(row.iter().map(|c| clean(c)).collect()));
    }
    if t.rows.is_empty() {
        out.push_str("(no rows: has `lakeshop batch run` built these days?)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> ReportTable {
        ReportTable {
            columns: vec![
                ("event_date", Kind::Date),
                ("category", Kind::Text),
                ("revenue", Kind::Money),
                ("purchases", Kind::Count),
            ],
            rows: vec![
                vec![
                    "2026-11-21".into(),
                    "books, \"rare\"".into(),
                    "10.50".into(),
                    "3".into(),
                ],
                vec![
                    "2026-11-21".into(),
                    "toys".into(),
                    "1.00".into(),
                    "12".into(),
                ],
            ],
        }
    }

    #[test]
    fn formats_reports() {
        let t = table();
        let csv = as_csv(&t);
        assert_eq!(
            csv,
            "event_date,category,revenue,purchases\n2026-11-21,\"books, \"\"rare\"\"\",10.50,3\n2026-11-21,toys,1.00,12\n"
        );
        let json = as_json(&t).expect("json");
        assert_eq!(json[0]["revenue"], "10.50");
        assert_eq!(json[1]["purchases"], 12);
        let text = as_table(&t);
        assert!(
            text.lines()
                .nth(3)
                .expect("row")
                .ends_with(" 1.00         12"),
            "{text}"
        );
        let mut bad = t.clone();
        bad.rows[0][3] = "x".into();
        assert!(as_json(&bad).is_err());
    }
}
