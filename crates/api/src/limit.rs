//! Request rate limits: a token bucket per client (its bearer token when it sends one, else
//! its IP address), `[api] rate_limit` requests per second with bursts of `rate_limit_burst`.
//! Over the limit the answer is 429 with `Retry-After`. `/metrics` and `/healthz` are never
//! limited (they are not behind this layer).

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::error::ApiError;
use crate::tls::PeerAddr;
use crate::AppState;

/// Most clients remembered; past it, buckets that are full again are forgotten.
const MAX_CLIENTS: usize = 100_000;

/// Token buckets by client.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    /// Keyed by a hash of the client (a token is never kept in memory as text here).
    buckets: Mutex<HashMap<u64, (f64, Instant)>>,
    hasher: std::hash::RandomState,
}

impl RateLimiter {
    /// `per_second` 0 turns limits off.
    pub fn new(per_second: f64, burst: u32) -> Self {
        Self {
            per_second,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
            hasher: std::hash::RandomState::new(),
        }
    }

    fn enabled(&self) -> bool {
        self.per_second > 0.0
    }

    /// Takes one request from `client`'s bucket; `Err(seconds)` until one is available.
    pub fn take(&self, client: &[u8], now: Instant) -> Result<(), f64> {
        let mut h = self.hasher.build_hasher();
        h.write(client);
        let key = h.finish();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_CLIENTS && !buckets.contains_key(&key) {
            let (rate, burst) = (self.per_second, self.burst);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets.entry(key).or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err((1.0 - *tokens) / self.per_second)
        }
    }
}

/// Middleware: 429 once a client is over its rate.
pub async fn limit(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let limiter = &state.limiter;
    if !limiter.enabled() {
        return next.run(req).await;
    }
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes().to_vec());
    let client = match token {
        Some(t) => t,
        None => req
            .extensions()
            .get::<ConnectInfo<PeerAddr>>()
            .map(|c| c.0 .0.ip().to_string().into_bytes())
            .unwrap_or_default(),
    };
    match limiter.take(&client, Instant::now()) {
        Ok(()) => next.run(req).await,
        Err(wait) => {
            let secs = wait.ceil().max(1.0) as u64;
            let mut res = ApiError::too_many_requests(format!(
                "more than {} requests per second; retry in {secs} s",
                limiter.per_second
            ))
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                res.headers_mut().insert(header::RETRY_AFTER, v);
            }
            res
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_refills_at_the_rate_and_holds_a_burst() {
        let l = RateLimiter::new(10.0, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.take(b"a", t0), Ok(()));
        }
        let wait = l.take(b"a", t0).expect_err("over the burst");
        assert!((wait - 0.1).abs() < 1e-9, "{wait}");
        // Another client has its own bucket.
        assert_eq!(l.take(b"b", t0), Ok(()));
        // 100 ms later one more request fits, not two.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(l.take(b"a", t1), Ok(()));
        assert!(l.take(b"a", t1).is_err());
        // After a long pause the bucket is full again, never fuller.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(l.take(b"a", t2), Ok(()));
        }
        assert!(l.take(b"a", t2).is_err());
    }
}
