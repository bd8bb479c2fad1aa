"""Passwords and other secrets are hidden before a message is stored, logged or raised."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

__all__ = ["MASK", "redact", "safe_url", "shows_secret", "unparsable", "url_secrets"]

#: What a hidden secret is shown as.
MASK = "***"

# Every scan below is linear in the text: messages are redacted whole, before being cut,
# and a message is whatever a generator or a driver raised. No pattern may backtrack over
# a run it has already read (possessive quantifiers, bounded lookarounds), and a loop
# that searches again starts past what it has read.

_SPACE = re.compile(r"\s")

#: ``name=`` or ``'name': `` (a dict's or a JSON object's key) where the name is a
#: secret's: ``password``, ``passwd``, ``sslpassword``, ``pwd``, ``client_secret``,
#: ``access_token``, ``api_key``, ``apikey``, ``X-Api-Key``, ``auth``, ``sig``... A name
#: is read from its start only (the lookbehind), so a long run of letters costs one pass.
_SETTING = re.compile(
    r"""(?<![\w.-])(?P<quote>['"]?)"""
    r"""(?P<name>(?=[\w.-]*?(?:pass|pwd|secret|token|api[_-]?key|credential|signature)"""
    r"""|-*+(?:auth|sig)(?![\w.-]))[\w.-]++)"""
    r"""(?P=quote)(?P<equals>[ \t]*+[=:][ \t]*+)""",
    re.IGNORECASE,
)
#: A quoted value, with backslash escapes (libpq, Python and JSON spell them alike).
_QUOTED = {
    "'": re.compile(r"'(?:[^'\\]|\\.)*+'", re.DOTALL),
    '"': re.compile(r'"(?:[^"\\]|\\.)*+"', re.DOTALL),
}
#: A query string's value: up to the next ``&name=`` (a raw "&" inside a password that
#: is not followed by a setting stays hidden with the rest) or whitespace.
_QUERY_VALUE = re.compile(r"(?:[^\s&]|&(?![\w.-]*+=))*+")
_WORD = re.compile(r"\S*+")
#: What may follow a value inside a repr: ``'redis://h?password=***', prefix=...``.
_CLOSING = "'\"),;]}>"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
#: Where a password written raw in a URL may be cut in two by a parser.
_DELIMITERS = re.compile(r"[@/?#:&;]")
#: Known secrets shorter than this are left alone in free text: they would match all over
#: a message (a URL's password is hidden by its place whatever its length).
_MIN_KNOWN = 3


def redact(text: str, known: Iterable[str] = ()) -> str:
    """Hide the secrets a message may hold.

    Hidden: the password of a URL (``scheme://user:***@host``, also when written raw with
    ``/ ? # @`` in it: everything up to the last ``@`` before whitespace goes), the values
    of secret settings in a query string (``?password=``, ``&token=``, ``api_key``...), a
    libpq keyword string (``host=h password=***``), keyword arguments and dict or JSON
    keys (``password='***'``, ``"token": "***"``), and any of the ``known`` texts (a
    storage's own password: a driver may repeat it, or part of it, in its errors).
    More may be hidden than a secret; a secret is never shown.

    Args:
        text: the message.
        known: secrets to hide wherever they appear (see `url_secrets`).

    Returns:
        The message with every secret replaced by ``***``.
    """
    for secret in sorted({s for s in known if len(s) >= _MIN_KNOWN}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    if "://" in text:
        text = _replace(text, _passwords(text))
    if "=" in text or ":" in text:
        text = _replace(text, _setting_values(text))
    return text


def url_secrets(url: str) -> frozenset[str]:
    """The secrets a URL holds, to hide them wherever a driver repeats them.

    Its password and the values of its secret settings, as written and decoded, and the
    pieces a parser that cut a raw password at ``@ / ? # :`` would show (the host of
    ``u:p@ss@h`` is ``ss@h`` to some).
    """
    found: set[str] = set()
    for start, end in [*_passwords(url), *_setting_values(url)]:
        for secret in {url[start:end], unquote(url[start:end])}:
            found.add(secret)
            found.update(piece for piece in _DELIMITERS.split(secret) if len(piece) > _MIN_KNOWN)
    found.discard(MASK)
    return frozenset(s for s in found if s)


def safe_url(url: str) -> str:
    """A URL as it may be shown: its password ``***``, its secret settings hidden.

    Built from the URL's parts, not by hiding text in it: scheme, user, host and port,
    path, and the query string with the values of secret settings hidden (the fragment
    is dropped). A URL that cannot be read for sure, such as one whose password holds a
    raw ``/`` (``u:pa/ss@h`` reads as host ``u``, port ``pa``), shows its scheme only.

    Args:
        url: the URL, as given.

    Returns:
        ``scheme://user:***@host:port/path?query``, or ``scheme://***``.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        return MASK
    authority = _authority(url)
    if authority is None:
        return f"{scheme}://{MASK}"
    userinfo, at, host = authority.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    shown = f"{scheme}://"
    if at:
        shown += f"{user}:{MASK}@" if colon else f"{user}@"
    shown += host
    tail = rest[len(authority) :].partition("#")[0]
    path, question, query = tail.partition("?")
    shown += path
    if question:
        # Secret settings are hidden; the others are worth seeing (``mode=memory``).
        shown += "?" + _replace(query, _setting_values("?" + query, offset=-1))
    return shown


def unparsable(url: str, error: BaseException, known: Iterable[str] = ()) -> str:
    """What to say of a URL a driver could not parse, without the pieces of its password.

    The driver's message when the URL reads clearly (a bad ``db`` or timeout), a hint
    otherwise: a parser that cut a raw password short may quote a piece of it as a port.
    """
    if _authority(url) is not None:
        return redact(str(error), known)
    return (
        "check its host and port, and percent-encode a password with '@', '/', '?', '#' "
        "or ':' in it"
    )


def shows_secret(exc: BaseException, known: Iterable[str] = ()) -> bool:
    """Whether an exception, or one it was raised from, shows a secret in its text."""
    known = frozenset(known)
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 16:
        seen.add(id(current))
        text = str(current)
        if redact(text, known) != text:
            return True
        current = current.__cause__ or current.__context__
    return False


def _authority(url: str) -> str | None:
    """The ``user:password@host:port`` of a URL, or `None` if it cannot be read for sure."""
    rest = url.partition("://")[2]
    try:
        urlsplit(url).port  # noqa: B018 (raises on a port that is not a number)
    except ValueError:
        return None
    cut = re.search(r"[/?#]", rest)
    authority = rest if cut is None else rest[: cut.start()]
    last_at = rest.rfind("@")
    if last_at >= len(authority) and ":" in rest[:last_at]:
        # An "@" past the host, after a ":": a password's raw "/", "?" or "#" may have
        # ended the host early, leaving the password's tail in the path or the query.
        return None
    return authority


def _replace(text: str, spans: Iterable[tuple[int, int]]) -> str:
    """``text`` with each span (in order, not overlapping) replaced by the mask."""
    parts: list[str] = []
    done = 0
    for start, end in spans:
        if end > start:
            parts += (text[done:start], MASK)
            done = end
    if not parts:
        return text
    parts.append(text[done:])
    return "".join(parts)


def _passwords(text: str) -> Iterator[tuple[int, int]]:
    """Where the passwords of the URLs in ``text`` are: from the ``:`` after the user to
    the last ``@`` before whitespace, so that a raw ``/ ? # @`` in one hides no less."""
    start = text.find("://")
    while start != -1:
        body = start + 3
        space = _SPACE.search(text, body)
        end = len(text) if space is None else space.start()
        at = text.rfind("@", body, end)
        colon = -1 if at == -1 else text.find(":", body, at)
        if colon != -1:
            yield colon + 1, at
        start = text.find("://", end)


def _setting_values(text: str, offset: int = 0) -> Iterator[tuple[int, int]]:
    """Where the values of secret settings in ``text`` are (shifted by ``offset``)."""
    pos = 0
    while (found := _SETTING.search(text, pos)) is not None:
        pos = found.end()
        if ":" in found["equals"] and not found["quote"]:
            continue  # "using password: YES" says that one was given, not which
        lead = text[found.start() - 1] if found.start() else ""
        first = text[pos] if pos < len(text) else ""
        if first in _QUOTED:
            quoted = _QUOTED[first].match(text, pos)
            # An unclosed quote hides the rest of the line.
            line_end = text.find("\n", pos)
            end = quoted.end() if quoted else len(text) if line_end == -1 else line_end
            value = (pos + 1, end - 1) if quoted else (pos, end)
        else:
            # In a query string a setting ends at the next one; elsewhere (libpq, a
            # command line) a value ends at whitespace only.
            scan = _QUERY_VALUE if lead in ("?", "&", ";") else _WORD
            matched = scan.match(text, pos)
            end = pos if matched is None else matched.end()
            value = (pos, end)
            if text.startswith(MASK, pos) and not text[pos + len(MASK) : end].strip(_CLOSING):
                # Hidden already (a storage's repr): the quote and comma after it stay.
                value = (pos, pos)
        if value[1] > value[0]:
            yield value[0] + offset, value[1] + offset
        pos = max(pos, end)
