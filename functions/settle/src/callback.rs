//! Completion callbacks: the `settle-callbacks` consumer's handler.
//!
//! The store publishes the terminal state change of a job with `spec.callback` on
//! `<p>.job.callback.<queue>.<job_id>`; this handler sends that event where the job
//! asked, if it may go there:
//!
//! - every callback is checked with [`jetrun_core::callback::check`] right before it is
//!   sent (authoritative, whatever submission checked): a NATS callback only under
//!   `<callback_subject_root>.<tenant>.>`;
//! - an HTTP callback is POSTed with `X-Jetrun-Signature-256: sha256=<hex HMAC-SHA256 of
//!   the body>` keyed by `callback_secret` (no secret: never sent unsigned). It may not
//!   reach loopback, private, link-local, metadata and other special addresses
//!   ([`jetrun_core::callback::classify`]) unless the operator allow-listed the host or
//!   range (`callback_allow_hosts`). The check is on the address actually connected to:
//!   host names go through [`GuardedResolver`] (so DNS rebinding gains nothing) and IP
//!   literals, which the client never resolves, are checked here. No redirect is
//!   followed, no proxy is used, the time is bounded by `callback_timeout` and at most
//!   [`MAX_RESPONSE_BODY`] bytes of the answer are read.
//!
//! Each callback is sent inside its own span (a child of the consumer span that continues
//! the job's trace: `otel.kind` client for HTTP, producer for NATS), and carries that
//! span's W3C context: `traceparent`/`tracestate` request headers on an HTTP POST, the
//! same NATS headers on a NATS callback (replacing those of the state change). Without
//! span export, the state change's own context is passed on unchanged.
//!
//! A refused callback is dead-lettered as [`REFUSED`] and never sent or retried; the job
//! itself is unchanged (it is already terminal). Transient failures are retried up to
//! `callback_max_deliveries`, then dead-lettered as `callback_failed`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hmac::{KeyInit, Mac};
use jetrun_core::callback::{self as rules, CallbackError, Cidr};
use jetrun_core::job::Callback;
use jetrun_host::{HandlerError, Incoming};
use jetrun_nats::store::StateChange;
use tracing::{Instrument, debug, warn};

use crate::{Config, Settle, transient};

/// The header carrying an HTTP callback's signature.
pub const SIGNATURE_HEADER: &str = "X-Jetrun-Signature-256";
/// Durable consumer of the callbacks.
pub const CALLBACK_CONSUMER: &str = "settle-callbacks";
/// Dead-letter `reason_kind` of a callback that may not be sent.
pub const REFUSED: &str = "callback_refused";
/// At most this much of a callback endpoint's answer is read; the rest is dropped.
pub const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// The signature header value of an HTTP callback body: `sha256=<hex>`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = match hmac::Hmac::<sha2::Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        // HMAC takes keys of any length; this arm is unreachable in practice.
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The operator's exceptions to the address block: exact host names and ranges.
#[derive(Debug, Default)]
struct AllowList {
    hosts: Vec<String>,
    nets: Vec<Cidr>,
}

impl AllowList {
    fn new(entries: &[String]) -> Self {
        let mut out = AllowList::default();
        for e in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            match e.parse::<Cidr>() {
                Ok(c) => out.nets.push(c),
                // Anything else is a host name; one that is not valid never matches, which
                // allows less, never more.
                Err(_) if e.contains('/') => {
                    warn!(entry = %e, "callback_allow_hosts entry is not a CIDR range; ignored")
                }
                Err(_) => out.hosts.push(normal_host(e)),
            }
        }
        out
    }

    /// Whether `addr`, reached for `host`, may be connected to.
    fn check(&self, host: &str, addr: IpAddr) -> Result<(), CallbackError> {
        let addr = addr.to_canonical();
        if self.hosts.iter().any(|h| *h == normal_host(host)) || self.nets.iter().any(|n| n.contains(addr)) {
            return Ok(());
        }
        match rules::classify(addr) {
            None => Ok(()),
            Some(range) => Err(CallbackError::RefusedAddress {
                host: host.to_string(),
                addr,
                range,
            }),
        }
    }
}

fn normal_host(h: &str) -> String {
    h.trim_end_matches('.').to_ascii_lowercase()
}

/// Resolves host names with the system resolver and keeps only the addresses callbacks
/// may reach: the client connects to what this returns, so the check holds at connect
/// time whatever the name resolved to when the job was submitted.
struct GuardedResolver {
    allow: Arc<AllowList>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut first_refusal = None;
            let mut ok = Vec::with_capacity(found.len());
            for a in found {
                match allow.check(&host, a.ip()) {
                    Ok(()) => ok.push(a),
                    Err(e) => {
                        debug!(host = %host, addr = %a.ip(), "callback address refused");
                        first_refusal.get_or_insert(e);
                    }
                }
            }
            match (ok.is_empty(), first_refusal) {
                (false, _) => Ok(Box::new(ok.into_iter()) as reqwest::dns::Addrs),
                (true, Some(e)) => Err(Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
                (true, None) => Err(format!("{host} resolved to no address").into()),
            }
        })
    }
}

/// What settle sends HTTP callbacks with.
pub(crate) struct Delivery {
    client: Result<reqwest::Client, String>,
    allow: Arc<AllowList>,
}

impl Delivery {
    pub(crate) fn new(config: &Config) -> Self {
        let allow = Arc::new(AllowList::new(&config.callback_allow_hosts));
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would connect on our behalf to an address we never checked.
            .no_proxy()
            .connect_timeout(config.callback_timeout)
            .timeout(config.callback_timeout)
            .dns_resolver(Arc::new(GuardedResolver { allow: allow.clone() }))
            .build()
            .map_err(|e| {
                warn!(error = %e, "no HTTP client for callbacks; HTTP callbacks will fail");
                e.to_string()
            });
        Self { client, allow }
    }
}

/// W3C `traceparent` header name (sent on HTTP and NATS callbacks).
pub const TRACEPARENT: &str = "traceparent";
/// W3C `tracestate` header name.
pub const TRACESTATE: &str = "tracestate";

/// The trace context a callback carries: the current (callback) span's, else the state
/// change's own (when spans are not exported), else none.
fn callback_trace(msg: &Incoming) -> Option<jetrun_telemetry::TraceContext> {
    let env = msg.envelope.as_ref().ok();
    jetrun_telemetry::outgoing(
        env.and_then(|e| e.traceparent.as_deref()),
        env.and_then(|e| e.tracestate.as_deref()),
    )
}

/// The refusal inside a client error, if the guarded resolver refused the address.
fn refusal_in(e: &reqwest::Error) -> Option<&CallbackError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<CallbackError>() {
            return Some(r);
        }
        cur = err.source();
    }
    None
}

fn refused(job_id: &str, e: &CallbackError) -> HandlerError {
    warn!(job_id, reason = %e, "callback refused");
    HandlerError::permanent(REFUSED, e.to_string())
}

/// Reads at most [`MAX_RESPONSE_BODY`] bytes of the answer (so a keep-alive connection
/// can be reused) and drops the rest.
async fn drain(mut r: reqwest::Response) {
    let mut read = 0;
    while read < MAX_RESPONSE_BODY {
        match r.chunk().await {
            Ok(Some(c)) => read += c.len(),
            _ => break,
        }
    }
}

impl Settle {
    /// Handles one job state change: a completion callback if the job asked for one.
    pub async fn on_job_event(&self, ev: jetrun_host::Event<StateChange>) -> Result<(), HandlerError> {
        let jetrun_host::Event { event: change, msg } = ev;
        if !change.to.is_terminal() {
            return Ok(());
        }
        let spec = &change.record.spec;
        let Some(cb) = &spec.callback else {
            return Ok(());
        };
        let ctx = &self.inner.ctx;
        // Authoritative: whatever submission checked (or did not), nothing is sent that
        // fails here.
        rules::check(spec, &self.inner.config.callback_subject_root, ctx.names.prefix())
            .map_err(|e| refused(&change.job_id, &e))?;
        let tenant = spec.tenant.as_deref().unwrap_or("");
        match cb {
            Callback::Nats(subject) => {
                let span = tracing::info_span!(
                    "callback",
                    otel.kind = "producer",
                    otel.name = "send callback",
                    messaging.system = "nats",
                    messaging.destination.name = %subject,
                    messaging.operation.type = "send",
                    messaging.operation.name = "publish",
                    jetrun.job_id = %change.job_id,
                    jetrun.queue = %change.queue,
                    jetrun.attempt = i64::from(change.attempt),
                    jetrun.tenant = %tenant,
                );
                async {
                    let trace = callback_trace(&msg);
                    let mut h = async_nats::HeaderMap::new();
                    if let Some(orig) = msg.message.headers.as_ref() {
                        for (k, v) in orig.iter() {
                            let name = k.to_string();
                            // The trace headers are this span's, set below.
                            if let Some(v) = v.first()
                                && !name.starts_with("Nats-")
                                && !name.eq_ignore_ascii_case(TRACEPARENT)
                                && !name.eq_ignore_ascii_case(TRACESTATE)
                            {
                                h.insert(k.as_ref(), v.as_str());
                            }
                        }
                    }
                    if let Some(t) = trace {
                        h.insert(TRACEPARENT, t.traceparent.as_str());
                        if let Some(ts) = &t.tracestate {
                            h.insert(TRACESTATE, ts.as_str());
                        }
                    }
                    ctx.client
                        .publish_with_headers(subject.clone(), h, msg.payload.clone())
                        .await
                        .map_err(transient)?;
                    ctx.client.flush().await.map_err(transient)?;
                    debug!(job_id = %change.job_id, subject = %subject, "callback published");
                    Ok(())
                }
                .instrument(span)
                .await
            }
            Callback::Http(url) => {
                let span = tracing::info_span!(
                    "callback",
                    otel.kind = "client",
                    otel.name = "POST",
                    http.request.method = "POST",
                    server.address = tracing::field::Empty,
                    server.port = tracing::field::Empty,
                    http.response.status_code = tracing::field::Empty,
                    jetrun.job_id = %change.job_id,
                    jetrun.queue = %change.queue,
                    jetrun.attempt = i64::from(change.attempt),
                    jetrun.tenant = %tenant,
                );
                self.post(&msg, &change.job_id, url).instrument(span).await
            }
        }
    }

    async fn post(&self, msg: &Incoming, job_id: &str, raw_url: &str) -> Result<(), HandlerError> {
        let config = &self.inner.config;
        let delivery = &self.inner.callbacks;
        let url = rules::check_url(raw_url).map_err(|e| refused(job_id, &e))?;
        // The client connects to an IP literal without asking the resolver: check it here.
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(ip) = literal {
            delivery
                .allow
                .check(&ip.to_string(), ip)
                .map_err(|e| refused(job_id, &e))?;
        }
        let Some(secret) = &config.callback_secret else {
            return Err(HandlerError::permanent(
                "callback_unsigned",
                "no callback secret is configured; refusing to send an unsigned HTTP callback",
            ));
        };
        let client = delivery
            .client
            .as_ref()
            .map_err(|e| HandlerError::permanent("callback_failed", format!("no HTTP client: {e}")))?;
        let ce_type = msg.envelope.as_ref().map(|e| e.ty.clone()).unwrap_or_default();
        let ce_id = msg.envelope.as_ref().map(|e| e.id.clone()).unwrap_or_default();
        let span = tracing::Span::current();
        if let Some(h) = url.host_str() {
            span.record("server.address", h);
        }
        if let Some(p) = url.port_or_known_default() {
            span.record("server.port", i64::from(p));
        }
        let mut request = client
            .post(url)
            .header("content-type", "application/json")
            .header(SIGNATURE_HEADER, sign(secret.as_bytes(), &msg.payload))
            .header("X-Jetrun-Event", ce_type)
            .header("X-Jetrun-Delivery", ce_id);
        // Both values are checked W3C (lowercase hex, printable ASCII): valid header values.
        if let Some(t) = callback_trace(msg) {
            request = request.header(TRACEPARENT, t.traceparent);
            if let Some(ts) = t.tracestate {
                request = request.header(TRACESTATE, ts);
            }
        }
        let request = request.body(msg.payload.clone()).send();
        // The client's own timeout covers the exchange; this one also bounds the body read.
        let res = tokio::time::timeout(config.callback_timeout, async {
            let r = request.await?;
            let status = r.status();
            let location = r
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.chars().take(256).collect::<String>());
            drain(r).await;
            Ok::<_, reqwest::Error>((status, location))
        })
        .await;
        let exhausted = msg.delivered
            >= config
                .callback_max_deliveries
                .clamp(1, crate::callbacks::MAX_CALLBACK_DELIVERIES);
        let delay = jetrun_core::job::backoff(
            msg.delivered as u32,
            Duration::from_secs(1),
            Duration::from_secs(60),
        );
        let failure = |what: String| match exhausted {
            true => HandlerError::permanent(
                "callback_failed",
                format!("{what} after {} deliveries", msg.delivered),
            ),
            false => HandlerError::retry(what, delay),
        };
        let (status, location) = match res {
            Err(_) => {
                return Err(failure(format!(
                    "callback timed out after {:?}",
                    config.callback_timeout
                )));
            }
            Ok(Err(e)) => {
                if let Some(r) = refusal_in(&e) {
                    return Err(refused(job_id, r));
                }
                return Err(failure(format!("callback failed: {e}")));
            }
            Ok(Ok(x)) => x,
        };
        span.record("http.response.status_code", i64::from(status.as_u16()));
        if status.is_success() {
            debug!(job_id, status = %status, "callback delivered");
            return Ok(());
        }
        if status.is_redirection() {
            // Following it would reach an address nobody checked; the endpoint must answer.
            return Err(HandlerError::permanent(
                "callback_rejected",
                format!(
                    "callback endpoint answered {status} (redirects are not followed; location {})",
                    location.as_deref().unwrap_or("none")
                ),
            ));
        }
        if status.is_client_error() && status != 408 && status != 429 {
            return Err(HandlerError::permanent(
                "callback_rejected",
                format!("callback endpoint answered {status}"),
            ));
        }
        Err(failure(format!("callback endpoint answered {status}")))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn signature_matches_a_known_vector() {
        // RFC 4231 test case 2.
        let s = sign(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            s,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn allow_list_takes_host_names_and_ranges() {
        let a = AllowList::new(&[
            "127.0.0.1/32".into(),
            "Hooks.Internal.".into(),
            "fd00::/8".into(),
            "10.0.0.0/99".into(),
        ]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        a.check("127.0.0.1", ip("127.0.0.1")).unwrap();
        a.check("x", ip("::ffff:127.0.0.1")).unwrap();
        a.check("hooks.internal", ip("10.9.9.9")).unwrap();
        a.check("x", ip("fd00:ec2::254")).unwrap();
        a.check("x", ip("8.8.8.8")).unwrap();
        assert!(a.check("x", ip("127.0.0.2")).is_err());
        assert!(
            a.check("x", ip("10.0.0.1")).is_err(),
            "an invalid CIDR allows nothing"
        );
        let e = a.check("metadata", ip("169.254.169.254")).unwrap_err();
        assert!(e.to_string().contains("169.254.169.254"), "{e}");
        assert!(e.to_string().contains("metadata"), "{e}");
        assert!(AllowList::default().check("localhost", ip("::1")).is_err());
    }
}
