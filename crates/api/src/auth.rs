//! Bearer tokens: write tokens may write and read, read tokens may only read; reads are open
//! unless `api.reads_need_token`. Tokens are compared in constant time and never logged.

use axum::http::{header, HeaderMap};
use std::fmt;

use crate::config::ApiConfig;
use crate::error::{ApiError, Error, Result};

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// The configured tokens.
#[derive(Clone)]
pub struct Tokens {
    write: Vec<Vec<u8>>,
    read: Vec<Vec<u8>>,
    reads_need_token: bool,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("write", &self.write.len())
            .field("read", &self.read.len())
            .field("reads_need_token", &self.reads_need_token)
            .finish()
    }
}

fn split(list: &str, key: &str) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for t in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if t.len() < 16 {
            return Err(Error::Config(format!(
                "{key}: a token has {} characters; use at least 16",
                t.len()
            )));
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::Config(format!(
                "{key}: tokens are printable ASCII without spaces"
            )));
        }
        out.push(t.as_bytes().to_vec());
    }
    Ok(out)
}

/// Equal without an early exit on the first differing byte.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Tokens {
    /// The tokens of `[api]`.
    pub fn from_config(config: &ApiConfig) -> Result<Self> {
        let tokens = Self {
            write: split(config.write_tokens.expose(), "api.write_tokens")?,
            read: split(config.read_tokens.expose(), "api.read_tokens")?,
            reads_need_token: config.reads_need_token,
        };
        if tokens.reads_need_token && tokens.write.is_empty() && tokens.read.is_empty() {
            return Err(Error::Config(
                "api.reads_need_token is on but no token is configured".into(),
            ));
        }
        Ok(tokens)
    }

    /// Whether a read needs a token.
    pub fn reads_need_token(&self) -> bool {
        self.reads_need_token
    }

    /// Whether any write token is configured.
    pub fn writes_enabled(&self) -> bool {
        !self.write.is_empty()
    }

    /// Ok when the request's `Authorization: Bearer` token grants `need`: 401 without a
    /// known token, 403 with a read token on a write.
    pub fn require(&self, headers: &HeaderMap, need: Access) -> Result<(), ApiError> {
        if need == Access::Read && !self.reads_need_token {
            return Ok(());
        }
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
        let Some(token) = presented else {
            return Err(ApiError::unauthorized(
                "an Authorization: Bearer token is required",
            ));
        };
        let token = token.as_bytes();
        // Every token is compared, so the time taken does not tell which list matched.
        let writer = self.write.iter().fold(false, |m, t| m | same(t, token));
        let reader = self.read.iter().fold(false, |m, t| m | same(t, token));
        match need {
            _ if writer => Ok(()),
            Access::Read if reader => Ok(()),
            Access::Write if reader => Err(ApiError::forbidden("this token may only read")),
            _ => Err(ApiError::unauthorized("unknown token")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use lakeshop_service::Sensitive;

    const W: &str = "write-token-0123456789";
    const R: &str = "read-token-0123456789";

    fn tokens(reads_need_token: bool) -> Tokens {
        let config = ApiConfig {
            write_tokens: Sensitive::new(format!("{W}, other-writer-0123456789")),
            read_tokens: Sensitive::new(R.to_string()),
            reads_need_token,
            ..ApiConfig::default()
        };
        Tokens::from_config(&config).expect("tokens")
    }

    fn bearer(t: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {t}")).expect("header"),
        );
        h
    }

    fn status(r: Result<(), ApiError>) -> u16 {
        r.err().map_or(200, |e| e.status().as_u16())
    }

    #[test]
    fn writes_need_a_write_token() {
        let t = tokens(false);
        assert_eq!(status(t.require(&HeaderMap::new(), Access::Write)), 401);
        assert_eq!(
            status(t.require(&bearer("nope-nope-nope-nope"), Access::Write)),
            401
        );
        assert_eq!(status(t.require(&bearer(R), Access::Write)), 403);
        assert_eq!(status(t.require(&bearer(W), Access::Write)), 200);
        assert_eq!(
            status(t.require(&bearer("other-writer-0123456789"), Access::Write)),
            200
        );
        // A prefix of a token is not the token.
        assert_eq!(status(t.require(&bearer(&W[..20]), Access::Write)), 401);
    }

    #[test]
    fn reads_are_open_unless_configured() {
        assert_eq!(
            status(tokens(false).require(&HeaderMap::new(), Access::Read)),
            200
        );
        let t = tokens(true);
        assert_eq!(status(t.require(&HeaderMap::new(), Access::Read)), 401);
        assert_eq!(status(t.require(&bearer(R), Access::Read)), 200);
        assert_eq!(status(t.require(&bearer(W), Access::Read)), 200);
    }

    #[test]
    fn short_tokens_are_refused_and_debug_hides_them() {
        let config = ApiConfig {
            write_tokens: Sensitive::new("short".into()),
            ..ApiConfig::default()
        };
        assert!(Tokens::from_config(&config).is_err());
        let printed = format!("{:?}", tokens(false));
        assert!(!printed.contains(W) && !printed.contains(R), "{printed}");
    }
}
