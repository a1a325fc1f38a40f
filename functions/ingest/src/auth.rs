//! Credentials: GitHub webhook secrets (HMAC-SHA256 over the raw body, several at once
//! for rotation), API bearer tokens (one tenant each) and a per-tenant rate limiter.
//!
//! Secrets and tokens never appear in `Debug` output or logs.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Why a signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// No `X-Hub-Signature-256` header.
    #[error("missing X-Hub-Signature-256")]
    Missing,
    /// Not `sha256=<64 hex digits>`.
    #[error("X-Hub-Signature-256 is not sha256=<64 hex digits>")]
    Malformed,
    /// Matches none of the secrets.
    #[error("signature does not match")]
    Mismatch,
}

/// The webhook secrets currently accepted (old and new during a rotation).
#[derive(Clone, Default)]
pub struct WebhookSecrets(Vec<Vec<u8>>);

impl std::fmt::Debug for WebhookSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebhookSecrets({} configured)", self.0.len())
    }
}

impl WebhookSecrets {
    /// Secrets from a comma-separated list (blank entries are ignored).
    pub fn parse(list: &str) -> Self {
        Self(
            list.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| s.as_bytes().to_vec())
                .collect(),
        )
    }

    /// Secrets from a file: one per line, or comma-separated (`#` lines are comments).
    pub fn from_file(path: &Path) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        let mut all = Vec::new();
        for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
            all.extend(Self::parse(line).0);
        }
        Ok(Self(all))
    }

    /// Both sources together (environment first).
    pub fn merged(mut self, other: Self) -> Self {
        self.0.extend(other.0);
        self
    }

    /// Whether no secret is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many secrets are configured.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Checks `header` (the `X-Hub-Signature-256` value) against the HMAC-SHA256 of
    /// `body` under every secret. Each comparison is constant-time and every secret is
    /// tried, so timing says nothing about which one matched or how close a guess was.
    pub fn verify(&self, header: Option<&[u8]>, body: &[u8]) -> Result<(), SignatureError> {
        let sig = parse_signature(header.ok_or(SignatureError::Missing)?)?;
        let mut ok = false;
        for secret in &self.0 {
            // HMAC takes keys of any length, so this cannot fail.
            let Ok(mut mac) = <HmacSha256 as KeyInit>::new_from_slice(secret) else {
                continue;
            };
            mac.update(body);
            ok |= mac.verify_slice(&sig).is_ok();
        }
        if ok { Ok(()) } else { Err(SignatureError::Mismatch) }
    }
}

/// `sha256=<hex>` as a GitHub signature header of `body` under `secret` (for tests,
/// benchmarks and clients).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    match <HmacSha256 as KeyInit>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(body);
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
        }
        Err(_) => String::new(),
    }
}

/// Parses `sha256=<64 hex digits>` into the 32 digest bytes.
pub fn parse_signature(header: &[u8]) -> Result<[u8; 32], SignatureError> {
    let hexpart = header.strip_prefix(b"sha256=").ok_or(SignatureError::Malformed)?;
    if hexpart.len() != 64 {
        return Err(SignatureError::Malformed);
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hexpart, &mut out).map_err(|_| SignatureError::Malformed)?;
    Ok(out)
}

/// The tenant name that may act for every tenant (operators).
pub const OPERATOR_TENANT: &str = "*";

/// Token configuration could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("JETRUN_API_TOKENS entry {index}: {reason}")]
pub struct TokenConfigError {
    /// 1-based position of the bad entry.
    pub index: usize,
    /// Why it is refused.
    pub reason: &'static str,
}

/// API bearer tokens, each bound to a tenant. Only SHA-256 digests are kept.
#[derive(Clone, Default)]
pub struct ApiTokens(Vec<(String, [u8; 32])>);

impl std::fmt::Debug for ApiTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tenants: Vec<&str> = self.0.iter().map(|(t, _)| t.as_str()).collect();
        write!(f, "ApiTokens(tenants: {tenants:?})")
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl ApiTokens {
    /// Parses `tenant:token,tenant2:token2` (tenant `*` is an operator token). A tenant
    /// may appear several times (token rotation).
    pub fn parse(list: &str) -> Result<Self, TokenConfigError> {
        let mut out = Vec::new();
        for (i, entry) in list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .enumerate()
        {
            let err = |reason| TokenConfigError { index: i + 1, reason };
            let (tenant, token) = entry
                .split_once(':')
                .ok_or_else(|| err("expected tenant:token"))?;
            let tenant = tenant.trim();
            if tenant != OPERATOR_TENANT && jetrun_core::names::validate_token(tenant).is_err() {
                return Err(err("tenant must be 1-64 of A-Z a-z 0-9 - _ (or * for operators)"));
            }
            if token.len() < 16 {
                return Err(err("token must be at least 16 characters"));
            }
            out.push((tenant.to_string(), digest(token.as_bytes())));
        }
        Ok(Self(out))
    }

    /// Whether no token is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The SHA-256 digests of `tenant`'s tokens (a console session is bound to one, so
    /// removing the token ends its sessions).
    pub fn digests_of<'a>(&'a self, tenant: &'a str) -> impl Iterator<Item = &'a [u8; 32]> + 'a {
        self.0.iter().filter(move |(t, _)| t == tenant).map(|(_, d)| d)
    }

    /// The SHA-256 digest of `token`, as kept here.
    pub fn digest(token: &[u8]) -> [u8; 32] {
        digest(token)
    }

    /// The tenant of a presented token. Compares digests in constant time and checks
    /// every entry, so timing does not reveal which (or whether a prefix) matched.
    pub fn tenant_of(&self, token: &[u8]) -> Option<String> {
        let d = digest(token);
        let mut found = None;
        for (tenant, want) in &self.0 {
            let diff = want.iter().zip(d.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 && found.is_none() {
                found = Some(tenant.clone());
            }
        }
        found
    }
}

/// A token bucket per tenant: `rate` requests per second sustained, `burst` at once.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// A limiter; a `rate` of 0 or less disables limiting.
    pub fn new(rate: f64, burst: u32) -> Self {
        Self {
            rate,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `tenant`, or says how long until one is available.
    pub fn check(&self, tenant: &str) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut map = match self.buckets.lock() {
            Ok(m) => m,
            // A panic while holding the lock cannot leave a bucket half-updated in a
            // harmful way: keep limiting with the data as it is.
            Err(p) => p.into_inner(),
        };
        let (tokens, last) = map.entry(tenant.to_string()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn signatures_verify_under_any_configured_secret() {
        let s = WebhookSecrets::parse("old-secret, new-secret ,");
        assert_eq!(s.len(), 2);
        let body = br#"{"zen":"x"}"#;
        for secret in ["old-secret", "new-secret"] {
            let h = sign(secret.as_bytes(), body);
            assert_eq!(s.verify(Some(h.as_bytes()), body), Ok(()));
        }
        let h = sign(b"other", body);
        assert_eq!(s.verify(Some(h.as_bytes()), body), Err(SignatureError::Mismatch));
        assert_eq!(s.verify(None, body), Err(SignatureError::Missing));
        assert_eq!(s.verify(Some(b"sha1=abc"), body), Err(SignatureError::Malformed));
        assert_eq!(
            s.verify(Some(&h.as_bytes()[..70]), body),
            Err(SignatureError::Malformed)
        );
        let mut upper = h.clone().into_bytes();
        upper[10] = b'g';
        assert_eq!(s.verify(Some(&upper), body), Err(SignatureError::Malformed));
    }

    #[test]
    fn tokens_map_to_tenants() {
        let t = ApiTokens::parse("acme:0123456789abcdef, *:operator-token-123456").unwrap();
        assert_eq!(t.tenant_of(b"0123456789abcdef").as_deref(), Some("acme"));
        assert_eq!(t.tenant_of(b"operator-token-123456").as_deref(), Some("*"));
        assert_eq!(t.tenant_of(b"nope"), None);
        assert_eq!(ApiTokens::parse("acme").unwrap_err().index, 1);
        assert_eq!(
            ApiTokens::parse("a:0123456789abcdef,b:short").unwrap_err().index,
            2
        );
        assert!(!format!("{t:?}").contains("0123"));
    }

    #[test]
    fn rate_limit_refuses_past_the_burst() {
        let l = RateLimiter::new(1.0, 2);
        assert!(l.check("a").is_ok());
        assert!(l.check("a").is_ok());
        let wait = l.check("a").unwrap_err();
        assert!(wait > Duration::from_millis(500) && wait <= Duration::from_secs(1));
        assert!(l.check("b").is_ok(), "tenants are limited separately");
    }
}
