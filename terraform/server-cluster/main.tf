# A Trellis server cluster: three or five VMs from the Packer image, each running
# `trellis server` with --bootstrap-expect set to the cluster size and --join pointing
# at the others by their private addresses.

terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.0"
    }
  }
}

locals {
  # Fixed private addresses let every server name the others before any of them boots.
  addresses = [for i in range(var.servers) : cidrhost(var.subnet_cidr, var.first_host + i)]
}

resource "aws_security_group" "trellis_server" {
  name_prefix = "${var.name}-"
  description = "Trellis servers: Raft and agents over gRPC, admin HTTP API"
  vpc_id      = var.vpc_id

  ingress {
    description = "gRPC: Raft between servers, agents"
    from_port   = 8502
    to_port     = 8502
    protocol    = "tcp"
    cidr_blocks = var.allowed_cidrs
  }

  ingress {
    description = "admin HTTP API"
    from_port   = 8500
    to_port     = 8500
    protocol    = "tcp"
    cidr_blocks = var.allowed_cidrs
  }

  egress {
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

resource "aws_instance" "server" {
  count                  = var.servers
  ami                    = var.image_id
  instance_type          = var.instance_type
  subnet_id              = var.subnet_id
  private_ip             = local.addresses[count.index]
  vpc_security_group_ids = [aws_security_group.trellis_server.id]

  root_block_device {
    volume_size = var.disk_gb
    volume_type = "gp3"
  }

  user_data = templatefile("${path.module}/server.env.tftpl", {
    address   = local.addresses[count.index]
    expect    = var.servers
    join      = [for a in local.addresses : a if a != local.addresses[count.index]]
  })

  tags = {
    Name = "${var.name}-${count.index + 1}"
    Role = "trellis-server"
  }
}
