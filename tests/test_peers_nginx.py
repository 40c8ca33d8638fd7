"""A real nginx (apt) as a TLS + gzip proxy in front of the emulator.

nginx holds a certificate for 127.0.0.1 from a private CA made for the test,
gzips what the emulator sends (``proxy_buffering off``, so each chunk it reads
is flushed through gzip at once) and logs, per request, the Content-Encoding it
sent and ``$gzip_ratio``.  The daemon with ``--ca-file`` reads exactly
``--limit`` records through it, gzip on the wire; without ``--ca-file`` the
certificate does not verify, and after three tries the daemon exits 1 saying
so.
"""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import ssl
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from peer_support import Peer, find_peer, wait_until
from support import Daemon
from test_tls import PKI, VERIFY_FAILED, make_pki

pytestmark = [pytest.mark.peers, pytest.mark.slow]

LIMIT = 20
#: 100-byte records at 50 a second: a gzip that held them back would hold
#: them for good (the hunter would then give up on gzip, which we check not).
FEED = "/firehose?size=100&rate=50"


def nginx_conf(workdir: Path, port: int, pki: PKI, upstream: str) -> str:
    """One process (``master_process off``), so it runs as whoever runs the
    tests: root's workers would switch to nobody, who cannot enter pytest's
    0700 temporary directories.  Everything it writes stays in ``workdir``."""
    return textwrap.dedent(
        f"""
        master_process off;
        daemon off;
        pid {workdir}/nginx.pid;
        error_log {workdir}/error.log info;
        events {{ worker_connections 64; }}
        http {{
            log_format wire '$status $request_uri '
                            '"$sent_http_content_encoding" $gzip_ratio';
            access_log {workdir}/access.log wire;
            client_body_temp_path {workdir}/tmp/body;
            proxy_temp_path {workdir}/tmp/proxy;
            fastcgi_temp_path {workdir}/tmp/fastcgi;
            uwsgi_temp_path {workdir}/tmp/uwsgi;
            scgi_temp_path {workdir}/tmp/scgi;
            server {{
                listen 127.0.0.1:{port} ssl;
                ssl_certificate {pki.server};
                ssl_certificate_key {pki.server};
                gzip on;
                gzip_types application/json application/x-ndjson text/plain;
                location / {{
                    proxy_pass {upstream};
                    proxy_http_version 1.1;
                    proxy_buffering off;
                }}
            }}
        }}
        """
    )


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


class Nginx:
    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.url = f"https://127.0.0.1:{peer.port}"
        self.dir = peer.workdir

    def access_log(self) -> list[str]:
        path = self.dir / "access.log"
        return path.read_text().splitlines() if path.exists() else []

    def error_log(self) -> str:
        path = self.dir / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def nginx(pki: PKI, firehose_process: str, tmp_path: Path) -> Iterator[Nginx]:
    binary = find_peer("nginx", Path("/usr/sbin/nginx"))
    workdir = tmp_path / "nginx"
    (workdir / "tmp").mkdir(parents=True)

    def argv(port: int) -> list[str]:
        conf = workdir / "nginx.conf"
        conf.write_text(nginx_conf(workdir, port, pki, firehose_process))
        # -e: not even the start-up messages go to the system's log.
        return [binary, "-p", str(workdir), "-c", str(conf), "-e", "error.log"]

    peer = Peer("nginx", workdir, argv, _accepts).start()
    try:
        yield Nginx(peer)
    finally:
        peer.stop()


def _daemon(tmp_path: Path, *args: str) -> Daemon:
    workdir = tmp_path / "daemon"
    workdir.mkdir()
    return Daemon(workdir, *args)


def test_daemon_with_ca_file_reads_the_limit_through_nginx_gzip_on_the_wire(
    nginx, pki, tmp_path
):
    out = tmp_path / "records.jsonl"
    daemon = _daemon(
        tmp_path,
        *("--url", nginx.url + FEED, "--ca-file", str(pki.ca)),
        *("--limit", str(LIMIT), "--sink", f"file:{out}"),
    )
    try:
        assert daemon.wait(timeout=30) == 0, daemon.output()
    finally:
        daemon.kill()
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [record["id"] for record in records] == list(range(LIMIT))
    log = daemon.output()
    assert f"{LIMIT} records delivered (limit {LIMIT})" in log, log
    assert "0 reconnects" in log and "compression" not in log, log
    # nginx logs the request once the daemon has hung up on it: what it sent
    # the daemon was gzip (the ratio is "-": the body never ended).
    wait_until(nginx.access_log, 10, "nginx's access log line")
    [line] = nginx.access_log()
    assert line == f'200 {FEED} "gzip" -', line
    # The same gzip, asked for once more and to its end (count=), inflates to
    # the emulator's records, and nginx logs how much it shrank them.
    context = ssl.create_default_context(cafile=str(pki.ca))
    port = int(nginx.url.rsplit(":", 1)[1])
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context)
    bounded = f"/firehose?size=100&count={LIMIT}"
    connection.request("GET", bounded, headers={"Accept-Encoding": "gzip"})
    response = connection.getresponse()
    assert response.status == 200
    assert response.getheader("content-encoding") == "gzip", response.getheaders()
    body = gzip.decompress(response.read())
    connection.close()
    assert [json.loads(x)["id"] for x in body.splitlines()] == list(range(LIMIT))
    wait_until(lambda: len(nginx.access_log()) == 2, 10, "the second log line")
    status, uri, encoding, ratio = nginx.access_log()[1].split(" ")
    assert (status, uri, encoding) == ("200", bounded, '"gzip"')
    assert float(ratio) > 1, ratio


def test_daemon_without_ca_file_tries_three_times_then_exits_1(nginx, tmp_path):
    out = tmp_path / "records.jsonl"
    daemon = _daemon(
        tmp_path,
        *("--url", nginx.url + FEED),
        *("--limit", str(LIMIT), "--sink", f"file:{out}"),
    )
    try:
        assert daemon.wait(timeout=30) == 1, daemon.output()  # 1 + 2 + 4 s
    finally:
        daemon.kill()
    log = daemon.output()
    assert VERIFY_FAILED in log, log
    assert "giving up after 3 attempts" in log, log
    assert not out.exists() or out.read_bytes() == b""
    # nginx saw each try end in the daemon's alert, and never a request.
    reconnects = int(log.split(" reconnects")[0].rsplit(" ", 1)[-1])
    assert reconnects == 3, log
    refused = nginx.error_log().count("alert unknown ca")
    assert refused == reconnects + 1, nginx.error_log()
    assert nginx.access_log() == [], nginx.access_log()
