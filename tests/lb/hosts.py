"""Several hosts on one machine: network namespaces joined by a bridge, made (and removed) by the test.

The root namespace is the balancer's host (nginx, and the clients on loopback); each collector and
the database run in a namespace of their own, with their own address, reachable only over the bridge:
what crosses hosts goes over a network, as it would between machines.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

# TEST-NET-3 (RFC 5737): never routed anywhere; here only inside this machine's own namespaces.
SUBNET = "203.0.113"
BRIDGE_ADDR = f"{SUBNET}.1"  # the balancer host's address on the bridge (nginx binds to it)
OUTSIDER_ADDR = f"{SUBNET}.2"  # another address of that host: a client that bypasses the balancer


@dataclass(frozen=True)
class Host:
    """A namespace and its address on the bridge."""

    netns: str
    addr: str

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns]


def why_not() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    if shutil.which("ip") is None:
        return "iproute2 is not installed (apt-get install iproute2)"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextmanager
def hosts(names: list[str]) -> Iterator[dict[str, Host]]:
    """Namespaces `names` (each a host at SUBNET.11, .12, ...) on a bridge the root namespace is on."""
    tag = f"{os.getpid() % 10000}"
    bridge = f"cb{tag}"
    made: list[str] = []
    try:
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"{BRIDGE_ADDR}/24", "dev", bridge)
        _ip("addr", "add", f"{OUTSIDER_ADDR}/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        out = {}
        for i, name in enumerate(names):
            ns, outer, inner = f"c{tag}{name}", f"c{tag}{i}o", f"c{tag}{i}i"
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", ns)
            _ip("link", "set", outer, "master", bridge)
            _ip("link", "set", outer, "up")
            addr = f"{SUBNET}.{11 + i}"
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", inner)
            _ip("-n", ns, "link", "set", inner, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            out[name] = Host(ns, addr)
        yield out
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], check=False, capture_output=True)
