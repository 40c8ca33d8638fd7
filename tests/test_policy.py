"""The reconnect policy, without a reactor: tables of numbers and decisions."""

from __future__ import annotations

import dataclasses
import random
import socket
import ssl
from datetime import datetime, timedelta, timezone

import pytest
from twisted.internet import defer
from twisted.internet import error as terror
from twisted.web import _newclient, http

from tidehunter_tx.policy import (
    Backoff,
    BackoffConfig,
    Decision,
    FailureKind,
    classify,
    compute_delay,
    decide,
    parse_retry_after,
    should_retry,
)

NETWORK = FailureKind.NETWORK
HTTP_5XX = FailureKind.HTTP_5XX
RATE_LIMITED = FailureKind.RATE_LIMITED
AUTH = FailureKind.AUTH
FATAL = FailureKind.FATAL
ENDED = FailureKind.ENDED

NO_JITTER = BackoffConfig(jitter=0.0)
NOW = datetime(2024, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


class Fixed:
    """A random source that always returns the same number."""

    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


def decisions(
    backoff: Backoff, kind: FailureKind, n: int, **kw: object
) -> list[Decision]:
    return [backoff.next_delay(kind, **kw) for _ in range(n)]  # type: ignore[arg-type]


# --- the delay tables -----------------------------------------------------

TABLES = {
    NETWORK: [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25],
    ENDED: [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25],
    HTTP_5XX: [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 320.0, 320.0, 320.0],
    RATE_LIMITED: [60.0, 120.0, 240.0, 320.0, 320.0, 320, 320, 320, 320, 320],
}


@pytest.mark.parametrize("kind", list(TABLES))
def test_delay_table_for_attempts_1_to_10_without_jitter(kind: FailureKind) -> None:
    got = [compute_delay(kind, n, NO_JITTER) for n in range(1, 11)]
    assert got == TABLES[kind]


@pytest.mark.parametrize("kind", list(TABLES))
def test_backoff_walks_the_same_table(kind: FailureKind) -> None:
    backoff = Backoff(NO_JITTER, random.Random(1))
    got = decisions(backoff, kind, 10)
    assert [d.delay for d in got] == TABLES[kind]
    assert [d.attempt for d in got] == list(range(1, 11))
    assert all(d.retry and d.kind is kind for d in got)


def test_auth_delays_follow_the_5xx_schedule_while_retrying() -> None:
    got = [compute_delay(AUTH, n, NO_JITTER) for n in range(1, 6)]
    assert got == [5.0, 10.0, 20.0, 40.0, 80.0]


@pytest.mark.parametrize(
    ("kind", "attempt", "expected"),
    [
        (NETWORK, 64, 15.75),
        (NETWORK, 65, 16.0),
        (NETWORK, 66, 16.0),
        (NETWORK, 10_000, 16.0),
        (HTTP_5XX, 10_000, 320.0),
        (RATE_LIMITED, 10_000, 320.0),
        (AUTH, 10_000, 320.0),
    ],
)
def test_caps_hold_for_any_attempt_without_overflow(
    kind: FailureKind, attempt: int, expected: float
) -> None:
    assert compute_delay(kind, attempt, NO_JITTER) == expected


def test_fatal_has_no_delay() -> None:
    assert compute_delay(FATAL, 1, NO_JITTER) == 0.0


# --- every number is configurable -------------------------------------------


@pytest.mark.parametrize(
    ("changes", "kind", "expected"),
    [
        ({"network_initial": 1.0, "network_step": 0.5, "network_max": 2.0}, NETWORK,
         [1.0, 1.5, 2.0, 2.0, 2.0]),
        ({"network_step": 1.0, "network_max": 3.0}, ENDED, [0.0, 1.0, 2.0, 3.0, 3.0]),
        ({"http_initial": 1.0, "http_factor": 3.0, "http_max": 20.0}, HTTP_5XX,
         [1.0, 3.0, 9.0, 20.0, 20.0]),
        ({"rate_limit_initial": 15.0, "rate_limit_factor": 2.0,
          "rate_limit_max": 900.0}, RATE_LIMITED, [15.0, 30.0, 60.0, 120.0, 240.0]),
        ({"auth_initial": 2.0, "auth_factor": 1.0, "auth_max": 10.0}, AUTH,
         [2.0, 2.0, 2.0, 2.0, 2.0]),
    ],
)  # fmt: skip
def test_a_custom_config_changes_the_table(
    changes: dict[str, float], kind: FailureKind, expected: list[float]
) -> None:
    config = BackoffConfig(jitter=0.0, **changes)  # type: ignore[arg-type]
    assert [compute_delay(kind, n, config) for n in range(1, 6)] == expected


def test_defaults_are_the_twitter_numbers() -> None:
    c = BackoffConfig()
    assert (c.network_initial, c.network_step, c.network_max) == (0.0, 0.25, 16.0)
    assert (c.http_initial, c.http_factor, c.http_max) == (5.0, 2.0, 320.0)
    assert (c.rate_limit_initial, c.rate_limit_factor, c.rate_limit_max) == (
        60.0,
        2.0,
        320.0,
    )
    assert (c.auth_initial, c.auth_factor, c.auth_max) == (5.0, 2.0, 320.0)
    assert c.auth_max_attempts == 5
    assert c.jitter == 0.2


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        BackoffConfig().jitter = 0.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "changes",
    [
        {"network_step": -1.0},
        {"http_max": float("nan")},
        {"rate_limit_initial": float("inf")},
        {"http_factor": 0.5},
        {"jitter": 1.5},
        {"jitter": -0.1},
        {"auth_max_attempts": -1},
        {"auth_max_attempts": 2.5},
        {"max_server_delay": float("inf")},
    ],
)
def test_nonsense_config_is_refused(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        BackoffConfig(**changes)  # type: ignore[arg-type]


def test_config_numbers_must_be_numbers() -> None:
    with pytest.raises(TypeError):
        BackoffConfig(http_max="320")  # type: ignore[arg-type]


# --- jitter -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "attempt", "base"),
    [(NETWORK, 5, 1.0), (HTTP_5XX, 3, 20.0), (RATE_LIMITED, 2, 120.0), (AUTH, 1, 5.0)],
)
def test_jitter_stays_within_20_percent_and_reaches_both_ends(
    kind: FailureKind, attempt: int, base: float
) -> None:
    config = BackoffConfig(jitter=0.2)
    rng = random.Random(20240101)
    delays = []
    for _ in range(2000):
        backoff = Backoff(config, rng)
        delays.append(decisions(backoff, kind, attempt)[-1].delay)
    assert all(0.8 * base <= d <= 1.2 * base for d in delays)
    assert min(delays) < 0.81 * base
    assert max(delays) > 1.19 * base


@pytest.mark.parametrize(
    ("jitter_factor", "expected"), [(-1.0, 16.0), (0.0, 20.0), (0.5, 22.0), (1.0, 24.0)]
)
def test_jitter_factor_places_the_delay_in_the_band(
    jitter_factor: float, expected: float
) -> None:
    assert compute_delay(HTTP_5XX, 3, BackoffConfig(), jitter_factor) == pytest.approx(
        expected
    )


def test_caps_apply_before_jitter() -> None:
    config = BackoffConfig()
    assert compute_delay(HTTP_5XX, 20, config, 1.0) == pytest.approx(384.0)
    assert compute_delay(NETWORK, 200, config, -1.0) == pytest.approx(12.8)


@pytest.mark.parametrize("draw", [0.0, 0.5, 0.999999])
def test_zero_stays_zero_under_jitter(draw: float) -> None:
    backoff = Backoff(BackoffConfig(jitter=0.2), Fixed(draw))
    assert backoff.next_delay(NETWORK).delay == 0.0
    assert backoff.next_delay(ENDED).delay == 0.0


def test_same_seed_same_decisions() -> None:
    def run(seed: int) -> list[Decision]:
        backoff = Backoff(BackoffConfig(), random.Random(seed))
        return decisions(backoff, HTTP_5XX, 8) + decisions(backoff, NETWORK, 8)

    assert run(7) == run(7)
    assert run(7) != run(8)


@pytest.mark.parametrize("jitter_factor", [-1.01, 1.5])
def test_jitter_factor_outside_the_band_is_refused(jitter_factor: float) -> None:
    with pytest.raises(ValueError):
        compute_delay(HTTP_5XX, 1, BackoffConfig(), jitter_factor)


def test_attempt_counts_from_one() -> None:
    with pytest.raises(ValueError):
        compute_delay(HTTP_5XX, 0, BackoffConfig())


# --- Retry-After --------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 0 ", 0.0),
        ("Mon, 01 Jan 2024 12:05:00 GMT", 300.0),  # IMF-fixdate
        ("Monday, 01-Jan-24 12:00:30 GMT", 30.0),  # obsolete RFC 850
        ("Mon Jan  1 12:01:00 2024", 60.0),  # obsolete asctime
        ("Mon, 01 Jan 2024 11:00:00 GMT", 0.0),  # in the past
        ("99999999999999999999999", float("inf")),
    ],
)
def test_retry_after_parses_seconds_and_http_dates(value: str, expected: float) -> None:
    assert parse_retry_after(value, NOW) == expected


@pytest.mark.parametrize(
    "value",
    ["", "soon", "-5", "1.5", "12 s", "0x10", "²", "Mon, 32 Jan 2024 12:00:00 GMT"],
)
def test_malformed_retry_after_parses_to_none(value: str) -> None:
    assert parse_retry_after(value, NOW) is None


def test_an_http_date_needs_now() -> None:
    assert parse_retry_after("Mon, 01 Jan 2024 12:05:00 GMT", None) is None
    assert parse_retry_after("120", None) == 120.0


def test_a_naive_now_is_utc() -> None:
    naive = NOW.replace(tzinfo=None)
    assert parse_retry_after("Mon, 01 Jan 2024 12:05:00 GMT", naive) == 300.0


@pytest.mark.parametrize(
    ("retry_after", "floor"),
    [("200", 200.0), ("Mon, 01 Jan 2024 12:03:20 GMT", 200.0)],
)
@pytest.mark.parametrize("status", [429, 420])
def test_retry_after_is_a_floor_for_rate_limits(
    retry_after: str, floor: float, status: int
) -> None:
    kind = classify(status=status)
    assert kind is RATE_LIMITED
    for seed in range(50):
        backoff = Backoff(BackoffConfig(), random.Random(seed))
        d = backoff.next_delay(kind, retry_after=retry_after, now=NOW, status=status)
        assert d.retry
        assert d.delay == floor
        assert "held to Retry-After" in d.reason


def test_retry_after_floor_holds_after_jitter() -> None:
    # The backoff is 60 s, jittered to [48, 72); the floor of 65 s always holds,
    # and jitter above the floor is kept.
    delays = []
    for seed in range(500):
        backoff = Backoff(BackoffConfig(), random.Random(seed))
        delays.append(backoff.next_delay(RATE_LIMITED, retry_after="65").delay)
    assert min(delays) == 65.0
    assert max(delays) > 71.0
    # The lowest jitter draw is lifted exactly to the floor.
    backoff = Backoff(BackoffConfig(), Fixed(0.0))
    assert backoff.next_delay(RATE_LIMITED, retry_after="59").delay == 59.0


@pytest.mark.parametrize("retry_after", ["1", "59", "Mon, 01 Jan 2024 12:00:10 GMT"])
def test_a_short_retry_after_does_not_shorten_the_backoff(retry_after: str) -> None:
    backoff = Backoff(NO_JITTER, random.Random(0))
    delays = [
        d.delay
        for d in decisions(backoff, RATE_LIMITED, 3, retry_after=retry_after, now=NOW)
    ]
    assert delays == [60.0, 120.0, 240.0]


@pytest.mark.parametrize("retry_after", ["", "soon", "-5", "Mon, 99 Foo 2024"])
def test_malformed_retry_after_is_ignored(retry_after: str) -> None:
    backoff = Backoff(NO_JITTER, random.Random(0))
    d = backoff.next_delay(RATE_LIMITED, retry_after=retry_after, now=NOW, status=429)
    assert (d.retry, d.delay) == (True, 60.0)
    assert d.reason == (
        "HTTP 429: retry in 60.0 s (attempt 1, malformed Retry-After ignored)"
    )


def test_retry_after_is_honoured_for_5xx_too() -> None:
    backoff = Backoff(NO_JITTER, random.Random(0))
    assert backoff.next_delay(HTTP_5XX, retry_after="30").delay == 30.0
    assert backoff.next_delay(HTTP_5XX, retry_after="3").delay == 10.0


@pytest.mark.parametrize("kind", [NETWORK, ENDED, AUTH])
def test_retry_after_is_ignored_for_other_kinds(kind: FailureKind) -> None:
    backoff = Backoff(NO_JITTER, random.Random(0))
    expected = compute_delay(kind, 1, NO_JITTER)
    assert backoff.next_delay(kind, retry_after="300").delay == expected


def test_decide_without_now_says_why_a_date_was_ignored() -> None:
    d = decide(RATE_LIMITED, 1, NO_JITTER, retry_after="Mon, 01 Jan 2024 12:10:00 GMT")
    assert d.delay == 60.0
    assert "no clock" in d.reason


def test_an_http_date_without_now_reads_the_injected_clock() -> None:
    backoff = Backoff(BackoffConfig(), random.Random(0), clock=lambda: NOW)
    d = backoff.next_delay(RATE_LIMITED, retry_after="Mon, 01 Jan 2024 12:10:00 GMT")
    assert d.delay == 600.0


def test_the_server_floor_is_held_to_max_server_delay() -> None:
    config = BackoffConfig(jitter=0.0, max_server_delay=900.0)
    backoff = Backoff(config, random.Random(0))
    far = (NOW + timedelta(days=365)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert backoff.next_delay(RATE_LIMITED, retry_after=far, now=NOW).delay == 900.0
    assert backoff.next_delay(RATE_LIMITED, retry_after="9" * 30).delay == 900.0
    assert backoff.next_delay(NETWORK, sse_retry_ms=10**12).delay == 900.0
    # The default is an hour.
    backoff = Backoff(NO_JITTER, random.Random(0))
    assert backoff.next_delay(RATE_LIMITED, retry_after="86400").delay == 3600.0


# --- SSE retry: ---------------------------------------------------------------


@pytest.mark.parametrize("kind", [NETWORK, ENDED])
def test_sse_retry_is_a_floor_for_network_and_ended(kind: FailureKind) -> None:
    backoff = Backoff(BackoffConfig(), random.Random(3))
    got = decisions(backoff, kind, 3, sse_retry_ms=3000)
    assert [d.delay for d in got] == [3.0, 3.0, 3.0]
    assert "held to SSE retry" in got[0].reason


def test_sse_retry_does_not_shorten_a_longer_backoff() -> None:
    backoff = Backoff(NO_JITTER, random.Random(0))
    got = decisions(backoff, NETWORK, 10, sse_retry_ms=1000)
    assert [d.delay for d in got] == [1.0, 1.0, 1.0, 1.0, 1.0, 1.25, 1.5, 1.75, 2, 2.25]


@pytest.mark.parametrize("kind", [HTTP_5XX, RATE_LIMITED, AUTH])
def test_sse_retry_is_ignored_for_http_failures(kind: FailureKind) -> None:
    backoff = Backoff(NO_JITTER, random.Random(0))
    expected = compute_delay(kind, 1, NO_JITTER)
    assert backoff.next_delay(kind, sse_retry_ms=900_000).delay == expected


def test_a_negative_sse_retry_is_ignored() -> None:
    backoff = Backoff(NO_JITTER, random.Random(0))
    assert backoff.next_delay(NETWORK, sse_retry_ms=-5).delay == 0.0


# --- giving up ------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
def test_auth_gives_up_on_the_sixth_decision(status: int) -> None:
    kind = classify(status=status)
    assert kind is AUTH
    backoff = Backoff(NO_JITTER, random.Random(0))
    got = decisions(backoff, kind, 7, status=status)
    assert [d.retry for d in got] == [True] * 5 + [False, False]
    assert [d.delay for d in got] == [5.0, 10.0, 20.0, 40.0, 80.0, 0.0, 0.0]
    assert got[5].attempt == 6
    assert got[5].reason == f"HTTP {status}: giving up after 5 attempts"


@pytest.mark.parametrize(("limit", "retries"), [(0, 0), (1, 1), (2, 2), (9, 9)])
def test_auth_max_attempts_is_configurable(limit: int, retries: int) -> None:
    config = BackoffConfig(auth_max_attempts=limit)
    assert [should_retry(AUTH, n, config) for n in range(1, 11)] == (
        [True] * retries + [False] * (10 - retries)
    )


@pytest.mark.parametrize("status", [404, 406, 413, 416])
def test_fatal_statuses_give_up_at_once(status: int) -> None:
    kind = classify(status=status)
    assert kind is FATAL
    d = Backoff().next_delay(kind, status=status)
    assert d == Decision(False, 0.0, FATAL, 1, f"HTTP {status} is fatal")


@pytest.mark.parametrize("kind", [NETWORK, ENDED, HTTP_5XX, RATE_LIMITED])
def test_other_kinds_never_give_up(kind: FailureKind) -> None:
    assert all(should_retry(kind, n, BackoffConfig()) for n in (1, 6, 100, 10**6))


# --- counting and resetting -------------------------------------------------


def test_a_bare_success_without_a_record_does_not_reset() -> None:
    backoff = Backoff(NO_JITTER, random.Random(0))
    assert [d.delay for d in decisions(backoff, HTTP_5XX, 3)] == [5.0, 10.0, 20.0]
    # The server answers 200 and closes before any record: a clean end.
    assert classify(status=200, ended=True) is ENDED
    backoff.next_delay(ENDED)
    assert backoff.next_delay(HTTP_5XX).delay == 40.0


def test_accept_then_close_backs_off_instead_of_storming() -> None:
    backoff = Backoff(NO_JITTER, random.Random(0))
    got = decisions(backoff, classify(status=200), 100)
    assert [d.delay for d in got[:4]] == [0.0, 0.25, 0.5, 0.75]
    assert got[-1].delay == 16.0


def test_a_record_resets_every_kind() -> None:
    backoff = Backoff(NO_JITTER, random.Random(0))
    decisions(backoff, HTTP_5XX, 4)
    decisions(backoff, NETWORK, 4)
    decisions(backoff, AUTH, 5)
    backoff.record_arrived()
    assert dict(backoff.attempts) == dict.fromkeys(FailureKind, 0)
    assert backoff.next_delay(HTTP_5XX).delay == 5.0
    assert backoff.next_delay(NETWORK).delay == 0.0
    assert backoff.next_delay(AUTH).retry


def test_each_kind_keeps_its_own_count() -> None:
    backoff = Backoff(NO_JITTER, random.Random(0))
    decisions(backoff, NETWORK, 3)
    assert backoff.next_delay(HTTP_5XX).delay == 5.0
    assert backoff.next_delay(NETWORK).delay == 0.75  # the 4th network failure
    assert backoff.next_delay(HTTP_5XX).delay == 10.0
    assert backoff.attempts[NETWORK] == 4
    assert backoff.attempts[HTTP_5XX] == 2
    assert backoff.attempts[RATE_LIMITED] == 0


def test_attempts_is_a_read_only_live_view() -> None:
    backoff = Backoff()
    view = backoff.attempts
    backoff.next_delay(NETWORK)
    assert view[NETWORK] == 1
    with pytest.raises(TypeError):
        view[NETWORK] = 0  # type: ignore[index]


# --- reasons ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "n", "kw", "reason"),
    [
        (HTTP_5XX, 2, {"status": 503}, "HTTP 503: retry in 10.0 s (attempt 2)"),
        (NETWORK, 1, {}, "network error: retry at once (attempt 1)"),
        (NETWORK, 2, {"cause": "ConnectionRefusedError"},
         "ConnectionRefusedError: retry in 0.25 s (attempt 2)"),
        (ENDED, 3, {}, "stream ended: retry in 0.5 s (attempt 3)"),
        (RATE_LIMITED, 1, {"status": 429, "retry_after": "90"},
         "HTTP 429: retry in 90.0 s (attempt 1, held to Retry-After)"),
        (FATAL, 1, {"status": 404}, "HTTP 404 is fatal"),
        (FATAL, 1, {"cause": "ValueError"}, "ValueError is fatal"),
        (AUTH, 6, {}, "authentication refused: giving up after 5 attempts"),
    ],
)  # fmt: skip
def test_reasons_are_short_and_human(
    kind: FailureKind, n: int, kw: dict[str, object], reason: str
) -> None:
    d = decide(kind, n, NO_JITTER, **kw)  # type: ignore[arg-type]
    assert d.reason == reason


def test_decide_is_pure() -> None:
    a = decide(RATE_LIMITED, 2, BackoffConfig(), 0.3, retry_after="100", now=NOW)
    b = decide(RATE_LIMITED, 2, BackoffConfig(), 0.3, retry_after="100", now=NOW)
    assert a == b
    assert a.delay == pytest.approx(120.0 * 1.06)


# --- classify -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (500, HTTP_5XX), (502, HTTP_5XX), (503, HTTP_5XX), (504, HTTP_5XX),
        (599, HTTP_5XX),
        (420, RATE_LIMITED), (429, RATE_LIMITED),
        (401, AUTH), (403, AUTH),
        (404, FATAL), (406, FATAL), (413, FATAL), (416, FATAL),
        (400, FATAL), (405, FATAL), (410, FATAL), (422, FATAL), (499, FATAL),
        (408, NETWORK),
        (100, FATAL), (301, FATAL), (304, FATAL), (600, FATAL), (999, FATAL),
        (200, ENDED), (204, ENDED),
    ],
)  # fmt: skip
def test_classify_statuses(status: int, kind: FailureKind) -> None:
    assert classify(status=status) is kind


@pytest.mark.parametrize("status", [0, 99, 1000, -200])
def test_classify_refuses_what_is_not_a_status(status: int) -> None:
    with pytest.raises(ValueError):
        classify(status=status)


def _named(name: str, base: type[Exception] = Exception, module: str = "x") -> type:
    return type(name, (base,), {"__module__": module})


class ResponseFailedLike(_named("ResponseFailed")):  # type: ignore[misc]
    pass


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(),
        ConnectionResetError(),
        BrokenPipeError(),
        TimeoutError(),
        OSError("no route"),
        socket.gaierror(-2, "Name or service not known"),
        ssl.SSLError(1, "handshake failure"),
        EOFError(),
        _named("Error", module="OpenSSL.SSL")(),
        _named("ConnectionLost")(),
        _named("_MalformedChunkedDataError")(),
        ResponseFailedLike(),  # a subclass of a known name
    ],
    ids=lambda e: type(e).__name__,
)
def test_classify_network_exceptions(error: BaseException) -> None:
    assert classify(error=error) is NETWORK


@pytest.mark.parametrize(
    "error",
    [
        terror.ConnectionRefusedError(),
        terror.DNSLookupError(),
        terror.TimeoutError(),
        terror.TCPTimedOutError(),
        terror.NoRouteError(),
        terror.SSLError(),
        terror.ConnectionLost(),
        terror.ConnectionDone(),
        terror.ConnectionAborted(),
        terror.ConnectingCancelledError(None),
        _newclient.ResponseFailed([]),
        _newclient.ResponseNeverReceived([]),
        _newclient.RequestTransmissionFailed([]),
        _newclient.ParseError("bad status", b"HTTP/1.1 abc"),
        http._DataLoss(),
        http._MalformedChunkedDataError(),
        http.PotentialDataLoss(),
        defer.TimeoutError(),
        defer.CancelledError(),
    ],
    ids=lambda e: f"{type(e).__module__}.{type(e).__name__}",
)
def test_classify_twisted_network_exceptions_by_name(error: BaseException) -> None:
    assert classify(error=error) is NETWORK


@pytest.mark.parametrize(
    "error",
    [ValueError("bug"), TypeError("bug"), KeyError("k"), KeyboardInterrupt()],
    ids=lambda e: type(e).__name__,
)
def test_unknown_exceptions_are_fatal(error: BaseException) -> None:
    assert classify(error=error) is FATAL


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("network", NETWORK), ("NETWORK", NETWORK), ("http_5xx", HTTP_5XX),
        ("HTTP_5XX", HTTP_5XX), ("rate_limited", RATE_LIMITED), ("auth", AUTH),
        ("fatal", FATAL), ("ended", ENDED), ("Ended", ENDED),
        ("stalled", NETWORK), ("failed", NETWORK), ("framing", NETWORK),
        ("DNSLookupError", NETWORK), ("ResponseNeverReceived", NETWORK),
        ("ConnectionResetError", NETWORK), ("_DataLoss", NETWORK),
    ],
)  # fmt: skip
def test_classify_plain_strings(name: str, kind: FailureKind) -> None:
    assert classify(error=name) is kind


@pytest.mark.parametrize("name", ["netwrok", "", "ValueError", "503"])
def test_classify_refuses_unknown_strings(name: str) -> None:
    with pytest.raises(ValueError):
        classify(error=name)


@pytest.mark.parametrize(
    ("kwargs", "kind"),
    [
        ({"status": 503, "error": ConnectionResetError()}, HTTP_5XX),
        ({"status": 429, "ended": True}, RATE_LIMITED),
        ({"status": 200, "error": ConnectionResetError()}, NETWORK),
        ({"status": 200, "error": "stalled", "ended": True}, NETWORK),
        ({"error": ConnectionResetError(), "ended": True}, NETWORK),
        ({"ended": True}, ENDED),
        ({"status": 200, "ended": True}, ENDED),
    ],
)
def test_classify_precedence_status_then_error_then_ended(
    kwargs: dict[str, object], kind: FailureKind
) -> None:
    assert classify(**kwargs) is kind  # type: ignore[arg-type]


def test_classify_needs_something() -> None:
    with pytest.raises(ValueError):
        classify()


# --- finite endpoints: short streams ------------------------------------------


def test_short_streams_back_off_from_1_s_towards_60_s_whatever_they_deliver() -> None:
    backoff = Backoff(NO_JITTER)
    delays = []
    for _ in range(9):
        delays.append(backoff.next_delay(ENDED, lived=0.01).delay)
        backoff.record_arrived()  # /stream/100 delivers every time
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]


def test_a_short_stream_says_why_it_waits() -> None:
    backoff = Backoff(NO_JITTER)
    backoff.next_delay(ENDED, lived=0.5)
    reason = backoff.next_delay(ENDED, lived=0.5).reason
    assert reason == (
        "stream ended: retry in 2.0 s (attempt 2, ended within 10.0 s of opening,"
        " 2 in a row)"
    )


def test_a_stream_that_lived_long_starts_the_short_count_afresh() -> None:
    backoff = Backoff(NO_JITTER)
    backoff.next_delay(ENDED, lived=1.0)
    backoff.next_delay(ENDED, lived=1.0)
    backoff.record_arrived()
    assert backoff.next_delay(ENDED, lived=600.0).delay == 0.0
    backoff.record_arrived()
    assert backoff.next_delay(ENDED, lived=1.0).delay == 1.0


def test_short_streams_do_not_touch_other_kinds() -> None:
    backoff = Backoff(NO_JITTER)
    backoff.next_delay(ENDED, lived=0.1)
    assert backoff.next_delay(NETWORK).delay == 0.0


# --- certificates that do not verify: configuration, a few tries -------------

TLS = FailureKind.TLS


@pytest.mark.parametrize(
    "error",
    [
        ssl.SSLCertVerificationError(1, "certificate verify failed"),
        _named("Error", module="OpenSSL.SSL")(
            [("SSL routines", "", "certificate verify failed")]
        ),
        _named("VerificationError", module="service_identity.exceptions")(),
    ],
)
def test_certificates_that_do_not_verify_are_tls(error: BaseException) -> None:
    assert classify(error=error) is TLS


def test_a_tls_failure_inside_twisteds_wrapper_is_tls() -> None:
    inner = _named("Error", module="OpenSSL.SSL")(
        [("SSL routines", "", "certificate verify failed")]
    )
    wrapper = ResponseFailedLike()
    wrapper.reasons = [type("FailureLike", (), {"value": inner})()]
    assert classify(error=wrapper) is TLS


def test_tls_is_tried_three_times_then_given_up() -> None:
    backoff = Backoff(NO_JITTER)
    got = decisions(backoff, TLS, 4)
    assert [d.delay for d in got] == [1.0, 2.0, 4.0, 0.0]
    assert [d.retry for d in got] == [True, True, True, False]
    assert got[-1].reason == "certificate not verified: giving up after 3 attempts"
