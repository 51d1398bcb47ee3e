//! Named health checks behind `/healthz`: each is an async probe that answers `Ok(())` or
//! the reason it failed, run concurrently with a time limit.

use futures::future::{BoxFuture, FutureExt as _};
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext};
use rdkafka::{ClientConfig, ClientContext};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};

/// Time each check has to answer before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Time the Kafka check's metadata request may take: below [`CHECK_TIMEOUT`], so a broker
/// that does not answer is reported with librdkafka's reason rather than as a timeout.
pub const KAFKA_METADATA_TIMEOUT: Duration = Duration::from_millis(1500);

type CheckFn = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// The checks `/healthz` runs. Cheap to clone (the checks are shared).
///
/// Each constructor makes a `Health` of one check; [`Health::with`] joins them:
/// `Health::heartbeat(…).with(Health::kafka(…)).with(Health::check(…))`. No check means
/// healthy.
#[derive(Clone, Default)]
pub struct Health {
    checks: Vec<(String, CheckFn)>,
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Health")
            .field("checks", &self.names().collect::<Vec<_>>())
            .finish()
    }
}

/// Overall state in a [`HealthReport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Ok,
    Fail,
}

/// What `/healthz` answers: `{"status":"ok","checks":{"name":"ok",…}}`, or status `fail`
/// with each failing check's reason in place of `ok`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthReport {
    pub status: CheckStatus,
    /// Check name → `"ok"` or why it failed.
    pub checks: BTreeMap<String, String>,
}

impl HealthReport {
    /// True when every check passed.
    pub fn is_ok(&self) -> bool {
        self.status == CheckStatus::Ok
    }
}

impl Health {
    /// No checks yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the checks of `other`; one with a name already here replaces the earlier one.
    pub fn with(mut self, other: Health) -> Self {
        for (name, probe) in other.checks {
            match self.checks.iter_mut().find(|(n, _)| *n == name) {
                Some(slot) => slot.1 = probe,
                None => self.checks.push((name, probe)),
            }
        }
        self
    }

    /// A check named `name`: `probe` is called on every `/healthz` request and its future
    /// answers `Ok(())` or why the dependency is unhealthy.
    ///
    /// For example a ClickHouse check:
    /// `Health::check("clickhouse", move || { let ch = ch.clone(); async move {
    /// ch.server_version().await.map(drop).map_err(|e| e.to_string()) } })`.
    pub fn check<F, Fut>(name: impl Into<String>, probe: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let probe: CheckFn = Arc::new(move || probe().boxed());
        Self {
            checks: vec![(name.into(), probe)],
        }
    }

    /// A stall check: fails when `seconds_since()` (seconds since a loop last turned)
    /// exceeds `max_secs`.
    pub fn heartbeat<F>(name: impl Into<String>, seconds_since: F, max_secs: i64) -> Self
    where
        F: Fn() -> i64 + Send + Sync + 'static,
    {
        Self::check(name, move || {
            let age = seconds_since();
            async move {
                if age <= max_secs {
                    Ok(())
                } else {
                    Err(format!(
                        "stalled: last turn {age} s ago (limit {max_secs} s)"
                    ))
                }
            }
        })
    }

    /// A broker check: asks the cluster in `config` (bootstrap servers and security
    /// properties; any `group.id` is dropped) for its metadata, on a blocking thread, with
    /// [`KAFKA_METADATA_TIMEOUT`]. One client is created here and reused by every probe.
    ///
    /// When the client cannot be created (bad properties), the check reports that on every
    /// probe; [`Health::try_kafka`] returns it instead.
    pub fn kafka(name: impl Into<String>, config: ClientConfig) -> Self {
        let name = name.into();
        match Self::try_kafka(name.clone(), config) {
            Ok(health) => health,
            Err(e) => {
                tracing::warn!(error = %e, "kafka health check");
                let reason = e.to_string();
                Self::check(name, move || std::future::ready(Err(reason.clone())))
            }
        }
    }

    /// [`Health::kafka`], failing when the client cannot be created.
    pub fn try_kafka(name: impl Into<String>, mut config: ClientConfig) -> Result<Self> {
        let name = name.into();
        // Without a group the client joins nothing, and its errors land on the main queue
        // that each probe drains.
        config.remove("group.id");
        let client: BaseConsumer<ProbeContext> =
            config
                .create_with_context(ProbeContext)
                .map_err(|source| Error::KafkaProbe {
                    check: name.clone(),
                    source,
                })?;
        let client = Arc::new(client);
        Ok(Self::check(name, move || {
            let client = client.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    let metadata = client.fetch_metadata(None, KAFKA_METADATA_TIMEOUT);
                    // An idle client queues connection errors as events: drop them.
                    while client.poll(Duration::ZERO).is_some() {}
                    match metadata {
                        Ok(m) if m.brokers().is_empty() => {
                            Err("broker metadata lists no brokers".to_string())
                        }
                        Ok(_) => Ok(()),
                        Err(e) => Err(format!("broker metadata: {e}")),
                    }
                })
                .await
                .map_err(|e| format!("broker probe: {e}"))?
            }
        }))
    }

    /// Names of the checks, in the order they were added.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.checks.iter().map(|(n, _)| n.as_str())
    }

    /// Runs every check concurrently, each limited to [`CHECK_TIMEOUT`].
    pub async fn run(&self) -> HealthReport {
        let results = futures::future::join_all(self.checks.iter().map(|(name, probe)| {
            // A panicking probe is a failed check, not a dropped connection.
            let probe = AssertUnwindSafe(probe()).catch_unwind();
            async move {
                let outcome = match tokio::time::timeout(CHECK_TIMEOUT, probe).await {
                    Ok(Ok(Ok(()))) => Ok(()),
                    Ok(Ok(Err(reason))) => Err(reason),
                    Ok(Err(_panic)) => Err("check panicked".to_string()),
                    Err(_) => Err(format!(
                        "no answer within {} s",
                        CHECK_TIMEOUT.as_secs_f64()
                    )),
                };
                (name.clone(), outcome)
            }
        }))
        .await;
        let mut status = CheckStatus::Ok;
        let checks = results
            .into_iter()
            .map(|(name, outcome)| match outcome {
                Ok(()) => (name, "ok".to_string()),
                Err(reason) => {
                    status = CheckStatus::Fail;
                    (name, reason)
                }
            })
            .collect();
        HealthReport { status, checks }
    }
}

/// Client context of the broker probe: librdkafka's logs and errors go to `tracing` at debug
/// level (the command's own clients already report a broker outage; `/healthz` says it too).
struct ProbeContext;

impl ClientContext for ProbeContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        tracing::debug!(
            ?level,
            facility = fac,
            message = log_message,
            "kafka health probe"
        );
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::debug!(%error, reason, "kafka health probe");
    }
}

impl ConsumerContext for ProbeContext {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn no_checks_is_healthy() {
        let report = Health::new().run().await;
        assert!(report.is_ok());
        assert!(report.checks.is_empty());
    }

    #[tokio::test]
    async fn heartbeat_fails_past_its_limit() {
        let report = Health::heartbeat("fresh", || 3, 30)
            .with(Health::heartbeat("stalled", || 31, 30))
            .run()
            .await;
        assert!(!report.is_ok());
        assert_eq!(report.checks["fresh"], "ok");
        assert!(report.checks["stalled"].contains("31 s"), "{report:?}");
    }

    #[tokio::test]
    async fn a_hanging_check_times_out_and_a_panicking_one_fails() {
        let started = Instant::now();
        let report = Health::new()
            .with(Health::check("hangs", || async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(())
            }))
            .with(Health::check("panics", || async { panic!("probe bug") }))
            .with(Health::check("fine", || async { Ok(()) }))
            .run()
            .await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(report.status, CheckStatus::Fail);
        assert!(report.checks["hangs"].contains("no answer"), "{report:?}");
        assert_eq!(report.checks["panics"], "check panicked");
        assert_eq!(report.checks["fine"], "ok");
    }

    #[tokio::test]
    async fn a_check_with_the_same_name_replaces_the_first() {
        let health = Health::check("db", || async { Err("down".to_string()) })
            .with(Health::check("db", || async { Ok(()) }));
        assert_eq!(health.names().collect::<Vec<_>>(), ["db"]);
        assert!(health.run().await.is_ok());
    }

    #[tokio::test]
    async fn a_kafka_client_that_cannot_be_made_fails_its_check() {
        let mut config = ClientConfig::new();
        config.set("no.such.property", "1");
        let err = Health::try_kafka("kafka", config.clone()).err();
        assert!(matches!(err, Some(Error::KafkaProbe { .. })), "{err:?}");
        let report = Health::kafka("kafka", config).run().await;
        assert!(
            report.checks["kafka"].contains("no.such.property"),
            "{report:?}"
        );
    }

    #[test]
    fn a_boxed_probe_is_accepted() {
        // Callers may hand back `Box::pin(async move { … })`.
        let health = Health::check("boxed", || {
            Box::pin(async { Ok::<(), String>(()) })
                as std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>>
        });
        assert_eq!(health.names().collect::<Vec<_>>(), ["boxed"]);
    }
}
