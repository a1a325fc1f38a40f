variable "name" {
  description = "Name of the ECS cluster where job containers run; roles, log group, security group and the EventBridge rule are named after it."
  type        = string
  default     = "jetrun-jobs"

  validation {
    condition     = can(regex("^[a-zA-Z0-9][a-zA-Z0-9_-]{0,29}$", var.name))
    error_message = "name must be 1-30 characters of letters, digits, '-' and '_'."
  }
}

variable "vpc_id" {
  description = "VPC of the job tasks (for their security group)."
  type        = string
}

variable "container_insights" {
  description = "Container Insights level of the cluster: enabled or enhanced."
  type        = string
  default     = "enabled"

  validation {
    condition     = contains(["enabled", "enhanced"], var.container_insights)
    error_message = "container_insights must be enabled or enhanced."
  }
}

variable "fargate_spot_weight" {
  description = "Weight of FARGATE_SPOT in the cluster's default capacity provider strategy (FARGATE has weight 1 and base 0). 0: on-demand only. Spot tasks can be stopped with two minutes' notice; jetrun retries such jobs."
  type        = number
  default     = 0

  validation {
    condition     = var.fargate_spot_weight >= 0 && var.fargate_spot_weight <= 1000
    error_message = "fargate_spot_weight must be between 0 and 1000."
  }
}

variable "task_definition_family_prefix" {
  description = "Task definition families the worker may start (ecs:RunTask on task-definition/<prefix>*). Default: the cluster name followed by '-'."
  type        = string
  default     = null
}

variable "job_task_role_policy_jsons" {
  description = "IAM policies of the role job containers run with: name => policy JSON. Empty (the default): jobs get no AWS permissions."
  type        = map(string)
  default     = {}
}

variable "egress_cidr_blocks" {
  description = "Where job tasks may connect to (their security group has no inbound rule). The default allows everything outbound, e.g. a git clone; narrow it if jobs need less."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "log_retention_days" {
  description = "Days CloudWatch keeps job container logs."
  type        = number
  default     = 14

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a retention CloudWatch Logs supports (1, 3, 5, 7, 14, 30, 60, 90, ... 3653)."
  }
}

variable "log_kms_key_arn" {
  description = "KMS key encrypting the job log group (its key policy must allow CloudWatch Logs). null: CloudWatch's own encryption."
  type        = string
  default     = null
}

variable "tags" {
  description = "Tags added to every resource of the module."
  type        = map(string)
  default     = {}
}

variable "default_job_image" {
  description = "Image of the default job task definition (<family prefix>default, container `job`). null: no default task definition is created; the worker's ECS runner config must then name task definitions per queue or image."
  type        = string
  default     = null
}

variable "default_job_cpu" {
  description = "CPU units of the default job task definition (a Fargate size: 256, 512, 1024, 2048, 4096, 8192 or 16384). Jobs asking for resources override it per task."
  type        = number
  default     = 512
}

variable "default_job_memory" {
  description = "Memory (MiB) of the default job task definition; must be valid with default_job_cpu on Fargate."
  type        = number
  default     = 1024
}

variable "default_job_architecture" {
  description = "CPU architecture of the default job task definition: ARM64 or X86_64."
  type        = string
  default     = "ARM64"

  validation {
    condition     = contains(["ARM64", "X86_64"], var.default_job_architecture)
    error_message = "default_job_architecture must be ARM64 or X86_64."
  }
}

variable "job_stop_timeout_seconds" {
  description = "Seconds ECS waits after SIGTERM before SIGKILL when a job task is stopped (cancel, timeout); at most 120 on Fargate."
  type        = number
  default     = 30
}
