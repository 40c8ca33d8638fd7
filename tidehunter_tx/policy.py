"""Reconnect policy: after a connection ends, retry when, or give up?

Pure decisions, no I/O and no Twisted: the hunter maps what happened to a
:class:`FailureKind` with :func:`classify`, asks a :class:`Backoff` for the next
:class:`Decision`, waits ``decision.delay`` seconds (or gives up) and calls
:meth:`Backoff.record_arrived` whenever a record gets through.

The numbers follow the policy Twitter published for its streaming API (and hbc,
its Java client, implemented), with jitter added:

============  ===================================================  ===============
kind          delay before retry ``n`` (n = 1, 2, ...)             gives up
============  ===================================================  ===============
NETWORK       0 s, then +250 ms per failure, linear, capped 16 s   never
ENDED         as NETWORK (a clean end of an endless stream)        never
HTTP_5XX      5 s, doubling, capped 320 s                          never
RATE_LIMITED  60 s, doubling, capped 320 s, >= ``Retry-After``     never
AUTH          as HTTP_5XX (own settings)                           after 5 tries
FATAL         -                                                    at once
============  ===================================================  ===============

Order of operations for one delay: the schedule above (cap included), then
jitter (``delay * (1 + jitter * u)``, ``u`` uniform in [-1, 1), so a 0 s delay
stays 0 s), then the server's floor (``Retry-After`` for 429/420 and 5xx,
the SSE ``retry:`` field for NETWORK and ENDED).  Jitter never takes a delay
below the server's floor; the kind's cap may be exceeded by up to ``jitter``.

Decisions this module takes (where the Twitter rules are silent):

- Every kind keeps its own count of consecutive failures; none is reset by
  another kind, and all of them are reset together, only when a record arrives.
  A bare HTTP 200 resets nothing, so a server that accepts and closes at once
  backs off like a network error instead of causing a reconnect storm.
- 408 Request Timeout is a NETWORK failure; 420 and 429 are RATE_LIMITED;
  401 and 403 are AUTH; every other 4xx is FATAL (the request itself is wrong
  and sending it again cannot help), and so are 1xx, 3xx (a redirect that was
  not followed) and non-standard statuses from 600 up.
- ``Retry-After`` is honoured for HTTP_5XX too (RFC 9110 defines it for 503),
  and ignored for the other kinds.  A malformed one is ignored.  A server's
  floor (``Retry-After`` or SSE ``retry:``) is held to at most
  ``BackoffConfig.max_server_delay`` (1 hour), so a date far in the future
  cannot park the client for good.
- An exception that :func:`classify` does not recognise as a network failure
  is FATAL: a bug is not weather, and retrying would hide it.
"""

from __future__ import annotations

import enum
import math
import random
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from types import MappingProxyType
from typing import Protocol

__all__ = [
    "Backoff",
    "BackoffConfig",
    "Decision",
    "FailureKind",
    "RandomSource",
    "ServerMisbehaved",
    "classify",
    "compute_delay",
    "decide",
    "parse_retry_after",
    "should_retry",
]


class FailureKind(enum.Enum):
    """Why a connection ended, as far as the reconnect policy cares."""

    NETWORK = "network"  # refused, reset, TLS, DNS, dropped body, bad chunking, stall
    HTTP_5XX = "http_5xx"  # the server failed
    RATE_LIMITED = "rate_limited"  # HTTP 420 or 429
    AUTH = "auth"  # HTTP 401 or 403
    FATAL = "fatal"  # 404, 406, 413, 416, other 4xx, unknown errors
    TLS = "tls"  # the server's certificate did not verify: configuration
    ENDED = "ended"  # the server ended the stream cleanly


@dataclass(frozen=True)
class BackoffConfig:
    """Every number of the policy; delays are in seconds."""

    network_initial: float = 0.0
    network_step: float = 0.25
    network_max: float = 16.0
    http_initial: float = 5.0
    http_factor: float = 2.0
    http_max: float = 320.0
    rate_limit_initial: float = 60.0
    rate_limit_factor: float = 2.0
    rate_limit_max: float = 320.0
    auth_initial: float = 5.0
    auth_factor: float = 2.0
    auth_max: float = 320.0
    #: Consecutive AUTH failures that are retried; the next one gives up.
    auth_max_attempts: int = 5
    #: A certificate that does not verify (wrong ``--ca-file``, a host name
    #: it does not name) is configuration, not weather: a few tries, then up.
    tls_initial: float = 1.0
    tls_factor: float = 2.0
    tls_max: float = 16.0
    tls_max_attempts: int = 3
    #: A stream that ends cleanly within this many seconds of opening is a
    #: finite endpoint, not a feed: it is never retried sooner than
    #: ``short_initial``, and each short stream in a row doubles that, up to
    #: ``short_max`` (records arriving do not reset this count; a stream that
    #: lives longer does).
    short_stream: float = 10.0
    short_initial: float = 1.0
    short_factor: float = 2.0
    short_max: float = 60.0
    #: Relative spread of a delay: 0.2 means anywhere in [0.8 d, 1.2 d).
    jitter: float = 0.2
    #: The longest a server may make us wait with ``Retry-After`` or ``retry:``.
    max_server_delay: float = 3600.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_max_attempts"):
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError(f"{f.name} must be an int >= 0: {value!r}")
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{f.name} must be a number, not {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{f.name} must be finite and >= 0, not {value!r}")
            if f.name.endswith("_factor") and value < 1:
                raise ValueError(f"{f.name} must be >= 1, not {value!r}")
        if self.jitter > 1:
            raise ValueError(f"jitter must be in [0, 1], not {self.jitter!r}")


@dataclass(frozen=True)
class Decision:
    """What to do after one failure."""

    retry: bool
    delay: float  # seconds to wait before reconnecting; 0.0 when not retrying
    kind: FailureKind
    attempt: int  # consecutive failures of this kind, this one included
    reason: str  # one line for logs and status, e.g. "HTTP 503: retry in 10.0 s"


class RandomSource(Protocol):
    """What :class:`Backoff` needs from a random generator (``random.Random``)."""

    def random(self) -> float:
        """A float uniform in [0, 1)."""
        ...


# --- classify -------------------------------------------------------------

# Exception class names, matched anywhere in the exception's MRO, that mean
# "the connection failed": Twisted's and the project's own, by name, so this
# module needs no Twisted.  Builtins are matched with isinstance below.
_NETWORK_NAMES = frozenset(
    {
        "ConnectError",  # Twisted: refused, DNS, no route, TCP/SSL connect timeout
        "ConnectionRefusedError",
        "DNSLookupError",
        "NoRouteError",
        "TCPTimedOutError",
        "TimeoutError",  # builtin, Twisted's (ConnectError) and Deferred's
        "ConnectionClosed",  # Twisted: ConnectionLost, ConnectionDone, aborted
        "ConnectionLost",
        "ConnectionDone",
        "ConnectionAborted",
        "ConnectionResetError",  # builtin leaves, for callers passing a name
        "ConnectionAbortedError",
        "BrokenPipeError",
        "gaierror",
        "SSLCertVerificationError",
        "ConnectingCancelledError",
        "CancelledError",  # a request cancelled by a timeout
        "ResponseFailed",  # twisted.web: ResponseNeverReceived too
        "ResponseNeverReceived",
        "RequestTransmissionFailed",
        "_DataLoss",  # a dropped body
        "PotentialDataLoss",
        "_MalformedChunkedDataError",
        "ParseError",  # a garbled status line or headers
        "SSLError",
        "ConnectionError",  # builtin and txredisapi's
        "StreamFailed",  # tidehunter_tx.hunter: the body broke mid-stream
        "StallTimeout",
        "FramingError",
    }
)

# Plain strings accepted for ``error``, besides the kind names and the names above.
_ALIASES = {
    "stalled": FailureKind.NETWORK,  # protocol.Ending values
    "stall": FailureKind.NETWORK,
    "failed": FailureKind.NETWORK,
    "timeout": FailureKind.NETWORK,
    "framing": FailureKind.NETWORK,
}


def classify(
    *,
    status: int | None = None,
    error: BaseException | str | None = None,
    ended: bool = False,
) -> FailureKind:
    """The kind of failure a connection ended with.

    A non-2xx ``status`` decides alone (an HTTP error body that broke off is
    still that HTTP error); then ``error``; then ``ended``.  A 2xx status with
    neither an error nor ``ended`` is taken as a clean end too.

    ``error`` is an exception, or a string: a kind name (``"network"``,
    ``"HTTP_5XX"``, ...), an exception class name (``"DNSLookupError"``), or
    ``"stalled"``/``"failed"``/``"timeout"``/``"framing"`` (all NETWORK).
    An unknown string is a caller's bug and raises :class:`ValueError`; an
    unknown exception is FATAL.
    """
    if status is not None:
        if isinstance(status, bool) or not isinstance(status, int):
            raise TypeError(f"status must be an int, not {status!r}")
        if not 100 <= status <= 999:
            raise ValueError(f"not an HTTP status: {status}")
        if not 200 <= status < 300:
            return _classify_status(status)
    if error is not None:
        if isinstance(error, str):
            return _classify_name(error)
        return _classify_exception(error)
    if ended or status is not None:
        return FailureKind.ENDED
    raise ValueError("classify() needs a status, an error or ended=True")


def _classify_status(status: int) -> FailureKind:
    if status in (420, 429):
        return FailureKind.RATE_LIMITED
    if status in (401, 403):
        return FailureKind.AUTH
    if status == 408:
        return FailureKind.NETWORK
    if 500 <= status < 600:
        return FailureKind.HTTP_5XX
    return FailureKind.FATAL


def _classify_name(name: str) -> FailureKind:
    key = name.strip()
    for kind in FailureKind:
        if key.lower() in (kind.value, kind.name.lower()):
            return kind
    if key in _NETWORK_NAMES:
        return FailureKind.NETWORK
    if key.lower() in _ALIASES:
        return _ALIASES[key.lower()]
    raise ValueError(f"unknown failure kind or error name: {name!r}")


class ServerMisbehaved(Exception):
    """The server sent what no feed sends (endless headers, ...): backed off
    from like an HTTP 5xx, never retried at once."""


def _classify_exception(error: BaseException) -> FailureKind:
    # Twisted wraps the cause in a list of failures (ResponseFailed([...])),
    # each holding its exception as ``value``.
    causes = [error] + [
        getattr(reason, "value", reason)
        for reason in getattr(error, "reasons", None) or []
    ]
    if any(isinstance(cause, ServerMisbehaved) for cause in causes):
        return FailureKind.HTTP_5XX
    if any(_unverified(cause) for cause in causes):
        return FailureKind.TLS
    if isinstance(error, (OSError, EOFError, ssl.SSLError)):
        # OSError covers ConnectionError, TimeoutError, socket.gaierror (DNS).
        return FailureKind.NETWORK
    for cls in type(error).__mro__:
        if cls.__name__ in _NETWORK_NAMES:
            return FailureKind.NETWORK
        if cls.__module__.split(".")[0] == "OpenSSL":  # OpenSSL.SSL.Error: TLS
            return FailureKind.NETWORK
    return FailureKind.FATAL


def _unverified(error: object) -> bool:
    """A certificate that did not verify, from OpenSSL, service_identity or ssl."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return True
    module = type(error).__module__
    if module.startswith("service_identity"):
        return True  # the certificate does not name the host
    return module.startswith("OpenSSL") and "certificate verify failed" in str(error)


# --- the numbers ------------------------------------------------------------

_RETRY_AFTER_KINDS = frozenset({FailureKind.RATE_LIMITED, FailureKind.HTTP_5XX})
_SSE_RETRY_KINDS = frozenset({FailureKind.NETWORK, FailureKind.ENDED})


def _exponential(initial: float, factor: float, cap: float, attempt: int) -> float:
    if initial == 0:
        return 0.0
    try:
        delay = initial * factor ** (attempt - 1)
    except OverflowError:  # far past any cap
        return float(cap)
    return float(min(cap, delay))


def compute_delay(
    kind: FailureKind,
    attempt: int,
    config: BackoffConfig,
    jitter_factor: float = 0.0,
) -> float:
    """The delay before retry number ``attempt`` (1-based) of ``kind``.

    ``jitter_factor`` places the delay in the jitter band: -1 at its bottom
    (``1 - jitter`` times the delay), 0 in the middle (no jitter), +1 at its top.
    The kind's cap applies before jitter.  FATAL has no delay (0.0); whether
    AUTH still retries is :func:`should_retry`'s business, not this one's.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, not {attempt}")
    if not -1.0 <= jitter_factor <= 1.0:
        raise ValueError(f"jitter_factor must be in [-1, 1], not {jitter_factor}")
    c = config
    if kind in (FailureKind.NETWORK, FailureKind.ENDED):
        steps = attempt - 1
        base = min(c.network_max, c.network_initial + c.network_step * steps)
    elif kind is FailureKind.HTTP_5XX:
        base = _exponential(c.http_initial, c.http_factor, c.http_max, attempt)
    elif kind is FailureKind.RATE_LIMITED:
        base = _exponential(
            c.rate_limit_initial, c.rate_limit_factor, c.rate_limit_max, attempt
        )
    elif kind is FailureKind.AUTH:
        base = _exponential(c.auth_initial, c.auth_factor, c.auth_max, attempt)
    elif kind is FailureKind.TLS:
        base = _exponential(c.tls_initial, c.tls_factor, c.tls_max, attempt)
    else:
        return 0.0
    return float(base * (1.0 + c.jitter * jitter_factor))


def should_retry(kind: FailureKind, attempt: int, config: BackoffConfig) -> bool:
    """Whether failure number ``attempt`` (1-based) of ``kind`` is retried."""
    if kind is FailureKind.FATAL:
        return False
    if kind is FailureKind.AUTH:
        return attempt <= config.auth_max_attempts
    if kind is FailureKind.TLS:
        return attempt <= config.tls_max_attempts
    return True


_DELAY_SECONDS = re.compile(r"[0-9]+")


def parse_retry_after(value: str, now: datetime | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header value, or None.

    The value is delay-seconds (``"120"``) or an HTTP-date
    (``"Wed, 21 Oct 2015 07:28:00 GMT"``, or the obsolete RFC 850 and asctime
    forms), measured from ``now`` (naive means UTC).  A date in the past is 0.
    None for a malformed value, or for a date when ``now`` is None.
    """
    text = value.strip()
    if _DELAY_SECONDS.fullmatch(text):
        # More digits than this is "forever"; int() would refuse very long ones.
        return float(int(text)) if len(text) <= 15 else math.inf
    if now is None:
        return None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    return max(0.0, (when - now).total_seconds())


def _seconds(delay: float) -> str:
    text = f"{delay:.3f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


_LABELS = {
    FailureKind.NETWORK: "network error",
    FailureKind.HTTP_5XX: "server error",
    FailureKind.RATE_LIMITED: "rate limited",
    FailureKind.AUTH: "authentication refused",
    FailureKind.FATAL: "fatal error",
    FailureKind.TLS: "certificate not verified",
    FailureKind.ENDED: "stream ended",
}


def decide(
    kind: FailureKind,
    attempt: int,
    config: BackoffConfig,
    jitter_factor: float = 0.0,
    *,
    retry_after: str | None = None,
    now: datetime | None = None,
    sse_retry_ms: int | None = None,
    status: int | None = None,
    cause: str | None = None,
    short_streams: int = 0,
) -> Decision:
    """The whole decision for failure number ``attempt`` of ``kind``, statelessly.

    ``retry_after`` (a header value, needing ``now`` if it is a date) is a floor
    for RATE_LIMITED and HTTP_5XX; ``sse_retry_ms`` (the last SSE ``retry:``) is
    a floor for NETWORK and ENDED; both floors apply after jitter and are held
    to ``config.max_server_delay``.  ``status`` or else ``cause`` (say, an
    exception's class name) names the failure in ``reason``.  For ENDED,
    ``short_streams`` (the short streams in a row, this one included) sets a
    floor from ``short_initial`` doubling to ``short_max``.
    """
    if status is not None:
        label = f"HTTP {status}"
    elif cause:
        label = cause
    else:
        label = _LABELS[kind]
    if kind is FailureKind.FATAL:
        return Decision(False, 0.0, kind, attempt, f"{label} is fatal")
    if not should_retry(kind, attempt, config):
        tries = attempt - 1
        plural = "" if tries == 1 else "s"
        reason = f"{label}: giving up after {tries} attempt{plural}"
        return Decision(False, 0.0, kind, attempt, reason)

    delay = compute_delay(kind, attempt, config, jitter_factor)
    floor: float | None = None
    floor_name = ""
    notes: list[str] = []
    if retry_after is not None and kind in _RETRY_AFTER_KINDS:
        floor = parse_retry_after(retry_after, now)
        floor_name = "Retry-After"
        if floor is None and now is None:
            notes.append("Retry-After ignored: no clock to read a date against")
        elif floor is None:
            notes.append("malformed Retry-After ignored")
    elif sse_retry_ms is not None and kind in _SSE_RETRY_KINDS and sse_retry_ms >= 0:
        floor = sse_retry_ms / 1000.0
        floor_name = "SSE retry"
    if floor is not None:
        floor = min(floor, config.max_server_delay)
        if floor > delay:
            delay = floor
            notes.append(f"held to {floor_name}")
    if kind is FailureKind.ENDED and short_streams > 0:
        short_floor = _exponential(
            config.short_initial, config.short_factor, config.short_max, short_streams
        )
        in_a_row = "" if short_streams == 1 else f", {short_streams} in a row"
        notes.append(
            f"ended within {_seconds(config.short_stream)} s of opening{in_a_row}"
        )
        delay = max(delay, short_floor)

    when = "retry at once" if delay == 0 else f"retry in {_seconds(delay)} s"
    extra = "".join(f", {note}" for note in notes)
    reason = f"{label}: {when} (attempt {attempt}{extra})"
    return Decision(True, delay, kind, attempt, reason)


# --- the state ----------------------------------------------------------------


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class Backoff:
    """Counts consecutive failures per kind and turns each into a :class:`Decision`.

    ``rng`` supplies the jitter (``random.Random(seed)`` in tests); ``clock``
    is read only when a ``Retry-After`` date arrives without ``now``.
    """

    def __init__(
        self,
        config: BackoffConfig | None = None,
        rng: RandomSource | None = None,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.config = config if config is not None else BackoffConfig()
        self._rng: RandomSource = rng if rng is not None else random.Random()
        self._clock = clock if clock is not None else _utc_now
        self._attempts: dict[FailureKind, int] = dict.fromkeys(FailureKind, 0)
        self._failed_since_record = False
        self._short_streams = 0
        self._view = MappingProxyType(self._attempts)

    @property
    def attempts(self) -> Mapping[FailureKind, int]:
        """Consecutive failures per kind since the last record (a live view)."""
        return self._view

    def next_delay(
        self,
        kind: FailureKind,
        *,
        retry_after: str | None = None,
        now: datetime | None = None,
        sse_retry_ms: int | None = None,
        status: int | None = None,
        cause: str | None = None,
        lived: float | None = None,
    ) -> Decision:
        """Count one more failure of ``kind`` and decide what to do about it.

        ``lived`` is how long an ENDED stream was open, in seconds.
        """
        if kind is FailureKind.ENDED and lived is not None:
            short = lived < self.config.short_stream
            self._short_streams = self._short_streams + 1 if short else 0
        self._attempts[kind] += 1
        self._failed_since_record = True
        attempt = self._attempts[kind]
        # One draw per decision, so a seeded source gives a repeatable sequence.
        jitter_factor = 2.0 * self._rng.random() - 1.0
        if retry_after is not None and now is None:
            now = self._clock()
        return decide(
            kind,
            attempt,
            self.config,
            jitter_factor,
            retry_after=retry_after,
            now=now,
            sse_retry_ms=sse_retry_ms,
            status=status,
            cause=cause,
            short_streams=self._short_streams if kind is FailureKind.ENDED else 0,
        )

    def record_arrived(self) -> None:
        """A record got through: the connection works, start every count afresh.

        Called for every batch delivered: cheap when nothing failed since.
        """
        if not self._failed_since_record:
            return
        self._failed_since_record = False
        for kind in self._attempts:
            self._attempts[kind] = 0
