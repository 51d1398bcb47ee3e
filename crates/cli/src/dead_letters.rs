//! Wiring of `dead-letters count | show | export | replay` over `stage.dead_letters`.

use anyhow::{Context as _, Result};
use base64::Engine as _;
use chrono::NaiveDate;
use clap::{Args, Subcommand};
use lakeshop_stage::DeadLetterFilter;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// Dead letters by source, reason and day.
    #[command(after_help = "Example: lakeshop dead-letters count --from 2026-11-01 --json")]
    Count(CountArgs),
    /// The dead letters themselves, oldest first: position, reason, detail, payload.
    #[command(after_help = "Example: lakeshop dead-letters show --reason bad_uuid --limit 5")]
    Show(ShowArgs),
    /// Every selected dead letter as one JSON line each, to a file or stdout.
    #[command(
        after_help = "Example: lakeshop dead-letters export --date 2026-11-21 --out dl.jsonl"
    )]
    Export(ExportArgs),
    /// Validate again by today's rules and stage those now valid, exactly once (a second
    /// replay stages nothing); the rest stay.
    #[command(after_help = "Example: lakeshop dead-letters replay --reason price_scale --dry-run")]
    Replay(ReplayArgs),
}

#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Only this extractor's (`purchases`, `interactions`).
    #[arg(long)]
    source: Option<String>,
    /// Only this reason (`bad_uuid`, `price_scale`, ...).
    #[arg(long)]
    reason: Option<String>,
    /// Only this day (of `dead_lettered_at`, business time zone).
    #[arg(long, conflicts_with_all = ["from", "to"])]
    date: Option<NaiveDate>,
    /// From this day on.
    #[arg(long)]
    from: Option<NaiveDate>,
    /// Up to this day.
    #[arg(long)]
    to: Option<NaiveDate>,
}

impl FilterArgs {
    fn filter(&self) -> DeadLetterFilter {
        DeadLetterFilter {
            source: self.source.clone(),
            reason: self.reason.clone(),
            from: self.date.or(self.from),
            to: self.date.or(self.to),
        }
    }
}

#[derive(Debug, Args)]
pub struct CountArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// At most this many.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Print as JSON lines.
    #[arg(long)]
    json: bool,
    /// Payloads as base64 (exact bytes) instead of text.
    #[arg(long)]
    base64: bool,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// Write here instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Payloads as base64 (exact bytes) instead of text.
    #[arg(long)]
    base64: bool,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// Say what would be staged; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// The selected dead letters as JSON objects, payloads as text or base64.
async fn rows(
    config: &Config,
    filter: &FilterArgs,
    limit: Option<usize>,
    b64: bool,
) -> Result<Vec<Value>> {
    let records =
        lakeshop_sources::dead_letters::read(&crate::stage(config), &filter.filter(), limit)
            .await
            .context("reading stage.dead_letters")?;
    Ok(records
        .into_iter()
        .map(|r| {
            let payload = r.payload.map(|bytes| {
                if b64 {
                    base64::engine::general_purpose::STANDARD.encode(bytes)
                } else {
                    String::from_utf8_lossy(&bytes).into_owned()
                }
            });
            let mut v = json!({
                "source": r.source,
                "source_topic": r.topic,
                "source_partition": r.partition,
                "source_offset": r.offset,
                "reason": r.reason,
                "detail": r.detail,
                "dead_lettered_at": r.dead_lettered_at.to_rfc3339(),
                "day": r.day.to_string(),
            });
            v[if b64 { "payload_base64" } else { "payload" }] = json!(payload);
            v
        })
        .collect())
}

pub async fn run(config: &Config, cmd: DeadLettersCommand) -> Result<ExitCode> {
    match cmd {
        DeadLettersCommand::Count(a) => {
            let mut counts: BTreeMap<(String, String, String), u64> = BTreeMap::new();
            for r in rows(config, &a.filter, None, false).await? {
                let key = (
                    r["source"].as_str().unwrap_or("").to_string(),
                    r["reason"].as_str().unwrap_or("").to_string(),
                    r["day"].as_str().unwrap_or("").to_string(),
                );
                *counts.entry(key).or_default() += 1;
            }
            if a.json {
                let v: Vec<Value> = counts
                    .iter()
                    .map(|((s, r, d), n)| json!({"source": s, "reason": r, "day": d, "records": n}))
                    .collect();
                outln!("{}", Value::Array(v));
            } else {
                outln!(
                    "{:<14} {:<24} {:<10} {:>9}",
                    "source",
                    "reason",
                    "day",
                    "records"
                );
                for ((s, r, d), n) in &counts {
                    outln!("{s:<14} {r:<24} {d:<10} {n:>9}");
                }
                outln!("{} in all", counts.values().sum::<u64>());
            }
        }
        DeadLettersCommand::Show(a) => {
            for r in rows(config, &a.filter, Some(a.limit), a.base64).await? {
                if a.json {
                    outln!("{r}");
                } else {
                    outln!(
                        "{} {}/{}@{} {}: {}\n  {}",
                        r["dead_lettered_at"].as_str().unwrap_or(""),
                        r["source"].as_str().unwrap_or(""),
                        r["source_partition"],
                        r["source_offset"],
                        r["reason"].as_str().unwrap_or(""),
                        r["detail"].as_str().unwrap_or(""),
                        r.get("payload")
                            .or_else(|| r.get("payload_base64"))
                            .and_then(Value::as_str)
                            .unwrap_or("(no payload)")
                    );
                }
            }
        }
        DeadLettersCommand::Export(a) => {
            let rows = rows(config, &a.filter, None, a.base64).await?;
            let mut text = String::new();
            for r in &rows {
                text.push_str(&r.to_string());
                text.push('\n');
            }
            match &a.out {
                Some(path) => {
                    let mut f = std::fs::File::create(path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    f.write_all(text.as_bytes())?;
                    tracing::info!(records = rows.len(), path = %path.display(), "exported");
                }
                None => out!("{text}"),
            }
        }
        DeadLettersCommand::Replay(a) => {
            let stats = lakeshop_sources::dead_letters::replay(
                &crate::stage(config),
                &a.filter.filter(),
                config.timezone()?,
                a.dry_run,
            )
            .await
            .context("replaying dead letters")?;
            if a.json {
                outln!("{}", serde_json::to_string(&stats)?);
            } else {
                outln!(
                    "{} read, {} valid now, {} staged, {} removed from the dead letters, {} skipped{}",
                    stats.read,
                    stats.valid,
                    stats.staged,
                    stats.removed,
                    stats.skipped,
                    if stats.dry_run { " (dry run: nothing written)" } else { "" }
                );
                for (reason, n) in &stats.still_invalid {
                    outln!("  still invalid: {reason} {n}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
