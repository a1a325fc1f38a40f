# The ECS cluster where each job runs as its own Fargate task (for jetrun's ECS runner:
# RunTask with overrides, tags, startedBy and clientToken = <job_id>-<attempt>), the roles
# those tasks run with, the IAM policy the worker needs to start, watch and stop them,
# and the EventBridge rule that selects their "ECS Task State Change" events (the bridge
# that forwards them into NATS, JETRUN_TASKS, targets this rule).

data "aws_partition" "current" {}

data "aws_region" "current" {}

data "aws_caller_identity" "current" {}

locals {
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name
  account_id = data.aws_caller_identity.current.account_id

  family_prefix = var.task_definition_family_prefix != null ? var.task_definition_family_prefix : "${var.name}-"

  # Tasks of this cluster only.
  task_arn_pattern               = "arn:${local.partition}:ecs:${local.region}:${local.account_id}:task/${var.name}/*"
  task_definition_arn_pattern    = "arn:${local.partition}:ecs:${local.region}:${local.account_id}:task-definition/${local.family_prefix}*"
  container_instance_arn_pattern = "arn:${local.partition}:ecs:${local.region}:${local.account_id}:container-instance/${var.name}/*"

  # awslogs streams are `<prefix>/<container>/<task id>`; the ECS runner's `logs` config.
  log_stream_prefix = "job"

  tags = merge(var.tags, { "jetrun:component" = "job-tasks" })
}

resource "aws_ecs_cluster" "jobs" {
  name = var.name

  setting {
    name  = "containerInsights"
    value = var.container_insights
  }

  tags = local.tags
}

resource "aws_ecs_cluster_capacity_providers" "jobs" {
  cluster_name       = aws_ecs_cluster.jobs.name
  capacity_providers = ["FARGATE", "FARGATE_SPOT"]

  default_capacity_provider_strategy {
    capacity_provider = "FARGATE"
    weight            = 1
    base              = 0
  }

  dynamic "default_capacity_provider_strategy" {
    for_each = var.fargate_spot_weight > 0 ? [var.fargate_spot_weight] : []
    content {
      capacity_provider = "FARGATE_SPOT"
      weight            = default_capacity_provider_strategy.value
    }
  }
}

resource "aws_cloudwatch_log_group" "jobs" {
  name              = "/jetrun/${var.name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.log_kms_key_arn
  tags              = local.tags
}

# Job tasks accept no inbound connections.
resource "aws_security_group" "jobs" {
  name_prefix = "${var.name}-"
  description = "jetrun job tasks of ${var.name}: no inbound, outbound as configured"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = var.name })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_egress_rule" "jobs" {
  count = length(var.egress_cidr_blocks)

  security_group_id = aws_security_group.jobs.id
  description       = "Outbound traffic of job tasks"
  ip_protocol       = "-1"
  cidr_ipv4         = var.egress_cidr_blocks[count.index]
  tags              = local.tags
}

# Jobs without `network` get this group instead: no inbound and no outbound rule.
resource "aws_security_group" "offline" {
  name_prefix = "${var.name}-offline-"
  description = "jetrun job tasks of ${var.name} without network: no inbound, no outbound"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = "${var.name}-offline" })

  lifecycle {
    create_before_destroy = true
  }
}

# ---- Roles job tasks run with -----------------------------------------------------------

data "aws_iam_policy_document" "assume_ecs_tasks" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
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

# Execution role: ECS pulls job images and writes their logs with it.
resource "aws_iam_role" "execution" {
  name_prefix        = "${var.name}-exec-"
  description        = "ECS execution role of jetrun job tasks in ${var.name}"
  assume_role_policy = data.aws_iam_policy_document.assume_ecs_tasks.json
  tags               = local.tags
}

resource "aws_iam_role_policy_attachment" "execution" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

# Task role: the AWS permissions of the job's own code (none by default).
resource "aws_iam_role" "job" {
  name_prefix        = "${var.name}-job-"
  description        = "Role jetrun job containers in ${var.name} run with"
  assume_role_policy = data.aws_iam_policy_document.assume_ecs_tasks.json
  tags               = local.tags
}

resource "aws_iam_role_policy" "job" {
  for_each = var.job_task_role_policy_jsons

  name   = each.key
  role   = aws_iam_role.job.id
  policy = each.value
}

# ---- What the worker (dispatch with the ECS runner) may do ------------------------------

data "aws_iam_policy_document" "worker" {
  statement {
    sid       = "RunJobTasksInThisCluster"
    actions   = ["ecs:RunTask"]
    resources = [local.task_definition_arn_pattern]
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [aws_ecs_cluster.jobs.arn]
    }
  }

  # Adoption: before every RunTask the runner looks for a task of the attempt
  # (ListTasks by startedBy), and after a restart for its node's tasks. ListTasks is
  # authorised on container instances; the condition keeps it to this cluster.
  statement {
    sid       = "ListJobTasks"
    actions   = ["ecs:ListTasks"]
    resources = [local.container_instance_arn_pattern]
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [aws_ecs_cluster.jobs.arn]
    }
  }

  statement {
    sid       = "WatchAndStopJobTasks"
    actions   = ["ecs:DescribeTasks", "ecs:StopTask"]
    resources = [local.task_arn_pattern]
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [aws_ecs_cluster.jobs.arn]
    }
  }

  # RunTask with tags (job id, queue, attempt) needs TagResource on the new task.
  statement {
    sid       = "TagJobTasksAtLaunch"
    actions   = ["ecs:TagResource"]
    resources = [local.task_arn_pattern]
    condition {
      test     = "StringEquals"
      variable = "ecs:CreateAction"
      values   = ["RunTask"]
    }
  }

  # `jetrun jobs logs` and job results (the last `jetrun-result: ` line) read the job
  # tasks' awslogs streams; nothing else of CloudWatch Logs.
  statement {
    sid       = "ReadJobTaskLogs"
    actions   = ["logs:GetLogEvents"]
    resources = ["${aws_cloudwatch_log_group.jobs.arn}:log-stream:*"]
  }

  statement {
    sid       = "PassJobTaskRoles"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.execution.arn, aws_iam_role.job.arn]
    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ecs-tasks.amazonaws.com"]
    }
  }
}

# ---- Task state changes -----------------------------------------------------------------

resource "aws_cloudwatch_event_rule" "task_state" {
  name        = "${var.name}-task-state"
  description = "ECS Task State Change events of the jetrun job cluster ${var.name}"

  event_pattern = jsonencode({
    source        = ["aws.ecs"]
    "detail-type" = ["ECS Task State Change"]
    detail = {
      clusterArn = [aws_ecs_cluster.jobs.arn]
    }
  })

  tags = local.tags
}

# ---- The default job task definition ------------------------------------------------------

# Every queue's jobs run with this task definition unless the worker maps the queue or the
# image to another (ECS runner config `queues` / `images`; families must start with
# the family prefix for the worker's RunTask permission). The image is fixed here: ECS
# cannot override it per task. The container is `job` (the runner's `container`).
resource "aws_ecs_task_definition" "default" {
  count = var.default_job_image == null ? 0 : 1

  family                   = "${local.family_prefix}default"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = tostring(var.default_job_cpu)
  memory                   = tostring(var.default_job_memory)
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.job.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.default_job_architecture
  }

  container_definitions = jsonencode([{
    name        = "job"
    image       = var.default_job_image
    essential   = true
    stopTimeout = var.job_stop_timeout_seconds
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.jobs.name
        awslogs-region        = local.region
        awslogs-stream-prefix = local.log_stream_prefix
      }
    }
  }])

  tags = local.tags
}

# ---- What the task-state bridge may do (its reconcile pass) -----------------------------

data "aws_iam_policy_document" "bridge" {
  statement {
    sid       = "ListJobTasks"
    actions   = ["ecs:ListTasks"]
    resources = [local.container_instance_arn_pattern]
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [aws_ecs_cluster.jobs.arn]
    }
  }

  # Describe to report tasks whose events were lost; stop tasks of attempts that moved on.
  statement {
    sid       = "DescribeAndStopJobTasks"
    actions   = ["ecs:DescribeTasks", "ecs:StopTask"]
    resources = [local.task_arn_pattern]
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [aws_ecs_cluster.jobs.arn]
    }
  }
}
