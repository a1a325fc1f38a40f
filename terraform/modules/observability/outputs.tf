output "sns_topic_arn" {
  description = "SNS topic the alarms notify (subscribe an email address, a chat integration or a pager to it)."
  value       = local.topic_arn
}

output "dashboard_name" {
  description = "Name of the CloudWatch dashboard."
  value       = aws_cloudwatch_dashboard.this.dashboard_name
}

output "alarm_names" {
  description = "Names of every alarm the module created."
  value = concat(
    [for alarm in aws_cloudwatch_metric_alarm.ecs : alarm.alarm_name],
    [for alarm in aws_cloudwatch_metric_alarm.lambda : alarm.alarm_name],
    [for alarm in aws_cloudwatch_metric_alarm.http_api_5xx : alarm.alarm_name],
    [for alarm in aws_cloudwatch_metric_alarm.alb_5xx : alarm.alarm_name],
    [for alarm in aws_cloudwatch_metric_alarm.nats_status_check : alarm.alarm_name],
    [for alarm in aws_cloudwatch_metric_alarm.queue_wait_p99_per_queue : alarm.alarm_name],
    [for alarm in aws_cloudwatch_metric_alarm.backlog_age_per_queue : alarm.alarm_name],
    [for alarm in concat(
      aws_cloudwatch_metric_alarm.dead_letters,
      aws_cloudwatch_metric_alarm.queue_wait_p99,
      aws_cloudwatch_metric_alarm.backlog_age,
      aws_cloudwatch_metric_alarm.failure_rate,
      aws_cloudwatch_metric_alarm.ingest_5xx,
      aws_cloudwatch_metric_alarm.bad_signatures,
      aws_cloudwatch_metric_alarm.no_webhooks,
    ) : alarm.alarm_name],
  )
}
