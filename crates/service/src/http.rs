//! The operations HTTP server of a long-running command: `/metrics` (Prometheus text from a
//! registry) and `/healthz` (the [`Health`] checks as JSON, 200 or 503).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::health::Health;

/// Time [`Server::shutdown`] waits for requests in flight before it drops them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The routes `/metrics` (with the process's CPU seconds and resident memory added to
/// `registry`) and `/healthz`, for [`serve`] or to merge into a larger app.
pub fn router(mut registry: Registry, health: Health) -> Router {
    registry.register_collector(Box::new(crate::process::ProcessCollector));
    let registry = Arc::new(registry);
    Router::new()
        .route("/metrics", get(move || metrics(registry.clone())))
        .route("/healthz", get(move || healthz(health.clone())))
}

async fn metrics(registry: Arc<Registry>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &registry) {
        Ok(()) => ([(header::CONTENT_TYPE, OPENMETRICS)], body).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "encoding metrics");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding metrics failed\n",
            )
                .into_response()
        }
    }
}

async fn healthz(health: Health) -> Response {
    let report = health.run().await;
    if report.is_ok() {
        (StatusCode::OK, Json(report)).into_response()
    } else {
        let failing: Vec<String> = report
            .checks
            .iter()
            .filter(|(_, v)| *v != "ok")
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        tracing::warn!(failing = ?failing, "health check failed");
        (StatusCode::SERVICE_UNAVAILABLE, Json(report)).into_response()
    }
}

/// A running `/metrics` + `/healthz` server. Dropping it stops it at once;
/// [`Server::shutdown`] lets requests in flight finish.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Server {
    /// The address it listens on (the bound port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections and waits (up to 5 s) for requests in flight.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut self.task)
            .await
            .is_err()
        {
            tracing::warn!(addr = %self.local_addr, "metrics server did not stop in time");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `addr` and serves `/metrics` from `registry` and `/healthz` from `health` on a
/// background task until the returned [`Server`] is shut down or dropped.
pub async fn serve(addr: SocketAddr, registry: Registry, health: Health) -> Result<Server> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| Error::Bind { addr, source })?;
    let app = router(registry, health);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "metrics server stopped");
        }
    });
    tracing::info!(addr = %local_addr, "serving /metrics and /healthz");
    Ok(Server {
        local_addr,
        stop: Some(stop),
        task,
    })
}
