//! Wiring of `extract …`: builds each extractor's settings from the pipeline file and flags,
//! shows progress, serves `/metrics` and `/healthz` while following Kafka, and drains on
//! SIGTERM. Dimension sources follow by polling: `extract clients|sellers|products --follow`
//! extracts again every `follow_interval` of their section, so the stage (and the streaming
//! loader's dimension cache, which reads it) stays within seconds of the sources.

use anyhow::{bail, Context as _, Result};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::{stage, ExtractArgs, ExtractCommand};
use lakeshop_sources::kafka::{EventKind, ExtractMetrics, KafkaSourceConfig};
use lakeshop_sources::postgres::{Dimension, PgSourceConfig};
use lakeshop_sources::products::ProductsSourceConfig;

/// `/healthz` fails when the consumer loop has not turned for this long.
const HEALTHY_WITHIN_SECS: i64 = 30;

pub async fn run(config: &Config, cmd: ExtractCommand) -> Result<ExitCode> {
    // A dry run that staged anyway would be worse than none: refuse it where it is not built.
    match &cmd {
        ExtractCommand::Clients(_) | ExtractCommand::Sellers(_) => {}
        ExtractCommand::Products(args)
        | ExtractCommand::Purchases(args)
        | ExtractCommand::Interactions(args)
        | ExtractCommand::All(args) => {
            if args.dry_run {
                bail!("--dry-run reads without staging for `extract clients` and `extract sellers` only");
            }
        }
    }
    match cmd {
        ExtractCommand::Clients(args) if args.follow => {
            follow("clients", config.postgres.follow_interval, || {
                dimension(config, &args, Dimension::Clients)
            })
            .await
        }
        ExtractCommand::Sellers(args) if args.follow => {
            follow("sellers", config.postgres.follow_interval, || {
                dimension(config, &args, Dimension::Sellers)
            })
            .await
        }
        ExtractCommand::Products(args) if args.follow => {
            follow("products", config.products.follow_interval, || {
                products(config, &args)
            })
            .await
        }
        ExtractCommand::Clients(args) => print(dimension(config, &args, Dimension::Clients).await?),
        ExtractCommand::Sellers(args) => print(dimension(config, &args, Dimension::Sellers).await?),
        ExtractCommand::Products(args) => print(products(config, &args).await?),
        ExtractCommand::Purchases(args) => {
            print(events(config, &args, EventKind::Purchases).await?)
        }
        ExtractCommand::Interactions(args) => {
            print(events(config, &args, EventKind::Interactions).await?)
        }
        ExtractCommand::All(args) => {
            if args.follow {
                bail!("extract all runs every source once; run `extract purchases --follow` to follow");
            }
            // Dimensions and event logs touch different stage tables: all at once.
            let (c, s, p, pu, i) = tokio::try_join!(
                dimension(config, &args, Dimension::Clients),
                dimension(config, &args, Dimension::Sellers),
                products(config, &args),
                events(config, &args, EventKind::Purchases),
                events(config, &args, EventKind::Interactions),
            )?;
            for line in [c, s, p, pu, i] {
                print(line)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `--follow` of a dimension source: one extract pass every `interval` until SIGTERM or
/// Ctrl-C (a pass under way finishes; each commits as a plain run does, so a kill loses
/// nothing but the pass). A pass that changed the stage prints its summary line; a failed
/// pass (the source down, say) is logged and tried again at the next interval, so a
/// following service outlives an outage. At the end, a line with the passes made.
async fn follow<F, Fut>(name: &str, interval: Duration, mut pass: F) -> Result<ExitCode>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<serde_json::Value>>,
{
    let stop = Arc::new(AtomicBool::new(false));
    let signals = lakeshop_service::stop_on_signal(stop.clone());
    tracing::info!(
        source = name,
        interval_ms = interval.as_millis() as u64,
        "following the source"
    );
    let (mut passes, mut failed, mut changed) = (0u64, 0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        match pass().await {
            Ok(summary) => {
                passes += 1;
                let moved = ["inserted", "updated", "marked_deleted"]
                    .iter()
                    .any(|k| summary[*k].as_u64().is_some_and(|n| n > 0));
                if moved {
                    changed += 1;
                    outln!("{summary}");
                }
            }
            Err(e) => {
                failed += 1;
                tracing::warn!(source = name, error = %format!("{e:#}"), "extract pass failed; trying again");
            }
        }
        let next = tokio::time::Instant::now() + interval;
        while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < next {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    signals.abort();
    outln!(
        "{}",
        serde_json::json!({
            "source": name,
            "follow": true,
            "passes": passes,
            "passes_that_changed": changed,
            "failed_passes": failed,
        })
    );
    Ok(ExitCode::SUCCESS)
}

/// One JSON line per source on stdout: what schedulers and tests read.
fn print(summary: serde_json::Value) -> Result<ExitCode> {
    outln!("{summary}");
    Ok(ExitCode::SUCCESS)
}

async fn dimension(
    config: &Config,
    args: &ExtractArgs,
    dimension: Dimension,
) -> Result<serde_json::Value> {
    let (name, source_table) = match dimension {
        Dimension::Clients => ("clients", config.postgres.clients_table.clone()),
        Dimension::Sellers => ("sellers", config.postgres.sellers_table.clone()),
    };
    let progress = Arc::new(AtomicU64::new(0));
    let source = PgSourceConfig {
        url: config.postgres.url.clone(),
        tls: config.postgres.tls_settings(),
        dimension,
        source_table,
        watermark_column: config.postgres.watermark_column.clone(),
        full: args.full,
        dry_run: args.dry_run,
        batch_rows: config.postgres.commit_rows.min(65_536),
        commit_rows: config.postgres.commit_rows,
        overlap: lakeshop_sources::postgres::DEFAULT_OVERLAP,
        progress: progress.clone(),
    };
    let bar = crate::progress::counter(args.quiet || args.follow, name, "rows");
    let ticker = {
        let bar = bar.clone();
        let progress = progress.clone();
        tokio::spawn(async move {
            loop {
                bar.set_position(progress.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let done = lakeshop_sources::postgres::extract(&stage(config), &source).await;
    ticker.abort();
    bar.finish_and_clear();
    let stats = done.with_context(|| format!("extract {name}"))?;
    Ok(serde_json::json!({
        "source": name,
        "full": args.full,
        "dry_run": args.dry_run,
        "read": stats.read,
        "inserted": stats.inserted,
        "updated": stats.updated,
        "marked_deleted": stats.marked_deleted,
        "commits": stats.commits,
        "watermark": stats.watermark
            .and_then(chrono::DateTime::from_timestamp_micros)
            .map(|t| t.to_rfc3339()),
    }))
}

async fn products(config: &Config, args: &ExtractArgs) -> Result<serde_json::Value> {
    let source = ProductsSourceConfig {
        uri: config.products.uri.clone(),
        storage_options: config.s3.storage_options(),
    };
    let bar = crate::progress::spinner(args.quiet || args.follow, "products: new source versions");
    let done = lakeshop_sources::products::extract(&stage(config), &source).await;
    bar.finish_and_clear();
    let stats = done.context("extract products")?;
    let mut v = serde_json::to_value(&stats)?;
    if let Some(o) = v.as_object_mut() {
        o.insert("source".into(), "products".into());
    }
    Ok(v)
}

async fn events(config: &Config, args: &ExtractArgs, kind: EventKind) -> Result<serde_json::Value> {
    let role = match kind {
        EventKind::Purchases => "purchases",
        EventKind::Interactions => "interactions",
    };
    let topic = config.kafka.topic(role);
    let stop = Arc::new(AtomicBool::new(false));
    let metrics = ExtractMetrics::new(&topic);
    let source = KafkaSourceConfig {
        client: config.kafka.client_config(),
        topic,
        group_id: format!(
            "{}-{}-stage-{role}",
            config.kafka.group_prefix, config.pipeline.name
        ),
        group: args.group,
        kind,
        flush_interval: config.stage.flush_interval,
        flush_max_rows: config.stage.flush_max_rows,
        // Without --follow, drain what is there and stop.
        until_end_idle: (!args.follow).then_some(args.idle),
        timezone: config.timezone()?,
        stop: stop.clone(),
        metrics: metrics.clone(),
    };
    // SIGTERM or Ctrl-C: commit what is buffered and exit 0.
    let signals = lakeshop_service::stop_on_signal(stop.clone());
    let server = if args.follow && !args.no_metrics {
        Some(serve_metrics(args.metrics_listen, &metrics, &source.client).await?)
    } else {
        None
    };
    // Draining to the end shows how far it got; following is a service and logs instead.
    let bar = crate::progress::counter(args.quiet || args.follow, role, "records");
    let ticker = {
        let bar = bar.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            loop {
                bar.set_position(metrics.consumed.get());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let done = lakeshop_sources::kafka::extract(&stage(config), &source).await;
    ticker.abort();
    bar.finish_and_clear();
    signals.abort();
    drop(server);
    let stats = done.with_context(|| format!("extract {role}"))?;
    Ok(serde_json::json!({
        "source": role,
        "read": stats.read,
        "staged": stats.staged,
        "dead_lettered": stats.dead_lettered,
        "commits": stats.commits,
    }))
}

/// Serves `/metrics` (the extractor's counters) and `/healthz` (the consumer loop turns, the
/// broker answers) on `addr` until the returned server is dropped.
async fn serve_metrics(
    addr: SocketAddr,
    metrics: &ExtractMetrics,
    kafka: &rdkafka::ClientConfig,
) -> Result<lakeshop_service::Server> {
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let heartbeat = metrics.clone();
    let health = lakeshop_service::Health::heartbeat(
        "consumer_loop",
        move || heartbeat.seconds_since_heartbeat(),
        HEALTHY_WITHIN_SECS,
    )
    .with(lakeshop_service::Health::kafka("kafka", kafka.clone()));
    Ok(lakeshop_service::serve(addr, registry, health).await?)
}
