//! Wiring of `stream run`: builds the loader's settings from the pipeline file and flags,
//! serves `/metrics` and `/healthz` (the loop, the broker and ClickHouse), drains on SIGTERM,
//! and prints a JSON summary when it stops.

use anyhow::{Context as _, Result};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::config::Config;
use crate::StreamRunArgs;
use lakeshop_stream::{StreamMetrics, StreamOptions};

/// `/healthz` fails when the loop has not turned for this long.
const HEALTHY_WITHIN_SECS: i64 = 30;

pub async fn run(config: &Config, args: StreamRunArgs) -> Result<ExitCode> {
    let topic = config.kafka.topic("purchases");
    let stop = Arc::new(AtomicBool::new(false));
    let metrics = StreamMetrics::new(&topic);
    let ch = crate::analytics::clickhouse(config)?;
    let opts = StreamOptions {
        client: config.kafka.client_config(),
        topic: topic.clone(),
        pipeline: config.pipeline.name.clone(),
        group_id: format!(
            "{}-{}-stream-purchases",
            config.kafka.group_prefix, config.pipeline.name
        ),
        group: args.group,
        timezone: config.timezone()?,
        allowed_lateness: config.stream.allowed_lateness,
        max_clock_skew: config.stream.max_clock_skew,
        dedup_horizon: config.stream.dedup_horizon,
        flush_interval: args.flush_interval.unwrap_or(config.stream.flush_interval),
        max_unacked_records: config.stream.max_unacked_records,
        dims_refresh: config.stream.dims_refresh,
        until_idle: args.until_end.then_some(args.idle),
        stop: stop.clone(),
        metrics: metrics.clone(),
        dead_letters: config
            .stream
            .forward_dead_letters
            .then(|| config.kafka.topic("dead_letters")),
    };
    let signals = lakeshop_service::stop_on_signal(stop.clone());
    let server = if args.no_metrics {
        None
    } else {
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        let loop_metrics = metrics.clone();
        let health_ch = ch.clone();
        let health = lakeshop_service::Health::default()
            .with(lakeshop_service::Health::heartbeat(
                "loop",
                move || loop_metrics.seconds_since_heartbeat(),
                HEALTHY_WITHIN_SECS,
            ))
            .with(lakeshop_service::Health::kafka(
                "kafka",
                config.kafka.client_config(),
            ))
            .with(lakeshop_service::Health::check("clickhouse", move || {
                let ch = health_ch.clone();
                Box::pin(async move {
                    ch.server_version()
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
            }));
        Some(
            lakeshop_service::serve(args.metrics_listen, registry, health)
                .await
                .context("starting the /metrics and /healthz server")?,
        )
    };
    let done = lakeshop_stream::run(&crate::stage(config), &ch, &opts).await;
    signals.abort();
    drop(server);
    let stats = done.context("stream run")?;
    outln!("{}", serde_json::to_string(&stats)?);
    Ok(ExitCode::SUCCESS)
}
