output "webhook_url" {
  description = "Payload URL for the GitHub webhook (content type application/json; secret: the value of github_webhook_secret_arn)."
  value       = module.ingest.webhook_url
}

output "api_endpoint" {
  description = "Base URL of the jetrun HTTP API (/v1/jobs, /v1/events, /v1/scale/{service}, /v1/stats, /health, /ready)."
  value       = module.ingest.api_endpoint
}

output "nats_urls" {
  description = "JETRUN_NATS_URL of this deployment (reachable from the functions' security group and operator_cidr_blocks)."
  value       = module.nats.nats_urls
}

output "services_cluster_name" {
  description = "ECS cluster of the jetrun services."
  value       = aws_ecs_cluster.services.name
}

output "worker_service_name" {
  description = "ECS service of the workers (its desired count is owned by the autoscaler or an operator, not Terraform)."
  value       = module.worker.service_name
}

output "autoscale_service_name" {
  description = "ECS service running `jetrun autoscale` (two tasks: one elected leader acts, the other stands by); its task role may move every service of the services cluster."
  value       = module.autoscale.service_name
}

output "autoscale_log_group_name" {
  description = "CloudWatch log group of the autoscaler (each decision is logged as `scale decision`)."
  value       = module.autoscale.log_group_name
}

output "worker_scaler_policy_json" {
  description = "IAM policy letting an autoscaler with the ecs-service backend move the worker service only; the example's autoscale service already has a policy for the whole services cluster, so attach this to an autoscaler run elsewhere."
  value       = module.worker.scaler_policy_json
}

output "init_run_task_command" {
  description = "Runs `jetrun init --replicas 3` once; prints the task ARN. Apply runs it itself unless run_init_on_apply is false; otherwise run it after every deploy (it is idempotent), wait with `aws ecs wait tasks-stopped` and check the exit code (see docs/deploy-aws.md)."
  value       = local.init_run_task_command
}

output "worker_scale_spec_command" {
  description = "Declares the worker service for the autoscaler's ecs-service backend (run with the jetrun CLI against this deployment's NATS; adjust min, max and target)."
  value = join(" ", [
    "jetrun scale set ${module.worker.service_name}",
    "--queue ${var.queues[0]} --min 1 --max 10 --target ${var.worker_max_concurrent_jobs}",
    "--backend ecs_service --strategy infra",
    "--backend-config '${jsonencode({ cluster = aws_ecs_cluster.services.name, service = module.worker.service_name, region = var.region })}'",
  ])
}

output "job_cluster_name" {
  description = "ECS cluster for job tasks (the future ECS runner)."
  value       = module.job_tasks.cluster_name
}

output "job_task_state_rule_arn" {
  description = "EventBridge rule of the job cluster's ECS Task State Change events (its target: the bridge Lambda)."
  value       = module.job_tasks.task_state_rule_arn
}

output "dashboard_name" {
  description = "CloudWatch dashboard of the deployment."
  value       = module.observability.dashboard_name
}

output "alarm_topic_arn" {
  description = "SNS topic the alarms notify: subscribe to it."
  value       = module.observability.sns_topic_arn
}

output "ecs_bridge_function_name" {
  description = "The task-state bridge Lambda (ECS task state changes into NATS)."
  value       = module.ecs_bridge.function_name
}

output "ecs_bridge_dead_letter_queue_url" {
  description = "Dead-letter queue of the bridge: events that could not be delivered or handled. Alarm on its depth."
  value       = module.ecs_bridge.dead_letter_queue_url
}
