output "server_addresses" {
  description = "Private addresses of the servers; agents use ADDRESS:8502."
  value       = local.addresses
}

output "admin_api" {
  description = "Set TRELLIS_ADDR to one of these."
  value       = [for a in local.addresses : "http://${a}:8500"]
}
