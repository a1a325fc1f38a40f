output "service_name" {
  description = "Name of the ECS service (null when create_service is false)."
  value       = var.create_service ? aws_ecs_service.this[0].name : null
}

output "service_arn" {
  description = "ARN of the ECS service (null when create_service is false)."
  value       = var.create_service ? aws_ecs_service.this[0].id : null
}

output "task_definition_arn" {
  description = "ARN (with revision) of the task definition."
  value       = aws_ecs_task_definition.this.arn
}

output "task_definition_family" {
  description = "Family of the task definition (`aws ecs run-task --task-definition <family>` runs its latest revision)."
  value       = aws_ecs_task_definition.this.family
}

output "task_role_arn" {
  description = "ARN of the task role (what jetrun may do in AWS)."
  value       = aws_iam_role.task.arn
}

output "task_role_name" {
  description = "Name of the task role, to attach further policies."
  value       = aws_iam_role.task.name
}

output "execution_role_arn" {
  description = "ARN of the execution role (image pull, logs, secrets)."
  value       = aws_iam_role.execution.arn
}

output "log_group_name" {
  description = "CloudWatch log group of the service's containers."
  value       = aws_cloudwatch_log_group.this.name
}

output "scaler_policy_json" {
  description = "IAM policy allowing ecs:DescribeServices and ecs:UpdateService on this service only: attach it to the role of whatever runs the autoscaler with the ecs-service backend (null when create_service is false)."
  value       = var.create_service ? data.aws_iam_policy_document.scaler[0].json : null
}
