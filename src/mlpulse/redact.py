"""Keeping tokens out of log lines, however a URL spells them.

A token can reach a line in a URL's query (`?token=`, `?tok%65n=`, `?%74oken=`, encoded
twice, in any case) or as a bare JWT in a message. The line is redacted once it is
formatted, so the message, its arguments and any traceback are all covered, whichever
logger wrote it.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus

MASK = "***"
# A query-style `name=value`; neither part may hold a quote or backslash, so a JSON line
# keeps its escapes intact.
_PAIR = re.compile(r"([A-Za-z0-9._~%+-]+)=([^&\s\"'<>;,\\]*)")
# A run of URL characters with at least one percent escape in it.
_ENCODED = re.compile(r"[A-Za-z0-9._~%+-]*%[0-9A-Fa-f]{2}[A-Za-z0-9._~%+-]*")
# A JWT: a base64url JSON header (`{"` encodes as `eyJ`) and one or two more segments.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*)?")
DECODE_ROUNDS = 4  # enough for a name or value encoded three times over


def _decoded(text: str) -> str:
    for _ in range(DECODE_ROUNDS):
        plain = unquote_plus(text)
        if plain == text:
            break
        text = plain
    return text


def _pair(match: re.Match[str]) -> str:
    name, value = match.group(1), match.group(2)
    if value and "token" in _decoded(name).lower():
        return f"{name}={MASK}"
    return match.group(0)


def _encoded(match: re.Match[str]) -> str:
    return MASK if _JWT.search(_decoded(match.group(0))) else match.group(0)


def redact(text: str) -> str:
    """`text` with every token value replaced by `***`."""
    if "=" in text:
        text = _PAIR.sub(_pair, text)
    if "%" in text:
        text = _ENCODED.sub(_encoded, text)
    if "eyJ" in text:
        text = _JWT.sub(MASK, text)
    return text


class RedactingFormatter(logging.Formatter):
    """Formats with another formatter, then redacts the whole line."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.inner.format(record))
