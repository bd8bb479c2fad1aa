"""Who is asking: a name kept in a signed cookie (a sign-in form, no passwords).

A visitor signs in with a name; every batch they submit carries it as its ``owner``
metadata, and the app shows each visitor their own batches only. The cookie is signed
with HMAC-SHA256, so a visitor cannot pose as another by editing it. Set
``BATCHKIT_STUDIO_SECRET`` in production; the default secret is for trying the app out.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re

__all__ = ["COOKIE", "check_name", "read", "sign"]

COOKIE = "studio_owner"
_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9 _.-]{0,39}\Z")
_DEV_SECRET = "batchkit-studio-development-secret"


def _secret() -> bytes:
    return os.environ.get("BATCHKIT_STUDIO_SECRET", _DEV_SECRET).encode()


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
