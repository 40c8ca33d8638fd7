"""A private etcd (Debian's ``etcd-server``, 3.4) for the tests, and its v3 gateway.

``make test`` installs etcd-server with apt-get when it is missing and make
runs as root; where it cannot, the etcd tests skip with the reason.  Each
server gets free loopback ports for its client and peer URLs, a data
directory of its own, logs only errors, and dies with the test process
(PDEATHSIG) if the test is killed.  The ``ETCD_*`` variables of the caller's
environment are not passed on: etcd reads its configuration from them.

The JSON gateway (``/v3/...``) carries keys and values in base64.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from peer_support import Peer
from redis_support import HOST, free_port

#: Where Debian's etcd-server puts the binary (``dpkg -L etcd-server``).
DEBIAN_ETCD = Path("/usr/bin/etcd")
REASON = (
    "etcd is not installed (`make test` installs etcd-server with apt-get"
    " when run as root; else `sudo apt-get install etcd-server`)"
)


def find_etcd() -> str:
    """The etcd binary: PATH first, then Debian's path; else skip the test."""
    found = shutil.which("etcd")
    if found is not None:
        return found
    if DEBIAN_ETCD.is_file() and os.access(DEBIAN_ETCD, os.X_OK):
        return str(DEBIAN_ETCD)
    pytest.skip(REASON)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def prefix_end(prefix: str) -> str:
    """etcd's ``range_end`` for every key starting with ``prefix`` (last byte + 1)."""
    raw = prefix.encode()
    return (raw[:-1] + bytes([raw[-1] + 1])).decode()


def watch_body(prefix: str) -> str:
    """The ``POST /v3/watch`` body for every key under ``prefix``."""
    request = {"key": b64(prefix), "range_end": b64(prefix_end(prefix))}
    return json.dumps({"create_request": request})


def post(url: str, body: str | bytes, timeout: float = 10.0) -> tuple[int, Any]:
    """POST ``body``; the status and the JSON answer (error answers too)."""
    data = body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(url, data=data, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


class Etcd:
    """A running private etcd: ``url`` is its client URL (``http://127.0.0.1:N``)."""

    def __init__(self, workdir: Path) -> None:
        binary = find_etcd()
        self.workdir = workdir
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}

        def argv(port: int) -> list[str]:
            client = f"http://{HOST}:{port}"
            peer = f"http://{HOST}:{free_port()}"
            data = workdir / f"data-{port}"
            return [
                binary,
                *("--name", "th", "--data-dir", str(data)),
                *("--listen-client-urls", client, "--advertise-client-urls", client),
                *("--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer),
                *("--initial-cluster", f"th={peer}"),
                *("--logger", "zap", "--log-level", "error"),
            ]

        self.peer = Peer("etcd", workdir, argv, self._healthy, env=env)

    @staticmethod
    def _healthy(port: int) -> bool:
        url = f"http://{HOST}:{port}/health"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                return bool(json.loads(response.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def start(self) -> Etcd:
        self.peer.start()
        self.url = f"http://{HOST}:{self.peer.port}"
        return self

    def stop(self) -> None:
        self.peer.stop()

    def put(self, key: str, value: str) -> int:
        """``POST /v3/kv/put``; the revision it made."""
        body = json.dumps({"key": b64(key), "value": b64(value)})
        status, answer = post(f"{self.url}/v3/kv/put", body)
        assert status == 200, answer
        return int(answer["header"]["revision"])

    def version(self) -> dict[str, str]:
        with urllib.request.urlopen(f"{self.url}/version", timeout=5) as response:
            return dict(json.loads(response.read()))
