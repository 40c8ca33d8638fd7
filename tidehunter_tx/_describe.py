"""Text for people: URLs without secrets, failures in one line."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from twisted.python.failure import Failure

__all__ = ["describe", "loggable_url", "one_line", "public_url", "redact_url"]


def counted(count: int, noun: str) -> str:
    """``1 record``, ``2 records``: a count as a person writes it."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def public_url(url: str) -> str:
    """Scheme, host and path only: safe for status replies and metrics.

    Query strings of real feeds carry API keys as often as not.
    """
    parts = urlsplit(redact_url(url))
    return urlunsplit(parts._replace(query="", fragment=""))


def redact_url(url: str) -> str:
    """Drop the user:password part of a URL (it becomes basic auth)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    # The host and port as written: a bad port must not raise here, where
    # the usage error that names it is being worded.
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=netloc))


def loggable_url(url: str) -> str:
    """The URL for log lines and errors: no credentials, no query values.

    Feeds take API keys in the query (``?api_key=...``, ``?code=...``) under
    any name; the names stay, so a log still says which parameters were sent.
    """
    parts = urlsplit(redact_url(url))
    if not parts.query:
        return urlunsplit(parts)
    pairs = []
    for pair in parts.query.split("&"):
        name, sep, _ = pair.partition("=")
        pairs.append(f"{name}=***" if sep else pair)
    return urlunsplit(parts._replace(query="&".join(pairs)))


def describe(reason: Failure) -> str:
    """One line for a failure (see :func:`_one_line`)."""
    return "unknown error" if reason.value is None else one_line(reason.value)


def one_line(error: BaseException) -> str:
    """One readable line, looking inside Twisted's list-of-failures wrappers."""
    inner = getattr(error, "reasons", None)
    if inner:
        return (
            "; ".join(describe(f) for f in inner if isinstance(f, Failure))
            or type(error).__name__
        )
    module = type(error).__module__
    if module.startswith(("OpenSSL", "service_identity")):
        detail = _tls_detail(error)
        return f"TLS: {detail}"
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _tls_detail(error: BaseException) -> str:
    """'certificate verify failed' rather than a tuple of OpenSSL internals."""
    args = error.args[0] if error.args else None
    if isinstance(args, list) and args and isinstance(args[0], tuple):
        return "; ".join(str(part[-1]) for part in args if part)
    text = " ".join(str(error).split())
    if "Mismatch" in text:
        return f"certificate does not match the host ({text})"
    return text or type(error).__name__
