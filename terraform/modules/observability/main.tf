# CloudWatch dashboard and alarms for a jetrun deployment: jetrun's own metrics (queues,
# jobs, dead letters, webhooks, replicas; jetrun.tf), CPU and memory of the jetrun
# ECS services, errors and throttles of the ingest Lambda, 5xx answers of the HTTP API
# (or an ALB), and the EC2 status checks of the NATS nodes. Alarms notify an SNS topic.
#
# JetStream itself (stream and consumer lag, cluster health) is not in CloudWatch: watch it
# with `jetrun jobs list`, `nats stream report` and the nodes' monitoring port (8222).

data "aws_region" "current" {}

locals {
  create_topic = var.sns_topic_arn == null
  topic_arn    = local.create_topic ? aws_sns_topic.alarms[0].arn : var.sns_topic_arn
  region       = data.aws_region.current.name

  ecs_metrics = {
    cpu    = { metric = "CPUUtilization", threshold = var.ecs_cpu_threshold_percent }
    memory = { metric = "MemoryUtilization", threshold = var.ecs_memory_threshold_percent }
  }
  ecs_alarms = merge([
    for label, service in var.ecs_services : {
      for kind, m in local.ecs_metrics : "${label}-${kind}" => merge(m, { label = label, service = service, kind = kind })
    }
  ]...)

  lambda_metrics = {
    errors    = { metric = "Errors", threshold = var.lambda_errors_threshold }
    throttles = { metric = "Throttles", threshold = 1 }
  }
  lambda_alarms = merge([
    for label, function_name in var.lambda_functions : {
      for kind, m in local.lambda_metrics : "${label}-${kind}" => merge(m, { label = label, function_name = function_name, kind = kind })
    }
  ]...)

  alb_metrics = {
    "target-5xx" = "HTTPCode_Target_5XX_Count"
    "elb-5xx"    = "HTTPCode_ELB_5XX_Count"
  }
  alb_alarms = merge([
    for label, suffix in var.load_balancers : {
      for kind, metric in local.alb_metrics : "${label}-${kind}" => { label = label, suffix = suffix, metric = metric }
    }
  ]...)

  widget = { width = 12, height = 6 }

  widgets = concat(
    length(var.ecs_services) == 0 ? [] : [
      for m in values(local.ecs_metrics) : merge(local.widget, {
        type = "metric"
        properties = {
          title   = "jetrun services: ${m.metric}"
          region  = local.region
          view    = "timeSeries"
          stat    = "Average"
          period  = var.period_seconds
          metrics = [for label, service in var.ecs_services : ["AWS/ECS", m.metric, "ClusterName", var.ecs_cluster_name, "ServiceName", service, { label = label }]]
          yAxis   = { left = { min = 0, max = 100 } }
        }
      })
    ],
    length(var.ecs_services) == 0 ? [] : [merge(local.widget, {
      type = "metric"
      properties = {
        title   = "jetrun services: running tasks"
        region  = local.region
        view    = "timeSeries"
        stat    = "Average"
        period  = var.period_seconds
        metrics = [for label, service in var.ecs_services : ["ECS/ContainerInsights", "RunningTaskCount", "ClusterName", var.ecs_cluster_name, "ServiceName", service, { label = label }]]
      }
    })],
    length(var.lambda_functions) == 0 ? [] : [merge(local.widget, {
      type = "metric"
      properties = {
        title  = "ingest Lambda: invocations, errors, throttles"
        region = local.region
        view   = "timeSeries"
        stat   = "Sum"
        period = var.period_seconds
        metrics = flatten([
          for label, function_name in var.lambda_functions : [
            for metric in ["Invocations", "Errors", "Throttles"] : ["AWS/Lambda", metric, "FunctionName", function_name, { label = "${label} ${metric}" }]
          ]
        ])
      }
    })],
    length(var.http_apis) == 0 ? [] : [merge(local.widget, {
      type = "metric"
      properties = {
        title  = "HTTP API: requests and errors"
        region = local.region
        view   = "timeSeries"
        stat   = "Sum"
        period = var.period_seconds
        metrics = flatten([
          for label, api_id in var.http_apis : [
            for metric in ["Count", "4xx", "5xx"] : ["AWS/ApiGateway", metric, "ApiId", api_id, { label = "${label} ${metric}" }]
          ]
        ])
      }
    })],
    length(var.load_balancers) == 0 ? [] : [merge(local.widget, {
      type = "metric"
      properties = {
        title  = "Load balancers: 5xx"
        region = local.region
        view   = "timeSeries"
        stat   = "Sum"
        period = var.period_seconds
        metrics = flatten([
          for label, suffix in var.load_balancers : [
            for metric in values(local.alb_metrics) : ["AWS/ApplicationELB", metric, "LoadBalancer", suffix, { label = "${label} ${metric}" }]
          ]
        ])
      }
    })],
    length(var.nats_instances) == 0 ? [] : [
      for metric in ["CPUUtilization", "StatusCheckFailed"] : merge(local.widget, {
        type = "metric"
        properties = {
          title   = "NATS nodes: ${metric}"
          region  = local.region
          view    = "timeSeries"
          stat    = metric == "StatusCheckFailed" ? "Maximum" : "Average"
          period  = var.period_seconds
          metrics = [for label, instance_id in var.nats_instances : ["AWS/EC2", metric, "InstanceId", instance_id, { label = label }]]
        }
      })
    ],
  )

  tags = merge(var.tags, { "jetrun:component" = "observability" })
}

resource "aws_sns_topic" "alarms" {
  count = local.create_topic ? 1 : 0

  name = "${var.name}-alarms"
  # Not the AWS-managed aws/sns key: CloudWatch alarms cannot publish to a topic encrypted
  # with it (its key policy does not admit cloudwatch.amazonaws.com).
  kms_master_key_id = var.sns_kms_key_arn
  tags              = local.tags
}

# ---- ECS services -----------------------------------------------------------------------

resource "aws_cloudwatch_metric_alarm" "ecs" {
  for_each = local.ecs_alarms

  alarm_name        = "${var.name}-${each.value.label}-${each.value.kind}"
  alarm_description = "jetrun service ${each.value.service}: average ${each.value.metric} above ${each.value.threshold}% for ${var.evaluation_periods} periods."
  namespace         = "AWS/ECS"
  metric_name       = each.value.metric
  dimensions = {
    ClusterName = var.ecs_cluster_name
    ServiceName = each.value.service
  }
  statistic           = "Average"
  period              = var.period_seconds
  evaluation_periods  = var.evaluation_periods
  threshold           = each.value.threshold
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [local.topic_arn]
  ok_actions          = [local.topic_arn]
  tags                = local.tags

  lifecycle {
    precondition {
      condition     = var.ecs_cluster_name != null
      error_message = "ecs_cluster_name is required when ecs_services is set."
    }
  }
}

# ---- ingest Lambda ----------------------------------------------------------------------

resource "aws_cloudwatch_metric_alarm" "lambda" {
  for_each = local.lambda_alarms

  alarm_name          = "${var.name}-${each.value.label}-${each.value.kind}"
  alarm_description   = "Lambda ${each.value.function_name}: ${each.value.metric} at or above ${each.value.threshold} per period (errors are crashes or timeouts; throttles mean reserved concurrency is exhausted and GitHub gets 5xx)."
  namespace           = "AWS/Lambda"
  metric_name         = each.value.metric
  dimensions          = { FunctionName = each.value.function_name }
  statistic           = "Sum"
  period              = var.period_seconds
  evaluation_periods  = 1
  threshold           = each.value.threshold
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [local.topic_arn]
  ok_actions          = [local.topic_arn]
  tags                = local.tags
}

# ---- HTTP API / ALB 5xx -----------------------------------------------------------------

resource "aws_cloudwatch_metric_alarm" "http_api_5xx" {
  for_each = var.http_apis

  alarm_name          = "${var.name}-${each.key}-5xx"
  alarm_description   = "HTTP API ${each.value}: ${var.http_5xx_threshold} or more 5xx answers per period for 3 periods (jetrun answers 503 when JetStream does not acknowledge)."
  namespace           = "AWS/ApiGateway"
  metric_name         = "5xx"
  dimensions          = { ApiId = each.value }
  statistic           = "Sum"
  period              = var.period_seconds
  evaluation_periods  = 3
  threshold           = var.http_5xx_threshold
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [local.topic_arn]
  ok_actions          = [local.topic_arn]
  tags                = local.tags
}

resource "aws_cloudwatch_metric_alarm" "alb_5xx" {
  for_each = local.alb_alarms

  alarm_name          = "${var.name}-${each.key}"
  alarm_description   = "Load balancer ${each.value.suffix}: ${var.http_5xx_threshold} or more ${each.value.metric} per period for 3 periods."
  namespace           = "AWS/ApplicationELB"
  metric_name         = each.value.metric
  dimensions          = { LoadBalancer = each.value.suffix }
  statistic           = "Sum"
  period              = var.period_seconds
  evaluation_periods  = 3
  threshold           = var.http_5xx_threshold
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [local.topic_arn]
  ok_actions          = [local.topic_arn]
  tags                = local.tags
}

# ---- NATS nodes -------------------------------------------------------------------------

resource "aws_cloudwatch_metric_alarm" "nats_status_check" {
  for_each = var.nats_instances

  alarm_name          = "${var.name}-nats-${each.key}-status-check"
  alarm_description   = "NATS node ${each.key} (${each.value}) fails its EC2 status checks: the cluster runs on two nodes (R3 streams keep their quorum, but one more loss stops writes)."
  namespace           = "AWS/EC2"
  metric_name         = "StatusCheckFailed"
  dimensions          = { InstanceId = each.value }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 2
  threshold           = 1
  comparison_operator = "GreaterThanOrEqualToThreshold"
  # A node that reports nothing (terminated, stopped) is as bad as a failing one.
  treat_missing_data = "breaching"
  alarm_actions      = [local.topic_arn]
  ok_actions         = [local.topic_arn]
  tags               = local.tags
}

# ---- Dashboard --------------------------------------------------------------------------

resource "aws_cloudwatch_dashboard" "this" {
  dashboard_name = var.name
  # The placeholder through a filter, not `cond ? [...] : [...]`: tuples of different
  # lengths are inconsistent conditional results, and plan would fail.
  dashboard_body = jsonencode({
    widgets = concat(local.jetrun_widgets, local.widgets, [
      for w in [{
        type       = "text"
        width      = 24
        height     = 2
        properties = { markdown = "No jetrun resources were given to the observability module." }
      }] : w if length(local.jetrun_widgets) + length(local.widgets) == 0
    ])
  })
}
