variable "name" {
  description = "Name of the function; its role, log group, dead-letter queue and schedule are named after it."
  type        = string
}

variable "image_uri" {
  description = "The jetrun image in ECR (it holds /usr/local/bin/jetrun-ecs-bridge; Lambda runs images from ECR in the same account and region only)."
  type        = string
}

variable "architecture" {
  description = "Instruction set of the function: arm64 or x86_64 (the image must contain it)."
  type        = string
  default     = "arm64"

  validation {
    condition     = contains(["arm64", "x86_64"], var.architecture)
    error_message = "architecture must be arm64 or x86_64."
  }
}

variable "nats_url" {
  description = "NATS server URLs (JETRUN_NATS_URL, comma-separated)."
  type        = string
}

variable "prefix" {
  description = "jetrun subject prefix (JETRUN_PREFIX)."
  type        = string
  default     = "jetrun"
}

variable "ecs_cluster_name" {
  description = "The job cluster (for the reconcile's ListTasks/DescribeTasks)."
  type        = string
}

variable "deployment" {
  description = "The ECS runner's deployment name (tasks' group and jetrun:deployment tag); tasks of other deployments are ignored."
  type        = string
  default     = "jetrun"
}

variable "job_container_name" {
  description = "The job's container in the job task definitions (the ECS runner's container)."
  type        = string
  default     = "job"
}

variable "task_state_rule_arn" {
  description = "The ARN of that rule (job-tasks' task_state_rule_arn): the invoke permission and the dead-letter queue policy name it. (The AWS provider has no data source for a rule, so it is passed in.)"
  type        = string
}

variable "task_state_rule_name" {
  description = "The EventBridge rule of the job cluster's ECS Task State Change events (job-tasks' task_state_rule_name); this function becomes its target."
  type        = string
}

variable "ecs_policy_json" {
  description = "IAM policy with the reconcile's ECS permissions (job-tasks' bridge_policy_json)."
  type        = string
}

variable "reconcile_schedule" {
  description = "EventBridge schedule of the reconcile pass (ECS shows stopped tasks for about an hour)."
  type        = string
  default     = "rate(1 minute)"
}

variable "maximum_event_age_seconds" {
  description = "How long EventBridge and Lambda keep retrying an event before it goes to the dead-letter queue."
  type        = number
  default     = 3600
}

variable "environment" {
  description = "Extra environment variables of the function (e.g. JETRUN_NATS_USER)."
  type        = map(string)
  default     = {}
}

variable "subnet_ids" {
  description = "Private subnets of the function (it must reach NATS and the ECS API)."
  type        = list(string)
}

variable "security_group_ids" {
  description = "Security groups of the function (one that NATS accepts clients from)."
  type        = list(string)
}

variable "memory_size" {
  description = "Memory of the function in MiB."
  type        = number
  default     = 256
}

variable "timeout" {
  description = "Timeout of one invocation in seconds (the reconcile describes every task of the deployment)."
  type        = number
  default     = 60
}

variable "reserved_concurrent_executions" {
  description = "Reserved concurrency of the function (-1: unreserved)."
  type        = number
  default     = 20
}

variable "kms_key_arn" {
  description = "KMS key for the function's environment variables. null: the AWS-managed key."
  type        = string
  default     = null
}

variable "dlq_kms_key_arn" {
  description = "KMS key of the dead-letter queue. null: SQS-managed encryption."
  type        = string
  default     = null
}

variable "log_retention_days" {
  description = "Days CloudWatch keeps the function's logs."
  type        = number
  default     = 14
}

variable "log_kms_key_arn" {
  description = "KMS key of the log group. null: CloudWatch's own encryption."
  type        = string
  default     = null
}

variable "otel_collector_extension" {
  description = "The function's image holds an OpenTelemetry collector Lambda extension that receives OTLP/HTTP on localhost:4318, e.g. the AWS Distro for OpenTelemetry collector (layer arn:aws:lambda:<region>:901920570463:layer:aws-otel-collector-<arm64|amd64>-ver-...; its default configuration exports to X-Ray). Container-image functions cannot take layers, so the layer's contents go into the image under /opt (extensions/collector and collector-config/); docs/operations.md shows how. true: OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318, unless environment sets it. false: no endpoint, jetrun exports no spans."
  type        = bool
  default     = false
}

variable "otel_collector_config" {
  description = "Collector configuration for the extension (OPENTELEMETRY_COLLECTOR_CONFIG_URI), e.g. /opt/collector-config/custom.yaml baked into the image, or an s3:// or https:// URI the ADOT collector can fetch. null: the extension's default configuration (ADOT: OTLP in, X-Ray out)."
  type        = string
  default     = null
}

variable "otel_traces_sampler" {
  description = "OTEL_TRACES_SAMPLER of jetrun: always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio (with otel_traces_sampler_arg, e.g. 0.1 to keep a tenth of the traces jetrun starts). null: jetrun's default, parentbased_always_on. environment wins if it sets the variable too."
  type        = string
  default     = null

  validation {
    condition     = var.otel_traces_sampler == null || contains(["always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio"], coalesce(var.otel_traces_sampler, "always_on"))
    error_message = "otel_traces_sampler must be always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio."
  }
}

variable "otel_traces_sampler_arg" {
  description = "OTEL_TRACES_SAMPLER_ARG: the ratio (0 to 1) of the traceidratio samplers. null: 1 (keep every trace)."
  type        = number
  default     = null

  validation {
    condition     = var.otel_traces_sampler_arg == null || try(var.otel_traces_sampler_arg >= 0 && var.otel_traces_sampler_arg <= 1, false)
    error_message = "otel_traces_sampler_arg must be a ratio between 0 and 1."
  }
}

variable "tags" {
  description = "Tags added to every resource of the module."
  type        = map(string)
  default     = {}
}
