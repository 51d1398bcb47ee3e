//! The REST API behind `lakeshop serve`: purchase ingest into Kafka, seller, client and
//! product writes into their sources (PostgreSQL, the source Delta table), rate limits,
//! HTTPS, the analytics reports
//! of `lakeshop report` and the live series of the streaming tables, bearer-token auth,
//! request metrics, the OpenAPI 3.1 document generated from the handlers with a reader of it
//! at `/docs`, and the live sales page at `/` (embedded HTML that polls the series API).
//!
//! [`Api::router`] is the whole app as an axum [`Router`] (handler tests drive it with
//! `oneshot`); [`serve`] binds it and drains requests in flight on shutdown. Nothing here
//! builds SQL from request text: dates, times and ids are parsed into typed values first.

pub mod analytics;
pub mod auth;
pub mod config;
pub mod dimensions;
pub mod error;
pub mod ingest;
pub mod limit;
pub mod metrics;
pub mod openapi;
mod recent;
pub mod tls;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use axum::Router;
use lakeshop_clickhouse::ClickHouse;
use prometheus_client::registry::Registry;
use rdkafka::producer::FutureProducer;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

pub use auth::{Access, Tokens};
pub use config::ApiConfig;
pub use error::{ApiError, Error, Result};
pub use metrics::ApiMetrics;

use recent::RecentIds;

/// What the handlers share.
pub struct AppState {
    config: ApiConfig,
    tokens: Tokens,
    producer: FutureProducer,
    purchases_topic: String,
    clickhouse: ClickHouse,
    timezone: chrono_tz::Tz,
    metrics: ApiMetrics,
    recent: RecentIds,
    writers: dimensions::Writers,
    limiter: limit::RateLimiter,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("config", &self.config)
            .field("tokens", &self.tokens)
            .field("purchases_topic", &self.purchases_topic)
            .field("clickhouse", &self.clickhouse)
            .finish_non_exhaustive()
    }
}

/// The API: its state and how to route to it.
#[derive(Debug, Clone)]
pub struct Api {
    state: Arc<AppState>,
}

/// Everything [`Api::new`] needs besides the `[api]` section.
pub struct ApiParts {
    /// The librdkafka settings of the cluster (brokers, security); producer settings are
    /// added on top (see [`ingest::producer_config`]).
    pub kafka: rdkafka::ClientConfig,
    /// The purchases topic.
    pub purchases_topic: String,
    /// Where the reports and the live series are read.
    pub clickhouse: ClickHouse,
    /// The business time zone (default days of the reports).
    pub timezone: chrono_tz::Tz,
    /// Where `/api/sellers` and `/api/clients` write (`None`: they answer 503).
    pub postgres: Option<dimensions::PostgresTarget>,
    /// Where `/api/products` writes (`None`: it answers 503).
    pub products: Option<dimensions::ProductsTarget>,
}

impl std::fmt::Debug for ApiParts {
    /// Without the Kafka properties: they may hold SASL credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiParts")
            .field("purchases_topic", &self.purchases_topic)
            .field("clickhouse", &self.clickhouse)
            .field("timezone", &self.timezone)
            .field("postgres", &self.postgres)
            .field("products", &self.products)
            .finish_non_exhaustive()
    }
}

impl Api {
    /// Builds the API from its config: the Kafka producer is created here (it connects on
    /// first use).
    pub fn new(config: ApiConfig, parts: ApiParts) -> Result<Self> {
        config.check()?;
        let tokens = Tokens::from_config(&config)?;
        let producer: FutureProducer = ingest::producer_config(&parts.kafka, &config)
            .create()
            .map_err(|source| Error::Producer { source })?;
        let recent = RecentIds::new(config.remember_purchase_ids);
        let limiter = limit::RateLimiter::new(config.rate_limit, config.rate_limit_burst);
        Ok(Self {
            state: Arc::new(AppState {
                config,
                tokens,
                producer,
                purchases_topic: parts.purchases_topic,
                clickhouse: parts.clickhouse,
                timezone: parts.timezone,
                metrics: ApiMetrics::default(),
                recent,
                writers: dimensions::Writers::new(parts.postgres, parts.products),
                limiter,
            }),
        })
    }

    /// The request metrics, to register beside the process metrics.
    pub fn metrics(&self) -> &ApiMetrics {
        &self.state.metrics
    }

    /// Adds the API's metrics to `registry` (prefix `lakeshop_api_`).
    pub fn register(&self, registry: &mut Registry) {
        self.state.metrics.register(registry);
    }

    /// Whether any write token is configured (without one every write is refused).
    pub fn writes_enabled(&self) -> bool {
        self.state.tokens.writes_enabled()
    }

    /// Whether reads need a token.
    pub fn reads_need_token(&self) -> bool {
        self.state.tokens.reads_need_token()
    }

    /// Every route of the API (not `/metrics` and `/healthz`: merge
    /// [`lakeshop_service::router`] for those).
    pub fn router(&self) -> Router {
        let state = self.state.clone();
        let body_limit = state.config.max_body_bytes;
        Router::new()
            .route(
                "/api/purchases",
                post(ingest::post_purchases).layer(DefaultBodyLimit::max(body_limit)),
            )
            .route(
                "/api/sellers",
                post(dimensions::post_sellers).layer(DefaultBodyLimit::max(body_limit)),
            )
            .route(
                "/api/sellers/{id}",
                put(dimensions::put_seller).layer(DefaultBodyLimit::max(body_limit)),
            )
            .route(
                "/api/clients",
                post(dimensions::post_clients).layer(DefaultBodyLimit::max(body_limit)),
            )
            .route(
                "/api/clients/{id}",
                put(dimensions::put_client).layer(DefaultBodyLimit::max(body_limit)),
            )
            .route(
                "/api/products",
                post(dimensions::post_products).layer(DefaultBodyLimit::max(body_limit)),
            )
            .route(
                "/api/products/{id}",
                put(dimensions::put_product).layer(DefaultBodyLimit::max(body_limit)),
            )
            .route("/api/analytics/series", get(analytics::series))
            .route("/api/analytics/{report}", get(analytics::report))
            .route("/openapi.json", get(openapi::document))
            .route("/", get(live_page))
            .route("/docs", get(docs_page))
            .route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                limit::limit,
            ))
            .route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                metrics::track,
            ))
            .fallback(error::not_found)
            .with_state(state)
    }
}

/// `GET /`: the live sales page (embedded; it polls the series API).
async fn live_page() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("live.html"))
}

/// `GET /docs`: a reader of `/openapi.json` (operations by tag, parameters, bodies,
/// responses, and a form to try the read operations), embedded like the live page.
async fn docs_page() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("docs.html"))
}

/// Serves `app` on `addr` (HTTPS with `tls`) until `stop` completes, then lets requests in
/// flight finish. `bound` is called with the address really bound (the port when `addr` asks
/// for 0). Handlers see the peer's address (`ConnectInfo`, for rate limits).
pub async fn serve(
    addr: SocketAddr,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    bound: impl FnOnce(SocketAddr),
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| Error::Bind { addr, source })?;
    bound(local);
    let app = app.into_make_service_with_connect_info::<tls::PeerAddr>();
    match tls {
        None => axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
            .map_err(|source| Error::Serve { source }),
        Some(config) => {
            let listener = tls::TlsListener::new(listener, config)
                .map_err(|source| Error::Bind { addr, source })?;
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
                .map_err(|source| Error::Serve { source })
        }
    }
}
