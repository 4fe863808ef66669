"""Start and stop real collector processes for end-to-end, load-balancer and crash tests."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import signal as _signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def _logs() -> Path:
    """Where the logs of processes whose store is not a file go: made on first use, gone at exit.

    Made at import, it was left behind, empty, by every pytest run (and every xdist worker).
    """
    path = Path(tempfile.mkdtemp(prefix="collector-logs-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 15.0, status: int = 200) -> None:
    """Poll url until it answers with status, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == status:
                    return
                last = r.status
        except urllib.error.HTTPError as exc:  # a 4xx/5xx answer: its status may be the one awaited
            exc.close()
            if exc.code == status:
                return
            last = exc.code
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url} not answering {status}: {last!r}")


class Collector:
    """One `python -m collector serve` process, the command the README and the image use."""

    def __init__(
        self,
        db: Path | str,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        env: Mapping[str, str] | None = None,
        args: list[str] | None = None,
        log: Path | None = None,
        prefix: list[str] | None = None,
        module: str = "collector",
    ) -> None:
        self.db = db
        self.module = module  # what `python -m` runs: a bench's launcher may wrap the collector's main
        self.host = host
        self.port = port or free_port(host)
        self.env = dict(env or {})
        self.args = list(args or [])
        self.prefix = list(prefix or [])  # e.g. `ip netns exec NS`: the process runs on another host
        if log is None and isinstance(db, Path):
            log = db.with_suffix(f".{self.port}.log")  # beside the store's file
        elif log is None:
            log = _logs() / f"{self.port}.log"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def address(self) -> str:
        """`host:port`, as a balancer names it."""
        return f"{self.host}:{self.port}"

    def start(self, wait: bool = True) -> Collector:
        env = {**os.environ, **self.env}
        cmd = [
            *self.prefix,
            sys.executable,
            "-m",
            self.module,
            "serve",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--db",
            str(self.db),
            *self.args,
        ]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        if wait:
            wait_http(self.url + "/ready")
        return self

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = _signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send sig and wait for the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self.stop(_signal.SIGKILL)

    def __enter__(self) -> Collector:
        # `with Collector(db).start() as c` started it already: a second start would spawn a process
        # that fails to bind the port while the first, no longer tracked, runs on (it did, in prefill)
        if self.proc is not None and self.proc.poll() is None:
            return self
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m collector <args>` in the repository, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "collector", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
