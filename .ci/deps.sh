#!/usr/bin/env bash
# What the end-to-end, load-balancer and benchmark suites need on a fresh Debian machine:
# Chromium, nginx and wrk from Debian, PostgreSQL 15 (the tests start their own clusters from its
# binaries), iproute2 (network namespaces), the pinned tracker packages from npm, a venv-capable Python.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v node >/dev/null 2>&1 || need+=(nodejs npm)
command -v python3.11 >/dev/null 2>&1 || need+=(python3.11)
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql-15)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
python3.11 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3.11-venv)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing from Debian: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
if [ -f tests/e2e/package-lock.json ]; then
    (cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error)
fi
# Docker (tests/docker): docker.io, debootstrap, a running dockerd and the stand-in base images.
bash tests/docker/engine.sh
