# Prometheus from Debian's package: no registry image is needed to build it.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends prometheus \
 && rm -rf /var/lib/apt/lists/*
USER nobody
# checkov:skip=CKV_DOCKER_2:the image has no HTTP client to probe itself with; Kubernetes probes /-/healthy and /-/ready
ENTRYPOINT ["/usr/bin/prometheus", "--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/tmp/prometheus", "--web.listen-address=0.0.0.0:9090"]
