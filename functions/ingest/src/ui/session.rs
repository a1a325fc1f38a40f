//! Console sessions as signed cookies: nothing is stored on the server, so a restart
//! keeps them and every replica with the same key accepts them.
//!
//! A session cookie is `v1.<tenant hex>.<expiry, unix s>.<nonce hex>.<token fp>.<mac>`,
//! where `mac` is HMAC-SHA256 under the session key over everything before it, and the
//! token fingerprint is an HMAC of the signing-in token's digest: a session is valid only
//! while a configured token of its tenant has that fingerprint, so removing a token
//! (and restarting) ends its sessions. The CSRF token is derived from the nonce (HMAC
//! again), so it needs no storage either. Sign-out revokes the nonce in this process's
//! memory (until the session's expiry); another replica learns of it only by the cookie
//! being cleared in the browser (see docs/console.md).
//!
//! The key comes from [`ENV_SESSION_KEY`] (at least 32 bytes, read with the other
//! credentials, `crate::Credentials`); without it a random key per process is used, and
//! sessions end with the process (the earlier behaviour).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Environment variable with the key that signs console sessions (at least 32 bytes;
/// the same on every replica).
pub const ENV_SESSION_KEY: &str = "JETRUN_CONSOLE_SESSION_KEY";
/// Shortest key accepted.
pub const MIN_KEY_BYTES: usize = 32;
/// Most revoked (signed-out) sessions remembered at once.
pub const MAX_REVOKED: usize = 10_000;

/// The key that signs console sessions (never printed).
#[derive(Clone)]
pub struct SessionKey(Vec<u8>);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

impl SessionKey {
    /// A key of at least [`MIN_KEY_BYTES`] bytes.
    pub fn new(key: &[u8]) -> Result<Self, String> {
        if key.len() < MIN_KEY_BYTES {
            return Err(format!(
                "{ENV_SESSION_KEY} must be at least {MIN_KEY_BYTES} bytes (it is {})",
                key.len()
            ));
        }
        Ok(Self(key.to_vec()))
    }

    /// The key from [`ENV_SESSION_KEY`], if set.
    pub fn from_env() -> Result<Option<Self>, String> {
        match std::env::var(ENV_SESSION_KEY) {
            Ok(k) if !k.is_empty() => Self::new(k.as_bytes()).map(Some),
            _ => Ok(None),
        }
    }
}

/// A valid session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Its tenant.
    pub tenant: String,
    /// Its CSRF token.
    pub csrf: String,
    /// When it ends (unix seconds).
    pub expires: i64,
    /// The fingerprint of the token it was signed in with (empty: no tokens, dev).
    pub token_fp: String,
}

/// Signs and checks session cookies.
pub struct Sessions {
    ttl: Duration,
    key: Vec<u8>,
    revoked: Mutex<HashMap<String, i64>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn random(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    rand::rng().fill_bytes(&mut b);
    b
}

fn now() -> i64 {
    jetrun_core::now().timestamp()
}

impl Sessions {
    /// Sessions lasting `ttl`, signed with `key`, else with a random key of this process
    /// (sessions then end with it, and replicas do not share them).
    pub fn new(ttl: Duration, key: Option<&SessionKey>) -> Self {
        match key {
            Some(k) => Self::with_key(ttl, &k.0),
            None => Self::with_key(ttl, &random(32)),
        }
    }

    /// Sessions lasting `ttl`, signed with `key`.
    pub fn with_key(ttl: Duration, key: &[u8]) -> Self {
        Self {
            ttl,
            key: key.to_vec(),
            revoked: Mutex::new(HashMap::new()),
        }
    }

    fn mac(&self, parts: &[&[u8]]) -> HmacSha256 {
        // An HMAC accepts keys of any length: this cannot fail.
        let mut m = <HmacSha256 as KeyInit>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        for p in parts {
            m.update(&(p.len() as u64).to_be_bytes());
            m.update(p);
        }
        m
    }

    /// The fingerprint of a token digest (bound into the session).
    pub fn token_fp(&self, digest: &[u8; 32]) -> String {
        let tag = self
            .mac(&[b"jetrun-console-token", digest])
            .finalize()
            .into_bytes();
        hex::encode(&tag[..16])
    }

    fn csrf(&self, nonce: &str) -> String {
        hex::encode(
            self.mac(&[b"jetrun-console-csrf", nonce.as_bytes()])
                .finalize()
                .into_bytes(),
        )
    }

    /// A new session of `tenant` signed in with the token of digest `token` (`None`: no
    /// tokens configured); returns the cookie value.
    pub fn create(&self, tenant: &str, token: Option<&[u8; 32]>) -> String {
        let fp = token.map(|d| self.token_fp(d)).unwrap_or_default();
        let expires = now() + i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX / 2);
        let body = format!(
            "v1.{}.{expires}.{}.{fp}",
            hex::encode(tenant),
            hex::encode(random(16))
        );
        let mac = hex::encode(self.mac(&[body.as_bytes()]).finalize().into_bytes());
        format!("{body}.{mac}")
    }

    /// The session of a cookie value, if it is signed with this key, not expired and not
    /// signed out here.
    pub fn get(&self, value: &str) -> Option<Session> {
        self.get_at(value, now())
    }

    fn get_at(&self, value: &str, at: i64) -> Option<Session> {
        let (body, mac) = value.rsplit_once('.')?;
        let mac = hex::decode(mac).ok()?;
        self.mac(&[body.as_bytes()]).verify_slice(&mac).ok()?;
        let mut parts = body.split('.');
        let (Some("v1"), Some(tenant), Some(expires), Some(nonce), Some(fp), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        let expires: i64 = expires.parse().ok()?;
        if expires <= at || self.lock().contains_key(nonce) {
            return None;
        }
        Some(Session {
            tenant: String::from_utf8(hex::decode(tenant).ok()?).ok()?,
            csrf: self.csrf(nonce),
            expires,
            token_fp: fp.to_string(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
        // A set of revoked nonces cannot be left half-updated: keep using it.
        self.revoked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Signs a session out (in this process; the browser's cookie is cleared too).
    pub fn remove(&self, value: &str) {
        let Some(s) = self.get(value) else { return };
        let Some(nonce) = value.split('.').nth(3) else {
            return;
        };
        let mut revoked = self.lock();
        let t = now();
        revoked.retain(|_, exp| *exp > t);
        if revoked.len() >= MAX_REVOKED
            && let Some(k) = revoked.iter().min_by_key(|(_, e)| **e).map(|(k, _)| k.clone())
        {
            revoked.remove(&k);
        }
        revoked.insert(nonce.to_string(), s.expires);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_signed_session_is_accepted_by_any_holder_of_the_key_until_it_expires() {
        let a = Sessions::with_key(Duration::from_secs(60), KEY);
        let d = [7u8; 32];
        let v = a.create("acme", Some(&d));
        assert!(!v.contains("acme"), "{v}");
        let s = a.get(&v).unwrap();
        assert_eq!(s.tenant, "acme");
        assert_eq!(s.token_fp, a.token_fp(&d));
        assert_eq!(s.csrf.len(), 64);
        // Another replica (or a restart) with the same key: the same session.
        let b = Sessions::with_key(Duration::from_secs(60), KEY);
        assert_eq!(b.get(&v), Some(s.clone()));
        // Another key, an edited cookie, an expired one: refused.
        let c = Sessions::with_key(Duration::from_secs(60), b"another-key-another-key-another-");
        assert_eq!(c.get(&v), None);
        let forged = v.replacen(&hex::encode("acme"), &hex::encode("*"), 1);
        assert_eq!(a.get(&forged), None);
        assert_eq!(a.get(&format!("{v}0")), None);
        assert_eq!(a.get("v1.2a.1.00.x.00"), None);
        assert_eq!(a.get_at(&v, s.expires), None);
        // Two sessions never share a CSRF token.
        let w = a.create("acme", Some(&d));
        assert_ne!(a.get(&w).unwrap().csrf, s.csrf);
        // Signing out ends it here.
        a.remove(&v);
        assert_eq!(a.get(&v), None);
        assert!(a.get(&w).is_some());
    }
}
