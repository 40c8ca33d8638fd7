"""``tidehunter-ctl watch`` against a real daemon: what a person sees on a
terminal (a pseudo-terminal, its escape codes applied to a screen model), and
what a log or ``grep`` reads when stdout is a pipe."""

from __future__ import annotations

import codecs
import errno
import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path

import pytest
from support import CTL, Daemon

from tidehunter_tx.ctl import _Countdown, _fit, main

SPARK = re.compile("[▁▂▃▄▅▆▇█]+")
CSI = re.compile(r"\x1b\[([?0-9;]*)([A-Za-z])")
PLAIN = re.compile(
    r"state=(?P<state>\S+) count=(?P<count>\d+)/(?P<limit>\S+) "
    r"rate=(?P<rate>\S+) eta=(?P<eta>\S+) reconnects=(?P<reconnects>\d+) "
    r"retry_in=(?P<retry_in>\S+) last_error=(?P<last_error>.+)"
)


class Screen:
    """What a terminal shows once ``\\r``, ``\\n``, ``ESC[K`` and ``ESC[nA``
    are applied; any other escape sequence fails the test."""

    def __init__(self) -> None:
        self.rows: list[str] = [""]
        self.row = 0
        self.col = 0

    def feed(self, text: str) -> None:
        at = 0
        while at < len(text):
            csi = CSI.match(text, at)
            if csi:
                self._escape(csi.group(1), csi.group(2))
                at = csi.end()
                continue
            self._char(text[at])
            at += 1

    def _escape(self, argument: str, command: str) -> None:
        if command == "K" and argument == "":
            self.rows[self.row] = self.rows[self.row][: self.col]
        elif command == "A":
            self.row = max(self.row - int(argument or 1), 0)
        else:
            raise AssertionError(f"unexpected escape ESC[{argument}{command}")

    def _char(self, char: str) -> None:
        if char == "\r":
            self.col = 0
        elif char == "\n":
            self.row += 1
            if self.row == len(self.rows):
                self.rows.append("")
        else:
            line = self.rows[self.row].ljust(self.col)
            self.rows[self.row] = line[: self.col] + char + line[self.col + 1 :]
            self.col += 1

    def frame(self) -> tuple[str, str]:
        """The two lines of a watch, the cursor at the end of the second."""
        assert self.row >= 1, self.rows
        return self.rows[self.row - 1], self.rows[self.row]


class PtyWatch:
    """``tidehunter-ctl watch`` with a pseudo-terminal as its terminal."""

    def __init__(self, control: str, *args: str, cols: int = 100) -> None:
        self.cols = cols
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        argv = [CTL, "--control", control, "watch", *args]
        pid, fd = pty.fork()
        if pid == 0:  # the child: its own session, the pty its terminal
            try:
                size = struct.pack("HHHH", 24, cols, 0, 0)
                fcntl.ioctl(1, termios.TIOCSWINSZ, size)
                os.execve(CTL, argv, env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.raw = ""
        self.screen = Screen()
        self.eof = False
        self._decoder = codecs.getincrementaldecoder("utf-8")()

    def _read(self, timeout: float) -> None:
        ready, _, _ = select.select([self.fd], [], [], max(timeout, 0))
        if not ready:
            return
        try:
            data = os.read(self.fd, 65536)
        except OSError as error:  # Linux: EIO once the child closed the pty
            if error.errno != errno.EIO:
                raise
            data = b""
        if not data:
            self.eof = True
            return
        text = self._decoder.decode(data)
        self.raw += text
        self.screen.feed(text)

    def wait_for(self, seen: Callable[[Screen], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not seen(self.screen):
            assert not self.eof, f"watch ended: {self.raw!r}"
            assert time.monotonic() < deadline, f"never seen: {self.screen.rows}"
            self._read(deadline - time.monotonic())

    def interrupt(self) -> None:
        os.write(self.fd, b"\x03")  # Ctrl-C, as typed: the pty sends SIGINT

    def finish(self, timeout: float = 10.0) -> int:
        """Read to the end; the exit code."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            assert time.monotonic() < deadline, f"still running: {self.raw!r}"
            self._read(deadline - time.monotonic())
        _, status = os.waitpid(self.pid, 0)
        self.pid = 0
        return os.waitstatus_to_exitcode(status)

    def close(self) -> None:
        if self.pid:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.kill()


@pytest.fixture
def watches() -> Iterator[list[PtyWatch]]:
    started: list[PtyWatch] = []
    yield started
    for watch in started:
        watch.close()


def start(daemons: list[Daemon], workdir: Path, url: str, *args: str) -> Daemon:
    out = f"file:{workdir / 'out.jsonl'}"
    daemon = Daemon(workdir, "--url", url, "--sink", out, *args)
    daemons.append(daemon)
    daemon.wait_until_up()
    return daemon


def streaming_frame_complete(screen: Screen) -> bool:
    if screen.row < 1:
        return False
    top, bottom = screen.frame()
    bars = SPARK.search(top)
    return (
        top.startswith("streaming")
        and "/100,000" in top
        and re.search(r"eta \d+m\d\ds", top) is not None
        and "reconnects 0" in top
        and bars is not None
        and len(bars.group()) >= 2
        and bottom == "last error: -"
    )


def test_on_a_terminal_one_frame_redrawn_and_ctrl_c_exits_0(
    firehose_process, tmp_path, daemons, watches
):
    url = f"{firehose_process}/firehose?rate=200&size=60"
    daemon = start(daemons, tmp_path, url, "--limit", "100000")
    watch = PtyWatch(daemon.control, "--interval", "0.1", cols=100)
    watches.append(watch)

    watch.wait_for(streaming_frame_complete)
    top, _ = watch.screen.frame()
    # Redrawn in place: however many frames, the screen holds two lines.
    assert watch.raw.count("\x1b[1A") >= 2
    assert len(watch.screen.rows) == 2, watch.screen.rows
    assert all(len(row) < watch.cols for row in watch.screen.rows)
    count, limit = re.search(r"([\d,]+)/([\d,]+)", top).groups()
    assert 0 < int(count.replace(",", "")) < 100_000 and limit == "100,000"
    rate = float(re.search(r"([\d,.]+) rec/s", top).group(1).replace(",", ""))
    assert 100 < rate < 400, top

    watch.interrupt()
    assert watch.finish() == 0
    assert watch.raw.endswith("\n")
    assert watch.screen.col == 0 and watch.screen.rows[watch.screen.row] == ""
    assert "daemon stopped" not in watch.raw
    assert "Traceback" not in watch.raw
    assert daemon.process.poll() is None  # the daemon is not the watch's to stop


def test_not_a_terminal_one_plain_line_per_interval(
    firehose_process, tmp_path, daemons
):
    url = f"{firehose_process}/firehose?rate=200&size=60"
    daemon = start(daemons, tmp_path, url, "--limit", "100000")
    watch = subprocess.Popen(
        [CTL, "--control", daemon.control, "watch", "--interval", "0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        lines, arrivals = read_lines(watch, 6)
        assert daemon.ctl("stop").returncode == 0
        rest, stderr = watch.communicate(timeout=10)
    finally:
        watch.kill()
        watch.wait()
    assert watch.returncode == 0, stderr
    raw = b"\n".join(lines) + rest
    assert b"\r" not in raw and b"\x1b" not in raw
    assert rest.endswith(b"daemon stopped\n")

    fields = [PLAIN.fullmatch(line.decode()) for line in lines]
    assert all(fields), lines
    counts = [int(f["count"]) for f in fields]
    assert counts == sorted(counts) and counts[-1] > counts[0]
    assert {f["limit"] for f in fields} == {"100000"}
    assert {f["state"] for f in fields[1:]} == {"streaming"}
    assert all(100 < float(f["rate"].removesuffix("/s")) < 400 for f in fields[1:])
    assert all(re.fullmatch(r"\d+m\d\ds", f["eta"]) for f in fields[1:])
    assert {f["retry_in"] for f in fields} == {"-"}
    assert {f["last_error"] for f in fields} == {"-"}
    # One line per interval (0.1 s), not a burst and not a stall.
    gaps = [b - a for a, b in pairwise(arrivals)]
    assert 0.05 < sum(gaps) / len(gaps) < 0.4, gaps


def read_lines(
    process: subprocess.Popen[bytes], wanted: int, timeout: float = 10.0
) -> tuple[list[bytes], list[float]]:
    """The first ``wanted`` lines of its stdout, and when each came."""
    assert process.stdout is not None
    fd, pending = process.stdout.fileno(), b""
    lines: list[bytes] = []
    arrivals: list[float] = []
    deadline = time.monotonic() + timeout
    while len(lines) < wanted:
        left = deadline - time.monotonic()
        assert left > 0, f"only {lines}"
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        data = os.read(fd, 65536)
        assert data, f"ended after {lines} {pending!r}"
        *complete, pending = (pending + data).split(b"\n")
        lines.extend(complete)
        arrivals.extend(time.monotonic() for _ in complete)
    assert not pending
    return lines[:wanted], arrivals[:wanted]


def test_backing_off_counts_down_and_shows_the_error(
    firehose_process, tmp_path, daemons, watches
):
    # HTTP 503: the hbc policy waits 5 s before the next try.
    daemon = start(daemons, tmp_path, f"{firehose_process}/firehose?status=503")
    watch = PtyWatch(daemon.control, "--interval", "0.1", cols=60)
    watches.append(watch)
    countdown: list[float] = []

    def counted_down(screen: Screen) -> bool:
        if screen.row < 1:
            return False
        top, bottom = screen.frame()
        left = re.search(r"retry in (\d+\.\d)s", top)
        if not (top.startswith("backing_off") and left):
            return False
        if not countdown or float(left.group(1)) != countdown[-1]:
            countdown.append(float(left.group(1)))
        return len(countdown) >= 3 and bottom.startswith("last error: HTTP 503")

    watch.wait_for(counted_down)
    assert countdown[-1] < countdown[-2] < countdown[-3] <= 5.5, countdown
    top, bottom = watch.screen.frame()
    assert "reconnects 1" in top
    # The error is long (the body the server sent): cut to the width.
    assert bottom.endswith("…") and len(bottom) == watch.cols - 1
    assert all(len(row) < watch.cols for row in watch.screen.rows)

    assert daemon.ctl("stop").returncode == 0
    assert watch.finish() == 0
    assert watch.raw.endswith("daemon stopped\r\n")  # the pty's newline
    assert watch.screen.rows[-2:] == ["daemon stopped", ""]
    assert watch.screen.rows[-3].startswith("last error: HTTP 503")


def test_countdown_without_retry_in_counts_the_backoff_down_locally():
    countdown = _Countdown()
    waiting = {"state": "backing_off", "backoff": 5.0, "reconnects": 1}
    assert countdown.seconds_left(waiting, now=100.0) == 5.0
    assert countdown.seconds_left(waiting, now=101.5) == 3.5
    assert countdown.seconds_left(waiting, now=107.0) == 0.0
    # A new wait (the next reconnect) starts its own countdown.
    longer = {**waiting, "backoff": 10.0, "reconnects": 2}
    assert countdown.seconds_left(longer, now=108.0) == 10.0
    assert countdown.seconds_left({**longer, "state": "connecting"}, 109.0) is None
    # The daemon's own figure wins when it sends one.
    assert countdown.seconds_left({**longer, "retry_in": 2.25}, 110.0) == 2.25


def test_an_error_cannot_steer_the_terminal():
    hostile = "HTTP 500: \x1b[2J\x1b]0;owned\x07\r\nsecond line\tend"
    shown = _fit(hostile, 80)
    assert "\x1b" not in shown and "\r" not in shown and "\n" not in shown
    assert _fit("日本語のエラー", 7) == "日本語…"  # two cells each, then the cut


@pytest.mark.parametrize("interval", ["0", "-1", "nan", "inf", "soon"])
def test_watch_interval_must_be_positive_seconds(tmp_path, capsys, interval):
    control = f"unix:{tmp_path / 'none.sock'}"
    with pytest.raises(SystemExit) as usage:
        main(["--control", control, "watch", "--interval", interval])
    assert usage.value.code == 2
    assert "--interval" in capsys.readouterr().err
