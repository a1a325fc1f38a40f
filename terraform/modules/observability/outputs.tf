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
  )
}
