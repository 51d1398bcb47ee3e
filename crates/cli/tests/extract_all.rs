//! `lakeshop extract all` on the local stack: one run stages every source (clients and
//! sellers from PostgreSQL, products from the source Delta table, purchases and
//! interactions from Kafka) and prints one JSON line per source. Progress bars: a run whose
//! stderr is not a terminal (a scheduler's) prints nothing but JSON on stdout and no
//! progress on stderr, the batch path included; under a terminal (`script`) the bars show,
//! and `--quiet` hides them there too.

use anyhow::{Context as _, Result};
use deltalake::arrow::array::AsArray as _;
use deltalake::arrow::datatypes::Int64Type;
use lakeshop_stage::Table;
use lakeshop_testkit::world::{stage_query, Setup, StageKind, World};
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::Command;

/// Rows of a stage table.
async fn rows(world: &World, table: Table, name: &str) -> Result<u64> {
    let batches = stage_query(
        &world.stage(),
        &[table],
        &format!("SELECT count(*) AS n FROM {name}"),
    )
    .await?;
    let b = batches.first().context("a count")?;
    Ok(b.column(0).as_primitive::<Int64Type>().value(0) as u64)
}

/// What indicatif draws: carriage returns, cursor and erase escapes, spinner glyphs.
fn has_progress_noise(text: &str) -> bool {
    text.contains('\r')
        || text.contains("\u{1b}[")
        || text.chars().any(|c| ('\u{2800}'..='\u{28ff}').contains(&c))
}

/// Runs `lakeshop` under a pseudo-terminal (`script`, bsdutils), stdout and stderr both on it; the
/// bytes the terminal received.
fn under_terminal(world: &World, args: &[&str]) -> Result<String> {
    let mut line = format!(
        "{} --config {}",
        env!("CARGO_BIN_EXE_lakeshop"),
        world.pipeline.display()
    );
    for a in args {
        line.push(' ');
        line.push_str(a);
    }
    let out = Command::new("script")
        .args(["-q", "-e", "-f", "-c", &line, "/dev/null"])
        .env("TERM", "xterm")
        .output()
        .context("running script (bsdutils)")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    anyhow::ensure!(out.status.success(), "{args:?} under a terminal: {text}");
    Ok(text)
}

#[tokio::test(flavor = "multi_thread")]
async fn extract_all_stages_every_source_and_keeps_progress_off_non_terminals() -> Result<()> {
    let world = World::new(StageKind::Local, Setup::all_sources("extract_all").await?)?;
    let truth_path = world.dir.path().join("truth.json");
    world.run(&[
        "gen",
        "--clients",
        "400",
        "--sellers",
        "12",
        "--products",
        "80",
        "--purchases",
        "3000",
        "--interactions",
        "700",
        "--days",
        "2",
        "--bad-fraction",
        "0.02",
        "--seed",
        "9",
        "--quiet",
        "--truth",
        &truth_path.to_string_lossy(),
    ])?;
    let truth: Value = serde_json::from_slice(&std::fs::read(&truth_path)?)?;
    let counts = &truth["counts"];
    let n = |v: &Value| v.as_u64().unwrap_or(u64::MAX);

    // One run, not a terminal: five JSON lines on stdout, no progress anywhere.
    let (ok, stdout, stderr) = world.try_run(&["extract", "all"])?;
    assert!(ok, "extract all: {stderr}");
    assert!(
        !has_progress_noise(&stderr),
        "progress on stderr: {stderr:?}"
    );
    assert!(
        !has_progress_noise(&stdout),
        "progress on stdout: {stdout:?}"
    );
    let lines: Vec<Value> = stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .with_context(|| format!("stdout is JSON lines only: {stdout:?}"))?;
    let by_source: BTreeMap<String, Value> = lines
        .into_iter()
        .map(|l| (l["source"].as_str().unwrap_or("?").to_string(), l))
        .collect();
    assert_eq!(
        by_source.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "clients",
            "interactions",
            "products",
            "purchases",
            "sellers"
        ],
        "{stdout}"
    );

    // Each source reached the stage, all of it.
    assert_eq!(n(&by_source["clients"]["inserted"]), n(&counts["clients"]));
    assert_eq!(
        rows(&world, Table::Clients, "clients").await?,
        n(&counts["clients"])
    );
    assert_eq!(n(&by_source["sellers"]["inserted"]), n(&counts["sellers"]));
    assert_eq!(
        rows(&world, Table::Sellers, "sellers").await?,
        n(&counts["sellers"])
    );
    assert_eq!(
        n(&by_source["products"]["inserted"]),
        n(&counts["products"])
    );
    assert_eq!(
        rows(&world, Table::Products, "products").await?,
        n(&counts["products"])
    );
    let purchases = &by_source["purchases"];
    assert_eq!(
        n(&purchases["read"]),
        n(&counts["purchase_messages"]),
        "{purchases}"
    );
    assert_eq!(
        n(&purchases["staged"]) + n(&purchases["dead_lettered"]),
        n(&counts["purchase_messages"]),
        "{purchases}"
    );
    assert!(n(&purchases["dead_lettered"]) > 0, "{purchases}");
    assert_eq!(
        rows(&world, Table::Purchases, "purchases").await?,
        n(&purchases["staged"])
    );
    let interactions = &by_source["interactions"];
    assert_eq!(
        n(&interactions["staged"]),
        n(&counts["interactions"]),
        "{interactions}"
    );
    assert_eq!(
        rows(&world, Table::Interactions, "interactions").await?,
        n(&counts["interactions"])
    );
    // A second run finds nothing new in any source.
    let again = world.run(&["extract", "all"])?;
    for line in again.lines() {
        let v: Value = serde_json::from_str(line)?;
        let moved = ["inserted", "updated", "staged", "dead_lettered"]
            .iter()
            .map(|k| v[*k].as_u64().unwrap_or(0))
            .sum::<u64>();
        assert_eq!(moved, 0, "second run: {v}");
    }

    // The batch path, not a terminal: JSON only, no progress.
    let days: Vec<String> = truth["days"]
        .as_object()
        .context("days")?
        .keys()
        .cloned()
        .collect();
    let (from, to) = (days[0].as_str(), days[days.len() - 1].as_str());
    world.json(&["migrate"])?;
    for args in [
        vec!["batch", "run", "--from", from, "--to", to, "--json"],
        vec!["replay", "--from", from, "--to", to],
    ] {
        let (ok, stdout, stderr) = world.try_run(&args)?;
        assert!(ok, "{args:?}: {stderr}");
        assert!(!has_progress_noise(&stderr), "{args:?}: {stderr:?}");
        let summary: Value = serde_json::from_str(stdout.trim())
            .with_context(|| format!("{args:?}: one JSON object on stdout: {stdout:?}"))?;
        assert_eq!(summary["ok"], true, "{summary}");
    }

    // Under a terminal the bars show (the days, the drain), unless --quiet. Their marks:
    // the day bar's "done/asked" and the drain counter's unit (log lines have neither).
    let day_bar = format!("/{} ", days.len());
    let tty = under_terminal(&world, &["replay", "--from", from, "--to", to])?;
    assert!(
        tty.contains(&day_bar),
        "a day bar under a terminal: {tty:?}"
    );
    let tty = under_terminal(&world, &["extract", "purchases"])?;
    assert!(
        tty.contains(" records, "),
        "a drain counter under a terminal: {tty:?}"
    );
    let tty = under_terminal(&world, &["replay", "--from", from, "--to", to, "--quiet"])?;
    assert!(!tty.contains(&day_bar), "--quiet: {tty:?}");
    let tty = under_terminal(&world, &["extract", "purchases", "--quiet"])?;
    assert!(!tty.contains(" records, "), "--quiet: {tty:?}");
    Ok(())
}
