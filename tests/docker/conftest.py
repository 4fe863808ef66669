from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.docker import stack


@pytest.fixture(scope="session")
def image() -> Iterator[str]:
    """anon-collector:local, built from the shipped deploy/Dockerfile on the stand-in bases.

    Also the guard of the whole docker suite: whatever container, network or volume (anonymous ones
    included) exists at the end and did not at the start is a failure, then removed.
    """
    why = stack.unavailable()
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Docker is required under CI: {why}")
        pytest.skip(why)
    before = stack.inventory()
    stack.build_image()
    yield stack.IMAGE
    left = stack.inventory() - before
    if left:
        described = stack.describe(left)
        for thing in sorted(left, reverse=True):  # containers before networks and volumes
            kind, ident = thing.split(":", 1)
            stack.docker(
                "rm" if kind == "container" else kind,
                *(["-fv"] if kind == "container" else ["rm", "-f"]),
                ident,
                check=False,
            )
        pytest.fail(f"docker tests left behind: {described}")


@pytest.fixture(scope="module")
def compose(image: str) -> Iterator[stack.Compose]:
    """nginx in front of 3 replicas on the shared volume: `docker compose up --scale collector=3`;
    nginx's error log at warn, where the scale test sees which replicas it tried."""
    c = stack.Compose(nginx_error_log="warn")
    c.down()  # a run killed before its teardown
    try:
        c.up(3)
        yield c
    finally:
        c.down()


@pytest.fixture(scope="module")
def compose_pg(image: str) -> Iterator[stack.Compose]:
    """The `postgres` profile: PostgreSQL in a container, 2 replicas storing into it through nginx."""
    why = stack.unavailable("postgres:15")
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Docker is required under CI: {why}")
        pytest.skip(why)
    c = stack.Compose(postgres=True)
    c.down()
    try:
        c.up(2)
        yield c
    finally:
        c.down()
