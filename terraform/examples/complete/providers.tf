provider "aws" {
  region = var.region
}

# Keep the state remote, encrypted and access-controlled: it holds the ingest Lambda's
# secrets (see docs/deploy-aws.md). For example:
#
# terraform {
#   backend "s3" {
#     bucket       = "my-terraform-state"
#     key          = "jetrun/terraform.tfstate"
#     region       = "eu-west-1"
#     encrypt      = true
#     use_lockfile = true   # Terraform 1.10+; older versions: dynamodb_table = "..."
#   }
# }
