//! Wiring of `serve`: the API of `lakeshop_api` (writing sellers and clients to the pipeline's
//! PostgreSQL and products to its source table) with `/metrics` and `/healthz` (the broker and
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
    let tls = match (&api_config.tls_cert_file, &api_config.tls_key_file) {
        (Some(cert), Some(key)) => Some(lakeshop_api::tls::server_config(cert, key)?),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let ch = crate::analytics::clickhouse(config)?;
    let api = lakeshop_api::Api::new(
        api_config,
        lakeshop_api::ApiParts {
            kafka: config.kafka.client_config(),
            purchases_topic: config.kafka.topic("purchases"),
            clickhouse: ch.clone(),
            timezone: config.timezone()?,
            postgres: Some(lakeshop_api::dimensions::PostgresTarget {
                url: lakeshop_service::Sensitive::new(config.postgres.url.clone()),
                tls: config.postgres.tls_settings(),
                clients_table: config.postgres.clients_table.clone(),
                sellers_table: config.postgres.sellers_table.clone(),
            }),
            products: Some(lakeshop_api::dimensions::ProductsTarget {
                uri: config.products.uri.clone(),
                storage_options: config.s3.storage_options(),
            }),
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
        tls,
        |bound| {
            tracing::info!(
                addr = %bound,
                scheme,
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
