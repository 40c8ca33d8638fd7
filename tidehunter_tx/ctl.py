"""``tidehunter-ctl``: read the counts of a running hunter, pause it, stop it.

Exit codes: 0 done, 1 the command could not be carried out (no daemon, wrong
secret, ...), 2 bad usage.  ``watch`` ends with 0 both when the daemon goes
away and on Ctrl-C: interrupting it is how a watch is meant to end.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
import unicodedata
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, TextIO

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater, react

from .control import ControlClient, ControlError, read_secret_file

__all__ = ["main"]

DEFAULT_CONTROL = "unix:tidehunter.sock:mode=600:lockfile=1"
WATCH_INTERVAL = 0.5
#: The sparkline covers this many seconds, one bar per interval.
SPARK_SECONDS = 60.0
#: The rate shown, and the ETA, are over this many seconds (steadier than one
#: interval, still the current rate).
RATE_SECONDS = 5.0
SPARK_BARS = "▁▂▃▄▅▆▇█"
#: For a terminal whose encoding has no block elements (ISO-8859-1, ...).
ASCII_BARS = "_.:-=+*#"
#: On a terminal: back to the start of the line, and clear to its end.
_LINE_START = "\r\x1b[K"
_LINE_UP = "\x1b[1A"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tidehunter-ctl",
        description="Steer a running tidehunter daemon over AMP.",
    )
    parser.add_argument(
        "--control",
        default=DEFAULT_CONTROL,
        help="the daemon's control endpoint, as given to it (default: %(default)s)",
    )
    parser.add_argument("--secret-file", help="file holding the shared secret")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("status", help="print the counters as one JSON object")
    commands.add_parser("stop", help="stop the daemon; print the final count")
    commands.add_parser("pause", help="stop reading, keep the connection")
    commands.add_parser("resume", help="read again")
    limit = commands.add_parser("limit", help="change the record limit")
    limit.add_argument("limit", type=_non_negative, help="the new limit (0 = none)")
    watch = commands.add_parser(
        "watch",
        help="live state, count/limit, rate and errors until the daemon exits "
        "or Ctrl-C (one plain line per interval when not on a terminal)",
    )
    watch.add_argument(
        "--interval",
        type=_positive_seconds,
        default=WATCH_INTERVAL,
        metavar="SECONDS",
        help="seconds between polls (default: %(default)s)",
    )
    return parser


def _non_negative(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {number}")
    return number


def _positive_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, not {value}")
    return seconds


async def _run(reactor: Any, args: argparse.Namespace) -> None:
    secret = read_secret_file(args.secret_file) if args.secret_file else None
    client = await ControlClient.connect(args.control, secret, reactor)
    try:
        if args.command == "status":
            print(json.dumps(await client.status(), sort_keys=True))
        elif args.command == "stop":
            print(await client.stop())
        elif args.command == "pause":
            print(await client.pause())
        elif args.command == "resume":
            print(await client.resume())
        elif args.command == "limit":
            print(json.dumps(await client.set_limit(args.limit), sort_keys=True))
        elif args.command == "watch":
            await _watch(reactor, client, args.interval)
    finally:
        client.close()


# -- watch: what is measured


@dataclass(frozen=True)
class _Sample:
    at: float  # time.monotonic()
    count: int  # the counter's: what the limit is measured against
    records: int  # this hunter's deliveries: never reset, never another's


class _Rates:
    """The samples of the last minute, and the rates they give.

    The bars and the rate shown come from ``records``: the records this
    daemon delivered, which moves with this daemon alone and is never reset.
    ``count`` is the counter's: a shared Redis counter moves it with every
    hunter's records (in steps, as its cache is refreshed) and a counter
    restarted by a consumer drops it to 0.  The ETA alone uses ``count``:
    the limit is reached when ``count`` is, whoever counted.
    """

    def __init__(self, interval: float = WATCH_INTERVAL) -> None:
        self.interval = interval
        self._samples: deque[_Sample] = deque()

    def add(self, sample: _Sample) -> None:
        self._samples.append(sample)
        # The sample before the minute stays: it starts the minute's first bar.
        minute_ago = sample.at - SPARK_SECONDS
        while len(self._samples) > 2 and self._samples[1].at <= minute_ago:
            self._samples.popleft()

    def bars(self, room: int) -> list[float]:
        """Records per second over the last minute in at most ``room`` bars,
        oldest first: each bar spans as many intervals as it takes for the
        minute to fit (one interval each when there is room)."""
        if room <= 0:
            return []
        per_bar = max(1, math.ceil(SPARK_SECONDS / self.interval / room))
        # Bars end at the newest sample, so the right-hand bar is always now.
        points = list(self._samples)[::-1][::per_bar][::-1]
        pairs = pairwise(points)
        rates = [_per_second(a.records, b.records, b.at - a.at) for a, b in pairs]
        return rates[-room:]

    def rate(self) -> float | None:
        """Records per second this daemon delivers, over the last few seconds;
        None before there are two samples."""
        if len(self._samples) < 2:
            return None
        first, last = self._window()
        return _per_second(first.records, last.records, last.at - first.at)

    def count_rate(self) -> float:
        """How fast ``count`` climbs towards the limit."""
        first, last = self._window()
        return _per_second(first.count, last.count, last.at - first.at)

    def _window(self) -> tuple[_Sample, _Sample]:
        last = self._samples[-1]
        first = next(s for s in self._samples if last.at - s.at <= RATE_SECONDS)
        if first is last and len(self._samples) > 1:
            first = self._samples[-2]  # a slow poll: still two samples
        return first, last


def _per_second(before: int, after: int, seconds: float) -> float:
    # Falling numbers (a counter restarted, records a sink lost) are no rate.
    return max(after - before, 0) / seconds if seconds > 0 else 0.0


class _Countdown:
    """Seconds until the next connection attempt, while backing off.

    The daemon's ``retry_in`` when it sends one; from an older daemon, the
    ``backoff`` counted down here from when the wait was first seen (late by
    at most one interval).
    """

    def __init__(self) -> None:
        self._wait: tuple[float, int] | None = None  # (backoff, reconnects)
        self._seen = 0.0

    def seconds_left(self, status: dict[str, Any], now: float) -> float | None:
        if status["state"] != "backing_off":
            self._wait = None
            return None
        retry_in = status.get("retry_in")
        if retry_in is not None:
            return max(float(retry_in), 0.0)
        wait = (float(status["backoff"]), int(status["reconnects"]))
        if wait != self._wait:  # a new wait began
            self._wait, self._seen = wait, now
        return max(wait[0] - (now - self._seen), 0.0)


@dataclass(frozen=True)
class _View:
    """One frame of a watch."""

    state: str
    count: int
    limit: int
    rate: float | None
    eta: float | None
    reconnects: int
    retry_in: float | None
    last_error: str | None
    #: The sparkline's rates for a given number of bars.
    bars: Callable[[int], Sequence[float]]


def _view(status: dict[str, Any], rates: _Rates, retry_in: float | None) -> _View:
    count, limit = int(status["count"]), int(status["limit"])
    climb = rates.count_rate()
    eta = max(limit - count, 0) / climb if limit > 0 and climb > 0 else None
    return _View(
        state=str(status["state"]),
        count=count,
        limit=limit,
        rate=rates.rate(),
        eta=eta,
        reconnects=int(status["reconnects"]),
        retry_in=retry_in,
        last_error=status.get("last_error"),
        bars=rates.bars,
    )


# -- watch: how it is shown


def _plain_line(view: _View) -> str:
    """One ``key=value`` line for a log or ``grep``."""
    error = "-" if view.last_error is None else json.dumps(view.last_error)
    retry = "-" if view.retry_in is None else f"{view.retry_in:.1f}s"
    rate = "-" if view.rate is None else f"{view.rate:.1f}/s"
    eta = "-" if view.eta is None else _duration(view.eta)
    return (
        f"state={_printable(view.state)} count={view.count}/{view.limit or '-'} "
        f"rate={rate} eta={eta} reconnects={view.reconnects} "
        f"retry_in={retry} last_error={error}"
    )


def _figures(view: _View) -> str:
    """The first terminal line without its sparkline."""
    limit = f"{view.limit:,}" if view.limit else "-"
    parts = [
        f"{_printable(view.state):<11}",
        f"{view.count:,}/{limit}",
        "- rec/s" if view.rate is None else f"{view.rate:,.1f} rec/s",
    ]
    if view.eta is not None:
        parts.append(f"eta {_duration(view.eta)}")
    parts.append(f"reconnects {view.reconnects}")
    if view.retry_in is not None:
        parts.append(f"retry in {view.retry_in:.1f}s")
    return "  ".join(parts)


def _sparkline(rates: Sequence[float], bars: str = SPARK_BARS) -> str:
    """One bar per rate, scaled to the highest; all zero is all lowest."""
    peak = max(rates, default=0.0)
    if peak <= 0:
        return bars[0] * len(rates)
    top = len(bars) - 1
    return "".join(bars[round(rate / peak * top)] for rate in rates)


def _duration(seconds: float) -> str:
    """``9s``, ``4m05s``, ``2h03m``: whole seconds, rounded up."""
    whole = math.ceil(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _printable(text: str) -> str:
    """``text`` without control characters: a feed's error text is the
    server's, and an escape sequence in it must not steer the terminal."""
    return "".join(
        " " if ch in "\t\n\r" else "?" if unicodedata.category(ch)[0] == "C" else ch
        for ch in text
    )


def _cells(ch: str) -> int:
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def _fit(text: str, width: int, cut: str = "…") -> str:
    """``text`` in ``width`` terminal cells, ending with ``cut`` if it was cut."""
    text = _printable(text)
    if sum(map(_cells, text)) <= width:
        return text
    kept, used = [], 0
    for ch in text:
        if used + _cells(ch) > width - len(cut):
            break
        kept.append(ch)
        used += _cells(ch)
    return "".join(kept) + cut


def _encodes(text: str, encoding: str) -> bool:
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


class _Screen:
    """Where a watch is shown: on a terminal two lines redrawn in place, the
    second one the last error; elsewhere one plain line per interval.

    Two lines always (``last error: -`` until there is one), each cut to the
    terminal's width: the cursor goes up exactly one line per redraw.  The
    cursor is never hidden, so no exit (Ctrl-Z, a kill) can leave it hidden.
    """

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._tty = out.isatty()
        self._encoding = getattr(out, "encoding", None) or "ascii"
        unicode = _encodes(SPARK_BARS + "…", self._encoding)
        self._bars, self._cut = (SPARK_BARS, "…") if unicode else (ASCII_BARS, "...")
        self._drawn = False
        self._figures_width = 0  # the figures never shrink: the bars stay put
        self.closed = False

    def show(self, view: _View) -> None:
        if self.closed:
            return
        if not self._tty:
            self._write(_plain_line(view) + "\n")
            return
        # Short of the last column: a line that fills it wraps on some terminals.
        width = max(shutil.get_terminal_size().columns - 1, len(self._cut))
        figures = _figures(view)
        self._figures_width = max(self._figures_width, len(figures))
        first = figures.ljust(self._figures_width) + "  "
        room = max(width - len(first), 0)
        bars = _sparkline(view.bars(room), self._bars)
        first = _fit(first + bars, width, self._cut)
        second = _fit(f"last error: {view.last_error or '-'}", width, self._cut)
        up = _LINE_UP if self._drawn else ""
        self._write(f"\r{up}\x1b[K{first}\n{_LINE_START}{second}")
        self._drawn = True

    def close(self, message: str | None = None) -> None:
        """End the watch: the prompt that follows starts a fresh line."""
        if self.closed:
            return
        self.closed = True
        ending = "\n" if self._tty and self._drawn else ""
        self._write(ending + (f"{message}\n" if message else ""))

    def interrupt(self) -> None:
        """Ctrl-C (or SIGTERM): past the frame and the ``^C`` echo, a fresh line."""
        if not self.closed and self._tty:
            self._write("\n")
        self.closed = True

    def _write(self, text: str) -> None:
        # What the terminal's encoding lacks (in an error text) becomes "?".
        text = text.encode(self._encoding, "replace").decode(self._encoding)
        try:
            self._out.write(text)
            self._out.flush()
        except BrokenPipeError:
            # `watch | grep -m1 ...`: the reader has what it wanted.
            self.closed = True


async def _watch(reactor: Any, client: ControlClient, interval: float) -> None:
    """Poll ``Status`` each interval and show it until the daemon goes away."""
    screen, rates, countdown = _Screen(sys.stdout), _Rates(interval), _Countdown()
    # SIGINT and SIGTERM stop the reactor, and react() exits 0.  The screen
    # has its last word before the connection is dropped, which would read
    # as the daemon going away.
    reactor.addSystemEventTrigger("before", "shutdown", screen.interrupt)
    next_poll = time.monotonic()
    while not (client.disconnected.called or screen.closed):
        try:
            status = await client.status()
        except ControlError:
            break  # the daemon went away: that ends a watch normally
        now = time.monotonic()
        rates.add(_Sample(now, int(status["count"]), int(status["records"])))
        screen.show(_view(status, rates, countdown.seconds_left(status, now)))
        next_poll = max(next_poll + interval, now)  # no burst after a slow poll
        await deferLater(reactor, next_poll - now, lambda: None)
    screen.close("daemon stopped")  # a no-op after Ctrl-C


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)

    async def run(reactor: Any) -> None:
        try:
            await _run(reactor, args)
        except ControlError as error:
            print(f"tidehunter-ctl: {error}", file=sys.stderr)
            raise SystemExit(1) from None

    try:
        react(lambda reactor: ensureDeferred(run(reactor)))
    except KeyboardInterrupt:
        # Ctrl-C before the reactor took SIGINT over: nothing drawn yet.
        if args.command != "watch":
            raise
        if sys.stdout.isatty():
            print()
        raise SystemExit(0) from None


if __name__ == "__main__":
    main()
