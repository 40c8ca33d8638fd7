"""The daemon's own secrets, and the one function that masks them in text.

Error bodies echo requests (a 401 that prints its ``Authorization`` header),
and exceptions quote URLs: whatever text goes to a log line, a status reply
or an error message passes through :meth:`Secrets.mask` first.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlsplit

__all__ = ["MASK", "MIN_SECRET_CHARS", "Secrets", "url_secrets"]

MASK = "***"
#: Shorter values are left alone: masking ``a`` or ``1`` would garble every
#: line, and a secret that short protects nothing anyway.
MIN_SECRET_CHARS = 4
#: Query values are masked from this length on, and never when all digits:
#: API keys are long, while ``format=length`` or ``since=1000`` are settings
#: whose words and numbers appear everywhere else in a log line.
MIN_QUERY_SECRET_CHARS = 8


class Secrets:
    """A set of secret values; :meth:`mask` hides each and its encodings."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._forms: set[str] = set()
        for value in values:
            self.add(value)

    def add(self, value: str | None) -> None:
        """Keep ``value`` as it is, percent-encoded and (for a Basic pair)
        base64, as the wire and the logs may carry it."""
        if not value or len(value) < MIN_SECRET_CHARS:
            return
        forms = {value, quote(value, safe=""), quote_plus(value)}
        if ":" in value:  # user:password, as a Basic header carries it
            forms.add(base64.b64encode(value.encode("utf-8")).decode("ascii"))
        self._forms |= {form for form in forms if len(form) >= MIN_SECRET_CHARS}

    def update(self, values: Iterable[str | None]) -> None:
        for value in values:
            self.add(value)

    def __bool__(self) -> bool:
        return bool(self._forms)

    def mask(self, text: str) -> str:
        """``text`` with every secret replaced by ``***``; longest first, so
        a secret inside another is not half-masked."""
        for form in sorted(self._forms, key=len, reverse=True):
            if form in text:
                text = text.replace(form, MASK)
        return text


def url_secrets(url: str) -> list[str]:
    """A URL's password, ``user:password`` pair and query values that may be
    keys (see :data:`MIN_QUERY_SECRET_CHARS`)."""
    parts = urlsplit(url)
    found: list[str] = []
    if parts.password is not None:
        user, password = unquote(parts.username or ""), unquote(parts.password)
        found += [password, f"{user}:{password}"]
    found += [
        value
        for _, value in parse_qsl(parts.query, keep_blank_values=True)
        if len(value) >= MIN_QUERY_SECRET_CHARS and not value.isdigit()
    ]
    return found
