output "cluster_arn" {
  description = "ARN of the ECS cluster where job tasks run."
  value       = aws_ecs_cluster.jobs.arn
}

output "cluster_name" {
  description = "Name of the ECS cluster where job tasks run."
  value       = aws_ecs_cluster.jobs.name
}

output "execution_role_arn" {
  description = "Execution role for job task definitions (image pull, logs)."
  value       = aws_iam_role.execution.arn
}

output "job_task_role_arn" {
  description = "Task role job containers run with."
  value       = aws_iam_role.job.arn
}

output "task_definition_family_prefix" {
  description = "Prefix of the task definition families the worker may run."
  value       = local.family_prefix
}

output "security_group_id" {
  description = "Security group for job tasks (RunTask networkConfiguration)."
  value       = aws_security_group.jobs.id
}

output "log_group_name" {
  description = "CloudWatch log group for job container logs (awslogs driver)."
  value       = aws_cloudwatch_log_group.jobs.name
}

output "worker_policy_json" {
  description = "IAM policy for the worker's task role: ecs:RunTask, DescribeTasks, StopTask and TagResource on this cluster, iam:PassRole on the job task roles."
  value       = data.aws_iam_policy_document.worker.json
}

output "task_state_rule_arn" {
  description = "ARN of the EventBridge rule matching this cluster's ECS Task State Change events (target it with the bridge into NATS)."
  value       = aws_cloudwatch_event_rule.task_state.arn
}

output "task_state_rule_name" {
  description = "Name of the EventBridge rule matching this cluster's ECS Task State Change events."
  value       = aws_cloudwatch_event_rule.task_state.name
}
