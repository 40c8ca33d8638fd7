"""Credentials from the environment, applied to each request and nowhere else.

Tokens never come from argv (``ps`` shows it to every user); they are read
from ``TIDEHUNTER_*`` variables, turned into request headers at the moment a
request is made, and are never part of a log line, a status reply or a metric.

- ``TIDEHUNTER_BEARER_TOKEN``: ``Authorization: Bearer ...`` (the X API).
- ``TIDEHUNTER_BASIC_AUTH``: ``user:password``.
- ``TIDEHUNTER_OAUTH1_CONSUMER_KEY``, ``..._CONSUMER_SECRET``,
  ``..._TOKEN_KEY``, ``..._TOKEN_SECRET``: OAuth 1.0a request signing (the
  legacy Twitter streams), with ``oauthlib`` (``pip install tidehunter-tx[oauth]``).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["AuthError", "Signer", "signer_from_env", "signer_secrets"]

#: Given (method, url, headers, body), return the headers to send.
Signer = Callable[[str, str, dict[Any, Any], bytes | None], dict[Any, Any]]

OAUTH1_VARIABLES = (
    "TIDEHUNTER_OAUTH1_CONSUMER_KEY",
    "TIDEHUNTER_OAUTH1_CONSUMER_SECRET",
    "TIDEHUNTER_OAUTH1_TOKEN_KEY",
    "TIDEHUNTER_OAUTH1_TOKEN_SECRET",
)


class AuthError(ValueError):
    """The credential variables are inconsistent; says which, never the value."""


def signer_from_env(environ: Mapping[str, str]) -> Signer | None:
    """The signer the environment asks for, or None when it names none."""
    bearer = environ.get("TIDEHUNTER_BEARER_TOKEN")
    basic = environ.get("TIDEHUNTER_BASIC_AUTH")
    oauth = {name: environ.get(name) for name in OAUTH1_VARIABLES}
    chosen = [
        name
        for name, present in (
            ("TIDEHUNTER_BEARER_TOKEN", bearer),
            ("TIDEHUNTER_BASIC_AUTH", basic),
            ("TIDEHUNTER_OAUTH1_*", any(oauth.values())),
        )
        if present
    ]
    if len(chosen) > 1:
        raise AuthError(f"set only one kind of credential, not {' and '.join(chosen)}")
    if bearer:
        return _header_signer(f"Bearer {bearer.strip()}", bearer.strip())
    if basic:
        if ":" not in basic:
            raise AuthError("TIDEHUNTER_BASIC_AUTH must look like user:password")
        token = base64.b64encode(basic.strip().encode("utf-8")).decode("ascii")
        _, _, password = basic.strip().partition(":")
        return _header_signer(f"Basic {token}", password, basic.strip())
    if any(oauth.values()):
        missing = [name for name, value in oauth.items() if not value]
        if missing:
            raise AuthError(f"OAuth1 needs {', '.join(missing)} too")
        return _oauth1_signer(*(oauth[name] or "" for name in OAUTH1_VARIABLES))
    return None


def signer_secrets(signer: Signer | None) -> tuple[str, ...]:
    """The secret values a signer sends, so that text can be masked of them.

    A signer of your own may say so too, with a ``secrets`` attribute.
    """
    return tuple(getattr(signer, "secrets", ()))


def _header_signer(value: str, *secrets: str) -> Signer:
    def sign(
        method: str, url: str, headers: dict[Any, Any], body: bytes | None
    ) -> dict[Any, Any]:
        return {**headers, "Authorization": [value]}

    sign.secrets = secrets  # type: ignore[attr-defined]
    return sign


def _oauth1_signer(
    consumer_key: str, consumer_secret: str, token_key: str, token_secret: str
) -> Signer:
    try:
        from oauthlib import oauth1
    except ImportError:
        raise AuthError(
            "OAuth1 signing needs oauthlib: pip install 'tidehunter-tx[oauth]'"
        ) from None
    client = oauth1.Client(
        consumer_key,
        client_secret=consumer_secret,
        resource_owner_key=token_key,
        resource_owner_secret=token_secret,
    )

    def sign(
        method: str, url: str, headers: dict[Any, Any], body: bytes | None
    ) -> dict[Any, Any]:
        # A fresh nonce and timestamp for every request, reconnects included.
        form = {"Content-Type": "application/x-www-form-urlencoded"} if body else {}
        _, signed, _ = client.sign(
            url, http_method=method, body=body or None, headers=form or None
        )
        return {**headers, "Authorization": [signed["Authorization"]]}

    sign.secrets = (consumer_secret, token_secret)  # type: ignore[attr-defined]
    return sign
