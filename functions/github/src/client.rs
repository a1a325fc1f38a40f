//! A small GitHub REST client: issue comments, reactions, and the retry policy GitHub
//! asks integrators to follow (backoff on 5xx; on a secondary rate limit wait
//! `Retry-After`, on an exhausted primary limit until `x-ratelimit-reset`).
//!
//! Authentication: a fixed token, or a GitHub App ([`AppAuth`]): each call then carries
//! `Authorization: Bearer <installation token>` for the installation the client is bound
//! to ([`Client::for_installation`], from the webhook's `installation.id`), or, without
//! one, the App's installation on the repository the call names.

use std::sync::Arc;

use std::time::Duration;

pub use jetrun_runner::checkout::app::{AppAuth, AppError};
use serde_json::{Value, json};
use tracing::{debug, warn};

/// A GitHub API call failed for good (or ran out of retries).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GithubError {
    /// GitHub answered with an error that no retry fixes (401, 404, 422, ...).
    #[error("GitHub answered {status} to {what}: {body}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The call.
        what: String,
        /// The start of the answer.
        body: String,
    },
    /// Still failing after every retry (5xx, rate limits, the network): try later.
    #[error("GitHub unavailable for {what} after {attempts} attempts: {last}")]
    Unavailable {
        /// The call.
        what: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
}

impl GithubError {
    /// Whether a later retry may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, GithubError::Unavailable { .. })
    }
}

/// How calls authenticate.
#[derive(Debug, Clone)]
enum Auth {
    /// Unauthenticated (a stand-in).
    None,
    /// A PAT or an installation token minted elsewhere.
    Token(String),
    /// Installation tokens minted by the App.
    App {
        app: Arc<AppAuth>,
        installation: Option<u64>,
    },
}

/// The client.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    auth: Auth,
    attempts: u32,
    max_wait: Duration,
}

/// What one attempt says about the next.
enum Next {
    Done(Value),
    Retry(Duration, String),
    Fail(GithubError),
}

impl Client {
    /// A client for the API at `base` (`https://api.github.com`, or
    /// `https://ghe.example.com/api/v3`), `attempts` tries per call, waiting at most
    /// `max_wait` between two.
    pub fn new(
        base: &str,
        token: Option<String>,
        attempts: u32,
        max_wait: Duration,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: reqwest::Client::builder()
                .user_agent("jetrun-github")
                .timeout(Duration::from_secs(20))
                .build()?,
            base: base.trim_end_matches('/').to_string(),
            auth: token.map(Auth::Token).unwrap_or(Auth::None),
            attempts: attempts.max(1),
            max_wait,
        })
    }

    /// A client authenticating as the GitHub App `app` (its API URL is the base).
    pub fn with_app(app: Arc<AppAuth>, attempts: u32, max_wait: Duration) -> Result<Self, reqwest::Error> {
        let mut c = Self::new(app.api_url(), None, attempts, max_wait)?;
        c.auth = Auth::App {
            app,
            installation: None,
        };
        Ok(c)
    }

    /// This client bound to App installation `installation` (the webhook's
    /// `installation.id`); without an App, or with `None`, the same client.
    pub fn for_installation(&self, installation: Option<u64>) -> Self {
        let mut c = self.clone();
        if let (Auth::App { installation: i, .. }, Some(id)) = (&mut c.auth, installation) {
            *i = Some(id);
        }
        c
    }

    /// The `Authorization` value for a call to `path`; an App's installation token for
    /// the bound installation, else for the installation on the repository in `path`.
    async fn authorization(&self, path: &str) -> Result<Option<(String, Option<u64>)>, AppError> {
        match &self.auth {
            Auth::None => Ok(None),
            Auth::Token(t) => Ok(Some((format!("Bearer {t}"), None))),
            Auth::App { app, installation } => {
                let id = match installation {
                    Some(id) => *id,
                    None => {
                        let repo = path
                            .strip_prefix("/repos/")
                            .and_then(|r| {
                                let mut p = r.split('/');
                                Some(format!("{}/{}", p.next()?, p.next()?))
                            })
                            .ok_or_else(|| AppError::Config(format!("no installation for {path}")))?;
                        app.repository_installation(&repo).await?
                    }
                };
                let token = app.installation_token(id).await?;
                Ok(Some((format!("Bearer {token}"), Some(id))))
            }
        }
    }

    /// Posts a comment on issue or pull request `issue` of `repo`; returns its id.
    pub async fn comment(&self, repo: &str, issue: u64, body: &str) -> Result<u64, GithubError> {
        let v = self
            .call(
                reqwest::Method::POST,
                &format!("/repos/{repo}/issues/{issue}/comments"),
                Some(json!({ "body": body })),
            )
            .await?;
        Ok(v.get("id").and_then(Value::as_u64).unwrap_or(0))
    }

    /// One try at posting a comment, for callers that must not post twice: on a failure
    /// it waits what GitHub asked (`Retry-After`, the rate-limit reset, a backoff) and
    /// returns the error with whether the comment may have been stored anyway (a 5xx or
    /// a lost answer: look for it before posting again; a rate limit: it was not).
    pub async fn comment_checked(
        &self,
        repo: &str,
        issue: u64,
        body: &str,
    ) -> Result<u64, (GithubError, bool)> {
        let path = format!("/repos/{repo}/issues/{issue}/comments");
        let what = format!("POST {path}");
        let b = json!({ "body": body });
        match self.once(reqwest::Method::POST, &path, Some(&b), &what).await {
            Next::Done(v) => Ok(v.get("id").and_then(Value::as_u64).unwrap_or(0)),
            Next::Fail(e) => Err((e, false)),
            Next::Retry(wait, why) => {
                let maybe_posted = !why.contains("rate limit");
                let wait = wait.max(Duration::from_millis(200)).min(self.max_wait);
                warn!(%what, wait_ms = wait.as_millis() as u64, reason = %why, "GitHub call failed; retrying");
                tokio::time::sleep(wait).await;
                Err((
                    GithubError::Unavailable {
                        what,
                        attempts: 1,
                        last: why,
                    },
                    maybe_posted,
                ))
            }
        }
    }

    /// Attempts per call.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Adds reaction `content` (`eyes`, `rocket`, `+1`) to issue comment `comment_id`.
    pub async fn react(&self, repo: &str, comment_id: u64, content: &str) -> Result<(), GithubError> {
        self.call(
            reqwest::Method::POST,
            &format!("/repos/{repo}/issues/comments/{comment_id}/reactions"),
            Some(json!({ "content": content })),
        )
        .await
        .map(|_| ())
    }

    /// The id of a comment on the issue whose body contains `marker`, among those
    /// updated since `since` (how a post whose answer was lost is found again).
    pub async fn find_comment(
        &self,
        repo: &str,
        issue: u64,
        marker: &str,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<u64>, GithubError> {
        let since = since - chrono::TimeDelta::seconds(60);
        let path = format!(
            "/repos/{repo}/issues/{issue}/comments?per_page=100&since={}",
            since.format("%Y-%m-%dT%H:%M:%SZ")
        );
        let v = self.call(reqwest::Method::GET, &path, None).await?;
        Ok(v.as_array().and_then(|a| {
            a.iter().find_map(|c| {
                c.get("body")
                    .and_then(Value::as_str)
                    .filter(|b| b.contains(marker))
                    .and(c.get("id").and_then(Value::as_u64))
            })
        }))
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, GithubError> {
        let what = format!("{method} {path}");
        let mut last = String::new();
        let mut backoff = Duration::from_millis(200);
        for attempt in 1..=self.attempts {
            match self.once(method.clone(), path, body.as_ref(), &what).await {
                Next::Done(v) => return Ok(v),
                Next::Fail(e) => return Err(e),
                Next::Retry(wait, why) => {
                    last = why;
                    if attempt == self.attempts {
                        break;
                    }
                    let wait = wait.max(backoff).min(self.max_wait);
                    warn!(%what, attempt, wait_ms = wait.as_millis() as u64, reason = %last, "GitHub call failed; retrying");
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
        Err(GithubError::Unavailable {
            what,
            attempts: self.attempts,
            last,
        })
    }

    async fn once(&self, method: reqwest::Method, path: &str, body: Option<&Value>, what: &str) -> Next {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28");
        let installation = match self.authorization(path).await {
            Ok(Some((value, installation))) => {
                req = req.header("Authorization", value);
                installation
            }
            Ok(None) => None,
            Err(e) if e.is_transient() => return Next::Retry(Duration::ZERO, e.to_string()),
            Err(e) => {
                return Next::Fail(GithubError::Refused {
                    status: 401,
                    what: what.to_string(),
                    body: format!("GitHub App: {e}"),
                });
            }
        };
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Next::Retry(Duration::ZERO, format!("request failed: {e}")),
        };
        let status = resp.status().as_u16();
        let header = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let retry_after = header("retry-after").and_then(|v| v.trim().parse::<u64>().ok());
        let remaining = header("x-ratelimit-remaining");
        let reset = header("x-ratelimit-reset").and_then(|v| v.trim().parse::<i64>().ok());
        let text = resp.text().await.unwrap_or_default();
        debug!(%what, status, "GitHub answered");
        if (200..300).contains(&status) {
            return Next::Done(serde_json::from_str(&text).unwrap_or(Value::Null));
        }
        let short: String = text.chars().take(300).collect();
        if status == 401
            && let (Auth::App { app, .. }, Some(id)) = (&self.auth, installation)
        {
            // A revoked or expired-early installation token: mint a new one next try.
            app.forget(id).await;
            return Next::Retry(
                Duration::ZERO,
                format!("401 with installation {id}'s token: {short}"),
            );
        }
        // Rate limits (docs.github.com, "Rate limits for the REST API"): a secondary
        // limit says Retry-After; a spent primary limit says remaining 0 and when it resets.
        if status == 403 || status == 429 {
            if let Some(s) = retry_after {
                return Next::Retry(
                    Duration::from_secs(s),
                    format!("{status} rate limited, Retry-After {s}"),
                );
            }
            if remaining.as_deref() == Some("0")
                && let Some(r) = reset
            {
                let wait = (r - chrono::Utc::now().timestamp()).max(1) as u64;
                return Next::Retry(
                    Duration::from_secs(wait),
                    format!("{status} rate limit spent until {r}"),
                );
            }
            if status == 429 || short.to_ascii_lowercase().contains("secondary rate limit") {
                // No hint: GitHub asks for at least a minute.
                return Next::Retry(Duration::from_secs(60), format!("{status} secondary rate limit"));
            }
        }
        if status >= 500 {
            return Next::Retry(Duration::ZERO, format!("{status}: {short}"));
        }
        Next::Fail(GithubError::Refused {
            status,
            what: what.to_string(),
            body: short,
        })
    }
}
