"""A real etcd (3.4, Debian's etcd-server): its v3 JSON gateway's ``POST /v3/watch``.

What etcd sends on a watch: one JSON line per answer, and the first answer
is the watch being created, ``{"result": {"header": {...}, "created": true}}``
with no events.  Then one line per change, ``{"result": {"header": {...},
"events": [{"kv": {"key": B64, "value": B64, "mod_revision": "N", ...}}]}}``
(one event per line for single puts).  A user counts every line as a record:
N puts under the prefix give N + 1 records, the created line first, so the
tests ask for ``limit = N + 1`` and start putting once that first line is in.

A bad request (a body that is not JSON, a key that is not base64) is answered
``HTTP 500 Internal Server Error`` with a JSON body,
``{"error": REASON, "message": REASON, "code": 2}``; code 2 is gRPC's Unknown.

One etcd for the module (about a second to start); each test watches a prefix
of its own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from etcd_support import Etcd, find_etcd, post, unb64, watch_body
from support import BIN, CTL, Daemon, wait_for

from tidehunter_tx import HTTPStatusError, Hunter

README = Path(__file__).resolve().parent.parent / "README.md"
PUTS = 5
#: etcd's own words for a watch body that is not JSON.
NOT_JSON = "not json"
NOT_JSON_REASON = "invalid character 'o' in literal null (expecting 'u')"


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Etcd]:
    find_etcd()  # skips, with the reason, before a directory is made
    server = Etcd(tmp_path_factory.mktemp("etcd")).start()
    try:
        yield server
    finally:
        server.stop()


def _events(line: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(key, value, mod_revision) of each event in one watch line."""
    return [
        (unb64(e["kv"]["key"]), unb64(e["kv"]["value"]), int(e["kv"]["mod_revision"]))
        for e in line["result"].get("events", [])
    ]


def _assert_created(line: dict[str, Any]) -> None:
    assert line["result"].get("created") is True, line
    assert "events" not in line["result"], line


# -- (a) the Hunter, in process


@pytest_twisted.ensureDeferred
async def test_hunter_gets_each_put_under_the_prefix_in_order(etcd: Etcd) -> None:
    prefix = "hunter/"
    h = Hunter(f"{etcd.url}/v3/watch", method="POST", data=watch_body(prefix).encode())
    run = h.tide_on(limit=PUTS + 1)  # the created line, then one per put
    lines: list[dict[str, Any]] = []
    revisions: list[int] = []
    async for record in h.records():
        lines.append(json.loads(record))
        if len(lines) == 1:
            # The watch is on.  Keys outside the prefix (its range end is
            # exclusive) come first: they must not show up.
            etcd.put("hunter0", "outside")
            etcd.put("other/1", "outside")
            revisions = [etcd.put(f"{prefix}{n}", f"value {n}") for n in range(PUTS)]
    response = await run
    assert response.code == 200
    assert len(lines) == PUTS + 1, lines
    _assert_created(lines[0])
    got = [event for line in lines[1:] for event in _events(line)]
    assert got == [(f"{prefix}{n}", f"value {n}", revisions[n]) for n in range(PUTS)], (
        lines
    )
    assert (h.delivered, h.status()["records"]) == (PUTS + 1, PUTS + 1)


# -- (b) the README's commands: the daemon into a file sink


def _readme_etcd_blocks() -> list[str]:
    """The README's shell blocks whose marker names this module, in order."""
    lines = README.read_text().splitlines()
    blocks: list[str] = []
    for i, line in enumerate(lines):
        if not line.startswith("```"):
            continue
        before = [x for x in lines[:i] if x.strip()]
        if not before or "tests/test_etcd.py" not in before[-1]:
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        blocks.append("\n".join(lines[i + 1 : end]) + "\n")
    return blocks


def _shell(text: str, cwd: Path, out: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDEHUNTER_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    with open(out, "wb") as log:
        return subprocess.Popen(
            ["bash", "-e", "-o", "pipefail", "-c", text],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _json_values(text: str) -> list[Any]:
    """The JSON values in ``text``, one after another (whitespace or not)."""
    decoder, values, at = json.JSONDecoder(), [], 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at == len(text):
            return values
        value, at = decoder.raw_decode(text, at)
        values.append(value)


def _kill(shell: subprocess.Popen[bytes]) -> None:
    if shell.poll() is None:
        os.killpg(shell.pid, signal.SIGKILL)
        shell.wait()


def _count(cwd: Path) -> int | None:
    """The daemon's count, from its default control socket; None until it answers."""
    probe = [CTL, "--control", f"unix:{cwd / 'tidehunter.sock'}", "status"]
    done = subprocess.run(probe, capture_output=True, text=True, timeout=10)
    return int(json.loads(done.stdout)["count"]) if done.returncode == 0 else None


@pytest.mark.slow
def test_readme_daemon_writes_the_created_line_and_each_put(
    etcd: Etcd, tmp_path: Path
) -> None:
    blocks = _readme_etcd_blocks()
    assert len(blocks) == 2, "README's etcd example changed shape"
    port = etcd.url.rsplit(":", 1)[1]
    daemon_block, puts_block = (re.sub(r"\b2379\b", port, b) for b in blocks)
    if "curl" in puts_block and shutil.which("curl") is None:
        pytest.skip("curl is not installed (the README puts keys with it)")
    daemon = _shell(daemon_block, tmp_path, tmp_path / "daemon.out")
    try:
        deadline = time.monotonic() + 15
        while (count := _count(tmp_path)) is None or count < 1:  # the created line
            assert daemon.poll() is None, (tmp_path / "daemon.out").read_text()
            assert time.monotonic() < deadline, "the watch never started"
            time.sleep(0.05)
        puts = _shell(puts_block, tmp_path, tmp_path / "puts.out")
        assert puts.wait(timeout=15) == 0, (tmp_path / "puts.out").read_text()
        assert daemon.wait(timeout=15) == 0, (tmp_path / "daemon.out").read_text()
    finally:
        _kill(daemon)
    log = (tmp_path / "daemon.out").read_text()
    assert "4 records delivered (limit 4)" in log, log
    answers = _json_values((tmp_path / "puts.out").read_text())  # curl adds no newline
    revisions = [int(answer["header"]["revision"]) for answer in answers]
    lines = [
        json.loads(x) for x in (tmp_path / "sensors.jsonl").read_text().split("\n")[:-1]
    ]
    assert len(lines) == 4, lines
    _assert_created(lines[0])
    got = [event for line in lines[1:] for event in _events(line)]
    assert got == [(f"sensors/{n}", f"21.{n}", revisions[n - 1]) for n in (1, 2, 3)]


# -- (c) a bad watch request: etcd's reason must reach the user


def test_etcd_answers_a_bad_watch_request_with_500_and_its_reason(etcd: Etcd) -> None:
    url = f"{etcd.url}/v3/watch"
    assert post(url, NOT_JSON) == (
        500,
        {"error": NOT_JSON_REASON, "message": NOT_JSON_REASON, "code": 2},
    )
    bad_key = json.dumps({"create_request": {"key": "!!"}})
    reason = "illegal base64 data at input byte 0"
    assert post(url, bad_key) == (500, {"error": reason, "message": reason, "code": 2})


@pytest_twisted.ensureDeferred
async def test_without_reconnect_the_hunter_fails_with_etcds_reason(
    etcd: Etcd,
) -> None:
    url = f"{etcd.url}/v3/watch"
    h = Hunter(url, method="POST", data=NOT_JSON.encode())
    with pytest.raises(HTTPStatusError) as failed:
        await h.tide_on(limit=1)
    assert failed.value.code == 500
    assert NOT_JSON_REASON in json.loads(failed.value.body)["error"]
    assert NOT_JSON_REASON in str(failed.value), str(failed.value)
    assert h.delivered == 0 and not h.q.pending


@pytest.mark.slow
def test_without_reconnect_the_daemon_exits_1_quoting_etcds_reason(
    etcd: Etcd, tmp_path: Path
) -> None:
    daemon = Daemon(
        tmp_path,
        *("--url", f"{etcd.url}/v3/watch", "--method", "POST", "--data", NOT_JSON),
        "--no-reconnect",
    )
    try:
        assert daemon.wait(timeout=15) == 1, daemon.output()
    finally:
        daemon.kill()
    assert NOT_JSON_REASON in daemon.output(), daemon.output()


#: Until issue 11's fix: with reconnect the 500's body is read (and kept in
#: HTTPStatusError.body) but the reason logged and kept as last_error is only
#: the policy's, e.g. "HTTP 500: retry in 4.855 s (attempt 1)" (5 s, jittered).
@pytest_twisted.ensureDeferred
async def test_reconnecting_hunter_shows_etcds_reason_in_last_error(
    etcd: Etcd,
) -> None:
    h = Hunter(
        f"{etcd.url}/v3/watch", method="POST", data=NOT_JSON.encode(), reconnect=True
    )
    run = h.tide_on(limit=1)
    try:
        await wait_for(lambda: h.status()["last_error"] is not None, timeout=10)
        last_error = h.status()["last_error"]
    finally:
        h.tide_off()
        await run
    assert last_error.startswith("HTTP 500"), last_error
    assert NOT_JSON_REASON in last_error, last_error


@pytest.mark.slow
def test_reconnecting_daemon_logs_etcds_reason(etcd: Etcd, tmp_path: Path) -> None:
    daemon = Daemon(
        tmp_path,
        *("--url", f"{etcd.url}/v3/watch", "--method", "POST", "--data", NOT_JSON),
    )
    try:
        daemon.wait_until_up()
        status = daemon.wait_for(lambda s: s["last_error"] is not None, timeout=10)
    finally:
        daemon.kill()
    log = daemon.output()
    logged = [line for line in log.splitlines() if "HTTP 500" in line]
    assert logged, log
    assert NOT_JSON_REASON in logged[0], log
    assert NOT_JSON_REASON in status["last_error"], status
