#!/usr/bin/env bash
# Local stand-ins for the public base images deploy/ names (python:3.11-slim, nginx:stable), because no
# image registry is reachable here: debootstrap --variant=minbase bookworm, `docker import`, then
# Debian's python3.11 / nginx-light on top. Tagged with the public names so deploy/Dockerfile and
# deploy/compose.yaml run unchanged. Built once; later runs find the labelled images and return.
#
# Containers on a bridge network have no way out here (dockerd runs with --iptables=false
# --ip-masq=false), so the stand-ins (and the collector image, tests/docker/) are built with
# `--network host`. The host's CA bundle goes into the python stand-in so pip inside the build reaches
# the package index through this network's TLS proxy; deploy/Dockerfile itself is not changed for it.
set -euo pipefail
DOCKER="${DOCKER:-$(command -v /usr/bin/docker || command -v docker)}"
CACHE="${ANON_STANDIN_CACHE:-/var/cache/anon-standin}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BASE=anon-standin/debian:bookworm
LABEL=anon-collector.standin

standin() { [ "$("$DOCKER" image inspect --format "{{index .Config.Labels \"$LABEL\"}}" "$1" 2>/dev/null)" = 1 ]; }

if standin python:3.11-slim && standin nginx:stable; then
    echo "stand-ins: cached (python:3.11-slim, nginx:stable)"
    exit 0
fi

if ! "$DOCKER" image inspect "$BASE" >/dev/null 2>&1; then
    if [ ! -f "$CACHE/rootfs/.complete" ]; then
        rm -rf "$CACHE/rootfs"
        mkdir -p "$CACHE"
        echo "stand-ins: debootstrap bookworm into $CACHE/rootfs"
        debootstrap --variant=minbase bookworm "$CACHE/rootfs" "$MIRROR" >"$CACHE/debootstrap.log"
        touch "$CACHE/rootfs/.complete"
    fi
    tar -C "$CACHE/rootfs" --exclude=./.complete -c . \
        | "$DOCKER" import --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
fi

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
cp /etc/ssl/certs/ca-certificates.crt "$ctx/host-ca.crt"

cat >"$ctx/python.Dockerfile" <<DOCKERFILE
FROM $BASE
RUN apt-get update -qq \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \\
       python3.11 python3.11-venv ca-certificates \\
    && ln -s /usr/bin/python3.11 /usr/local/bin/python \\
    && rm -rf /var/lib/apt/lists/*
# After ca-certificates, which would regenerate the bundle without the host's own CAs.
COPY host-ca.crt /etc/ssl/certs/ca-certificates.crt
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
LABEL $LABEL=1
CMD ["python"]
DOCKERFILE

cat >"$ctx/nginx.Dockerfile" <<DOCKERFILE
FROM $BASE
RUN apt-get update -qq \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light \\
    && rm -rf /var/lib/apt/lists/* \\
    && ln -sf /dev/stdout /var/log/nginx/access.log && ln -sf /dev/stderr /var/log/nginx/error.log
LABEL $LABEL=1
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
DOCKERFILE

for img in python:3.11-slim nginx:stable; do
    standin "$img" && continue
    echo "stand-ins: building $img from Debian packages"
    DOCKER_BUILDKIT=0 "$DOCKER" build -q --network host -t "$img" -f "$ctx/${img%%:*}.Dockerfile" "$ctx" >/dev/null
done
echo "stand-ins: ready"
