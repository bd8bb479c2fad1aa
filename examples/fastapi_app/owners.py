"""Who is asking: a name kept in a signed cookie (a sign-in form, no passwords).

A visitor signs in with a name; every batch they submit carries it as its ``owner``
metadata, and the app shows each visitor their own batches only. The cookie is signed
with HMAC-SHA256, so a visitor cannot pose as another by editing it.

The key: ``BATCHKIT_STUDIO_SECRET`` when set (every server of one deployment needs the
same); otherwise one made at random on first start and kept in the file
``BATCHKIT_STUDIO_SECRET_FILE`` (``batchkit-studio.secret`` in the working directory),
readable by its owner only. There is no built-in default: a key anyone can read would let
anyone sign in as anyone.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from functools import cache
from pathlib import Path

__all__ = ["COOKIE", "check_name", "read", "secret_source", "sign"]

COOKIE = "studio_owner"
_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9 _.-]{0,39}\Z")

logger = logging.getLogger("examples.fastapi_app")


def secret_source() -> str:
    """Where the key comes from, for the log (never the key itself)."""
    if os.environ.get("BATCHKIT_STUDIO_SECRET"):
        return "BATCHKIT_STUDIO_SECRET"
    return str(_secret_file())


def _secret_file() -> Path:
    return Path(os.environ.get("BATCHKIT_STUDIO_SECRET_FILE", "batchkit-studio.secret")).resolve()


def _secret() -> bytes:
    given = os.environ.get("BATCHKIT_STUDIO_SECRET")
    if given:
        return given.encode()
    return _kept_secret(_secret_file())


@cache
def _kept_secret(path: Path) -> bytes:
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    key = secrets.token_hex(32).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created readable by its owner only, and never replaced: a second server starting
    # at the same moment reads the key the first one wrote.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(100):  # the other server may not have written it yet
            if kept := path.read_bytes().strip():
                return kept
            time.sleep(0.01)
        raise RuntimeError(f"{path} is empty: delete it, or set BATCHKIT_STUDIO_SECRET") from None
    with os.fdopen(fd, "wb") as out:
        out.write(key)
    logger.warning("no BATCHKIT_STUDIO_SECRET: made a sign-in key and kept it in %s", path)
    return key


def check_name(name: str) -> str | None:
    """The name cleaned up, or `None` when it is not a name the app accepts."""
    name = name.strip()
    return name if _NAME.match(name) else None


def _mac(name: str) -> str:
    return hmac.new(_secret(), name.encode(), hashlib.sha256).hexdigest()[:32]


def sign(name: str) -> str:
    """The cookie value for ``name``."""
    return f"{name}|{_mac(name)}"


def read(value: str | None) -> str | None:
    """The name a cookie value vouches for, or `None` when it is missing or forged."""
    if not value or "|" not in value:
        return None
    name, _, mac = value.rpartition("|")
    if check_name(name) != name or not hmac.compare_digest(mac, _mac(name)):
        return None
    return name
