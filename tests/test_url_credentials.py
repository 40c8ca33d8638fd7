"""A --url with credentials and a bad port: twistd's usage error, no secret."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from support import TWISTD, Daemon


@pytest.mark.parametrize("port", ["99999", "abc"])
def test_a_bad_port_beside_credentials_is_a_usage_error(port: str) -> None:
    url = f"http://alice:pw-hidden-9@127.0.0.1:{port}/feed"
    result = subprocess.run(
        [*TWISTD, "tidehunter", "--url", url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "--url has a bad port" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "pw-hidden-9" not in result.stderr + result.stdout


def test_credentials_on_argv_are_warned_of_naming_the_environment_variables(
    tmp_path: Path, daemons: list[Daemon], firehose_process: str
) -> None:
    base = firehose_process.replace("//", "//alice:pw-hidden-9@")
    daemon = Daemon(
        tmp_path,
        "--url",
        f"{base}/firehose?count=3&api_key=key-abcdefgh-42",
        "--no-reconnect",
        "--sink",
        f"file:{tmp_path / 'out'}",
    )
    daemons.append(daemon)
    # The emulator answers 400 to an option it does not know: the warning
    # and the masking are what is tested here.
    assert daemon.wait(timeout=20) == 1, daemon.output()
    output = daemon.output()
    assert "answered HTTP 400" in output
    assert "every user of this machine can read the command line" in output
    assert "TIDEHUNTER_BASIC_AUTH" in output and "TIDEHUNTER_URL" in output
    assert "pw-hidden-9" not in output and "key-abcdefgh-42" not in output


def test_the_url_from_the_environment_streams_without_a_warning(
    tmp_path: Path, daemons: list[Daemon], firehose_process: str
) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "TIDEHUNTER_URL": f"{firehose_process}/firehose?count=3"}
    daemon = Daemon(tmp_path, "--no-reconnect", "--sink", f"file:{out}", env=env)
    daemons.append(daemon)
    assert daemon.wait(timeout=20) == 0, daemon.output()
    assert len(out.read_bytes().splitlines()) == 3
    assert "command line" not in daemon.output()
