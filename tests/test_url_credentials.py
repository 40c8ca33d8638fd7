"""A --url with credentials and a bad port: twistd's usage error, no secret."""

from __future__ import annotations

import subprocess

import pytest
from support import TWISTD


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
