//! The router driven through `lambda_http`'s request types (API Gateway HTTP API v2
//! events), as the Lambda runtime would; no real Lambda runtime here. Runs without the
//! `lambda` feature too (lambda_http is a dev-dependency), so CI covers it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use http_body_util::BodyExt;
use jetrun_ingest::Config;
use serde_json::{Value, json};
use tower::ServiceExt;

fn apigw_v2(method: &str, path: &str, headers: Value, body: &str) -> lambda_http::Request {
    let event = json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012", "apiId": "api", "domainName": "x.execute-api.eu-west-1.amazonaws.com",
            "domainPrefix": "x", "requestId": "r-1", "routeKey": "$default", "stage": "$default",
            "time": "01/Jan/2026:00:00:00 +0000", "timeEpoch": 1767225600000u64,
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "192.0.2.1", "userAgent": "GitHub-Hookshot/1"}
        },
        "body": body,
        "isBase64Encoded": false
    });
    lambda_http::request::from_str(&event.to_string()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_answers_api_gateway_events() {
    let env = start(Config::default(), creds("")).await;
    let router = jetrun_ingest::router(env.ingest.clone());

    let resp = router
        .clone()
        .oneshot(apigw_v2("GET", "/health", json!({}), ""))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    let body = String::from_utf8(fixture("push", "payload.json")).unwrap();
    let id = delivery();
    let headers = json!({
        "x-github-event": "push",
        "x-github-delivery": id,
        "x-hub-signature-256": jetrun_ingest::auth::sign(SECRET.as_bytes(), body.as_bytes()),
        "content-type": "application/json"
    });
    let resp = router
        .clone()
        .oneshot(apigw_v2("POST", "/webhooks/github", headers.clone(), &body))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let a: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(a["status"], "accepted");
    assert_eq!(env.webhook_messages().await, 1);

    let mut bad = headers;
    bad["x-hub-signature-256"] = json!(jetrun_ingest::auth::sign(b"wrong", body.as_bytes()));
    let resp = router
        .oneshot(apigw_v2("POST", "/webhooks/github", bad, &body))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(env.webhook_messages().await, 1);
}
