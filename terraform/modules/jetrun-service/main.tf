# One jetrun command (`route`, `worker`, `serve`, `init`...) as an ECS Fargate service.
#
# The desired count belongs to the autoscaler: jetrun's `ecs-service` scaler backend calls
# UpdateService(desiredCount) when its decision differs from what DescribeServices reports,
# and an operator may do the same. Terraform sets desired_count when it creates the service
# and then ignores it (lifecycle.ignore_changes below), so an apply never undoes a scaling
# decision.

data "aws_partition" "current" {}

data "aws_region" "current" {}

data "aws_caller_identity" "current" {}

locals {
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name
  account_id = data.aws_caller_identity.current.account_id

  # Secrets Manager ARNs may carry a ":json-key:version-stage:version-id" suffix; IAM
  # needs the secret's own ARN (its first seven colon-separated fields).
  secret_arns          = values(var.secrets)
  secretsmanager_arns  = distinct([for arn in local.secret_arns : join(":", slice(split(":", arn), 0, 7)) if split(":", arn)[2] == "secretsmanager"])
  ssm_parameter_arns   = distinct([for arn in local.secret_arns : arn if split(":", arn)[2] == "ssm"])
  has_secrets          = length(var.secrets) > 0
  has_load_balancer    = var.target_group_arn != null
  container_port_list  = var.container_port == null ? [] : [var.container_port]
  scratch_volume_names = [for i, path in var.writable_paths : "scratch-${i}"]

  # The OpenTelemetry collector sidecar: jetrun exports spans (OTLP/HTTP) to it on
  # localhost (one network namespace per task), it forwards them (ADOT's ecs-xray.yaml:
  # to X-Ray). Before var.environment, so the caller's OTEL_* values win.
  otel_sidecar        = var.otel_collector_image != null
  otel_collector_name = "otel-collector"
  otel_env = merge(
    local.otel_sidecar ? { OTEL_EXPORTER_OTLP_ENDPOINT = "http://localhost:4318" } : {},
    var.otel_traces_sampler == null ? {} : { OTEL_TRACES_SAMPLER = var.otel_traces_sampler },
    var.otel_traces_sampler_arg == null ? {} : { OTEL_TRACES_SAMPLER_ARG = tostring(var.otel_traces_sampler_arg) },
  )
  environment = merge(local.otel_env, var.environment)

  log_configuration = {
    logDriver = "awslogs"
    options = {
      awslogs-group         = aws_cloudwatch_log_group.this.name
      awslogs-region        = local.region
      awslogs-stream-prefix = var.name
    }
  }

  container_base = {
    name      = var.name
    image     = var.image
    essential = true
    command   = var.command

    environment = [for key in sort(keys(local.environment)) : { name = key, value = local.environment[key] }]
    secrets     = [for key in sort(keys(var.secrets)) : { name = key, valueFrom = var.secrets[key] }]

    portMappings = [for port in local.container_port_list : { containerPort = port, protocol = "tcp" }]

    readonlyRootFilesystem = var.readonly_root_filesystem
    mountPoints = [
      for i, path in var.writable_paths : { sourceVolume = local.scratch_volume_names[i], containerPath = path, readOnly = false }
    ]

    stopTimeout = var.stop_timeout
    # tini as PID 1: signals reach jetrun, zombies of process-runner tasks are reaped.
    linuxParameters = { initProcessEnabled = true }

    logConfiguration = local.log_configuration
  }
  # With the sidecar, ECS starts the collector first and stops it last: the spans jetrun
  # flushes when it drains on SIGTERM still have somewhere to go.
  container = merge(
    local.container_base,
    { for k, v in { dependsOn = [{ containerName = local.otel_collector_name, condition = "START" }] } : k => v if local.otel_sidecar },
  )

  # Not essential: a collector that dies costs spans, never the service.
  otel_collector = {
    name                   = local.otel_collector_name
    image                  = var.otel_collector_image
    essential              = false
    command                = var.otel_collector_command
    environment            = [{ name = "AWS_REGION", value = local.region }]
    readonlyRootFilesystem = true
    logConfiguration       = local.log_configuration
  }

  # The collector container only with an image.
  containers = concat([local.container], [for c in [local.otel_collector] : c if local.otel_sidecar])

  tags = merge(var.tags, { "jetrun:service" = var.name })
}

resource "aws_cloudwatch_log_group" "this" {
  name              = "/jetrun/${var.name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.log_kms_key_arn
  tags              = local.tags
}

# ---- IAM --------------------------------------------------------------------------------

data "aws_iam_policy_document" "assume_ecs_tasks" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
    # Only ECS tasks of this account may assume the roles (confused deputy).
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:${local.partition}:ecs:${local.region}:${local.account_id}:*"]
    }
  }
}

# Execution role: used by ECS itself to pull the image, write logs and inject the secrets.
resource "aws_iam_role" "execution" {
  name_prefix        = "${var.name}-exec-"
  description        = "ECS execution role of jetrun service ${var.name}"
  assume_role_policy = data.aws_iam_policy_document.assume_ecs_tasks.json
  tags               = local.tags
}

resource "aws_iam_role_policy_attachment" "execution" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

data "aws_iam_policy_document" "secrets" {
  count = local.has_secrets ? 1 : 0

  dynamic "statement" {
    for_each = length(local.secretsmanager_arns) > 0 ? [1] : []
    content {
      sid       = "ReadSecrets"
      actions   = ["secretsmanager:GetSecretValue"]
      resources = local.secretsmanager_arns
    }
  }

  dynamic "statement" {
    for_each = length(local.ssm_parameter_arns) > 0 ? [1] : []
    content {
      sid       = "ReadParameters"
      actions   = ["ssm:GetParameters"]
      resources = local.ssm_parameter_arns
    }
  }

  dynamic "statement" {
    for_each = length(var.secrets_kms_key_arns) > 0 ? [1] : []
    content {
      sid       = "DecryptSecrets"
      actions   = ["kms:Decrypt"]
      resources = var.secrets_kms_key_arns
    }
  }
}

resource "aws_iam_role_policy" "secrets" {
  count  = local.has_secrets ? 1 : 0
  name   = "read-secrets"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.secrets[0].json
}

# Task role: what jetrun itself may do in AWS (nothing unless given policies).
resource "aws_iam_role" "task" {
  name_prefix        = "${var.name}-task-"
  description        = "Task role of jetrun service ${var.name}"
  assume_role_policy = data.aws_iam_policy_document.assume_ecs_tasks.json
  tags               = local.tags
}

resource "aws_iam_role_policy" "task" {
  for_each = var.task_role_policy_jsons

  name   = each.key
  role   = aws_iam_role.task.id
  policy = each.value
}

data "aws_iam_policy_document" "execute_command" {
  count = var.enable_execute_command ? 1 : 0

  statement {
    sid = "EcsExecSessions"
    actions = [
      "ssmmessages:CreateControlChannel",
      "ssmmessages:CreateDataChannel",
      "ssmmessages:OpenControlChannel",
      "ssmmessages:OpenDataChannel",
    ]
    resources = ["*"]
  }
}

resource "aws_iam_role_policy" "execute_command" {
  count  = var.enable_execute_command ? 1 : 0
  name   = "ecs-execute-command"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.execute_command[0].json
}

# The collector sidecar's exporter (awsxray) writes to X-Ray with the task role. X-Ray has
# no resource-level permissions for these two actions, hence "*".
data "aws_iam_policy_document" "otel_collector" {
  count = local.otel_sidecar ? 1 : 0

  statement {
    sid       = "CollectorWritesTraces"
    actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
    resources = ["*"]
  }
}

resource "aws_iam_role_policy" "otel_collector" {
  count  = local.otel_sidecar ? 1 : 0
  name   = "otel-collector-xray"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.otel_collector[0].json
}

# ---- Task definition and service --------------------------------------------------------

resource "aws_ecs_task_definition" "this" {
  family                   = var.name
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = tostring(var.cpu)
  memory                   = tostring(var.memory)
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }

  ephemeral_storage {
    size_in_gib = var.ephemeral_storage_gib
  }

  dynamic "volume" {
    for_each = local.scratch_volume_names
    content {
      name = volume.value
    }
  }

  container_definitions = jsonencode(local.containers)

  tags = local.tags
}

resource "aws_ecs_service" "this" {
  count = var.create_service ? 1 : 0

  name             = var.name
  cluster          = var.cluster_arn
  task_definition  = aws_ecs_task_definition.this.arn
  desired_count    = var.desired_count
  launch_type      = "FARGATE"
  platform_version = "LATEST"

  enable_execute_command  = var.enable_execute_command
  enable_ecs_managed_tags = true
  propagate_tags          = "SERVICE"
  wait_for_steady_state   = false

  deployment_minimum_healthy_percent = var.deployment_minimum_healthy_percent
  deployment_maximum_percent         = var.deployment_maximum_percent
  health_check_grace_period_seconds  = local.has_load_balancer ? var.health_check_grace_period_seconds : null

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = var.security_group_ids
    assign_public_ip = var.assign_public_ip
  }

  dynamic "load_balancer" {
    for_each = local.has_load_balancer ? [var.target_group_arn] : []
    content {
      target_group_arn = load_balancer.value
      container_name   = var.name
      container_port   = var.container_port
    }
  }

  tags = local.tags

  lifecycle {
    # The autoscaler (ecs-service backend: UpdateService desiredCount) owns the count.
    ignore_changes = [desired_count]

    precondition {
      condition     = var.target_group_arn == null || var.container_port != null
      error_message = "container_port is required when target_group_arn is set."
    }
  }
}

# What an autoscaler needs to move this service (jetrun's ecs-service backend calls
# DescribeServices and UpdateService). Attach it to whichever role runs the autoscaler.
data "aws_iam_policy_document" "scaler" {
  count = var.create_service ? 1 : 0

  statement {
    sid       = "ScaleThisService"
    actions   = ["ecs:DescribeServices", "ecs:UpdateService"]
    resources = [aws_ecs_service.this[0].id]
  }
}
