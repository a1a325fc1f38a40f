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

output "log_stream_prefix" {
  description = "awslogs-stream-prefix of the job task definitions (the ECS runner's logs.stream_prefix, with logs.group = log_group_name)."
  value       = local.log_stream_prefix
}

output "worker_policy_json" {
  description = "IAM policy for the worker's task role: ecs:RunTask on the job task definitions, ListTasks, DescribeTasks, StopTask and TagResource in this cluster, logs:GetLogEvents on the job log group, iam:PassRole of the two job roles to ECS."
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

output "offline_security_group_id" {
  description = "Security group for jobs without network (no inbound, no outbound): the ECS runner's offline_security_groups."
  value       = aws_security_group.offline.id
}

output "default_task_definition_family" {
  description = "Family of the default job task definition (null when default_job_image is null)."
  value       = var.default_job_image == null ? null : aws_ecs_task_definition.default[0].family
}

output "bridge_policy_json" {
  description = "IAM policy for the task-state bridge's reconcile: ecs:ListTasks, DescribeTasks and StopTask in this cluster."
  value       = data.aws_iam_policy_document.bridge.json
}
