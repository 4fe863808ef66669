#!/usr/bin/env bash
# What tests/docker needs on a fresh Debian machine (root, as CI): Debian's docker.io and debootstrap,
# a running dockerd, and the stand-in base images (tests/docker/standins.sh, cached).
#
# dockerd is started here when none answers, with --iptables=false --ip-masq=false (these machines
# allow no iptables changes): user-defined bridge networks, container DNS and published ports (through
# Docker's userland proxy, so connections arrive from the bridge gateway) work; containers have no
# route out, which is why images are built with --network host. Its log: /var/log/anon-dockerd.log.
set -euo pipefail
cd "$(dirname "$0")/../.."

need=()
[ -x /usr/sbin/dockerd ] && [ -x /usr/bin/docker ] || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing from Debian: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
DOCKER=/usr/bin/docker
if ! "$DOCKER" info >/dev/null 2>&1; then
    echo "starting dockerd (log: /var/log/anon-dockerd.log)"
    nohup /usr/sbin/dockerd --iptables=false --ip-masq=false >>/var/log/anon-dockerd.log 2>&1 &
    for _ in $(seq 60); do
        "$DOCKER" info >/dev/null 2>&1 && break
        sleep 1
    done
    "$DOCKER" info >/dev/null 2>&1 || { echo "dockerd did not start; see /var/log/anon-dockerd.log" >&2; exit 1; }
fi
DOCKER="$DOCKER" PATH="$PATH:/usr/sbin" bash tests/docker/standins.sh
