variable "name" {
  description = "Name of the Lambda function; the HTTP API, IAM role and log groups are named after it."
  type        = string
  default     = "jetrun-ingest"

  validation {
    condition     = can(regex("^[a-zA-Z0-9][a-zA-Z0-9_-]{0,36}$", var.name))
    error_message = "name must be 1-37 characters of letters, digits, '-' and '_'."
  }
}

variable "image_uri" {
  description = "ECR image of jetrun built with the `lambda` cargo feature (the binary is the entrypoint), in the same account and region as the function."
  type        = string

  validation {
    condition     = can(regex("^[0-9]{12}\\.dkr\\.ecr\\.[a-z0-9-]+\\.amazonaws\\.com(\\.cn)?/.+", var.image_uri))
    error_message = "image_uri must be an Amazon ECR image URI (<account>.dkr.ecr.<region>.amazonaws.com/<repository>:<tag> or @<digest>): Lambda runs images from ECR only."
  }
}

variable "command" {
  description = "Arguments after the entrypoint: the jetrun command. `serve` detects AWS_LAMBDA_RUNTIME_API and serves through the Lambda runtime."
  type        = list(string)
  default     = ["serve"]
}

variable "architecture" {
  description = "Instruction set of the function: arm64 or x86_64 (the image must be built for it)."
  type        = string
  default     = "arm64"

  validation {
    condition     = contains(["arm64", "x86_64"], var.architecture)
    error_message = "architecture must be arm64 or x86_64."
  }
}

variable "memory_size" {
  description = "Memory of the function (MiB); CPU scales with it."
  type        = number
  default     = 512

  validation {
    condition     = var.memory_size >= 128 && var.memory_size <= 10240
    error_message = "memory_size must be between 128 and 10240 MiB."
  }
}

variable "timeout" {
  description = "Function timeout (seconds). API Gateway HTTP APIs wait at most 30 s for an integration."
  type        = number
  default     = 29

  validation {
    condition     = var.timeout >= 1 && var.timeout <= 30
    error_message = "timeout must be between 1 and 30 seconds (the HTTP API's integration limit)."
  }
}

variable "reserved_concurrent_executions" {
  description = "Concurrency reserved for (and capping) the function; it also bounds the NATS connections ingest opens. -1: no reservation, no cap."
  type        = number
  default     = 50

  validation {
    condition     = var.reserved_concurrent_executions == -1 || var.reserved_concurrent_executions >= 1
    error_message = "reserved_concurrent_executions must be -1 (unreserved) or at least 1 (0 would stop the function)."
  }
}

variable "nats_url" {
  description = "NATS URLs, comma-separated (JETRUN_NATS_URL), e.g. module.nats.nats_urls."
  type        = string
}

variable "environment" {
  description = "Further plain environment variables (e.g. JETRUN_PREFIX, JETRUN_MAX_BODY, JETRUN_API_RATE, JETRUN_GITHUB_EVENTS)."
  type        = map(string)
  default     = {}
}

variable "secret_arns" {
  description = "Secret environment variables: name => Secrets Manager secret ARN whose plain-text value becomes the variable, e.g. { JETRUN_GITHUB_WEBHOOK_SECRET = ..., JETRUN_API_TOKENS = ... }. Lambda cannot inject secrets at start, so Terraform reads them at apply: they end up in the state and the function configuration (encrypted with kms_key_arn)."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for arn in values(var.secret_arns) : can(regex("^arn:[^:]+:secretsmanager:", arn))])
    error_message = "every secret_arns value must be a Secrets Manager secret ARN."
  }
}

variable "kms_key_arn" {
  description = "Customer-managed KMS key encrypting the function's environment (which holds the secrets). null: the AWS-managed Lambda key."
  type        = string
  default     = null
}

variable "subnet_ids" {
  description = "Private subnets of the function (it must reach NATS)."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) > 0
    error_message = "subnet_ids must hold at least one subnet."
  }
}

variable "security_group_ids" {
  description = "Security groups of the function's network interfaces (one must be allowed into the NATS security group)."
  type        = list(string)

  validation {
    condition     = length(var.security_group_ids) > 0
    error_message = "security_group_ids must hold at least one security group."
  }
}

variable "api_throttling_rate_limit" {
  description = "Steady requests per second the HTTP API accepts (above it answers 429); jetrun also rate-limits per tenant."
  type        = number
  default     = 100
}

variable "api_throttling_burst_limit" {
  description = "Requests the HTTP API accepts in a burst."
  type        = number
  default     = 200
}

variable "log_retention_days" {
  description = "Days CloudWatch keeps the function's logs and the API access logs."
  type        = number
  default     = 30

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a retention CloudWatch Logs supports (1, 3, 5, 7, 14, 30, 60, 90, ... 3653)."
  }
}

variable "log_kms_key_arn" {
  description = "KMS key encrypting the log groups (its key policy must allow CloudWatch Logs). null: CloudWatch's own encryption."
  type        = string
  default     = null
}

variable "tracing_mode" {
  description = "X-Ray tracing of the function: Active (Lambda samples and records each invocation; jetrun's spans continue that trace) or PassThrough (only requests that arrive with a sampled X-Ray header are traced)."
  type        = string
  default     = "Active"

  validation {
    condition     = contains(["Active", "PassThrough"], var.tracing_mode)
    error_message = "tracing_mode must be Active or PassThrough."
  }
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
