variable "name" {
  description = "Name of the service: the ECS service, task definition family, container, IAM roles and log group are named after it."
  type        = string

  validation {
    condition     = can(regex("^[a-zA-Z0-9][a-zA-Z0-9_-]{0,31}$", var.name))
    error_message = "name must be 1-32 characters of letters, digits, '-' and '_' (it prefixes IAM role names, which are limited to 64 characters)."
  }
}

variable "cluster_arn" {
  description = "ECS cluster the service runs in."
  type        = string
}

variable "image" {
  description = "Container image of jetrun (its entrypoint is the jetrun binary), e.g. <account>.dkr.ecr.<region>.amazonaws.com/jetrun:1.2.3. Prefer an immutable tag or a digest."
  type        = string
}

variable "command" {
  description = "The jetrun command and its arguments, e.g. [\"worker\"] or [\"route\", \"--rules\", \"/etc/jetrun/rules.yaml\"] (the image's entrypoint is the jetrun binary)."
  type        = list(string)

  validation {
    condition     = length(var.command) > 0
    error_message = "command must name a jetrun command, e.g. [\"worker\"]."
  }
}

variable "cpu" {
  description = "Task CPU units (Fargate: 256, 512, 1024, 2048, 4096, 8192 or 16384)."
  type        = number
  default     = 256

  validation {
    condition     = contains([256, 512, 1024, 2048, 4096, 8192, 16384], var.cpu)
    error_message = "cpu must be one of the Fargate sizes: 256, 512, 1024, 2048, 4096, 8192, 16384."
  }
}

variable "memory" {
  description = "Task memory (MiB); it must be a valid Fargate combination with cpu."
  type        = number
  default     = 512

  validation {
    condition     = var.memory >= 512 && var.memory <= 122880
    error_message = "memory must be between 512 and 122880 MiB."
  }
}

variable "cpu_architecture" {
  description = "CPU architecture of the task: ARM64 (Graviton) or X86_64. The image must be built for it."
  type        = string
  default     = "ARM64"

  validation {
    condition     = contains(["ARM64", "X86_64"], var.cpu_architecture)
    error_message = "cpu_architecture must be ARM64 or X86_64."
  }
}

variable "desired_count" {
  description = "Tasks to run when the service is created. Terraform sets it only on creation: afterwards the autoscaler (ecs-service backend, UpdateService) or an operator owns the count, and Terraform ignores changes to it."
  type        = number
  default     = 1

  validation {
    condition     = var.desired_count >= 0 && floor(var.desired_count) == var.desired_count
    error_message = "desired_count must be a whole number, 0 or more."
  }
}

variable "create_service" {
  description = "Create the ECS service. false: only the task definition, roles and log group, for one-shot tasks started with `aws ecs run-task` (e.g. `jetrun init`)."
  type        = bool
  default     = true
}

variable "environment" {
  description = "Plain environment variables of the container (e.g. JETRUN_NATS_URL, JETRUN_PREFIX). Never put secrets here: use secrets."
  type        = map(string)
  default     = {}
}

variable "secrets" {
  description = "Secret environment variables: name => full ARN of a Secrets Manager secret (optionally with a :json-key:: suffix) or of an SSM SecureString parameter. ECS injects the value at start; the execution role may read exactly these."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for arn in values(var.secrets) : can(regex("^arn:[^:]+:(secretsmanager|ssm):", arn))])
    error_message = "every secrets value must be the ARN of a Secrets Manager secret or an SSM parameter."
  }
}

variable "secrets_kms_key_arns" {
  description = "Customer-managed KMS keys encrypting the secrets, if any (the execution role gets kms:Decrypt on them)."
  type        = list(string)
  default     = []
}

variable "subnet_ids" {
  description = "Subnets of the tasks (private subnets that reach NATS, and ECR through a NAT gateway or VPC endpoints)."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) > 0
    error_message = "subnet_ids must hold at least one subnet."
  }
}

variable "security_group_ids" {
  description = "Security groups of the tasks (one of them must be allowed into the NATS security group)."
  type        = list(string)

  validation {
    condition     = length(var.security_group_ids) > 0
    error_message = "security_group_ids must hold at least one security group."
  }
}

variable "assign_public_ip" {
  description = "Give the tasks public IPs (only for public subnets without a NAT gateway; not recommended)."
  type        = bool
  default     = false
}

variable "target_group_arn" {
  description = "Load balancer target group to register the tasks in (e.g. `jetrun serve` behind an ALB). null: no load balancer."
  type        = string
  default     = null
}

variable "container_port" {
  description = "Port the container listens on (jetrun serve: 8080, set by JETRUN_HTTP). Required with target_group_arn."
  type        = number
  default     = null

  validation {
    condition     = var.container_port == null || try(var.container_port >= 1 && var.container_port <= 65535, false)
    error_message = "container_port must be between 1 and 65535."
  }
}

variable "health_check_grace_period_seconds" {
  description = "Seconds the load balancer health checks are ignored after a task starts (only with target_group_arn)."
  type        = number
  default     = 30
}

variable "stop_timeout" {
  description = "Seconds between SIGTERM and SIGKILL when a task stops (Fargate allows up to 120). jetrun drains in-flight messages on SIGTERM; unfinished ones are redelivered."
  type        = number
  default     = 120

  validation {
    condition     = var.stop_timeout >= 2 && var.stop_timeout <= 120
    error_message = "stop_timeout must be between 2 and 120 seconds."
  }
}

variable "readonly_root_filesystem" {
  description = "Mount the container's root file system read-only; writable_paths stay writable."
  type        = bool
  default     = true
}

variable "writable_paths" {
  description = "Container paths backed by task-local scratch volumes (writable even with a read-only root), e.g. the worker's JETRUN_DATA_DIR."
  type        = list(string)
  default     = ["/tmp", "/var/lib/jetrun"]
}

variable "ephemeral_storage_gib" {
  description = "Task ephemeral storage (GiB, 21-200) shared by the scratch volumes."
  type        = number
  default     = 21

  validation {
    condition     = var.ephemeral_storage_gib >= 21 && var.ephemeral_storage_gib <= 200
    error_message = "ephemeral_storage_gib must be between 21 and 200."
  }
}

variable "task_role_policy_jsons" {
  description = "Extra IAM policies of the task role (what jetrun itself may do in AWS): name => policy JSON, e.g. { run-job-tasks = module.job_tasks.worker_policy_json }."
  type        = map(string)
  default     = {}
}

variable "enable_execute_command" {
  description = "Allow `aws ecs execute-command` into the tasks (adds the SSM messages permissions to the task role)."
  type        = bool
  default     = false
}

variable "deployment_minimum_healthy_percent" {
  description = "Lower bound of running tasks during a deployment, in percent of the desired count."
  type        = number
  default     = 100
}

variable "deployment_maximum_percent" {
  description = "Upper bound of running tasks during a deployment, in percent of the desired count."
  type        = number
  default     = 200
}

variable "log_retention_days" {
  description = "Days CloudWatch keeps the service's logs."
  type        = number
  default     = 30

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a retention CloudWatch Logs supports (1, 3, 5, 7, 14, 30, 60, 90, ... 3653); 0 (never expire) is not allowed here."
  }
}

variable "log_kms_key_arn" {
  description = "KMS key encrypting the log group (its key policy must allow CloudWatch Logs). null: CloudWatch's own encryption."
  type        = string
  default     = null
}

variable "otel_collector_image" {
  description = "Image of an OpenTelemetry collector to run beside jetrun in each task, e.g. public.ecr.aws/aws-observability/aws-otel-collector:v0.43.3 (the AWS Distro for OpenTelemetry collector; pin a version). Set: the task gets that sidecar (not essential: if it dies the service keeps running, without spans), jetrun gets OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 (unless environment sets it) and the task role may write to X-Ray (xray:PutTraceSegments, xray:PutTelemetryRecords). null: no sidecar, and jetrun exports no spans unless environment names an endpoint."
  type        = string
  default     = null
}

variable "otel_collector_command" {
  description = "Arguments of the collector sidecar. The default picks the ADOT image's built-in configuration that receives OTLP on 4317/4318 and exports traces to X-Ray; another collector or configuration (e.g. --config=env:OTEL_CONFIG, or an s3:// URI) goes here."
  type        = list(string)
  default     = ["--config=/etc/ecs/ecs-xray.yaml"]
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
  description = "Tags added to every resource of the module (and propagated to the tasks)."
  type        = map(string)
  default     = {}
}
