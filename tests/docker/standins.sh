#!/usr/bin/env bash
# Local stand-ins for the public images deploy/ names (python:3.11-slim, nginx:stable, postgres:15), as no
# image registry is reachable here: debootstrap --variant=minbase bookworm, `docker import`, then
# Debian's python3.11 / nginx-light / postgresql-15 on top. Tagged with the public names so deploy/Dockerfile and
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

if standin python:3.11-slim && standin nginx:stable && standin postgres:15; then
    echo "stand-ins: cached (python:3.11-slim, nginx:stable, postgres:15)"
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

# What compose.yaml's postgres service uses of the official image: POSTGRES_DB/USER/PASSWORD create the
# cluster on first start (password auth over the network), data in /var/lib/postgresql/data,
# pg_isready for the healthcheck, the server run as the postgres user.
cat >"$ctx/postgres-entrypoint.sh" <<'SH'
#!/bin/sh
set -eu
PGDATA=/var/lib/postgresql/data
BIN=/usr/lib/postgresql/15/bin
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
mkdir -p "$PGDATA" /run/postgresql
chown -R postgres:postgres "$PGDATA" /run/postgresql
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pw="$(mktemp)"
    printf '%s' "$POSTGRES_PASSWORD" >"$pw"
    chown postgres "$pw"
    as_pg "$BIN/initdb" -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pw" \
        --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f "$pw"
    echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    as_pg "$BIN/pg_ctl" -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    [ "$POSTGRES_DB" = "$POSTGRES_USER" ] || as_pg "$BIN/createdb" -U "$POSTGRES_USER" "$POSTGRES_DB"
    as_pg "$BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups "$BIN/postgres" -D "$PGDATA"
SH

cat >"$ctx/postgres.Dockerfile" <<DOCKERFILE
FROM $BASE
RUN apt-get update -qq \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-15 \\
    && rm -rf /var/lib/apt/lists/*
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
RUN chmod 755 /usr/local/bin/docker-entrypoint.sh
LABEL $LABEL=1
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
DOCKERFILE

for img in python:3.11-slim nginx:stable postgres:15; do
    standin "$img" && continue
    echo "stand-ins: building $img from Debian packages"
    DOCKER_BUILDKIT=0 "$DOCKER" build -q --network host -t "$img" -f "$ctx/${img%%:*}.Dockerfile" "$ctx" >/dev/null
done
echo "stand-ins: ready"
