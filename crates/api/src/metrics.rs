//! Request metrics (`lakeshop_api_*`): requests by route, method and status, latency by
//! route, requests in flight, Kafka produce latency, purchases by outcome and rejects by
//! reason. Routes are the matched patterns (`/api/analytics/{report}`), never raw paths.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Instant;

use crate::AppState;

/// Labels of the request counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub method: String,
    pub status: u16,
}

/// Labels of the latency histogram.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

/// Labels of the purchase counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `accepted` (produced and acknowledged), `duplicate` (identical re-send, not produced
    /// again), `rejected` (invalid or conflicting).
    pub outcome: String,
}

/// Labels of the dimension write counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `sellers`, `clients` or `products`.
    pub kind: String,
}

/// Labels of the reject counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
    ])
}

/// The API's metrics; cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct ApiMetrics {
    /// Requests answered, by route, method and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Seconds to answer, by route.
    pub request_seconds: Family<RouteLabels, Histogram>,
    /// Requests being answered.
    pub in_flight: Gauge,
    /// Seconds from handing a request's purchases to the producer to the broker's last
    /// acknowledgement.
    pub produce_seconds: Histogram,
    /// Purchases by outcome.
    pub purchases: Family<OutcomeLabels, Counter>,
    /// Rejected purchases by reason.
    pub rejected: Family<ReasonLabels, Counter>,
    /// Sellers, clients and products written, by kind.
    pub dimension_rows: Family<KindLabels, Counter>,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            in_flight: Gauge::default(),
            produce_seconds: latency_histogram(),
            purchases: Family::default(),
            rejected: Family::default(),
            dimension_rows: Family::default(),
        }
    }
}

impl ApiMetrics {
    /// Adds these metrics to `registry` under the `lakeshop_api_` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("lakeshop_api");
        r.register(
            "requests",
            "Requests answered, by route, method and status",
            self.requests.clone(),
        );
        r.register(
            "request_seconds",
            "Seconds to answer a request, by route",
            self.request_seconds.clone(),
        );
        r.register(
            "requests_in_flight",
            "Requests being answered",
            self.in_flight.clone(),
        );
        r.register(
            "kafka_produce_seconds",
            "Seconds from producing a request's purchases to the broker's last acknowledgement",
            self.produce_seconds.clone(),
        );
        r.register(
            "purchases",
            "Purchases received, by outcome: accepted, duplicate, rejected",
            self.purchases.clone(),
        );
        r.register(
            "rejected_purchases",
            "Purchases refused, by reason",
            self.rejected.clone(),
        );
        r.register(
            "dimension_rows",
            "Sellers, clients and products written to their sources, by kind",
            self.dimension_rows.clone(),
        );
    }

    pub(crate) fn purchases(&self, outcome: &str, n: usize) {
        if n > 0 {
            self.purchases
                .get_or_create(&OutcomeLabels {
                    outcome: outcome.into(),
                })
                .inc_by(n as u64);
        }
    }

    pub(crate) fn dimension_writes(&self, kind: &str, n: usize) {
        self.dimension_rows
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc_by(n as u64);
    }

    pub(crate) fn rejected(&self, reason: &str) {
        self.rejected
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }
}

/// Takes one off the in-flight gauge when dropped.
struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Middleware of every matched route: counts the request and times it.
pub(crate) async fn track(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = request.method().to_string();
    let m = &state.metrics;
    m.in_flight.inc();
    // Decremented on drop too: a client that goes away cancels this future.
    let in_flight = InFlight(m.in_flight.clone());
    let started = Instant::now();
    let response = next.run(request).await;
    drop(in_flight);
    m.request_seconds
        .get_or_create(&RouteLabels {
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    m.requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status: response.status().as_u16(),
        })
        .inc();
    response
}
