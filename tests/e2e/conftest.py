"""Fixtures for the real-tracker end-to-end tests: tool checks and one running collector per module.

The trackers are the unmodified npm / PyPI packages pinned in package.json and pyproject.toml.
Without Chromium, Node or the node modules the tests skip saying what to install; under CI=true a
missing tool fails the run instead, so CI can never go green by skipping.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.support import Store, missing_browser, missing_node, require
from tests.procs import Collector


@pytest.fixture(scope="session")
def node_tools() -> None:
    """Node and the pinned node modules."""
    require(missing_node())


@pytest.fixture(scope="session")
def browser_tools(node_tools: None) -> None:
    """What node_tools needs, plus the Debian Chromium that playwright-core drives."""
    require(missing_browser())


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    """One real collector process per test module; the tests keep apart by app_id."""
    db = tmp_path_factory.mktemp("e2e") / "events.db"
    proc = Collector(db).start()
    try:
        yield proc
    finally:
        code = proc.stop()
        tail = proc.log.read_text(errors="replace")[-4000:] if proc.log.exists() else ""
        assert code == 0, f"collector exited {code}; log tail:\n{tail}"


@pytest.fixture(scope="module")
def store(collector: Collector) -> Store:
    return Store(collector.db)
