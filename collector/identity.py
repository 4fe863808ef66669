"""Device identity, pure: signed network_userid values, which device a request belongs to, cookies.

A device id is a random UUID the collector mints. The cookie (and a `nuid`/`tnuid` param, so a
server-side app can forward the cookie verbatim) carries `<uuid>.<mac>`, the MAC an HMAC-SHA256 of the
id under the first secret; every configured secret verifies, so secrets can be rotated. A value
without a valid MAC counts as absent: a client can neither choose nor forge another device's id.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import os
import secrets
from collections.abc import Callable, Sequence
from email.utils import formatdate
from pathlib import Path

from storage.ids import UuidPool

MAC_BYTES = 16  # 128 bits of HMAC: forging one is as hard as guessing a random UUID
ID_LEN = 36
VALUE_LEN = ID_LEN + 1 + 22  # uuid "." base64url(16 bytes) without padding


# The event loop's own pool: asyncio runs handlers on one thread, so it needs no lock.
random_uuid = UuidPool()


def new_device_id() -> str:
    """A fresh random device id."""
    return random_uuid()


def _mac(device_id: str, secret: bytes) -> str:
    digest = hmac.new(secret, device_id.encode(), hashlib.sha256).digest()[:MAC_BYTES]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign(device_id: str, secret: bytes) -> str:
    """The cookie value for a device id."""
    return f"{device_id}.{_mac(device_id, secret)}"


def well_formed(value: str) -> bool:
    """Whether a value has the shape of a signed id (the only values worth an HMAC or a cache slot)."""
    return len(value) == VALUE_LEN and value.isascii() and value[ID_LEN] == "."


def verify(value: str | None, keys: Sequence[bytes]) -> str | None:
    """The device id a signed value carries, or None when it is absent, malformed or forged."""
    if not value or not well_formed(value):
        return None
    device_id, mac = value[:ID_LEN], value[ID_LEN + 1 :]
    for key in keys:
        if hmac.compare_digest(_mac(device_id, key), mac):
            return device_id
    return None


def resolve(
    cookie_device: str | None, nuid: str | None, tnuid: str | None, verifier: Callable[[str], str | None]
) -> tuple[str | None, bool]:
    """One event's device: the verified cookie's, else its own verified nuid, else tnuid; and whether a
    param arrived whose MAC did not verify. None: the event brings no device (the request's own is used)."""
    if cookie_device is not None:
        return cookie_device, False
    forged = False
    for value in (nuid, tnuid):
        if value:
            device_id = verifier(value)
            if device_id:
                return device_id, forged
            forged = True
    return None, forged


class Signer:
    """sign/verify under the configured keys, remembering recent answers (an HMAC per request is costly).

    Both maps are pure functions of their keys, so caching them changes nothing but speed; they are
    bounded, so a client sending endless forged values only churns the cache.
    """

    MAX = 16384  # recent devices; a miss costs one HMAC (~2 us), the cap bounds memory (~4 MB each)

    def __init__(self, keys: Sequence[bytes]) -> None:
        self.keys = list(keys)
        self._verified: dict[str, str | None] = {}
        self._signed: dict[str, str] = {}

    def verify(self, value: str | None) -> str | None:
        """The device id a signed value carries, or None."""
        if not value or not well_formed(value):  # a value of any other shape never reaches the cache
            return None
        try:
            return self._verified[value]
        except KeyError:
            if len(self._verified) >= self.MAX:
                self._verified.clear()
            device_id = self._verified[value] = verify(value, self.keys)
            return device_id

    def sign(self, device_id: str) -> str:
        """The signed value for a device id, under the first key."""
        try:
            return self._signed[device_id]
        except KeyError:
            if len(self._signed) >= self.MAX:
                self._signed.clear()
            value = self._signed[device_id] = sign(device_id, self.keys[0])
            return value


def cookie_domain(domains: Sequence[str], fallback: str, fixed: str, origin: str | None) -> str:
    """The device cookie's Domain for a request: by its Origin's host when domains are configured
    (the first equal to it or a parent of it, else the fallback), else the fixed one; "" is host-only."""
    if not domains:
        return fixed
    host = (origin or "").partition("://")[2].partition("/")[0].rpartition("@")[2]
    host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host  # drop a port (not in [v6])
    host = host.lower()
    for d in domains:
        if host == d or host.endswith("." + d):
            return d
    return fallback


class CookieJar:
    """Builds the Set-Cookie values for one configuration (attributes computed once per domain)."""

    def __init__(self, name: str, max_age: int, secure: bool, signer: Signer) -> None:
        self._base = "; Path=/; HttpOnly; SameSite=None" + ("; Secure" if secure else "")
        self.name = name
        self._signer = signer
        self._max_age = max_age
        self._expires_at = 0
        self._expires = ""

    def _attrs(self, domain: str) -> str:
        return f"{self._base}; Domain={domain}" if domain else self._base

    def _expiry(self, now: float) -> str:
        second = int(now)
        if second != self._expires_at:  # the date changes once a second: format it once a second
            self._expires_at = second
            self._expires = formatdate(second + self._max_age, usegmt=True)
        return self._expires

    def issue(self, device_id: str, now: float, domain: str = "") -> str:
        """Set-Cookie value carrying a signed device id, expiry refreshed."""
        return (
            f"{self.name}={self._signer.sign(device_id)}; Max-Age={self._max_age}; "
            f"Expires={self._expiry(now)}{self._attrs(domain)}"
        )

    def expired(self, domain: str = "") -> str:
        """Set-Cookie value that deletes the cookie (the same Domain it was set with)."""
        return f"{self.name}=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT{self._attrs(domain)}"


def load_keys(configured: Sequence[str], db: Path | str) -> list[bytes]:
    """The MAC keys: configured secrets, else one generated on first start beside the database (0600).

    Several processes may start together on a new volume, and any of them may be killed at any point:
    under a lock, the first writes the secret to a temporary file, fsyncs it and renames it into place
    (then fsyncs the directory), so the file is either absent or whole. An empty one (left by a version
    that wrote in place) has signed nothing and is replaced.
    """
    if configured:
        return [s.encode() for s in configured]
    if not isinstance(db, Path):  # config refuses this; a direct caller gets the same answer
        raise ValueError("a cookie secret must be configured for a PostgreSQL store")
    path = db.parent / (db.name + ".secret")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = path.read_text().strip() if path.exists() else ""
        if not text:
            text = secrets.token_urlsafe(32)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    return [text.encode()]
