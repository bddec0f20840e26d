# The Trellis agent on every Nomad client node (a system job). It registers nothing by
# itself here: tasks bring their own sidecar (see reviews.nomad.hcl), which gets its config
# from this agent over --sidecar-addr, so no task needs a server address.
job "trellis-agent" {
  type        = "system"
  datacenters = ["*"]

  group "agent" {
    network {
      mode = "host"
    }

    task "agent" {
      driver = "exec"

      config {
        command = "/usr/local/bin/trellis"
        args = [
          "agent",
          "--server", "10.0.0.1:8502",
          "--server", "10.0.0.2:8502",
          "--server", "10.0.0.3:8502",
          "--node", "${node.unique.name}",
          "--data-dir", "/var/lib/trellis/agent",
          "--config", "${NOMAD_TASK_DIR}/agent.yaml",
          # Bridge-mode tasks reach the host at its address, not at 127.0.0.1.
          "--sidecar-addr", "${attr.unique.network.ip-address}:15012",
        ]
      }

      template {
        destination = "local/agent.yaml"
        data        = <<-YAML
          address: {{ env "attr.unique.network.ip-address" }}
          proxy:
            listeners:
              admin: {bind: "127.0.0.1:15000"}
        YAML
      }

      # SIGTERM drains the node's proxy before the agent exits.
      kill_signal  = "SIGTERM"
      kill_timeout = "30s"

      resources {
        cpu    = 200
        memory = 128
      }
    }
  }
}
