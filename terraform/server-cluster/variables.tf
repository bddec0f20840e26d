variable "name" {
  description = "Prefix of every resource's name."
  type        = string
  default     = "trellis"
}

variable "servers" {
  description = "How many servers: 3 or 5 (a Raft group tolerates 1 or 2 losses)."
  type        = number
  default     = 3
  validation {
    condition     = contains([3, 5], var.servers)
    error_message = "servers must be 3 or 5."
  }
}

variable "image_id" {
  description = "The image built by packer/trellis-server.pkr.hcl."
  type        = string
}

variable "instance_type" {
  type    = string
  default = "t3.medium"
}

variable "disk_gb" {
  type    = number
  default = 20
}

variable "vpc_id" {
  type = string
}

variable "subnet_id" {
  type = string
}

variable "subnet_cidr" {
  description = "CIDR of subnet_id; servers take consecutive addresses in it from first_host."
  type        = string
}

variable "first_host" {
  type    = number
  default = 10
}

variable "allowed_cidrs" {
  description = "Who may reach the servers' gRPC and HTTP ports (agents, operators)."
  type        = list(string)
}
