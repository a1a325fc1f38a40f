variable "region" {
  description = "AWS region to deploy into."
  type        = string
}

variable "name" {
  description = "Name of the deployment; every resource name starts with it."
  type        = string
  default     = "jetrun"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,15}$", var.name))
    error_message = "name must be 1-16 characters of lower-case letters, digits and '-', starting with a letter."
  }
}

variable "prefix" {
  description = "jetrun subject prefix (JETRUN_PREFIX): streams and buckets are named after it."
  type        = string
  default     = "jetrun"

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,64}$", var.prefix))
    error_message = "prefix must be 1-64 characters of letters, digits, '-' and '_'."
  }
}

variable "vpc_id" {
  description = "Existing VPC (DNS support and DNS host names enabled)."
  type        = string
}

variable "private_subnet_ids" {
  description = "Three private subnets in three availability zones, with a route to ECR and the AWS APIs (NAT gateway or VPC endpoints). NATS node n<i> goes into subnet i."
  type        = list(string)

  validation {
    condition     = length(var.private_subnet_ids) == 3 && length(distinct(var.private_subnet_ids)) == 3
    error_message = "private_subnet_ids must hold exactly three distinct subnets, one per availability zone."
  }
}

variable "image" {
  description = "ECR image of jetrun (entrypoint: the jetrun binary) built with the `lambda` and `ecs` cargo features, for ARM64. Use an immutable tag or a digest."
  type        = string
}

variable "route_image" {
  description = "Image for `jetrun route`, which must contain the rules file at route_rules_path (e.g. FROM the jetrun image, COPY rules.yaml). null: image."
  type        = string
  default     = null
}

variable "route_rules_path" {
  description = "Path of the routing rules file (docs/rules.md) inside route_image (JETRUN_RULES)."
  type        = string
  default     = "/etc/jetrun/rules.yaml"
}

variable "github_webhook_secret_arn" {
  description = "Secrets Manager secret holding the GitHub webhook secret(s), comma-separated for rotation (JETRUN_GITHUB_WEBHOOK_SECRET)."
  type        = string
}

variable "api_tokens_secret_arn" {
  description = "Secrets Manager secret holding the API tokens, `tenant:token,tenant2:token2` (JETRUN_API_TOKENS; tenant `*` is an operator)."
  type        = string
}

variable "callback_secret_arn" {
  description = "Secrets Manager secret keying HTTP completion callbacks (JETRUN_CALLBACK_SECRET of the worker). null: HTTP callbacks are refused."
  type        = string
  default     = null
}

variable "run_init_on_apply" {
  description = "Run `jetrun init --replicas 3` as an ECS task during terraform apply (local-exec: needs bash and the AWS CLI v2 where Terraform runs), before the route and worker services and the Lambda are created or changed. false: run output init_run_task_command yourself."
  type        = bool
  default     = true
}

variable "queues" {
  description = "Job queues: `jetrun init` creates their dispatch consumers and the worker serves them."
  type        = list(string)
  default     = ["default"]

  validation {
    condition     = length(var.queues) > 0 && alltrue([for q in var.queues : can(regex("^[A-Za-z0-9_-]{1,64}$", q))])
    error_message = "queues must hold at least one queue name of 1-64 letters, digits, '-' and '_'."
  }
}

variable "worker_desired_count" {
  description = "Worker tasks when the service is created (afterwards the autoscaler or an operator owns the count)."
  type        = number
  default     = 2
}

variable "worker_cpu" {
  description = "CPU units of a worker task (jobs run inside it with the process runner)."
  type        = number
  default     = 1024
}

variable "worker_memory" {
  description = "Memory (MiB) of a worker task."
  type        = number
  default     = 2048
}

variable "worker_max_concurrent_jobs" {
  description = "Jobs one worker task supervises at once (JETRUN_MAX_CONCURRENT_JOBS). With the ECS runner each job is its own Fargate task, so one worker can watch many; with the process runner, 1 gives each job its own worker task."
  type        = number
  default     = 20

  validation {
    condition     = var.worker_max_concurrent_jobs >= 1
    error_message = "worker_max_concurrent_jobs must be at least 1."
  }
}

variable "worker_runner" {
  description = "Runner of the worker (JETRUN_RUNNER). ecs (the default): every job attempt is its own Fargate task in the job cluster, isolated from the worker and from other jobs. process runs jobs as plain processes inside the worker task (no isolation; Fargate cannot run runc); null is for benchmarks."
  type        = string
  default     = "ecs"

  validation {
    condition     = contains(["ecs", "process", "null"], var.worker_runner)
    error_message = "worker_runner must be ecs, process or null: the oci runner needs runc, which Fargate cannot run."
  }
}

variable "job_image" {
  description = "Image of the default job task definition (jobs run in it; ECS cannot change a task's image at launch). null: the jetrun image."
  type        = string
  default     = null
}

variable "job_task_definitions" {
  description = "Task definition per queue for the ECS runner (queue => family, which must start with the job cluster's family prefix, <name>-jobs-). Queues not listed use the default job task definition."
  type        = map(string)
  default     = {}
}

variable "job_fargate_spot_weight" {
  description = "Weight of FARGATE_SPOT for job tasks (FARGATE keeps base 1, weight 1). 0: on-demand only. A Spot interruption is retried as a lost attempt."
  type        = number
  default     = 0
}

variable "job_launch_burst" {
  description = "Task launches the ECS runner may make at once, for all workers together (Fargate's documented launch bucket: 100)."
  type        = number
  default     = 100
}

variable "job_launch_rate" {
  description = "Task launches per second for all workers together (Fargate's documented refill rate: 20 per second per account and Region)."
  type        = number
  default     = 20
}

variable "route_desired_count" {
  description = "Route tasks when the service is created."
  type        = number
  default     = 2
}

variable "nats_instance_type" {
  description = "EC2 instance type of the NATS nodes (arm64)."
  type        = string
  default     = "m7g.large"
}

variable "nats_server_version" {
  description = "nats-server release installed on the nodes."
  type        = string
  default     = "2.15.1"
}

variable "nats_store_volume_size_gib" {
  description = "Size of each NATS node's JetStream volume (GiB)."
  type        = number
  default     = 100
}

variable "operator_cidr_blocks" {
  description = "Networks (e.g. an operator VPN) allowed to reach NATS clients (4222) and monitoring (8222), for the jetrun CLI and nats tools."
  type        = list(string)
  default     = []
}

variable "lambda_reserved_concurrency" {
  description = "Reserved concurrency of the ingest Lambda (also caps its NATS connections)."
  type        = number
  default     = 50
}

variable "kms_key_arn" {
  description = "Customer-managed KMS key for the NATS volumes and the Lambda environment. null: AWS-managed keys (everything is encrypted either way)."
  type        = string
  default     = null
}

variable "alarm_sns_topic_arn" {
  description = "Existing SNS topic for alarms. null: one is created (output alarm_topic_arn)."
  type        = string
  default     = null
}

variable "alarm_queue_wait_p99_seconds" {
  description = "p99 of submit-to-start (seconds, all queues) above which the queue-wait alarm fires."
  type        = number
  default     = 300
}

variable "alarm_queue_wait_p99_seconds_by_queue" {
  description = "Per-queue thresholds (seconds) of the per-queue submit-to-start p99 alarms, queue => seconds, e.g. { bisect = 1800 }; keys must be in queues. Queues not listed use alarm_queue_wait_p99_seconds."
  type        = map(number)
  default     = {}
}

variable "alarm_backlog_age_seconds_by_queue" {
  description = "Per-queue thresholds (seconds) of the per-queue backlog-age alarms, queue => seconds; keys must be in queues. Queues not listed use the module's backlog_age_threshold_seconds (900)."
  type        = map(number)
  default     = {}
}

variable "otel_collector_image" {
  description = "OpenTelemetry collector image run as a sidecar of route, worker and autoscale, e.g. public.ecr.aws/aws-observability/aws-otel-collector:v0.43.3 (ADOT: exports jetrun's spans to X-Ray). null: no sidecar, no spans exported from ECS."
  type        = string
  default     = null
}

variable "lambda_otel_collector" {
  description = "The jetrun image holds the ADOT (or OpenTelemetry) collector Lambda extension under /opt (Lambda takes no layers on container-image functions; docs/operations.md shows how to add it): the ingest and bridge functions then export spans to it on localhost:4318. false: no spans exported from Lambda."
  type        = bool
  default     = false
}

variable "otel_traces_sampler" {
  description = "OTEL_TRACES_SAMPLER of every jetrun service and function, e.g. parentbased_traceidratio. null: jetrun's default (parentbased_always_on)."
  type        = string
  default     = null
}

variable "otel_traces_sampler_arg" {
  description = "OTEL_TRACES_SAMPLER_ARG: the ratio of the traceidratio samplers, e.g. 0.1. null: 1."
  type        = number
  default     = null
}

variable "log_retention_days" {
  description = "Days CloudWatch keeps the logs of every jetrun component."
  type        = number
  default     = 30
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
