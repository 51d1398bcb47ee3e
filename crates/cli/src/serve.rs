//! Wiring of `serve`: the API of `lakeshop_api` with `/metrics` and `/healthz` (the broker and
//! ClickHouse) on one listener, until SIGTERM or Ctrl-C, then requests in flight finish.

use anyhow::{Context as _, Result};
use std::process::ExitCode;

use crate::config::Config;
use crate::ServeArgs;

pub async fn run(config: &Config, args: ServeArgs) -> Result<ExitCode> {
    let mut api_config = config.api.clone();
    if let Some(listen) = args.listen {
        api_config.listen = listen;
    }
    let addr: std::net::SocketAddr = api_config
        .listen
        .parse()
        .with_context(|| format!("--listen {:?}", api_config.listen))?;
    let ch = crate::analytics::clickhouse(config)?;
    let api = lakeshop_api::Api::new(
        api_config,
        lakeshop_api::ApiParts {
            kafka: config.kafka.client_config(),
            purchases_topic: config.kafka.topic("purchases"),
            clickhouse: ch.clone(),
            timezone: config.timezone()?,
        },
    )?;
    if !api.writes_enabled() {
        tracing::warn!(
            "no api.write_tokens (LAKESHOP_API_WRITE_TOKENS): every write is refused with 401"
        );
    }
    let mut registry = prometheus_client::registry::Registry::default();
    api.register(&mut registry);
    let health = lakeshop_service::Health::default()
        .with(lakeshop_service::Health::kafka(
            "kafka",
            config.kafka.client_config(),
        ))
        .with(lakeshop_service::Health::check("clickhouse", move || {
            let ch = ch.clone();
            async move {
                ch.server_version()
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        }));
    let app = api
        .router()
        .merge(lakeshop_service::router(registry, health));
    lakeshop_api::serve(
        addr,
        app,
        |bound| {
            tracing::info!(
                addr = %bound,
                reads_need_token = api.reads_need_token(),
                "serving the API, /openapi.json, /metrics and /healthz"
            )
        },
        lakeshop_service::wait_for_shutdown(),
    )
    .await?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}
