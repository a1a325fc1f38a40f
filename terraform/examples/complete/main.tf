# A complete jetrun deployment in an existing VPC:
#
#   GitHub ─▶ API Gateway (HTTP API) ─▶ Lambda `jetrun serve` ─┐
#                                                              ▼
#   ECS services: `jetrun route`, `jetrun worker`,  ◀──▶  NATS JetStream (3 × EC2, R3, 3 AZs)
#                 `jetrun autoscale` (2 tasks, one elected leader)
#   one-shot task: `jetrun init --replicas 3` (aws ecs run-task, see output init_run_task_command)
#   ECS cluster for job tasks: the worker's ECS runner starts one Fargate task per job
#   attempt; their state changes reach NATS through the bridge Lambda (EventBridge rule
#   target, dead-letter queue) · CloudWatch dashboard and alarms
#
# The autoscaler (`jetrun autoscale`) moves services declared with `jetrun scale set`; the
# output worker_scale_spec_command declares the worker service for its ecs-service backend
# (UpdateService desiredCount; Terraform ignores the services' desired counts). See
# docs/autoscale.md and docs/deploy-aws.md.

locals {
  route_image = var.route_image != null ? var.route_image : var.image
  base_env = {
    JETRUN_NATS_URL   = module.nats.nats_urls
    JETRUN_PREFIX     = var.prefix
    JETRUN_LOG_FORMAT = "json"
  }
  # jetrun's own metrics as CloudWatch EMF lines on stdout (the awslogs driver and Lambda
  # turn them into metrics of the namespace `jetrun`: the observability module's
  # dashboard and alarms read them).
  metrics_env = { JETRUN_METRICS_EMF = "stdout" }
  # The long-running functions get the NATS URLs through terraform_data.init, so they are
  # created only after `jetrun init` succeeded (route and worker exit when their streams
  # do not exist yet, and repeated failures would trip the ECS deployment circuit breaker).
  nats_url_after_init = var.run_init_on_apply ? terraform_data.init[0].output : module.nats.nats_urls
  common_env          = merge(local.base_env, local.metrics_env, { JETRUN_NATS_URL = local.nats_url_after_init })
  worker_secrets      = var.callback_secret_arn == null ? {} : { JETRUN_CALLBACK_SECRET = var.callback_secret_arn }
  tags                = merge(var.tags, { "jetrun:deployment" = var.name })

  # The worker's ECS runner (JETRUN_ECS_CONFIG, the runner's EcsConfig as JSON): every
  # job attempt is one task in the job cluster, in the private subnets, with the job
  # security group (the offline one for jobs without `network`).
  worker_ecs_config = jsonencode({
    cluster         = module.job_tasks.cluster_name
    region          = var.region
    deployment      = var.name
    task_definition = module.job_tasks.default_task_definition_family
    queues          = var.job_task_definitions
    # Built without `cond ? [a, b] : [c]`: Terraform unifies such tuples into a list of
    # string maps, and the runner refuses "weight": "1" (it wants numbers).
    capacity_providers = concat(
      [for w in [var.job_fargate_spot_weight] : { name = "FARGATE_SPOT", weight = w, base = 0 } if w > 0],
      [{ name = "FARGATE", weight = 1, base = var.job_fargate_spot_weight > 0 ? 1 : 0 }],
    )
    subnets                 = var.private_subnet_ids
    security_groups         = [module.job_tasks.security_group_id]
    offline_security_groups = [module.job_tasks.offline_security_group_id]
    assign_public_ip        = false
    logs                    = { group = module.job_tasks.log_group_name, stream_prefix = module.job_tasks.log_stream_prefix }
    pacer                   = { capacity = var.job_launch_burst, refill_per_second = var.job_launch_rate, shared_bucket = "${var.prefix}-ecs-pacer" }
  })

  init_run_task_command = join(" ", [
    "aws ecs run-task",
    "--region ${var.region}",
    "--cluster ${aws_ecs_cluster.services.name}",
    "--launch-type FARGATE",
    "--task-definition ${module.init.task_definition_family}",
    "--network-configuration 'awsvpcConfiguration={subnets=[${join(",", var.private_subnet_ids)}],securityGroups=[${aws_security_group.functions.id}],assignPublicIp=DISABLED}'",
    "--query 'tasks[0].taskArn' --output text",
  ])
}

# ---- Shared network and cluster for the jetrun functions ---------------------------------

# Every jetrun function (Lambda and ECS tasks) is in this group; NATS admits it on 4222.
resource "aws_security_group" "functions" {
  name_prefix = "${var.name}-functions-"
  description = "jetrun functions (ingest, route, worker, init): NATS clients, no inbound"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = "${var.name}-functions" })

  lifecycle {
    create_before_destroy = true
  }
}

# Outbound: NATS, ECR and the AWS APIs; worker jobs (process runner) may also need the
# internet (git clone...).
resource "aws_vpc_security_group_egress_rule" "functions" {
  security_group_id = aws_security_group.functions.id
  description       = "Outbound: NATS, ECR, AWS APIs, job traffic"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
  tags              = local.tags
}

resource "aws_ecs_cluster" "services" {
  name = "${var.name}-services"

  setting {
    name  = "containerInsights"
    value = "enabled"
  }

  tags = local.tags
}

# ---- NATS -------------------------------------------------------------------------------

module "nats" {
  source = "../../modules/nats-cluster"

  name                      = "${var.name}-nats"
  vpc_id                    = var.vpc_id
  subnet_ids                = var.private_subnet_ids
  instance_type             = var.nats_instance_type
  nats_server_version       = var.nats_server_version
  store_volume_size_gib     = var.nats_store_volume_size_gib
  kms_key_arn               = var.kms_key_arn
  dns_zone_name             = "nats.${var.name}.internal"
  prefix                    = var.prefix
  client_security_group_ids = [aws_security_group.functions.id]
  client_cidr_blocks        = var.operator_cidr_blocks
  monitoring_cidr_blocks    = var.operator_cidr_blocks
  tags                      = local.tags
}

# ---- Job tasks (ECS cluster for the ECS runner) ------------------------------------------

module "job_tasks" {
  source = "../../modules/job-tasks"

  name                = "${var.name}-jobs"
  vpc_id              = var.vpc_id
  default_job_image   = var.job_image != null ? var.job_image : var.image
  fargate_spot_weight = var.job_fargate_spot_weight
  log_retention_days  = var.log_retention_days
  tags                = local.tags
}

# ---- jetrun init: a one-shot task ---------------------------------------------------------

module "init" {
  source = "../../modules/jetrun-service"

  name           = "${var.name}-init"
  create_service = false
  cluster_arn    = aws_ecs_cluster.services.arn
  image          = var.image
  command        = ["init"]
  environment = merge(local.base_env, {
    JETRUN_REPLICAS = "3"
    JETRUN_QUEUES   = join(",", var.queues)
  })
  subnet_ids         = var.private_subnet_ids
  security_group_ids = [aws_security_group.functions.id]
  log_retention_days = var.log_retention_days
  tags               = local.tags
}

# Runs the init task during `terraform apply` (needs bash and the AWS CLI v2 where Terraform
# runs; set run_init_on_apply = false to run output init_run_task_command yourself). It runs
# again whenever the init task definition changes (new image, new settings): init is
# idempotent. The NATS nodes may still be booting on the first apply, hence the retries.
resource "terraform_data" "init" {
  count = var.run_init_on_apply ? 1 : 0

  input            = module.nats.nats_urls
  triggers_replace = [module.init.task_definition_arn]

  provisioner "local-exec" {
    interpreter = ["/bin/bash", "-c"]
    command     = <<-EOT
      set -euo pipefail
      for attempt in 1 2 3 4 5 6 7 8 9 10; do
        task=$(${local.init_run_task_command})
        aws ecs wait tasks-stopped --region ${var.region} --cluster ${aws_ecs_cluster.services.name} --tasks "$task"
        code=$(aws ecs describe-tasks --region ${var.region} --cluster ${aws_ecs_cluster.services.name} --tasks "$task" \
          --query 'tasks[0].containers[0].exitCode' --output text)
        if [ "$code" = "0" ]; then echo "jetrun init: done"; exit 0; fi
        echo "jetrun init exited with $code (attempt $attempt of 10; logs: ${module.init.log_group_name}); retrying in 30 s" >&2
        sleep 30
      done
      exit 1
    EOT
  }
}

# ---- route --------------------------------------------------------------------------------

module "route" {
  source = "../../modules/jetrun-service"

  name          = "${var.name}-route"
  cluster_arn   = aws_ecs_cluster.services.arn
  image         = local.route_image
  command       = ["route"]
  desired_count = var.route_desired_count
  environment = merge(local.common_env, {
    JETRUN_RULES = var.route_rules_path
  })
  subnet_ids         = var.private_subnet_ids
  security_group_ids = [aws_security_group.functions.id]
  log_retention_days = var.log_retention_days
  # Tracing: the OpenTelemetry collector sidecar (otel_collector_image) and the sampler.
  otel_collector_image    = var.otel_collector_image
  otel_traces_sampler     = var.otel_traces_sampler
  otel_traces_sampler_arg = var.otel_traces_sampler_arg
  tags                    = local.tags
}

# ---- worker: dispatch + node agent + settle -----------------------------------------------

module "worker" {
  source = "../../modules/jetrun-service"

  name          = "${var.name}-worker"
  cluster_arn   = aws_ecs_cluster.services.arn
  image         = var.image
  command       = ["worker"]
  cpu           = var.worker_cpu
  memory        = var.worker_memory
  desired_count = var.worker_desired_count
  environment = merge(local.common_env, {
    JETRUN_QUEUES              = join(",", var.queues)
    JETRUN_RUNNER              = var.worker_runner
    JETRUN_ECS_CONFIG          = local.worker_ecs_config
    JETRUN_MAX_CONCURRENT_JOBS = tostring(var.worker_max_concurrent_jobs)
    JETRUN_DATA_DIR            = "/var/lib/jetrun/worker"
  })
  secrets            = local.worker_secrets
  subnet_ids         = var.private_subnet_ids
  security_group_ids = [aws_security_group.functions.id]
  # For the ECS runner: start, watch and stop job tasks in the job cluster.
  task_role_policy_jsons = {
    run-job-tasks = module.job_tasks.worker_policy_json
  }
  log_retention_days = var.log_retention_days
  # Tracing: the OpenTelemetry collector sidecar (otel_collector_image) and the sampler.
  otel_collector_image    = var.otel_collector_image
  otel_traces_sampler     = var.otel_traces_sampler
  otel_traces_sampler_arg = var.otel_traces_sampler_arg
  tags                    = local.tags
}

# ---- autoscale: queue depth to replicas ---------------------------------------------------

# Two tasks for failover: they compete for the leader lease in the nodes bucket; one acts,
# the other takes over within the lease TTL (5 s) if it dies, at once if it stops cleanly.
module "autoscale" {
  source = "../../modules/jetrun-service"

  name          = "${var.name}-autoscale"
  cluster_arn   = aws_ecs_cluster.services.arn
  image         = var.image
  command       = ["autoscale"]
  desired_count = 2
  # JETRUN_DATA_DIR: only the `local` backend writes there (replicas on its own host).
  environment = merge(local.common_env, {
    JETRUN_AUTOSCALE_ECS_REGION = var.region
    JETRUN_DATA_DIR             = "/var/lib/jetrun/autoscale"
  })
  subnet_ids         = var.private_subnet_ids
  security_group_ids = [aws_security_group.functions.id]
  # The ecs-service backend: DescribeServices and UpdateService on this cluster's services.
  task_role_policy_jsons = {
    scale-services = data.aws_iam_policy_document.autoscale.json
  }
  log_retention_days = var.log_retention_days
  # Tracing: the OpenTelemetry collector sidecar (otel_collector_image) and the sampler.
  otel_collector_image    = var.otel_collector_image
  otel_traces_sampler     = var.otel_traces_sampler
  otel_traces_sampler_arg = var.otel_traces_sampler_arg
  tags                    = local.tags
}

# Any service of the services cluster that a scale spec names (e.g. the workers), nothing
# else: service ARNs are arn:<partition>:ecs:<region>:<account>:service/<cluster>/<service>.
data "aws_iam_policy_document" "autoscale" {
  statement {
    sid       = "ScaleServicesOfThisCluster"
    actions   = ["ecs:DescribeServices", "ecs:UpdateService"]
    resources = ["${replace(aws_ecs_cluster.services.arn, ":cluster/", ":service/")}/*"]
  }
}

# ---- ingest: jetrun serve on Lambda --------------------------------------------------------

module "ingest" {
  source = "../../modules/ingest-lambda"

  name                           = "${var.name}-ingest"
  image_uri                      = var.image
  nats_url                       = local.nats_url_after_init
  environment                    = merge(local.metrics_env, { JETRUN_PREFIX = var.prefix })
  reserved_concurrent_executions = var.lambda_reserved_concurrency
  secret_arns = {
    JETRUN_GITHUB_WEBHOOK_SECRET = var.github_webhook_secret_arn
    JETRUN_API_TOKENS            = var.api_tokens_secret_arn
  }
  kms_key_arn        = var.kms_key_arn
  subnet_ids         = var.private_subnet_ids
  security_group_ids = [aws_security_group.functions.id]
  log_retention_days = var.log_retention_days
  # Tracing: the collector extension in the image (lambda_otel_collector) and the sampler.
  otel_collector_extension = var.lambda_otel_collector
  otel_traces_sampler      = var.otel_traces_sampler
  otel_traces_sampler_arg  = var.otel_traces_sampler_arg
  tags                     = local.tags
}

# ---- The task-state bridge: ECS task state changes into NATS ------------------------------

module "ecs_bridge" {
  source = "../../modules/ecs-bridge"

  name                 = "${var.name}-ecs-bridge"
  image_uri            = var.image
  nats_url             = local.nats_url_after_init
  prefix               = var.prefix
  ecs_cluster_name     = module.job_tasks.cluster_name
  deployment           = var.name
  task_state_rule_name = module.job_tasks.task_state_rule_name
  task_state_rule_arn  = module.job_tasks.task_state_rule_arn
  ecs_policy_json      = module.job_tasks.bridge_policy_json
  kms_key_arn          = var.kms_key_arn
  subnet_ids           = var.private_subnet_ids
  security_group_ids   = [aws_security_group.functions.id]
  log_retention_days   = var.log_retention_days
  # Tracing: the collector extension in the image (lambda_otel_collector) and the sampler.
  otel_collector_extension = var.lambda_otel_collector
  otel_traces_sampler      = var.otel_traces_sampler
  otel_traces_sampler_arg  = var.otel_traces_sampler_arg
  tags                     = local.tags
}

# ---- Dashboard and alarms ---------------------------------------------------------------

module "observability" {
  source = "../../modules/observability"

  name             = var.name
  ecs_cluster_name = aws_ecs_cluster.services.name
  ecs_services = {
    route     = module.route.service_name
    worker    = module.worker.service_name
    autoscale = module.autoscale.service_name
  }
  lambda_functions = { ingest = module.ingest.function_name }
  http_apis        = { ingest = module.ingest.api_id }
  nats_instances   = module.nats.instance_ids
  sns_topic_arn    = var.alarm_sns_topic_arn
  # jetrun's own metrics (EMF, local.metrics_env): dashboard widgets and alarms.
  jetrun_metrics                   = true
  queue_wait_p99_threshold_seconds = var.alarm_queue_wait_p99_seconds
  # An alarm pair (wait p99, backlog age) per queue the worker serves, beside the aggregate.
  queues                                    = var.queues
  queue_wait_p99_threshold_seconds_by_queue = var.alarm_queue_wait_p99_seconds_by_queue
  backlog_age_threshold_seconds_by_queue    = var.alarm_backlog_age_seconds_by_queue
  tags                                      = local.tags
}
