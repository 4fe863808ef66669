"""Random UUIDs, cheaply: the OS's CSPRNG read 4 KiB at a time."""

from __future__ import annotations

import os


class UuidPool:
    """Random (version 4) UUID strings from os.urandom, drawn 4 KiB (256 ids) at a time.

    os.urandom releases the GIL; under load the caller then waits up to a switch interval for the
    other thread to hand it back, once per call. One pool per thread: it is not locked.
    """

    SIZE = 4096

    def __init__(self) -> None:
        self._pool = b""
        self._pos = self.SIZE

    def __call__(self) -> str:
        if self._pos >= self.SIZE:
            self._pool, self._pos = os.urandom(self.SIZE), 0
        b = self._pool[self._pos : self._pos + 16]
        self._pos += 16
        h = b.hex()
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[b[8] & 3]}{h[17:20]}-{h[20:]}"
