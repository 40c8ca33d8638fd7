"""A real Prometheus server (Debian's ``prometheus``) scrapes a running daemon.

Prometheus gets a configuration of its own (one job, the daemon's
``--metrics`` port, scraped every second), a temporary data directory, and a
free loopback port for its web and query API.  The daemon is paused once it
has read a few hundred records, so its count holds still; Prometheus's query
API must then answer ``tidehunter_records_total`` with exactly the count
``tidehunter-ctl status`` gives, and ``up`` must be 1 for the job.
"""

from __future__ import annotations

import json
import textwrap
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from peer_support import Peer, find_peer, wait_until
from redis_support import free_port
from support import Daemon

pytestmark = [pytest.mark.peers, pytest.mark.slow]

#: Where Debian's prometheus package puts the binary.
DEBIAN_PROMETHEUS = Path("/usr/bin/prometheus")


def _answers(port: int) -> bool:
    try:
        url = f"http://127.0.0.1:{port}/-/ready"
        with urllib.request.urlopen(url, timeout=1) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def query(port: int, expression: str) -> list[dict[str, Any]]:
    """The vector a PromQL instant query gives (Prometheus's HTTP API)."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode(
        {"query": expression}
    )
    with urllib.request.urlopen(url, timeout=5) as reply:
        answer = json.loads(reply.read())
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


@pytest.fixture
def metrics_port() -> int:
    return free_port()


@pytest.fixture
def prometheus(tmp_path: Path, metrics_port: int) -> Iterator[Peer]:
    binary = find_peer("prometheus", DEBIAN_PROMETHEUS)
    workdir = tmp_path / "prometheus"
    workdir.mkdir()
    config = workdir / "prometheus.yml"
    config.write_text(
        textwrap.dedent(
            f"""
            global:
              scrape_interval: 1s
              scrape_timeout: 1s
            scrape_configs:
              - job_name: tidehunter
                static_configs:
                  - targets: ["127.0.0.1:{metrics_port}"]
            """
        )
    )
    peer = Peer(
        "prometheus",
        workdir,
        lambda port: [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        _answers,
    ).start()
    try:
        yield peer
    finally:
        peer.stop()


def test_prometheus_scrapes_the_record_count(
    firehose_process: str, tmp_path: Path, prometheus: Peer, metrics_port: int
) -> None:
    daemon = Daemon(
        tmp_path,
        *("--url", f"{firehose_process}/firehose?rate=2000", "--sink", "file:o"),
        *("--metrics", f"tcp:{metrics_port}:interface=127.0.0.1"),
    )
    try:
        daemon.wait_until_up()
        daemon.wait_for(lambda s: s["records"] >= 300)
        assert daemon.ctl("pause").returncode == 0
        held = daemon.wait_for(lambda s: s["state"] == "paused")
        while True:  # the read in flight lands, then nothing moves
            time.sleep(0.1)
            status = daemon.status()
            if status["records"] == held["records"]:
                break
            held = status

        def scraped_the_count() -> bool:
            result = query(prometheus.port, "tidehunter_records_total")
            return bool(result) and float(result[0]["value"][1]) == status["records"]

        wait_until(scraped_the_count, 20, f"Prometheus shows {status['records']}")
        (up,) = query(prometheus.port, 'up{job="tidehunter"}')
        assert up["value"][1] == "1"
        (paused,) = query(prometheus.port, "tidehunter_paused")
        assert paused["value"][1] == "1"
        # The alert of the README: no records for 5 minutes; not firing here
        # (records came within the last minute).
        assert not query(
            prometheus.port, "time() - tidehunter_last_record_timestamp_seconds > 300"
        )
        daemon.terminate()
        assert daemon.wait() == 0, daemon.output()
    finally:
        daemon.kill()
    assert "Traceback" not in daemon.output()
