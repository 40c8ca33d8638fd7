"""The run's log as events: one per change of its state (never one per record),
each named in ``tidehunter_event`` with typed fields; as JSON
(``twistd --logger tidehunter_tx.logs.json``), machine-readable and without
a secret; as text (the default), reading as it always did."""

from __future__ import annotations

import os
import random
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import pytest_twisted
from support import BIN, Daemon
from twisted.logger import eventFromJSON, formatEvent, globalLogPublisher

from tidehunter_tx import Hunter
from tidehunter_tx.hunter_service import HunterService
from tidehunter_tx.policy import Backoff, BackoffConfig

TOKEN = "tok-SECRET-bearer-0123456789"
API_KEY = "SECRET-api-key-0123456789"
LIMIT = 2000
DROP_AFTER = 300
JSON_LOGGER = ("--logger", "tidehunter_tx.logs.json")
THIS = "tests/test_structured_logs.py"  # README's marker for the block run here


def feed(base: str) -> str:
    """A feed behind one redirect, with a key in its query.  The emulator
    refuses options it does not know, but its redirect ignores them; the
    first response it redirects to is cut after DROP_AFTER records."""
    target = f"/firehose?rate=1000&size=80&drop_after={DROP_AFTER}&fail_times=1"
    return f"{base}/redirect/1?to={quote(target, safe='')}&api_key={API_KEY}"


def until(predicate: Callable[[], bool], daemon: Daemon, timeout: float = 15.0) -> None:
    """Poll the daemon's log (no control round trip) until ``predicate``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert daemon.process.poll() is None, daemon.output()
        assert time.monotonic() < deadline, f"not within {timeout}s: {daemon.output()}"
        time.sleep(0.02)


def run_the_story(
    base: str, workdir: Path, daemons: list[Daemon], twistd_args: tuple[str, ...]
) -> tuple[Daemon, Callable[[str], int]]:
    """Connect, get cut, reconnect, be paused and resumed with tidehunter-ctl,
    reach the limit, stop.  ``count(event)`` counts an event in the log."""
    env = {
        **os.environ,
        "TIDEHUNTER_BEARER_TOKEN": TOKEN,
        "TIDEHUNTER_URL": feed(base),  # not argv, where ps would show the key
    }
    out = workdir / "out.jsonl"
    daemon = Daemon(
        workdir,
        *("--limit", str(LIMIT), "--sink", f"file:{out}"),
        env=env,
        twistd_args=twistd_args,
    )
    daemons.append(daemon)

    def count(event: str) -> int:
        if twistd_args:
            return sum(e.get("tidehunter_event") == event for e in events(daemon))
        return len(re.findall(TEXT_OF[event], daemon.output()))

    until(lambda: count("connected") == 2, daemon)  # reconnected after the cut
    assert daemon.ctl("pause").stdout.strip() == "paused"
    until(lambda: count("paused") == 1, daemon)
    assert daemon.ctl("resume").returncode == 0
    assert daemon.wait(timeout=20) == 0, daemon.output()
    assert len(out.read_text().splitlines()) == LIMIT
    return daemon, count


def events(daemon: Daemon) -> list[dict[str, Any]]:
    """Every line of the log, each one JSON (a line being written is left out)."""
    text = daemon.output()
    whole = text[: text.rfind("\n") + 1]
    return [eventFromJSON(line) for line in whole.splitlines()]


#: The story's events, in order, and how each reads in the text log.
STORY = [
    "started",
    "redirected",
    "connected",
    "reconnect_scheduled",
    "redirected",
    "connected",
    "paused",
    "resumed",
    "limit_reached",
    "stopped",
]
URL = r"http://127\.0\.0\.1:\d+"
TEXT_OF = {
    "started": rf"tidehunter: streaming {URL}/redirect/1 \(limit {LIMIT}\)",
    "redirected": rf"tidehunter: HTTP 302 redirect from {URL}/redirect/1\?to=\*\*\*"
    rf"&api_key=\*\*\* to {URL}/firehose\?rate=\*\*\*&size=\*\*\*"
    r"&drop_after=\*\*\*&fail_times=\*\*\*",
    "connected": rf"tidehunter: connected to {URL}/redirect/1 \(HTTP 200\)",
    "reconnect_scheduled": rf"tidehunter: {URL}/redirect/1: StreamFailed: stream "
    rf"{URL}/redirect/1\?to=\*\*\*&api_key=\*\*\* broke after {DROP_AFTER} "
    r"records: .*: retry at once \(attempt 1\)",
    "paused": r"tidehunter: paused on request \(\d+ delivered\)",
    "resumed": r"tidehunter: resumed on request \(\d+ delivered\)",
    "limit_reached": rf"tidehunter: limit reached \(count {LIMIT} of {LIMIT}\)",
    "stopped": rf"tidehunter: {LIMIT} records delivered \(limit {LIMIT}\); "
    r"\d+ records read: 0 unconfirmed, 0 spilled, \d+ dropped after the run "
    r"ended, 0 lost by the sink; 0 skipped \(too big\), 0 cut off at a body's "
    r"end; \d+ bytes, \d+ keep-alives, 1 reconnects",
}


def fields(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if not k.startswith("log_")}


def test_the_json_log_tells_each_change_of_state_once_with_typed_fields(
    firehose_process: str, tmp_path: Path, daemons: list[Daemon]
) -> None:
    daemon, _ = run_the_story(firehose_process, tmp_path, daemons, JSON_LOGGER)
    raw = daemon.output()
    everything = events(daemon)
    assert len(everything) == len(raw.splitlines())  # every line is JSON
    ours = [e for e in everything if "tidehunter_event" in e]
    assert [e["tidehunter_event"] for e in ours] == STORY, [fields(e) for e in ours]
    # Never one event per record: a fixed story, whatever LIMIT is.
    assert len(everything) < 30, len(everything)

    by_name: dict[str, list[dict[str, Any]]] = {}
    for event in ours:
        by_name.setdefault(event["tidehunter_event"], []).append(event)
        # Rendered from the JSON alone, each reads as the text log does.
        assert re.fullmatch(TEXT_OF[event["tidehunter_event"]], formatEvent(event))
    base = firehose_process
    public = f"{base}/redirect/1"

    (started,) = by_name["started"]
    assert (started["url"], started["limit"]) == (public, LIMIT)
    first, second = by_name["redirected"]
    assert fields(first) == fields(second)  # each connection is redirected
    assert first["code"] == 302 and first["cross_origin"] is False
    assert first["source"] == f"{public}?to=***&api_key=***"
    assert first["target"].startswith(f"{base}/firehose?rate=***")
    assert [c["reconnects"] for c in by_name["connected"]] == [0, 1]
    assert {c["code"] for c in by_name["connected"]} == {200}
    (scheduled,) = by_name["reconnect_scheduled"]
    assert fields(scheduled) | {"reason": "", "url": ""} == {
        "tidehunter_event": "reconnect_scheduled",
        "url": "",
        "reason": "",
        "cause": "network",
        "attempt": 1,
        "delay": 0.0,
        "status": None,
    }
    assert isinstance(scheduled["delay"], float)
    (paused,), (resumed,) = by_name["paused"], by_name["resumed"]
    assert paused["state"] == resumed["state"] == "streaming"
    assert DROP_AFTER <= paused["delivered"] <= resumed["delivered"] < LIMIT
    (reached,) = by_name["limit_reached"]
    assert (reached["count"], reached["limit"], reached["delivered"]) == (
        LIMIT,
        LIMIT,
        LIMIT,
    )
    (stopped,) = by_name["stopped"]
    assert stopped["delivered"] == LIMIT and stopped["limit"] == LIMIT
    assert stopped["read"] == LIMIT + stopped["dropped"]
    assert stopped["reconnects"] == 1
    assert stopped["reconnects_by_cause"] == {"network": 1}
    assert stopped["pauses"] >= 1 and stopped["paused_seconds"] > 0
    for name in ("in_flight", "spilled", "lost", "skipped", "bytes", "stalls"):
        assert type(stopped[name]) is int, name
    assert isinstance(stopped["paused_seconds"], float)

    # A JSON log holds every field of every event: none holds a secret.
    for secret in (TOKEN, API_KEY, quote(API_KEY), "SECRET"):
        assert secret not in raw, secret


def test_the_text_log_reads_as_before(
    firehose_process: str, tmp_path: Path, daemons: list[Daemon]
) -> None:
    daemon, count = run_the_story(firehose_process, tmp_path, daemons, ())
    output = daemon.output()
    lines = [line for line in output.splitlines() if "tidehunter: " in line]
    told = [
        name
        for line in lines
        for name in TEXT_OF
        if re.search(rf"\] {TEXT_OF[name]}$", line)
    ]
    assert told == STORY, lines
    assert "SECRET" not in output
    assert count("stopped") == 1


def readme_block() -> str:
    """The README's command that names this module, its port made ours."""
    readme = Path(__file__).resolve().parent.parent / "README.md"
    lines = readme.read_text().splitlines()
    blocks = []
    for i, line in enumerate(lines):
        before = [x for x in lines[:i] if x.strip()]
        if line.startswith("```") and before and THIS in before[-1]:
            end = lines.index("```", i + 1)
            blocks.append("\n".join(lines[i + 1 : end]) + "\n")
    assert len(blocks) == 1, "README's structured-log example changed shape"
    return blocks[0]


def test_the_readme_command_writes_a_json_log(
    firehose_process: str, tmp_path: Path
) -> None:
    port = firehose_process.rsplit(":", 1)[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDEHUNTER_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(
        ["bash", "-e", "-c", re.sub(r"\b8080\b", port, readme_block())],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    log = (tmp_path / "log.json").read_text().splitlines()
    names = [e.get("tidehunter_event") for e in map(eventFromJSON, log)]
    assert [n for n in names if n] == [
        "started",
        "connected",
        "limit_reached",
        "stopped",
    ]
    assert len((tmp_path / "records.jsonl").read_text().splitlines()) == 100


# -- the events a daemon story does not reach, in this process


def quick() -> Backoff:
    return Backoff(BackoffConfig(network_step=0.01, jitter=0.0), random.Random(5))


@pytest.fixture
def told() -> Iterator[list[dict[str, Any]]]:
    """The tidehunter events logged while the test runs."""
    caught: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if "tidehunter_event" in event:
            caught.append(event)

    globalLogPublisher.addObserver(observe)
    yield caught
    globalLogPublisher.removeObserver(observe)


@pytest_twisted.ensureDeferred
async def test_a_stall_is_one_event_then_a_reconnect(
    firehose: str, told: list[dict[str, Any]]
) -> None:
    url = f"{firehose}/firehose?count=10&size=40&stall_after=4&fail_times=1"
    h = Hunter(url, reconnect=True, backoff=quick(), stall_timeout=0.3)
    await h.tide_on(limit=10)
    names = [e["tidehunter_event"] for e in told]
    assert names == [
        "connected",
        "stalled",
        "reconnect_scheduled",
        "connected",
        "limit_reached",
    ], names
    stalled, scheduled = told[1], told[2]
    assert (stalled["timeout"], stalled["delivered"]) == (0.3, 4)
    assert formatEvent(stalled) == (
        f"tidehunter: {firehose}/firehose: stalled, no byte for 0.3 s"
    )
    assert (scheduled["cause"], scheduled["attempt"]) == ("network", 1)


@pytest_twisted.ensureDeferred
async def test_a_stop_or_the_off_switch_is_told_once(
    firehose: str, told: list[dict[str, Any]]
) -> None:
    for end, event in (("halt", "stop_requested"), ("tide_off", "switched_off")):
        told.clear()
        h = Hunter(f"{firehose}/firehose?rate=200&size=40")
        run = h.tide_on()
        h.pause()
        h.pause()  # already paused: no second event
        h.resume()
        getattr(h, end)()
        getattr(h, end)()  # already stopping: no second event
        await run
        names = [e["tidehunter_event"] for e in told]
        assert names == ["paused", "resumed", event], names
        assert isinstance(told[-1]["count"], int)


@pytest_twisted.ensureDeferred
async def test_no_limit_reads_none_in_the_text_and_0_in_the_fields(
    firehose: str, told: list[dict[str, Any]]
) -> None:
    service = HunterService(Hunter(f"{firehose}/firehose?rate=200&size=40"))
    service.startService()
    await service.stopService()
    by_name = {e["tidehunter_event"]: e for e in told}
    started, stopped = by_name["started"], by_name["stopped"]
    assert (
        formatEvent(started)
        == f"tidehunter: streaming {firehose}/firehose (limit none)"
    )
    assert " delivered (limit none); " in formatEvent(stopped)
    assert started["limit"] == stopped["limit"] == 0
    assert by_name["stop_requested"]["limit"] == 0
