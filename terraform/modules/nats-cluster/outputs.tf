output "nats_urls" {
  description = "Client URLs of the three nodes, comma-separated: the value of JETRUN_NATS_URL."
  value       = join(",", [for node in values(local.nodes) : "nats://${node.host}:4222"])

  # Whoever uses the URLs starts after the nodes and their DNS records exist.
  depends_on = [aws_route53_record.node]
}

output "nats_url_list" {
  description = "Client URLs of the three nodes, as a list."
  value       = [for node in values(local.nodes) : "nats://${node.host}:4222"]

  depends_on = [aws_route53_record.node]
}

output "security_group_id" {
  description = "Security group of the NATS nodes."
  value       = aws_security_group.nats.id
}

output "instance_ids" {
  description = "EC2 instance id of each node, by node key (n1, n2, n3)."
  value       = { for key, instance in aws_instance.node : key => instance.id }
}

output "private_ips" {
  description = "Current private IP of each node, by node key."
  value       = { for key, instance in aws_instance.node : key => instance.private_ip }
}

output "hostnames" {
  description = "Stable DNS name of each node in the private hosted zone, by node key."
  value       = { for key, node in local.nodes : key => node.host }
}

output "store_volume_ids" {
  description = "EBS volume id of each node's JetStream store, by node key (back these up with snapshots)."
  value       = { for key, volume in aws_ebs_volume.store : key => volume.id }
}

output "route53_zone_id" {
  description = "Private hosted zone holding the node records."
  value       = local.zone_id
}

output "monitoring_urls" {
  description = "Monitoring endpoint of each node (reachable from monitoring_security_group_ids / monitoring_cidr_blocks only)."
  value       = { for key, node in local.nodes : key => "http://${node.host}:8222" }
}

output "node_role_name" {
  description = "IAM role of the nodes (attach extra policies, e.g. for the CloudWatch agent)."
  value       = aws_iam_role.node.name
}
