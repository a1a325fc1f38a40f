variable "name" {
  description = "Name of the cluster: the NATS cluster name, and the prefix of every AWS resource name (server names are <name>-n1..n3)."
  type        = string
  default     = "jetrun-nats"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{0,30}$", var.name))
    error_message = "name must be 1-31 characters of lower-case letters, digits and '-', starting with a letter or digit."
  }
}

variable "vpc_id" {
  description = "VPC the nodes run in (it must have DNS support and DNS host names enabled for the private hosted zone)."
  type        = string
}

variable "subnet_ids" {
  description = "Exactly three private subnets, one per availability zone: node n1 goes into the first, n2 into the second, n3 into the third."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) == 3 && length(distinct(var.subnet_ids)) == 3
    error_message = "subnet_ids must hold exactly three distinct subnets (one per availability zone) for an R3 cluster."
  }
}

variable "nats_server_version" {
  description = "nats-server release installed on every node (pinned; jetrun needs 2.11 or newer for per-key TTL and limit markers)."
  type        = string
  default     = "2.15.1"

  validation {
    condition     = can(regex("^2\\.(1[1-9]|[2-9][0-9])\\.[0-9]+$", var.nats_server_version))
    error_message = "nats_server_version must be a release 2.11.0 or newer, without a leading 'v' (e.g. \"2.15.1\")."
  }
}

variable "nats_server_sha256" {
  description = "SHA-256 of the nats-server release tarball for the chosen version and architecture. Empty: the tarball is checked against the release's SHA256SUMS file (same origin, so set this for a pinned supply chain)."
  type        = string
  default     = ""

  validation {
    condition     = var.nats_server_sha256 == "" || can(regex("^[0-9a-f]{64}$", var.nats_server_sha256))
    error_message = "nats_server_sha256 must be empty or 64 lower-case hex digits."
  }
}

variable "architecture" {
  description = "CPU architecture of the nodes: arm64 (Graviton, the default) or x86_64. Must match instance_type."
  type        = string
  default     = "arm64"

  validation {
    condition     = contains(["arm64", "x86_64"], var.architecture)
    error_message = "architecture must be arm64 or x86_64."
  }
}

variable "instance_type" {
  description = "EC2 instance type of each node."
  type        = string
  default     = "m7g.large"
}

variable "ami_id" {
  description = "AMI of the nodes. null: the latest Amazon Linux 2023 AMI for the architecture, from its public SSM parameter (later AMI updates do not replace running nodes; see docs/deploy-aws.md)."
  type        = string
  default     = null
}

variable "root_volume_size_gib" {
  description = "Size of each node's root volume (GiB)."
  type        = number
  default     = 20

  validation {
    condition     = var.root_volume_size_gib >= 8
    error_message = "root_volume_size_gib must be at least 8."
  }
}

variable "store_volume_size_gib" {
  description = "Size of each node's JetStream store volume (gp3, GiB). JetStream may use 90% of it (max_file_store)."
  type        = number
  default     = 100

  validation {
    condition     = var.store_volume_size_gib >= 10 && var.store_volume_size_gib <= 16384
    error_message = "store_volume_size_gib must be between 10 and 16384."
  }
}

variable "store_volume_iops" {
  description = "Provisioned IOPS of each store volume (gp3: 3000-16000). sync_interval always makes every write an fsync, so IOPS bound the write rate."
  type        = number
  default     = 3000

  validation {
    condition     = var.store_volume_iops >= 3000 && var.store_volume_iops <= 16000
    error_message = "store_volume_iops must be between 3000 and 16000 (gp3)."
  }
}

variable "store_volume_throughput" {
  description = "Provisioned throughput of each store volume (gp3, MiB/s: 125-1000)."
  type        = number
  default     = 125

  validation {
    condition     = var.store_volume_throughput >= 125 && var.store_volume_throughput <= 1000
    error_message = "store_volume_throughput must be between 125 and 1000 MiB/s (gp3)."
  }
}

variable "kms_key_arn" {
  description = "KMS key encrypting the root and store volumes. null: the account's default EBS key (aws/ebs). Volumes are encrypted either way."
  type        = string
  default     = null
}

variable "final_snapshot" {
  description = "Take a snapshot of each store volume when Terraform destroys it."
  type        = bool
  default     = true
}

variable "dns_zone_name" {
  description = "Private hosted zone created for the node names (n1.<zone>, n2.<zone>, n3.<zone>) when route53_zone_id is null."
  type        = string
  default     = "nats.jetrun.internal"
}

variable "route53_zone_id" {
  description = "An existing private hosted zone (associated with vpc_id) to put the node records in instead of creating one."
  type        = string
  default     = null
}

variable "client_security_group_ids" {
  description = "Security groups whose members may connect to the client port 4222 (the jetrun functions)."
  type        = list(string)
  default     = []
}

variable "client_cidr_blocks" {
  description = "IPv4 CIDR blocks that may connect to the client port 4222 (e.g. an operator VPN)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.client_cidr_blocks : can(cidrhost(c, 0)) && c != "0.0.0.0/0"])
    error_message = "client_cidr_blocks must be valid IPv4 CIDR blocks, and not 0.0.0.0/0."
  }
}

variable "monitoring_security_group_ids" {
  description = "Security groups whose members may read the monitoring port 8222 (/healthz, /varz, /jsz: Prometheus exporters)."
  type        = list(string)
  default     = []
}

variable "monitoring_cidr_blocks" {
  description = "IPv4 CIDR blocks that may read the monitoring port 8222."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.monitoring_cidr_blocks : can(cidrhost(c, 0)) && c != "0.0.0.0/0"])
    error_message = "monitoring_cidr_blocks must be valid IPv4 CIDR blocks, and not 0.0.0.0/0."
  }
}

variable "prefix" {
  description = "jetrun subject prefix (JETRUN_PREFIX) the per-function NATS permissions are written for."
  type        = string
  default     = "jetrun"

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,64}$", var.prefix))
    error_message = "prefix must be 1-64 characters of letters, digits, '-' and '_' (as jetrun requires)."
  }
}

variable "auth_secret_arn" {
  description = "Secrets Manager secret (JSON object {\"ingest\":\"...\",\"route\":\"...\",\"worker\":\"...\",\"autoscale\":\"...\",\"bridge\":\"...\",\"github\":\"...\",\"operator\":\"...\"}, every key required) with the passwords of the per-function NATS users of infra/nats/accounts.conf. null: no NATS authentication, access is limited by the security group only. jetrun sends credentials from JETRUN_NATS_USER and JETRUN_NATS_PASSWORD; give each service its user and password when this is set (see docs/deploy-aws.md)."
  type        = string
  default     = null
}

variable "auth_secret_kms_key_arn" {
  description = "Customer-managed KMS key encrypting auth_secret_arn, if any (the nodes get kms:Decrypt on it)."
  type        = string
  default     = null
}

variable "enable_ssm" {
  description = "Attach AmazonSSMManagedInstanceCore so operators reach the nodes through SSM Session Manager (there is no SSH key)."
  type        = bool
  default     = true
}

variable "tags" {
  description = "Tags added to every resource of the module."
  type        = map(string)
  default     = {}
}
