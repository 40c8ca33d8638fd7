"""Steering a real twistd daemon with tidehunter-ctl, as a user would."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import CTL, Daemon


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.kill()


def start(daemons: list[Daemon], workdir: Path, *args: str, **kw: str) -> Daemon:
    daemon = Daemon(workdir, *args, **kw)
    daemons.append(daemon)
    return daemon


def lines(path: Path) -> list[int]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def test_status_pause_resume_stop(firehose_process, tmp_path, daemons):
    out = tmp_path / "out.jsonl"
    url = f"{firehose_process}/firehose?rate=3000&size=80"
    daemon = start(daemons, tmp_path, "--url", url, "--sink", f"file:{out}")
    daemon.wait_until_up()
    sock = tmp_path / "th.sock"
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600

    first = daemon.wait_for(lambda s: s["count"] > 100)
    assert first["state"] == "streaming"
    grown = daemon.wait_for(lambda s: s["count"] > first["count"])
    assert grown["count"] > first["count"]

    assert daemon.ctl("pause").stdout.strip() == "paused"
    # Counts settle (a read in flight may still land), then hold for a second.
    settled = daemon.wait_for(lambda s: s["state"] == "paused")
    time.sleep(0.2)
    held = daemon.status()["count"]
    time.sleep(1.0)
    paused = daemon.status()
    assert paused["count"] == held
    assert paused["state"] == "paused"
    assert paused["connected_since"] == settled["connected_since"]  # same connection
    assert paused["reconnects"] == 0

    assert daemon.ctl("resume").returncode == 0
    daemon.wait_for(lambda s: s["count"] > held and s["state"] == "streaming")

    stopping = time.monotonic()
    result = daemon.ctl("stop")
    assert result.returncode == 0, result.stderr
    final = int(result.stdout)
    assert daemon.wait(timeout=5) == 0
    assert time.monotonic() - stopping < 1.5
    assert lines(out) == list(range(final))


def test_limit_below_count_stops_at_once(firehose_process, tmp_path, daemons):
    out = tmp_path / "out.jsonl"
    url = f"{firehose_process}/firehose?rate=2000&size=80"
    daemon = start(daemons, tmp_path, "--url", url, "--sink", f"file:{out}")
    daemon.wait_until_up()
    daemon.wait_for(lambda s: s["count"] > 200)
    result = daemon.ctl("limit", "50")
    assert result.returncode == 0, result.stderr
    assert daemon.wait(timeout=5) == 0
    assert len(lines(out)) > 50  # what was delivered before stays delivered


def test_raising_the_limit_lets_the_run_go_on(firehose_process, tmp_path, daemons):
    out = tmp_path / "out.jsonl"
    url = f"{firehose_process}/firehose?rate=250&size=80"
    daemon = start(
        daemons, tmp_path, "--url", url, "--sink", f"file:{out}", "--limit", "400"
    )
    daemon.wait_until_up()
    assert json.loads(daemon.ctl("limit", "700").stdout)["limit"] == 700
    assert daemon.wait(timeout=20) == 0
    assert lines(out) == list(range(700))


def test_sigterm_flushes_and_exits_0(firehose_process, tmp_path, daemons):
    out = tmp_path / "out.jsonl"
    url = f"{firehose_process}/firehose?rate=2000&size=80"
    daemon = start(daemons, tmp_path, "--url", url, "--sink", f"file:{out}")
    daemon.wait_until_up()
    daemon.wait_for(lambda s: s["count"] > 100)
    daemon.terminate()
    assert daemon.wait(timeout=5) == 0
    delivered = lines(out)
    assert delivered == list(range(len(delivered)))
    assert f"{len(delivered)} records delivered" in daemon.output()


def test_stream_end_reconnects_until_the_limit(firehose_process, tmp_path, daemons):
    out = tmp_path / "out.jsonl"
    url = f"{firehose_process}/firehose?count=50&size=60"
    daemon = start(
        daemons, tmp_path, "--url", url, "--sink", f"file:{out}", "--limit", "120"
    )
    assert daemon.wait(timeout=20) == 0, daemon.output()
    # Each connection sends ids 0..49; the limit cuts the third one at 20.
    assert lines(out) == [*range(50), *range(50), *range(20)]


def test_no_reconnect_ends_with_the_stream(firehose_process, tmp_path, daemons):
    out = tmp_path / "out.jsonl"
    url = f"{firehose_process}/firehose?count=50&size=60"
    daemon = start(
        daemons, tmp_path, "--url", url, "--sink", f"file:{out}", "--no-reconnect"
    )
    assert daemon.wait(timeout=20) == 0, daemon.output()
    assert lines(out) == list(range(50))


def test_tcp_control_without_secret_is_refused_at_start(firehose_process, tmp_path):
    daemon = Daemon(tmp_path, "--url", f"{firehose_process}/firehose", control="tcp:0")
    try:
        assert daemon.wait(timeout=20) != 0
        assert "needs --control-secret-file" in daemon.output()
    finally:
        daemon.kill()


def test_tcp_control_demands_the_secret(firehose_process, tmp_path, daemons):
    secret = tmp_path / "secret"
    secret.write_text("correct horse battery staple\n")
    wrong = tmp_path / "wrong"
    wrong.write_text("hunter2\n")
    port = _free_port()
    out = tmp_path / "out.jsonl"
    daemon = start(
        daemons,
        tmp_path,
        "--url",
        f"{firehose_process}/firehose?rate=500&size=60",
        "--sink",
        f"file:{out}",
        "--control-secret-file",
        str(secret),
        control=f"tcp:{port}:interface=127.0.0.1",
    )
    deadline = time.monotonic() + 15
    while daemon.ctl("status", secret_file=str(secret)).returncode != 0:
        assert time.monotonic() < deadline, daemon.output()
        time.sleep(0.05)

    refused = daemon.ctl("status")
    assert refused.returncode == 1
    assert "wants a secret" in refused.stderr

    wrong_reply = daemon.ctl("status", secret_file=str(wrong))
    assert wrong_reply.returncode == 1
    assert "wrong secret" in wrong_reply.stderr

    status = daemon.status(secret_file=str(secret))
    assert status["state"] in ("streaming", "connecting")
    # Twisted's own client form reaches the same daemon.
    client_args = ["--control", f"tcp:127.0.0.1:{port}", "--secret-file", str(secret)]
    client_form = subprocess.run(
        [CTL, *client_args, "status"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert client_form.returncode == 0, client_form.stderr
    assert json.loads(client_form.stdout)["state"] == status["state"]
    everything = json.dumps(status) + daemon.output()
    assert "correct horse" not in everything

    assert daemon.ctl("stop", secret_file=str(secret)).returncode == 0
    assert daemon.wait(timeout=5) == 0


def test_ctl_without_daemon_says_so(tmp_path):
    daemon_less = Daemon.__new__(Daemon)
    daemon_less.control = f"unix:{tmp_path / 'none.sock'}"
    result = daemon_less.ctl("status")
    assert result.returncode == 1
    assert "no daemon at" in result.stderr
    assert result.stderr.count("\n") == 1


def test_ctl_bad_command_is_usage_error(tmp_path):
    daemon_less = Daemon.__new__(Daemon)
    daemon_less.control = f"unix:{tmp_path / 'none.sock'}"
    assert daemon_less.ctl("explode").returncode == 2
    assert daemon_less.ctl("limit", "-1").returncode == 2


def test_status_hides_credentials_in_the_url(firehose_process, tmp_path, daemons):
    base = firehose_process.replace("http://", "http://user:s3cret@")
    daemon = start(
        daemons,
        tmp_path,
        "--url",
        f"{base}/stream/50?api_key=topsecret",
        "--sink",
        f"file:{tmp_path / 'out.jsonl'}",
    )
    daemon.wait_until_up()
    status = daemon.wait_for(lambda s: s["count"] > 0)
    daemon.ctl("stop")
    daemon.wait(timeout=5)
    shown = json.dumps(status) + daemon.output()
    assert "s3cret" not in shown
    assert "topsecret" not in shown
    assert status["url"] == f"{firehose_process}/stream/50"


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_reader_that_stops_reading_stdout_does_not_freeze_the_daemon(
    firehose_process, tmp_path
):
    import subprocess

    from support import CTL, TWISTD

    control = f"unix:{tmp_path / 'th.sock'}:mode=600"
    reader_in, daemon_out = os.pipe()  # nobody ever reads reader_in
    daemon = subprocess.Popen(
        [
            *TWISTD,
            *("tidehunter", "--url", f"{firehose_process}/firehose?size=200"),
            *("--control", control),
        ],
        cwd=tmp_path,
        stdout=daemon_out,
        stderr=subprocess.DEVNULL,
    )
    os.close(daemon_out)
    try:
        deadline = time.monotonic() + 15
        while True:
            status = subprocess.run(
                [CTL, "--control", control, "status"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            if status.returncode == 0 and json.loads(status.stdout)["pauses"] >= 1:
                break
            assert time.monotonic() < deadline, status.stderr
            time.sleep(0.1)
        # The pipe is full and the stream paused, yet control still answers.
        stop = subprocess.run(
            [CTL, "--control", control, "stop"], capture_output=True, timeout=10
        )
        assert stop.returncode == 0
        assert daemon.wait(timeout=10) == 0
    finally:
        daemon.kill()
        os.close(reader_in)
