variable "name" {
  description = "Name of the deployment: the dashboard, SNS topic and alarms are named after it."
  type        = string
  default     = "jetrun"

  validation {
    condition     = can(regex("^[a-zA-Z0-9][a-zA-Z0-9_-]{0,63}$", var.name))
    error_message = "name must be 1-64 characters of letters, digits, '-' and '_'."
  }
}

variable "ecs_cluster_name" {
  description = "ECS cluster of the jetrun services (the ClusterName dimension of their metrics)."
  type        = string
  default     = null
}

variable "ecs_services" {
  description = "jetrun ECS services to watch: label => service name, e.g. { route = module.route.service_name, worker = module.worker.service_name }. Needs ecs_cluster_name."
  type        = map(string)
  default     = {}
}

variable "lambda_functions" {
  description = "Lambda functions to watch for errors and throttles: label => function name."
  type        = map(string)
  default     = {}
}

variable "http_apis" {
  description = "API Gateway HTTP APIs to watch for 5xx answers: label => API id."
  type        = map(string)
  default     = {}
}

variable "load_balancers" {
  description = "Application load balancers (e.g. in front of `jetrun serve` on ECS) to watch for 5xx answers: label => ARN suffix (app/<name>/<id>)."
  type        = map(string)
  default     = {}
}

variable "nats_instances" {
  description = "NATS nodes to watch for failed EC2 status checks: label => instance id, e.g. module.nats.instance_ids."
  type        = map(string)
  default     = {}
}

variable "sns_topic_arn" {
  description = "Existing SNS topic for alarm (and OK) notifications. null: the module creates one (output sns_topic_arn); subscribe to it."
  type        = string
  default     = null
}

variable "sns_kms_key_arn" {
  description = "Customer-managed KMS key encrypting the created SNS topic; its key policy must allow cloudwatch.amazonaws.com kms:Decrypt and kms:GenerateDataKey*. null: no server-side encryption (alarm messages hold no secrets). The AWS-managed aws/sns key cannot be used: CloudWatch alarms cannot publish with it."
  type        = string
  default     = null
}

variable "ecs_cpu_threshold_percent" {
  description = "Average CPU utilization (percent) of an ECS service that raises its alarm."
  type        = number
  default     = 80

  validation {
    condition     = var.ecs_cpu_threshold_percent > 0 && var.ecs_cpu_threshold_percent <= 100
    error_message = "ecs_cpu_threshold_percent must be in (0, 100]."
  }
}

variable "ecs_memory_threshold_percent" {
  description = "Average memory utilization (percent) of an ECS service that raises its alarm."
  type        = number
  default     = 80

  validation {
    condition     = var.ecs_memory_threshold_percent > 0 && var.ecs_memory_threshold_percent <= 100
    error_message = "ecs_memory_threshold_percent must be in (0, 100]."
  }
}

variable "lambda_errors_threshold" {
  description = "Lambda errors per period that raise the alarm (jetrun answers 503 on NATS trouble without erroring, so errors mean crashes or timeouts)."
  type        = number
  default     = 1
}

variable "http_5xx_threshold" {
  description = "5xx answers per period (HTTP API or load balancer) that raise the alarm. jetrun answers 503 when JetStream did not acknowledge a webhook, so senders retry."
  type        = number
  default     = 5
}

variable "period_seconds" {
  description = "Period of every alarm's metric (seconds)."
  type        = number
  default     = 60

  validation {
    condition     = contains([10, 30, 60, 120, 300, 600, 900, 3600], var.period_seconds)
    error_message = "period_seconds must be 10, 30, 60, 120, 300, 600, 900 or 3600."
  }
}

variable "evaluation_periods" {
  description = "Consecutive breaching periods before an alarm fires."
  type        = number
  default     = 5

  validation {
    condition     = var.evaluation_periods >= 1
    error_message = "evaluation_periods must be at least 1."
  }
}

variable "tags" {
  description = "Tags added to every resource of the module that supports them."
  type        = map(string)
  default     = {}
}

variable "jetrun_metrics" {
  description = "Add the dashboard widgets and alarms of jetrun's own metrics (namespace jetrun): the services must write EMF lines (JETRUN_METRICS_EMF=stdout), as terraform/examples/complete sets."
  type        = bool
  default     = true
}

variable "queue_wait_p99_threshold_seconds" {
  description = "p99 of submit-to-start (seconds) above which the queue-wait alarms fire: the all-queue one, and each per-queue one (queues) without an entry in queue_wait_p99_threshold_seconds_by_queue."
  type        = number
  default     = 300

  validation {
    condition     = var.queue_wait_p99_threshold_seconds > 0
    error_message = "queue_wait_p99_threshold_seconds must be positive."
  }
}

variable "queues" {
  description = "Queues with alarms of their own: for each, a submit-to-start p99 alarm and a backlog-age alarm on that queue alone (dimension queue = <name>), so one slow queue is named in the alarm instead of being hidden in (or missing from) the all-queue aggregate. Queues not listed are still covered by the aggregate alarms. e.g. [\"default\", \"bisect\"] (the worker's JETRUN_QUEUES)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for q in var.queues : can(regex("^[A-Za-z0-9_-]{1,64}$", q))])
    error_message = "queues must hold queue names of 1-64 letters, digits, '-' and '_'."
  }
}

variable "queue_wait_p99_threshold_seconds_by_queue" {
  description = "Per-queue override of queue_wait_p99_threshold_seconds for the per-queue alarms: queue => seconds, e.g. { bisect = 1800 }. Every key must be in queues; queues without an entry use queue_wait_p99_threshold_seconds."
  type        = map(number)
  default     = {}

  validation {
    condition     = alltrue([for t in values(var.queue_wait_p99_threshold_seconds_by_queue) : t > 0])
    error_message = "every queue_wait_p99_threshold_seconds_by_queue value must be positive."
  }
}

variable "backlog_age_threshold_seconds_by_queue" {
  description = "Per-queue override of backlog_age_threshold_seconds for the per-queue alarms: queue => seconds, e.g. { bisect = 3600 }. Every key must be in queues; queues without an entry use backlog_age_threshold_seconds."
  type        = map(number)
  default     = {}

  validation {
    condition     = alltrue([for t in values(var.backlog_age_threshold_seconds_by_queue) : t > 0])
    error_message = "every backlog_age_threshold_seconds_by_queue value must be positive."
  }
}

variable "backlog_age_threshold_seconds" {
  description = "Age (seconds) of the oldest submission still waiting above which the backlog alarms fire: the all-queue one, and each per-queue one (queues) without an entry in backlog_age_threshold_seconds_by_queue."
  type        = number
  default     = 900

  validation {
    condition     = var.backlog_age_threshold_seconds > 0
    error_message = "backlog_age_threshold_seconds must be positive."
  }
}

variable "failure_rate_threshold_percent" {
  description = "Percentage of finished jobs that failed or timed out (all queues, per period) above which the failure-rate alarm fires."
  type        = number
  default     = 20

  validation {
    condition     = var.failure_rate_threshold_percent > 0 && var.failure_rate_threshold_percent <= 100
    error_message = "failure_rate_threshold_percent must be in (0, 100]."
  }
}

variable "bad_signature_threshold" {
  description = "Webhook deliveries with a bad signature in 5 minutes that raise the alarm."
  type        = number
  default     = 10
}

variable "no_webhooks_alarm_hours" {
  description = "Alarm when no webhook delivery was accepted for this many hours. null: no such alarm (a quiet repository is not an incident everywhere)."
  type        = number
  default     = null

  validation {
    condition     = var.no_webhooks_alarm_hours == null || try(var.no_webhooks_alarm_hours >= 1 && var.no_webhooks_alarm_hours <= 24, false)
    error_message = "no_webhooks_alarm_hours must be null or 1 to 24."
  }
}
