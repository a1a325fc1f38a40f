# The task-state bridge (`jetrun-ecs-bridge`) as a Lambda function from the jetrun image:
# the EventBridge rule of the job cluster's "ECS Task State Change" events invokes it, and
# it publishes signed jetrun task events into NATS so settle ends jobs without polling. A
# schedule invokes it too ("Scheduled Event"): the reconcile pass that reports tasks
# whose events were lost and stops tasks of attempts that moved on.
#
# Failures are never silent: EventBridge retries a delivery it could not make and then
# puts the event in the dead-letter queue; Lambda retries a failed asynchronous
# invocation twice and then sends it to the same queue.

data "aws_partition" "current" {}

locals {
  # OTLP export (jetrun reads the standard OTEL_* variables): to the collector extension
  # in the image, if there is one. Before var.environment, so the caller's values win.
  otel_env = merge(
    var.otel_collector_extension ? { OTEL_EXPORTER_OTLP_ENDPOINT = "http://localhost:4318" } : {},
    var.otel_collector_config == null ? {} : { OPENTELEMETRY_COLLECTOR_CONFIG_URI = var.otel_collector_config },
    var.otel_traces_sampler == null ? {} : { OTEL_TRACES_SAMPLER = var.otel_traces_sampler },
    var.otel_traces_sampler_arg == null ? {} : { OTEL_TRACES_SAMPLER_ARG = tostring(var.otel_traces_sampler_arg) },
  )

  environment = merge(
    {
      JETRUN_LOG_FORMAT     = "json"
      JETRUN_NATS_URL       = var.nats_url
      JETRUN_PREFIX         = var.prefix
      JETRUN_ECS_CLUSTER    = var.ecs_cluster_name
      JETRUN_ECS_DEPLOYMENT = var.deployment
      JETRUN_ECS_CONTAINER  = var.job_container_name
    },
    local.otel_env,
    var.environment,
  )

  tags = merge(var.tags, { "jetrun:service" = var.name })
}

resource "aws_cloudwatch_log_group" "function" {
  name              = "/aws/lambda/${var.name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.log_kms_key_arn
  tags              = local.tags
}

# ---- Dead letters -------------------------------------------------------------------------

resource "aws_sqs_queue" "dlq" {
  name                      = "${var.name}-dlq"
  message_retention_seconds = 1209600
  sqs_managed_sse_enabled   = var.dlq_kms_key_arn == null ? true : null
  kms_master_key_id         = var.dlq_kms_key_arn
  tags                      = local.tags
}

data "aws_iam_policy_document" "dlq" {
  statement {
    sid       = "EventBridgeDeadLetters"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.dlq.arn]
    principals {
      type        = "Service"
      identifiers = ["events.amazonaws.com"]
    }
    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [var.task_state_rule_arn, aws_cloudwatch_event_rule.reconcile.arn]
    }
  }
}

resource "aws_sqs_queue_policy" "dlq" {
  queue_url = aws_sqs_queue.dlq.id
  policy    = data.aws_iam_policy_document.dlq.json
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
  description        = "Lambda role of the jetrun task-state bridge ${var.name}"
  assume_role_policy = data.aws_iam_policy_document.assume_lambda.json
  tags               = local.tags
}

# Network interfaces in the VPC (NATS is there), and logs.
resource "aws_iam_role_policy_attachment" "vpc_access" {
  role       = aws_iam_role.function.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"
}

data "aws_iam_policy_document" "dead_letters" {
  statement {
    sid       = "SendFailedInvocations"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.dlq.arn]
  }
}

resource "aws_iam_role_policy" "dead_letters" {
  name   = "dead-letters"
  role   = aws_iam_role.function.id
  policy = data.aws_iam_policy_document.dead_letters.json
}

# The reconcile's ECS permissions (job-tasks' bridge_policy_json).
resource "aws_iam_role_policy" "ecs" {
  name   = "reconcile-job-tasks"
  role   = aws_iam_role.function.id
  policy = var.ecs_policy_json
}

# ---- Function ---------------------------------------------------------------------------

resource "aws_iam_role_policy_attachment" "xray" {
  role       = aws_iam_role.function.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/AWSXRayDaemonWriteAccess"
}

resource "aws_lambda_function" "this" {
  function_name = var.name
  description   = "jetrun ecs-bridge: ECS task state changes to signed jetrun task events"
  role          = aws_iam_role.function.arn
  package_type  = "Image"
  image_uri     = var.image_uri
  architectures = [var.architecture]
  memory_size   = var.memory_size
  timeout       = var.timeout
  kms_key_arn   = var.kms_key_arn

  reserved_concurrent_executions = var.reserved_concurrent_executions

  # The jetrun image holds both binaries; this function runs the bridge.
  image_config {
    entry_point = ["/usr/local/bin/jetrun-ecs-bridge"]
    command     = []
  }

  vpc_config {
    subnet_ids         = var.subnet_ids
    security_group_ids = var.security_group_ids
  }

  environment {
    variables = local.environment
  }

  dead_letter_config {
    target_arn = aws_sqs_queue.dlq.arn
  }

  # X-Ray active tracing (docs/observability.md); aws_iam_role_policy_attachment.xray lets it write.
  tracing_config {
    mode = "Active"
  }

  tags = local.tags

  depends_on = [
    aws_cloudwatch_log_group.function,
    aws_iam_role_policy_attachment.vpc_access,
    aws_iam_role_policy.dead_letters,
  ]
}

resource "aws_lambda_function_event_invoke_config" "this" {
  function_name                = aws_lambda_function.this.function_name
  maximum_retry_attempts       = 2
  maximum_event_age_in_seconds = var.maximum_event_age_seconds

  destination_config {
    on_failure {
      destination = aws_sqs_queue.dlq.arn
    }
  }
}

# ---- Triggers ---------------------------------------------------------------------------

resource "aws_cloudwatch_event_target" "task_state" {
  rule      = var.task_state_rule_name
  target_id = "jetrun-ecs-bridge"
  arn       = aws_lambda_function.this.arn

  retry_policy {
    maximum_event_age_in_seconds = var.maximum_event_age_seconds
    maximum_retry_attempts       = 185
  }

  dead_letter_config {
    arn = aws_sqs_queue.dlq.arn
  }
}

resource "aws_lambda_permission" "task_state" {
  statement_id  = "AllowTaskStateRule"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.this.function_name
  principal     = "events.amazonaws.com"
  source_arn    = var.task_state_rule_arn
}

resource "aws_cloudwatch_event_rule" "reconcile" {
  name                = "${var.name}-reconcile"
  description         = "Periodic DescribeTasks reconcile of the jetrun task-state bridge ${var.name}"
  schedule_expression = var.reconcile_schedule
  tags                = local.tags
}

resource "aws_cloudwatch_event_target" "reconcile" {
  rule      = aws_cloudwatch_event_rule.reconcile.name
  target_id = "jetrun-ecs-bridge-reconcile"
  arn       = aws_lambda_function.this.arn

  dead_letter_config {
    arn = aws_sqs_queue.dlq.arn
  }
}

resource "aws_lambda_permission" "reconcile" {
  statement_id  = "AllowReconcileSchedule"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.this.function_name
  principal     = "events.amazonaws.com"
  source_arn    = aws_cloudwatch_event_rule.reconcile.arn
}
