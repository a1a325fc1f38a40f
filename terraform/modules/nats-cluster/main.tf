# A 3-node NATS JetStream cluster, one node per availability zone, for R3 streams and
# buckets (`jetrun init --replicas 3`).
#
# Node addressing: every node has a stable DNS name in a private hosted zone
# (n1.<zone>, n2.<zone>, n3.<zone>). The routes and the advertised client URLs use these
# names, so (a) no node's configuration depends on another node's IP (no dependency cycle,
# no IP planning inside the subnets), and (b) a replaced instance keeps its name: Terraform
# updates the A record and the other nodes reconnect to it. Clients get the three URLs
# (output nats_urls) and follow cluster discovery themselves; there is deliberately no
# load balancer in front of NATS (clients need direct connections to every node).
#
# Data: each node's JetStream store lives on its own encrypted gp3 volume, separate from
# the instance, so replacing a node (new AMI, new nats-server version) keeps its data.

data "aws_partition" "current" {}

data "aws_region" "current" {}

data "aws_subnet" "node" {
  count = 3
  id    = var.subnet_ids[count.index]
}

data "aws_ssm_parameter" "al2023" {
  count = var.ami_id == null ? 1 : 0
  name  = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-${var.architecture}"
}

data "aws_route53_zone" "given" {
  count   = var.route53_zone_id == null ? 0 : 1
  zone_id = var.route53_zone_id
}

locals {
  ami_id    = var.ami_id != null ? var.ami_id : data.aws_ssm_parameter.al2023[0].insecure_value
  nats_arch = var.architecture == "arm64" ? "arm64" : "amd64"
  zone_id   = var.route53_zone_id != null ? var.route53_zone_id : aws_route53_zone.nats[0].zone_id
  zone_name = trimsuffix(var.route53_zone_id != null ? data.aws_route53_zone.given[0].name : var.dns_zone_name, ".")

  nodes = {
    for i in range(3) : "n${i + 1}" => {
      subnet_id   = var.subnet_ids[i]
      az          = data.aws_subnet.node[i].availability_zone
      server_name = "${var.name}-n${i + 1}"
      host        = "n${i + 1}.${local.zone_name}"
    }
  }

  nats_conf = {
    for key, node in local.nodes : key => templatefile("${path.module}/templates/nats-server.conf.tftpl", {
      server_name       = node.server_name
      cluster_name      = var.name
      client_advertise  = "${node.host}:4222"
      cluster_advertise = "${node.host}:6222"
      routes            = [for other_key, other in local.nodes : other.host if other_key != key]
      max_file_store    = "${floor(var.store_volume_size_gib * 0.9)}G"
      auth_enabled      = var.auth_secret_arn != null
      prefix            = var.prefix
      stream_prefix     = upper(replace(var.prefix, "-", "_"))
    })
  }

  tags = merge(var.tags, { "jetrun:component" = "nats" })
}

# ---- DNS --------------------------------------------------------------------------------

resource "aws_route53_zone" "nats" {
  count   = var.route53_zone_id == null ? 1 : 0
  name    = var.dns_zone_name
  comment = "Stable names of the ${var.name} NATS nodes"

  vpc {
    vpc_id = var.vpc_id
  }

  tags = local.tags
}

resource "aws_route53_record" "node" {
  for_each = local.nodes

  zone_id = local.zone_id
  name    = each.value.host
  type    = "A"
  ttl     = 30
  records = [aws_instance.node[each.key].private_ip]
}

# ---- Network ----------------------------------------------------------------------------

resource "aws_security_group" "nats" {
  name_prefix = "${var.name}-"
  description = "NATS nodes of ${var.name}: 4222 clients, 6222 cluster routes, 8222 monitoring"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = var.name })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "cluster" {
  security_group_id            = aws_security_group.nats.id
  description                  = "Cluster routes between the NATS nodes"
  ip_protocol                  = "tcp"
  from_port                    = 6222
  to_port                      = 6222
  referenced_security_group_id = aws_security_group.nats.id
  tags                         = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "clients_sg" {
  count = length(var.client_security_group_ids)

  security_group_id            = aws_security_group.nats.id
  description                  = "NATS clients (jetrun functions)"
  ip_protocol                  = "tcp"
  from_port                    = 4222
  to_port                      = 4222
  referenced_security_group_id = var.client_security_group_ids[count.index]
  tags                         = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "clients_cidr" {
  count = length(var.client_cidr_blocks)

  security_group_id = aws_security_group.nats.id
  description       = "NATS clients by address"
  ip_protocol       = "tcp"
  from_port         = 4222
  to_port           = 4222
  cidr_ipv4         = var.client_cidr_blocks[count.index]
  tags              = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "monitoring_sg" {
  count = length(var.monitoring_security_group_ids)

  security_group_id            = aws_security_group.nats.id
  description                  = "NATS monitoring endpoint"
  ip_protocol                  = "tcp"
  from_port                    = 8222
  to_port                      = 8222
  referenced_security_group_id = var.monitoring_security_group_ids[count.index]
  tags                         = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "monitoring_cidr" {
  count = length(var.monitoring_cidr_blocks)

  security_group_id = aws_security_group.nats.id
  description       = "NATS monitoring endpoint by address"
  ip_protocol       = "tcp"
  from_port         = 8222
  to_port           = 8222
  cidr_ipv4         = var.monitoring_cidr_blocks[count.index]
  tags              = local.tags
}

# Outbound: the other nodes, the nats-server release download (GitHub) at first boot, and
# the AWS APIs (Secrets Manager, SSM). Narrow it with VPC endpoints and a pre-baked AMI.
resource "aws_vpc_security_group_egress_rule" "all" {
  security_group_id = aws_security_group.nats.id
  description       = "Outbound: cluster routes, release download, AWS APIs"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
  tags              = local.tags
}

# ---- IAM (instance profile) ------------------------------------------------------------

data "aws_iam_policy_document" "assume_ec2" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "node" {
  name_prefix        = "${var.name}-node-"
  description        = "NATS nodes of ${var.name}"
  assume_role_policy = data.aws_iam_policy_document.assume_ec2.json
  tags               = local.tags
}

resource "aws_iam_role_policy_attachment" "ssm" {
  count      = var.enable_ssm ? 1 : 0
  role       = aws_iam_role.node.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

data "aws_iam_policy_document" "auth_secret" {
  count = var.auth_secret_arn == null ? 0 : 1

  statement {
    sid       = "ReadNatsUserPasswords"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [var.auth_secret_arn]
  }

  dynamic "statement" {
    for_each = var.auth_secret_kms_key_arn == null ? [] : [var.auth_secret_kms_key_arn]
    content {
      sid       = "DecryptNatsUserPasswords"
      actions   = ["kms:Decrypt"]
      resources = [statement.value]
    }
  }
}

resource "aws_iam_role_policy" "auth_secret" {
  count  = var.auth_secret_arn == null ? 0 : 1
  name   = "read-nats-user-passwords"
  role   = aws_iam_role.node.id
  policy = data.aws_iam_policy_document.auth_secret[0].json
}

resource "aws_iam_instance_profile" "node" {
  name_prefix = "${var.name}-node-"
  role        = aws_iam_role.node.name
  tags        = local.tags
}

# ---- Nodes ------------------------------------------------------------------------------

resource "aws_ebs_volume" "store" {
  for_each = local.nodes

  availability_zone = each.value.az
  type              = "gp3"
  size              = var.store_volume_size_gib
  iops              = var.store_volume_iops
  throughput        = var.store_volume_throughput
  encrypted         = true
  kms_key_id        = var.kms_key_arn
  final_snapshot    = var.final_snapshot

  tags = merge(local.tags, { Name = "${each.value.server_name}-jetstream" })
}

resource "aws_instance" "node" {
  for_each = local.nodes

  ami                    = local.ami_id
  instance_type          = var.instance_type
  subnet_id              = each.value.subnet_id
  vpc_security_group_ids = [aws_security_group.nats.id]
  iam_instance_profile   = aws_iam_instance_profile.node.name
  monitoring             = true

  user_data = templatefile("${path.module}/templates/user_data.sh.tftpl", {
    server_name         = each.value.server_name
    nats_server_version = var.nats_server_version
    nats_server_sha256  = var.nats_server_sha256
    nats_arch           = local.nats_arch
    volume_id           = aws_ebs_volume.store[each.key].id
    nats_conf_b64       = base64encode(local.nats_conf[each.key])
    auth_secret_arn     = var.auth_secret_arn == null ? "" : var.auth_secret_arn
    region              = data.aws_region.current.name
  })

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  root_block_device {
    volume_type = "gp3"
    volume_size = var.root_volume_size_gib
    encrypted   = true
    kms_key_id  = var.kms_key_arn
    tags        = merge(local.tags, { Name = "${each.value.server_name}-root" })
  }

  tags = merge(local.tags, { Name = each.value.server_name })

  # A new AMI or a changed boot script must not replace all three nodes at once (that
  # would stop the cluster). Roll them one at a time instead:
  #   terraform apply -replace='module.nats.aws_instance.node["n1"]'   (then n2, then n3)
  lifecycle {
    ignore_changes = [ami, user_data]
  }
}

resource "aws_volume_attachment" "store" {
  for_each = local.nodes

  device_name = "/dev/sdf"
  volume_id   = aws_ebs_volume.store[each.key].id
  instance_id = aws_instance.node[each.key].id

  # Stop the instance (nats-server gets SIGUSR2: lame duck, clean shutdown) before the
  # store is detached, e.g. when the node is replaced.
  stop_instance_before_detaching = true
}
