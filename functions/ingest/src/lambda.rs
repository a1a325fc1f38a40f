//! The same router under AWS Lambda (API Gateway REST/HTTP APIs and ALB events), used
//! when `AWS_LAMBDA_RUNTIME_API` is set.

/// Whether this process runs inside a Lambda execution environment.
pub fn in_lambda() -> bool {
    std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some()
}

/// Serves `router` through the Lambda runtime API until the environment shuts down.
/// Spans are flushed after each request: Lambda freezes the environment once the
/// invocation has answered, and spans still in the batch would wait for the next
/// invocation (or be lost when the environment is reclaimed).
pub async fn run_lambda(router: axum::Router) -> Result<(), lambda_http::Error> {
    use tower::ServiceExt as _;
    lambda_http::run(tower::service_fn(move |req: lambda_http::Request| {
        let router = router.clone();
        async move {
            let res = router.oneshot(req).await;
            let _ = tokio::task::spawn_blocking(jetrun_telemetry::flush).await;
            res
        }
    }))
    .await
}
