//! GitHub App authentication: an App id and its RSA private key (a PEM file, e.g. a
//! mounted secret) give a short-lived RS256 JWT, exchanged at
//! `POST {api}/app/installations/{id}/access_tokens` for an installation token, cached per
//! installation until five minutes before its `expires_at`.
//!
//! One implementation for both users: the github function (REST calls for the
//! installation named in the webhook) and the worker's checkout (a private clone, the
//! installation found from the repository). It lives in the runner because the runner may
//! not depend on functions; the github function depends on it.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Deserialize;
use serde_json::Value;

/// How long before its `expires_at` a cached installation token is replaced (GitHub's
/// tokens live an hour; a call started with a token about to expire could fail midway).
pub const REFRESH_BEFORE: TimeDelta = TimeDelta::minutes(5);

/// The App credentials failed to load, or GitHub refused or did not answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// The private key file could not be read.
    #[error("GitHub App key file {path}: {source}")]
    KeyFile {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The key is not an RSA private key in PEM (PKCS#1 or PKCS#8).
    #[error("GitHub App key is not an RSA private key in PEM: {0}")]
    Key(#[source] jsonwebtoken::errors::Error),
    /// The App configuration is incomplete or malformed.
    #[error("GitHub App configuration: {0}")]
    Config(String),
    /// The JWT could not be signed.
    #[error("GitHub App JWT: {0}")]
    Jwt(#[source] jsonwebtoken::errors::Error),
    /// GitHub refused (401 bad JWT, 404 no such installation, ...): no retry fixes it.
    #[error("GitHub answered {status} to {what}: {body}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The call.
        what: String,
        /// The start of the answer.
        body: String,
    },
    /// No answer, a 5xx or a rate limit: a later try may work.
    #[error("GitHub unavailable for {what}: {reason}")]
    Unavailable {
        /// The call.
        what: String,
        /// Why.
        reason: String,
    },
}

impl AppError {
    /// Whether a later try may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, AppError::Unavailable { .. })
    }
}

#[derive(Debug, Clone)]
struct Cached {
    token: String,
    expires_at: DateTime<Utc>,
}

/// A GitHub App: mints JWTs and installation tokens (cached).
pub struct AppAuth {
    app_id: u64,
    key: jsonwebtoken::EncodingKey,
    api_url: String,
    http: reqwest::Client,
    // Held across the exchange: concurrent callers for one installation wait for the one
    // token being minted instead of minting several.
    tokens: tokio::sync::Mutex<HashMap<u64, Cached>>,
    installations: std::sync::Mutex<HashMap<String, u64>>,
}

impl std::fmt::Debug for AppAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("AppAuth")
            .field("app_id", &self.app_id)
            .field("api_url", &self.api_url)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, serde::Serialize)]
struct Claims {
    iat: i64,
    exp: i64,
    iss: String,
}

#[derive(Debug, Deserialize)]
struct TokenAnswer {
    token: String,
    expires_at: DateTime<Utc>,
}

impl AppAuth {
    /// App `app_id` with the RSA private key `pem` (as GitHub hands it out: PKCS#1
    /// `BEGIN RSA PRIVATE KEY`; PKCS#8 works too), against the REST API at `api_url`
    /// (`https://api.github.com`, or `https://<host>/api/v3`).
    pub fn new(app_id: u64, pem: &[u8], api_url: &str) -> Result<Self, AppError> {
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem).map_err(AppError::Key)?;
        let http = reqwest::Client::builder()
            .user_agent("jetrun-github-app")
            .timeout(Duration::from_secs(20))
            .build()
            .map_err(|e| AppError::Config(format!("HTTP client: {e}")))?;
        Ok(Self {
            app_id,
            key,
            api_url: api_url.trim_end_matches('/').to_string(),
            http,
            tokens: tokio::sync::Mutex::new(HashMap::new()),
            installations: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// As [`AppAuth::new`], the key read from `path` (a file, or a mounted secret).
    pub fn from_key_file(app_id: u64, path: &Path, api_url: &str) -> Result<Self, AppError> {
        let pem = std::fs::read(path).map_err(|source| AppError::KeyFile {
            path: path.display().to_string(),
            source,
        })?;
        Self::new(app_id, &pem, api_url)
    }

    /// From the environment: `JETRUN_GITHUB_APP_ID`, `JETRUN_GITHUB_APP_KEY_FILE` and
    /// `JETRUN_GITHUB_API_URL` (default `https://api.github.com`). `None` when neither
    /// the id nor the key file is set; an error when only one is.
    pub fn from_env() -> Result<Option<Self>, AppError> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let api = get("JETRUN_GITHUB_API_URL").unwrap_or_else(|| "https://api.github.com".into());
        match (get("JETRUN_GITHUB_APP_ID"), get("JETRUN_GITHUB_APP_KEY_FILE")) {
            (None, None) => Ok(None),
            (Some(id), Some(key)) => {
                let id = id
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| AppError::Config(format!("JETRUN_GITHUB_APP_ID {id:?} is not a number")))?;
                Self::from_key_file(id, Path::new(key.trim()), &api).map(Some)
            }
            _ => Err(AppError::Config(
                "set both JETRUN_GITHUB_APP_ID and JETRUN_GITHUB_APP_KEY_FILE, or neither".into(),
            )),
        }
    }

    /// The App id.
    pub fn app_id(&self) -> u64 {
        self.app_id
    }

    /// The REST API's base URL.
    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    /// A JWT for the App: RS256, issued 60 s in the past (GitHub's advice against clock
    /// drift), expiring 9 minutes from now (GitHub allows at most 10).
    pub fn jwt(&self) -> Result<String, AppError> {
        let now = Utc::now().timestamp();
        let claims = Claims {
            iat: now - 60,
            exp: now + 9 * 60,
            iss: self.app_id.to_string(),
        };
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &claims,
            &self.key,
        )
        .map_err(AppError::Jwt)
    }

    /// An installation token for `installation`: the cached one while it has more than
    /// [`REFRESH_BEFORE`] left, else a new one from GitHub.
    pub async fn installation_token(&self, installation: u64) -> Result<String, AppError> {
        let mut tokens = self.tokens.lock().await;
        if let Some(c) = tokens.get(&installation)
            && c.expires_at - REFRESH_BEFORE > Utc::now()
        {
            return Ok(c.token.clone());
        }
        let path = format!("/app/installations/{installation}/access_tokens");
        let v = self.call(reqwest::Method::POST, &path).await?;
        let t: TokenAnswer = serde_json::from_value(v).map_err(|e| AppError::Refused {
            status: 201,
            what: format!("POST {path}"),
            body: format!("no token and expires_at in the answer: {e}"),
        })?;
        tracing::info!(installation, expires_at = %t.expires_at, "GitHub App installation token minted");
        tokens.insert(
            installation,
            Cached {
                token: t.token.clone(),
                expires_at: t.expires_at,
            },
        );
        Ok(t.token)
    }

    /// Drops the cached token of `installation` (GitHub answered 401 to it: revoked).
    pub async fn forget(&self, installation: u64) {
        self.tokens.lock().await.remove(&installation);
    }

    /// The installation of the App on repository `repo` (`owner/name`), from
    /// `GET /repos/{repo}/installation` (remembered: an installation id does not change
    /// while the App stays installed).
    pub async fn repository_installation(&self, repo: &str) -> Result<u64, AppError> {
        let key = repo.to_ascii_lowercase();
        if let Some(id) = self.installations.lock().ok().and_then(|m| m.get(&key).copied()) {
            return Ok(id);
        }
        let path = format!("/repos/{repo}/installation");
        let v = self.call(reqwest::Method::GET, &path).await?;
        let id = v
            .get("id")
            .and_then(Value::as_u64)
            .ok_or_else(|| AppError::Refused {
                status: 200,
                what: format!("GET {path}"),
                body: "no installation id in the answer".into(),
            })?;
        if let Ok(mut m) = self.installations.lock() {
            m.insert(key, id);
        }
        Ok(id)
    }

    /// One call authenticated as the App (the JWT); the caller retries transient errors.
    async fn call(&self, method: reqwest::Method, path: &str) -> Result<Value, AppError> {
        let what = format!("{method} {path}");
        let jwt = self.jwt()?;
        let resp = self
            .http
            .request(method, format!("{}{path}", self.api_url))
            .bearer_auth(jwt)
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
            .send()
            .await
            .map_err(|e| AppError::Unavailable {
                what: what.clone(),
                reason: e.to_string(),
            })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        if (200..300).contains(&status) {
            return serde_json::from_str(&text).map_err(|e| AppError::Unavailable {
                what,
                reason: format!("answer is not JSON: {e}"),
            });
        }
        let body: String = text.chars().take(300).collect();
        if status >= 500
            || status == 429
            || (status == 403 && body.to_ascii_lowercase().contains("rate limit"))
        {
            return Err(AppError::Unavailable {
                what,
                reason: format!("{status}: {body}"),
            });
        }
        Err(AppError::Refused { status, what, body })
    }
}

/// `owner/name` of a GitHub clone URL whose host is the one of `api_url`
/// (`https://api.github.com` ↔ `github.com`; GitHub Enterprise `https://h/api/v3` ↔ `h`),
/// else `None`: an installation token is sent to GitHub only, never to another host a
/// job names.
pub fn github_repository(api_url: &str, clone_url: &str) -> Option<String> {
    let host_of = |u: &str| -> Option<String> {
        let rest = u.split_once("://")?.1;
        let host = rest.split(['/', '?', '#']).next()?;
        // No userinfo: `https://github.com@evil.example/...` must not pass as github.com.
        (!host.contains('@') && !host.is_empty()).then(|| host.to_ascii_lowercase())
    };
    let api_host = host_of(api_url)?;
    let git_host = api_host.strip_prefix("api.").unwrap_or(&api_host).to_string();
    if !clone_url.starts_with("https://") || host_of(clone_url)? != git_host {
        return None;
    }
    let path = clone_url.split_once("://")?.1.split_once('/')?.1;
    let path = path.split(['?', '#']).next()?.trim_end_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    let mut parts = path.split('/');
    let (owner, name) = (parts.next()?, parts.next()?);
    let ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    };
    (parts.next().is_none() && ok(owner) && ok(name)).then(|| format!("{owner}/{name}"))
}

#[cfg(test)]
mod tests {
    use super::github_repository as r;

    #[test]
    fn clone_urls_map_to_repositories_on_the_api_host_only() {
        let gh = "https://api.github.com";
        assert_eq!(
            r(gh, "https://github.com/octo/app.git").as_deref(),
            Some("octo/app")
        );
        assert_eq!(r(gh, "https://github.com/octo/app").as_deref(), Some("octo/app"));
        assert_eq!(r(gh, "https://GitHub.com/octo/app/").as_deref(), Some("octo/app"));
        assert_eq!(r(gh, "https://evil.example/octo/app.git"), None);
        assert_eq!(r(gh, "https://github.com@evil.example/octo/app.git"), None);
        assert_eq!(r(gh, "https://github.com.evil.example/octo/app.git"), None);
        assert_eq!(r(gh, "http://github.com/octo/app.git"), None);
        assert_eq!(r(gh, "https://github.com/octo/app/extra"), None);
        assert_eq!(r(gh, "https://github.com/octo/.."), None);
        let ghe = "https://ghe.example.com/api/v3";
        assert_eq!(
            r(ghe, "https://ghe.example.com/team/svc.git").as_deref(),
            Some("team/svc")
        );
        assert_eq!(r(ghe, "https://github.com/team/svc.git"), None);
    }
}
