"""``redis://`` specs: where a counter or a sink lives, and its password."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["RedisSpec", "parse_redis_spec", "redis_password"]


@dataclass(frozen=True)
class RedisSpec:
    """A parsed ``redis://[:PASSWORD@]HOST:PORT/DB?key=KEY[&maxlen=N]``."""

    host: str
    port: int
    db: int
    key: str
    password: str | None = None
    stream: bool = False
    maxlen: int = 0

    @property
    def public(self) -> str:
        """The spec without its password, for logs and status."""
        scheme = "redis+stream" if self.stream else "redis"
        return f"{scheme}://{self.host}:{self.port}/{self.db}?key={self.key}"


def parse_redis_spec(spec: str) -> RedisSpec:
    """Parse a ``--sink``/``--counter`` Redis spec; ValueError says what is wrong."""
    parts = urlsplit(spec)
    if parts.scheme not in ("redis", "redis+stream"):
        raise ValueError(f"not a redis:// spec: {spec.split('://')[0]!r}")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError("port must be a number from 1 to 65535") from None
    host = parts.hostname or "127.0.0.1"
    path = parts.path.strip("/") or "0"
    if not path.isdigit():
        raise ValueError(f"database must be a number, not {path!r}")
    query = parse_qs(parts.query, keep_blank_values=True)
    keys = query.get("key", [])
    if not keys or not keys[0]:
        raise ValueError("needs ?key=KEY (the Redis key to use)")
    maxlen = 0
    if "maxlen" in query:
        if parts.scheme != "redis+stream":
            raise ValueError("maxlen applies to redis+stream:// sinks only")
        text = query["maxlen"][0]
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"maxlen must be a positive integer, not {text!r}")
        maxlen = int(text)
    unknown = set(query) - {"key", "maxlen"}
    if unknown:
        raise ValueError(f"unknown option {sorted(unknown)[0]!r}")
    password = unquote(parts.password) if parts.password else None
    return RedisSpec(
        host=host,
        port=port,
        db=int(path),
        key=keys[0],
        password=password,
        stream=parts.scheme == "redis+stream",
        maxlen=maxlen,
    )


def redis_password(spec: RedisSpec) -> str | None:
    """The password: from the spec, else ``TIDEHUNTER_REDIS_PASSWORD``.

    A password in a ``--sink``/``--counter`` spec is visible to every user
    through ``ps``; the environment variable keeps it off the command line.
    """
    return spec.password or os.environ.get("TIDEHUNTER_REDIS_PASSWORD") or None
