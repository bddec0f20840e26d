# A task with a Trellis sidecar: the proxy runs beside it as a prestart sidecar task and is
# fed by the node's agent (trellis-agent.nomad.hcl). The task reaches `ratings` through the
# sidecar's upstream listener on 127.0.0.1:9002.
job "reviews" {
  datacenters = ["*"]

  group "reviews" {
    count = 2

    network {
      mode = "bridge"
      port "http" { to = 9080 }
    }

    task "trellis-sidecar" {
      driver = "exec"

      lifecycle {
        hook    = "prestart"
        sidecar = true
      }

      config {
        command = "/usr/local/bin/trellis"
        args = [
          "proxy",
          "--agent", "${attr.unique.network.ip-address}:15012",
          "--config", "${NOMAD_TASK_DIR}/proxy.yaml",
          "--data-dir", "${NOMAD_ALLOC_DIR}/trellis",
        ]
      }

      template {
        destination = "local/proxy.yaml"
        data        = <<-YAML
          node: {name: "reviews-{{ env "NOMAD_ALLOC_INDEX" }}", namespace: default}
          drainTimeout: 10s
          listeners:
            upstreams:
              - {name: ratings, bind: "127.0.0.1:9002", service: ratings}
        YAML
      }

      resources {
        cpu    = 100
        memory = 64
      }
    }

    task "reviews" {
      driver = "docker"

      config {
        image = "docker.io/istio/examples-bookinfo-reviews-v1:1.20.2"
        ports = ["http"]
      }

      env {
        RATINGS_HOSTNAME = "127.0.0.1:9002"
      }
    }
  }
}
