# A VM image with the trellis binary, a trellis user and the systemd unit installed
# (disabled: the Terraform module's user data writes the flags and enables it).
#   bash deploy/build-release.sh      # the profile-guided release build: target/pgo/trellis
#   packer build -var region=eu-west-1 packer/trellis-server.pkr.hcl

packer {
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.3.0"
    }
  }
}

variable "region" {
  type = string
}

variable "binary" {
  type    = string
  default = "target/pgo/trellis"
}

source "amazon-ebs" "debian" {
  region        = var.region
  instance_type = "t3.small"
  ssh_username  = "admin"
  ami_name      = "trellis-server-{{timestamp}}"
  source_ami_filter {
    filters = {
      name                = "debian-12-amd64-*"
      virtualization-type = "hvm"
    }
    owners      = ["136693071363"]
    most_recent = true
  }
}

build {
  sources = ["source.amazon-ebs.debian"]

  provisioner "file" {
    source      = var.binary
    destination = "/tmp/trellis"
  }

  provisioner "file" {
    source      = "deploy/systemd/trellis-server.service"
    destination = "/tmp/trellis-server.service"
  }

  provisioner "shell" {
    inline = [
      "sudo install -m 0755 /tmp/trellis /usr/local/bin/trellis",
      "sudo useradd --system --home /var/lib/trellis --shell /usr/sbin/nologin trellis",
      "sudo install -d -o trellis -g trellis /var/lib/trellis /etc/trellis",
      "sudo install -m 0644 /tmp/trellis-server.service /etc/systemd/system/trellis-server.service",
      "sudo systemctl daemon-reload",
      # A node id lives in the data dir: an image must never carry one, or every VM
      # made from it would clash.
      "sudo rm -rf /var/lib/trellis/server",
    ]
  }
}
