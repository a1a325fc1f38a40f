output "function_name" {
  description = "Name of the Lambda function."
  value       = aws_lambda_function.this.function_name
}

output "function_arn" {
  description = "ARN of the Lambda function."
  value       = aws_lambda_function.this.arn
}

output "role_name" {
  description = "IAM role of the function."
  value       = aws_iam_role.function.name
}

output "api_id" {
  description = "Id of the HTTP API (the ApiId dimension of its CloudWatch metrics)."
  value       = aws_apigatewayv2_api.this.id
}

output "api_endpoint" {
  description = "Base URL of the HTTP API."
  value       = aws_apigatewayv2_api.this.api_endpoint
}

output "webhook_url" {
  description = "Payload URL to configure in the GitHub repository or App webhook (content type application/json)."
  value       = "${aws_apigatewayv2_api.this.api_endpoint}/webhooks/github"
}

output "routes" {
  description = "Route keys the HTTP API forwards to jetrun."
  value       = local.routes
}

output "log_group_name" {
  description = "CloudWatch log group of the function."
  value       = aws_cloudwatch_log_group.function.name
}

output "access_log_group_name" {
  description = "CloudWatch log group of the HTTP API's access logs."
  value       = aws_cloudwatch_log_group.api_access.name
}
