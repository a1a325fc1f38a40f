//! The same router under AWS Lambda (API Gateway REST/HTTP APIs and ALB events), used
//! when `AWS_LAMBDA_RUNTIME_API` is set.

/// Whether this process runs inside a Lambda execution environment.
pub fn in_lambda() -> bool {
    std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some()
}

/// Serves `router` through the Lambda runtime API until the environment shuts down.
pub async fn run_lambda(router: axum::Router) -> Result<(), lambda_http::Error> {
    lambda_http::run(router).await
}
