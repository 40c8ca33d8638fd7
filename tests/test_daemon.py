"""The twistd plugin as a user runs it: a real twistd process, a real emulator."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import pytest
from support import TWISTD


def twistd(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run the daemon to its end, in a fresh directory (its control socket)."""
    kwargs.setdefault("cwd", tempfile.mkdtemp(prefix="tidehunter-test-"))
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [*TWISTD, *args], capture_output=True, text=True, timeout=60, **kwargs
    )


def test_plugin_is_listed_by_twistd_help():
    result = twistd("--help")
    assert "tidehunter" in result.stdout


def test_stdout_sink_carries_exactly_the_records(firehose_process):
    result = twistd(
        "tidehunter", "--url", f"{firehose_process}/firehose?size=100", "--limit", "5"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [json.loads(line)["id"] for line in lines] == [0, 1, 2, 3, 4]
    assert "5 records delivered" in result.stderr


def test_file_sink_gets_exactly_the_limit_and_exits_0(firehose_process, tmp_path):
    out = tmp_path / "records.jsonl"
    result = twistd(
        "tidehunter",
        "--url",
        f"{firehose_process}/firehose?size=150&chunk=777",
        "--limit",
        "1000",
        "--sink",
        f"file:{out}",
    )
    assert result.returncode == 0, result.stderr
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert ids == list(range(1000))


def test_http_error_with_no_reconnect_exits_non_zero_with_the_reason(
    firehose_process, tmp_path
):
    out = tmp_path / "records.jsonl"
    result = twistd(
        "tidehunter",
        "--url",
        f"{firehose_process}/status/503",
        "--sink",
        f"file:{out}",
        "--no-reconnect",
        "--control",
        f"unix:{tmp_path / 'th.sock'}",
    )
    assert result.returncode != 0
    # With a file sink twistd logs where it always does (stdout with -n).
    assert "answered HTTP 503 Service Unavailable" in result.stdout + result.stderr
    assert out.read_bytes() == b""


def test_fatal_status_ends_the_daemon_even_with_reconnects(firehose_process, tmp_path):
    out = tmp_path / "records.jsonl"
    result = twistd(
        "tidehunter",
        "--url",
        f"{firehose_process}/status/404",
        "--sink",
        f"file:{out}",
        "--control",
        f"unix:{tmp_path / 'th.sock'}",
    )
    assert result.returncode != 0
    assert "HTTP 404 is fatal" in result.stdout + result.stderr
    assert out.read_bytes() == b""


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--limit", "-3"], "--limit"),
        (["--limit", "many"], "--limit"),
        (["--sink", "ftp://x"], "--sink"),
        (["--framing", "xml"], "--framing"),
        (["--max-record-bytes", "0"], "--max-record-bytes"),
        (["--header", "no colon"], "--header"),
        ([], "--url"),
        (["--url", "http://127.0.0.1:99999/"], "--url"),
        (["--sink", "file:/missing/dir/x.jsonl"], "no directory /missing/dir"),
        (["--sink", "file:/"], "is a directory"),
        (["--format", "xml"], "--format"),
        (["--compression", "br"], "--compression"),
        (["--max-redirects", "-1"], "--max-redirects"),
    ],
)
def test_bad_option_is_a_usage_error_naming_it(args, named):
    url = (
        [] if named == "--url" or "--url" in args else ["--url", "http://127.0.0.1:9/"]
    )
    result = twistd("tidehunter", *url, *args)
    assert result.returncode != 0
    assert named in result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout


def test_plugin_file_has_no_package_init():
    root = Path(__file__).resolve().parent.parent
    assert (root / "twisted/plugins/tidehunter_plugin.py").exists()
    assert not (root / "twisted/__init__.py").exists()
    assert not (root / "twisted/plugins/__init__.py").exists()


def test_a_reader_that_goes_away_ends_the_run_with_exit_1(firehose_process, tmp_path):
    # `twistd ... | head -3`: head exits after three lines, the pipe closes.
    log = tmp_path / "daemon.log"
    with open(log, "wb") as stderr:
        daemon = subprocess.Popen(
            [*TWISTD, "tidehunter", "--url", f"{firehose_process}/firehose?size=100"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
        assert daemon.stdout is not None
        head = subprocess.run(
            ["head", "-3"], stdin=daemon.stdout, capture_output=True, timeout=30
        )
        daemon.stdout.close()  # only head held the read end
        try:
            code = daemon.wait(timeout=30)
        finally:
            daemon.kill()
    assert [json.loads(line)["id"] for line in head.stdout.splitlines()] == [0, 1, 2]
    output = log.read_text()
    assert code == 1, output
    assert "the reader of the records closed the pipe after" in output
