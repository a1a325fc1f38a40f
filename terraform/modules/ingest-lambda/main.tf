# `jetrun serve` (ingest: GitHub webhooks and the HTTP API) as a Lambda function from a
# container image, behind an API Gateway HTTP API. jetrun authenticates every request
# itself (HMAC signature over the raw body for webhooks, bearer tokens for /v1), so the
# routes have no API Gateway authorizer. Requests to any other path never reach jetrun.

data "aws_partition" "current" {}

locals {
  # Every route the HTTP API forwards to jetrun (see docs/http-api.md).
  routes = [
    "POST /webhooks/github",
    "ANY /v1/{proxy+}",
    "GET /health",
    "GET /ready",
  ]

  # OTLP export (jetrun reads the standard OTEL_* variables): to the collector extension
  # in the image, if there is one. Before var.environment, so the caller's values win.
  otel_env = merge(
    var.otel_collector_extension ? { OTEL_EXPORTER_OTLP_ENDPOINT = "http://localhost:4318" } : {},
    var.otel_collector_config == null ? {} : { OPENTELEMETRY_COLLECTOR_CONFIG_URI = var.otel_collector_config },
    var.otel_traces_sampler == null ? {} : { OTEL_TRACES_SAMPLER = var.otel_traces_sampler },
    var.otel_traces_sampler_arg == null ? {} : { OTEL_TRACES_SAMPLER_ARG = tostring(var.otel_traces_sampler_arg) },
  )

  environment = merge(
    { JETRUN_LOG_FORMAT = "json" },
    local.otel_env,
    var.environment,
    { JETRUN_NATS_URL = var.nats_url },
    { for name, version in data.aws_secretsmanager_secret_version.env : name => version.secret_string },
  )

  tags = merge(var.tags, { "jetrun:service" = var.name })
}

# Lambda has no way to inject Secrets Manager values at start and jetrun reads its
# secrets from the environment, so they are read here (values stay in the state: keep it
# encrypted and access-controlled).
data "aws_secretsmanager_secret_version" "env" {
  for_each  = var.secret_arns
  secret_id = each.value
}

resource "aws_cloudwatch_log_group" "function" {
  name              = "/aws/lambda/${var.name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.log_kms_key_arn
  tags              = local.tags
}

resource "aws_cloudwatch_log_group" "api_access" {
  name              = "/aws/apigateway/${var.name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.log_kms_key_arn
  tags              = local.tags
}

# ---- IAM --------------------------------------------------------------------------------

data "aws_iam_policy_document" "assume_lambda" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "function" {
  name_prefix        = "${var.name}-"
  description        = "Lambda role of jetrun ingest ${var.name}"
  assume_role_policy = data.aws_iam_policy_document.assume_lambda.json
  tags               = local.tags
}

# Network interfaces in the VPC, and logs.
resource "aws_iam_role_policy_attachment" "vpc_access" {
  role       = aws_iam_role.function.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"
}

# X-Ray: the Lambda service sends the invocation's segment; jetrun continues that trace
# (_X_AMZN_TRACE_ID) and, with an OTLP endpoint set (e.g. the ADOT collector extension),
# exports its own spans into it. PutTraceSegments and PutTelemetryRecords (and the
# sampling-rule reads the SDKs and the ADOT collector make). The collector needs them
# even with PassThrough tracing.
resource "aws_iam_role_policy_attachment" "xray" {
  count = var.tracing_mode == "Active" || var.otel_collector_extension ? 1 : 0

  role       = aws_iam_role.function.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/AWSXRayDaemonWriteAccess"
}

# ---- Function ---------------------------------------------------------------------------

resource "aws_lambda_function" "this" {
  function_name = var.name
  description   = "jetrun serve: GitHub webhooks and the jetrun HTTP API"
  role          = aws_iam_role.function.arn
  package_type  = "Image"
  image_uri     = var.image_uri
  architectures = [var.architecture]
  memory_size   = var.memory_size
  timeout       = var.timeout
  kms_key_arn   = var.kms_key_arn

  reserved_concurrent_executions = var.reserved_concurrent_executions

  image_config {
    command = var.command
  }

  vpc_config {
    subnet_ids         = var.subnet_ids
    security_group_ids = var.security_group_ids
  }

  environment {
    variables = local.environment
  }

  tracing_config {
    mode = var.tracing_mode
  }

  tags = local.tags

  depends_on = [
    aws_cloudwatch_log_group.function,
    aws_iam_role_policy_attachment.vpc_access,
  ]
}

# ---- HTTP API ---------------------------------------------------------------------------

resource "aws_apigatewayv2_api" "this" {
  name          = var.name
  description   = "jetrun ingest: GitHub webhooks and the jetrun HTTP API"
  protocol_type = "HTTP"
  tags          = local.tags
}

resource "aws_apigatewayv2_integration" "lambda" {
  api_id                 = aws_apigatewayv2_api.this.id
  integration_type       = "AWS_PROXY"
  integration_uri        = aws_lambda_function.this.invoke_arn
  payload_format_version = "2.0"
  timeout_milliseconds   = 30000
}

resource "aws_apigatewayv2_route" "this" {
  for_each = toset(local.routes)

  api_id    = aws_apigatewayv2_api.this.id
  route_key = each.value
  target    = "integrations/${aws_apigatewayv2_integration.lambda.id}"
}

resource "aws_apigatewayv2_stage" "default" {
  api_id      = aws_apigatewayv2_api.this.id
  name        = "$default"
  auto_deploy = true

  default_route_settings {
    throttling_rate_limit    = var.api_throttling_rate_limit
    throttling_burst_limit   = var.api_throttling_burst_limit
    detailed_metrics_enabled = true
  }

  access_log_settings {
    destination_arn = aws_cloudwatch_log_group.api_access.arn
    format = jsonencode({
      requestId          = "$context.requestId"
      ip                 = "$context.identity.sourceIp"
      requestTime        = "$context.requestTime"
      routeKey           = "$context.routeKey"
      status             = "$context.status"
      responseLength     = "$context.responseLength"
      integrationStatus  = "$context.integrationStatus"
      integrationLatency = "$context.integrationLatency"
      errorMessage       = "$context.error.message"
    })
  }

  tags = local.tags
}

resource "aws_lambda_permission" "api" {
  statement_id  = "AllowHttpApiInvoke"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.this.function_name
  principal     = "apigateway.amazonaws.com"
  source_arn    = "${aws_apigatewayv2_api.this.execution_arn}/*/*"
}
