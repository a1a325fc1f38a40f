# jetrun's own metrics: what the services write as CloudWatch Embedded Metric Format lines
# (JETRUN_METRICS_EMF=stdout on `serve`, `worker`, `autoscale` and the ingest Lambda;
# CloudWatch Logs turns them into metrics of the namespace `jetrun`, no agent needed).
#
# Every metric used below is named once, in local.jetrun_metrics, with the dimension set
# it is queried by. Those pairs are exactly what jetrun_telemetry::emf::EMITTED lists and
# the EMF encoder writes: tests/tests/terraform.rs checks both, so the dashboard and the
# alarms cannot drift from the code.

locals {
  jetrun_namespace = "jetrun"

  jetrun_metrics = {
    queue_pending        = { name = "jetrun_queue_pending", dimensions = ["queue"] }
    queue_oldest_age     = { name = "jetrun_queue_oldest_pending_age_seconds", dimensions = ["queue"] }
    queue_oldest_age_all = { name = "jetrun_queue_oldest_pending_age_seconds", dimensions = [] }
    jobs_finished        = { name = "jetrun_jobs_finished_total", dimensions = ["queue", "status"] }
    jobs_finished_status = { name = "jetrun_jobs_finished_total", dimensions = ["status"] }
    queue_wait           = { name = "jetrun_job_queue_wait_seconds", dimensions = ["queue"] }
    queue_wait_all       = { name = "jetrun_job_queue_wait_seconds", dimensions = [] }
    end_to_end           = { name = "jetrun_job_end_to_end_seconds", dimensions = ["queue"] }
    launch_failures      = { name = "jetrun_launch_failures_total", dimensions = ["queue", "reason"] }
    dead_letters         = { name = "jetrun_dead_letters_total", dimensions = ["origin", "reason"] }
    dead_letters_all     = { name = "jetrun_dead_letters_total", dimensions = [] }
    webhooks             = { name = "jetrun_webhook_deliveries_total", dimensions = ["event", "outcome"] }
    webhooks_outcome     = { name = "jetrun_webhook_deliveries_total", dimensions = ["outcome"] }
    http_requests        = { name = "jetrun_http_requests_total", dimensions = ["route", "code"] }
    http_requests_class  = { name = "jetrun_http_requests_total", dimensions = ["code_class"] }
    autoscale_desired    = { name = "jetrun_autoscale_desired_replicas", dimensions = ["service"] }
    autoscale_current    = { name = "jetrun_autoscale_current_replicas", dimensions = ["service"] }
    nats_connected       = { name = "jetrun_nats_connected", dimensions = [] }
  }

  # The CloudWatch search schema of each: `{jetrun,dim1,dim2} MetricName="name"` matches
  # that metric with exactly those dimensions, whatever their values (queues, routes...).
  jetrun_search = {
    for key, m in local.jetrun_metrics :
    key => "{${join(",", concat([local.jetrun_namespace], m.dimensions))}} MetricName=\"${m.name}\""
  }

  # The terminal job statuses (jetrun_core::JobStatus::is_terminal) of the failure rate.
  failed_statuses   = ["failed", "timed_out"]
  terminal_statuses = ["succeeded", "failed", "timed_out", "cancelled"]

  jetrun_widget = { width = 8, height = 6 }

  # One search widget: `searches` is a list of [metric key, statistic, label].
  jetrun_search_widget = {
    for w in [
      { key = "depth", title = "jetrun queues: pending submissions", searches = [["queue_pending", "Maximum", "pending"]] },
      { key = "age", title = "jetrun queues: age of the oldest submission (s)", searches = [["queue_oldest_age", "Maximum", "oldest"]] },
      { key = "finished", title = "jetrun jobs finished, by status", searches = [["jobs_finished_status", "Sum", "finished"]] },
      { key = "wait", title = "jetrun submit to start (s): p50 and p99 per queue", searches = [["queue_wait", "p50", "p50"], ["queue_wait", "p99", "p99"]] },
      { key = "dlq", title = "jetrun dead letters, by origin and reason", searches = [["dead_letters", "Sum", "dead letters"]] },
      { key = "webhooks", title = "jetrun webhook deliveries, by outcome", searches = [["webhooks_outcome", "Sum", "webhooks"]] },
      { key = "http", title = "jetrun HTTP answers, by status class", searches = [["http_requests_class", "Sum", "answers"]] },
      { key = "replicas", title = "jetrun replicas: desired vs current", searches = [["autoscale_desired", "Maximum", "desired"], ["autoscale_current", "Maximum", "current"]] },
      { key = "launch", title = "jetrun launch failures, by queue and reason", searches = [["launch_failures", "Sum", "launch failures"]] },
    ] :
    w.key => merge(local.jetrun_widget, {
      type = "metric"
      properties = {
        title  = w.title
        region = local.region
        view   = "timeSeries"
        period = var.period_seconds
        metrics = [
          for i, s in w.searches : [{
            id         = "${w.key}${i}"
            label      = s[2]
            expression = "SEARCH('${local.jetrun_search[s[0]]}', '${s[1]}', ${var.period_seconds})"
          }]
        ]
      }
    })
  }

  jetrun_failure_rate_widget = merge(local.jetrun_widget, {
    type = "metric"
    properties = {
      title  = "jetrun failure rate (% of finished jobs, all queues)"
      region = local.region
      view   = "timeSeries"
      period = var.period_seconds
      yAxis  = { left = { min = 0, max = 100 } }
      metrics = concat(
        [[{ id = "rate", label = "failed or timed out %", expression = "100 * (${join(" + ", [for s in local.failed_statuses : "FILL(${s}, 0)"])}) / (${join(" + ", [for s in local.terminal_statuses : "FILL(${s}, 0)"])})" }]],
        [
          for s in local.terminal_statuses : [
            local.jetrun_namespace, local.jetrun_metrics.jobs_finished_status.name, "status", s,
            { id = s, stat = "Sum", visible = false }
          ]
        ],
      )
    }
  })

  # A filter, not `cond ? [...] : []`: the two tuples would differ in length.
  jetrun_widgets = [
    for w in concat(
      [{
        type       = "text"
        width      = 24
        height     = 1
        properties = { markdown = "## jetrun (namespace `${local.jetrun_namespace}`, from the services' EMF lines)" }
      }],
      [for k in ["depth", "age", "wait"] : local.jetrun_search_widget[k]],
      [local.jetrun_search_widget["finished"], local.jetrun_failure_rate_widget, local.jetrun_search_widget["dlq"]],
      [for k in ["webhooks", "http", "replicas", "launch"] : local.jetrun_search_widget[k]],
    ) : w if var.jetrun_metrics
  ]
}

# ---- Alarms on jetrun's own metrics ------------------------------------------------------

resource "aws_cloudwatch_metric_alarm" "dead_letters" {
  count = var.jetrun_metrics ? 1 : 0

  alarm_name          = "${var.name}-dead-letters"
  alarm_description   = "jetrun dead-lettered a message in the last 5 minutes (any origin, any reason). Look with `jetrun dlq list`; docs/operations.md says what each reason means and when a replay is safe."
  namespace           = local.jetrun_namespace
  metric_name         = local.jetrun_metrics.dead_letters_all.name
  dimensions          = {}
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [local.topic_arn]
  ok_actions          = [local.topic_arn]
  tags                = local.tags
}

resource "aws_cloudwatch_metric_alarm" "queue_wait_p99" {
  count = var.jetrun_metrics ? 1 : 0

  alarm_name          = "${var.name}-queue-wait-p99"
  alarm_description   = "p99 of submit-to-start over every queue above ${var.queue_wait_p99_threshold_seconds} s for ${var.evaluation_periods} periods: jobs wait for a worker (too few replicas, a stuck dispatcher or launch failures). `jetrun top` shows which queue; docs/operations.md (Alarms on AWS) says what to do."
  namespace           = local.jetrun_namespace
  metric_name         = local.jetrun_metrics.queue_wait_all.name
  dimensions          = {}
  extended_statistic  = "p99"
  period              = var.period_seconds
  evaluation_periods  = var.evaluation_periods
  threshold           = var.queue_wait_p99_threshold_seconds
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [local.topic_arn]
  ok_actions          = [local.topic_arn]
  tags                = local.tags

  lifecycle {
    # An override for a queue without alarms would silently do nothing.
    precondition {
      condition     = alltrue([for q in keys(var.queue_wait_p99_threshold_seconds_by_queue) : contains(var.queues, q)])
      error_message = "queue_wait_p99_threshold_seconds_by_queue names queues that are not in queues."
    }
    precondition {
      condition     = alltrue([for q in keys(var.backlog_age_threshold_seconds_by_queue) : contains(var.queues, q)])
      error_message = "backlog_age_threshold_seconds_by_queue names queues that are not in queues."
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "backlog_age" {
  count = var.jetrun_metrics ? 1 : 0

  alarm_name          = "${var.name}-backlog-age"
  alarm_description   = "The oldest submission still waiting in a queue is older than ${var.backlog_age_threshold_seconds} s: no worker takes from that queue. `jetrun top` shows which queue; docs/operations.md (Alarms on AWS) says what to do."
  namespace           = local.jetrun_namespace
  metric_name         = local.jetrun_metrics.queue_oldest_age_all.name
  dimensions          = {}
  statistic           = "Maximum"
  period              = var.period_seconds
  evaluation_periods  = var.evaluation_periods
  threshold           = var.backlog_age_threshold_seconds
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [local.topic_arn]
  ok_actions          = [local.topic_arn]
  tags                = local.tags
}

# The same two per listed queue (var.queues): the alarm names the queue, and a busy queue
# cannot hide a stuck one in the aggregate. Queues not listed stay under the aggregate ones.

resource "aws_cloudwatch_metric_alarm" "queue_wait_p99_per_queue" {
  for_each = var.jetrun_metrics ? toset(var.queues) : toset([])

  alarm_name          = "${var.name}-queue-wait-p99-${each.value}"
  alarm_description   = "p99 of submit-to-start in queue ${each.value} above ${lookup(var.queue_wait_p99_threshold_seconds_by_queue, each.value, var.queue_wait_p99_threshold_seconds)} s for ${var.evaluation_periods} periods: its jobs wait for a worker. `jetrun top` (queue ${each.value}: pending, oldest, launch failures) and `jetrun scale show`: add workers or raise the scale spec's maximum; if workers are idle, check `jetrun nodes` and the dispatcher. docs/operations.md, Alarms on AWS."
  namespace           = local.jetrun_namespace
  metric_name         = local.jetrun_metrics.queue_wait.name
  dimensions          = { queue = each.value }
  extended_statistic  = "p99"
  period              = var.period_seconds
  evaluation_periods  = var.evaluation_periods
  threshold           = lookup(var.queue_wait_p99_threshold_seconds_by_queue, each.value, var.queue_wait_p99_threshold_seconds)
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [local.topic_arn]
  ok_actions          = [local.topic_arn]
  tags                = local.tags
}

resource "aws_cloudwatch_metric_alarm" "backlog_age_per_queue" {
  for_each = var.jetrun_metrics ? toset(var.queues) : toset([])

  alarm_name          = "${var.name}-backlog-age-${each.value}"
  alarm_description   = "The oldest submission waiting in queue ${each.value} is older than ${lookup(var.backlog_age_threshold_seconds_by_queue, each.value, var.backlog_age_threshold_seconds)} s: no worker takes from it (workers down or at their maximum, or none serves ${each.value}: JETRUN_QUEUES). `jetrun top` and `jetrun nodes` show who serves it; `jetrun scale show` the limits. docs/operations.md, Alarms on AWS."
  namespace           = local.jetrun_namespace
  metric_name         = local.jetrun_metrics.queue_oldest_age.name
  dimensions          = { queue = each.value }
  statistic           = "Maximum"
  period              = var.period_seconds
  evaluation_periods  = var.evaluation_periods
  threshold           = lookup(var.backlog_age_threshold_seconds_by_queue, each.value, var.backlog_age_threshold_seconds)
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [local.topic_arn]
  ok_actions          = [local.topic_arn]
  tags                = local.tags
}

resource "aws_cloudwatch_metric_alarm" "failure_rate" {
  count = var.jetrun_metrics ? 1 : 0

  alarm_name          = "${var.name}-job-failure-rate"
  alarm_description   = "More than ${var.failure_rate_threshold_percent}% of the jobs that finished (all queues) failed or timed out, for ${var.evaluation_periods} periods."
  evaluation_periods  = var.evaluation_periods
  threshold           = var.failure_rate_threshold_percent
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [local.topic_arn]
  ok_actions          = [local.topic_arn]
  tags                = local.tags

  metric_query {
    id          = "rate"
    label       = "failed or timed out, % of finished"
    return_data = true
    expression  = "100 * (${join(" + ", [for s in local.failed_statuses : "FILL(${s}, 0)"])}) / (${join(" + ", [for s in local.terminal_statuses : "FILL(${s}, 0)"])})"
  }

  dynamic "metric_query" {
    for_each = toset(local.terminal_statuses)
    content {
      id = metric_query.value
      metric {
        namespace   = local.jetrun_namespace
        metric_name = local.jetrun_metrics.jobs_finished_status.name
        dimensions  = { status = metric_query.value }
        stat        = "Sum"
        period      = var.period_seconds
      }
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "ingest_5xx" {
  count = var.jetrun_metrics ? 1 : 0

  alarm_name          = "${var.name}-jetrun-5xx"
  alarm_description   = "jetrun's HTTP server (webhooks and the API, on Lambda or ECS) answered ${var.http_5xx_threshold} or more 5xx per period for 3 periods (503: JetStream did not acknowledge; senders retry)."
  namespace           = local.jetrun_namespace
  metric_name         = local.jetrun_metrics.http_requests_class.name
  dimensions          = { code_class = "5xx" }
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

resource "aws_cloudwatch_metric_alarm" "bad_signatures" {
  count = var.jetrun_metrics ? 1 : 0

  alarm_name          = "${var.name}-webhook-bad-signatures"
  alarm_description   = "${var.bad_signature_threshold} or more webhook deliveries with a bad signature in 5 minutes: a wrong secret after a rotation, or someone probing the endpoint."
  namespace           = local.jetrun_namespace
  metric_name         = local.jetrun_metrics.webhooks_outcome.name
  dimensions          = { outcome = "bad_signature" }
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  threshold           = var.bad_signature_threshold
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [local.topic_arn]
  ok_actions          = [local.topic_arn]
  tags                = local.tags
}

resource "aws_cloudwatch_metric_alarm" "no_webhooks" {
  count = var.jetrun_metrics && var.no_webhooks_alarm_hours != null ? 1 : 0

  alarm_name          = "${var.name}-no-webhooks"
  alarm_description   = "No webhook delivery was accepted for ${coalesce(var.no_webhooks_alarm_hours, 0)} h: the GitHub hook may be disabled, or its deliveries never reach jetrun."
  namespace           = local.jetrun_namespace
  metric_name         = local.jetrun_metrics.webhooks_outcome.name
  dimensions          = { outcome = "accepted" }
  statistic           = "Sum"
  period              = 3600
  evaluation_periods  = coalesce(var.no_webhooks_alarm_hours, 1)
  threshold           = 1
  comparison_operator = "LessThanThreshold"
  # No data at all is the very thing watched for.
  treat_missing_data = "breaching"
  alarm_actions      = [local.topic_arn]
  ok_actions         = [local.topic_arn]
  tags               = local.tags
}
