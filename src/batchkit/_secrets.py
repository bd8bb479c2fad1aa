"""Passwords in URLs are hidden before a message is stored, logged or raised."""

from __future__ import annotations

import re

__all__ = ["redact"]

# user:password@ in URLs (database DSNs, API endpoints) never reaches storage or logs.
# The scheme is bounded so that a long run of letters costs linear time, not quadratic
# (messages are redacted whole, before being cut). The password is greedy to the last
# "@" of the authority: one written with a raw "@" is hidden whole, not just its head.
_CREDENTIALS = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]{0,39}://)(?P<user>[^\s:/@]*):[^\s/]+@"
)


def redact(text: str) -> str:
    """Hide passwords embedded in URLs."""
    if "://" not in text:
        return text
    return _CREDENTIALS.sub(r"\g<scheme>\g<user>:***@", text)
