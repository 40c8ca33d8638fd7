"""TLS: certificates are verified by default; ``--ca-file`` trusts a private CA.

Every server here is on 127.0.0.1 with a certificate made by the test: a
private CA and a leaf whose subjectAltName is ``IP:127.0.0.1, DNS:localhost``.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from support import Daemon
from twisted.internet import reactor, ssl
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site

from tidehunter_tx import GaveUp, Hunter
from tidehunter_tx.policy import Backoff, BackoffConfig

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

#: What OpenSSL says when the chain does not end in a trusted root; the user
#: must be able to find this phrase in the error, the Status and the log.
VERIFY_FAILED = "certificate verify failed"

# Twisted's server-side CertificateOptions (our test feeds) still hands
# pyOpenSSL X509/PKey objects to OpenSSL.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Passing pyOpenSSL (X509|PKey) objects is deprecated:DeprecationWarning"
)


# -- a private CA, made fresh for the test session ----------------------------


@dataclass
class PKI:
    ca: Path  # the CA certificate (PEM): what --ca-file names
    server: Path  # leaf certificate + key (PEM), SAN IP:127.0.0.1, DNS:localhost
    wrong_host: Path  # leaf signed by the same CA, SAN DNS:feed.invalid only


def _name(common_name: str) -> Any:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(builder: Any) -> Any:
    now = datetime.datetime.now(datetime.timezone.utc)
    return builder.not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(
        now + datetime.timedelta(days=2)
    )


def _leaf(ca_cert: Any, ca_key: Any, names: list[Any]) -> bytes:
    """A server certificate for ``names``, signed by the CA, with its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _validity(x509.CertificateBuilder())
        .subject_name(_name("tidehunter test feed"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_pki(directory: Path) -> PKI:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        _validity(x509.CertificateBuilder())
        .subject_name(_name("tidehunter test CA"))
        .issuer_name(_name("tidehunter test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pki = PKI(directory / "ca.pem", directory / "server.pem", directory / "wrong.pem")
    pki.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    loopback = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.DNSName("localhost"),
    ]
    pki.server.write_bytes(_leaf(ca_cert, ca_key, loopback))
    pki.wrong_host.write_bytes(_leaf(ca_cert, ca_key, [x509.DNSName("feed.invalid")]))
    return pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def trusting_agent(ca_file: Path) -> Agent:
    """An Agent that trusts ``ca_file``, built as ``--ca-file`` builds it."""
    authority = ssl.Certificate.loadPEM(ca_file.read_bytes())
    policy = BrowserLikePolicyForHTTPS(trustRoot=authority)
    pool = HTTPConnectionPool(reactor, persistent=False)
    return Agent(reactor, contextFactory=policy, pool=pool)


# -- an HTTPS feed in this process ------------------------------------------------


class JsonLines(Resource):
    """``count`` JSON objects, one per line; remembers how often it was asked."""

    isLeaf = True

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count
        self.requests = 0

    def render_GET(self, request: Any) -> bytes:
        self.requests += 1
        request.setHeader(b"content-type", b"application/json")
        return b"".join(
            json.dumps({"id": i}).encode() + b"\n" for i in range(self.count)
        )


@dataclass
class Feed:
    port: int
    resource: JsonLines

    def url(self, host: str = "127.0.0.1") -> str:
        return f"https://{host}:{self.port}/feed"


@pytest.fixture
def https_feed(pki: PKI) -> Iterator[Any]:
    """Yields ``serve(certificate_pem_path) -> Feed``; closes them all after."""
    ports = []

    def serve(certificate: Path, count: int = 10) -> Feed:
        options = ssl.PrivateCertificate.loadPEM(certificate.read_text()).options()
        resource = JsonLines(count)
        port = reactor.listenSSL(0, Site(resource), options, interface="127.0.0.1")
        ports.append(port)
        return Feed(port.getHost().port, resource)

    yield serve
    for port in ports:
        pytest_twisted.blockon(port.stopListening())


def ids(hunter: Hunter) -> list[int]:
    return [json.loads(record)["id"] for record in hunter.q.pending]


# -- the API -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_untrusted_certificate_is_refused_by_default_and_nothing_queued(
    pki, https_feed
):
    feed = https_feed(pki.server)
    hunter = Hunter(feed.url())
    with pytest.raises(Exception) as refused:
        await hunter.tide_on(limit=5)
    assert VERIFY_FAILED in str(refused.value), repr(refused.value)
    assert list(hunter.q.pending) == []
    assert hunter.sc.count == 0
    assert hunter.delivered == 0
    # The handshake failed before any request went out: no header, no token,
    # ever reaches a server we could not verify.
    assert feed.resource.requests == 0


@pytest_twisted.ensureDeferred
async def test_untrusted_certificate_with_reconnect_is_tried_three_times_then_given_up(
    pki, https_feed
):
    # A certificate that does not verify is configuration (a wrong --ca-file),
    # not weather: a few tries, then the run fails with the reason.
    feed = https_feed(pki.server)
    config = BackoffConfig(jitter=0.0, tls_initial=0.05)
    hunter = Hunter(feed.url(), reconnect=True, backoff=Backoff(config))
    with pytest.raises(GaveUp) as given_up:
        await hunter.tide_on(limit=5)
    assert VERIFY_FAILED in str(given_up.value)
    assert "giving up after 3 attempts" in str(given_up.value)
    status = hunter.status()
    assert status["reconnects_by_cause"] == {"tls": 3}, status
    assert status["count"] == 0 and status["records"] == 0, status
    assert list(hunter.q.pending) == []
    assert feed.resource.requests == 0


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
@pytest_twisted.ensureDeferred
async def test_agent_trusting_the_ca_reads_the_feed(pki, https_feed, host):
    feed = https_feed(pki.server)
    hunter = Hunter(feed.url(host), agent=trusting_agent(pki.ca))
    response = await hunter.tide_on(limit=5)
    assert response is not None and response.code == 200
    assert ids(hunter) == [0, 1, 2, 3, 4]
    assert hunter.sc.total == 5


@pytest_twisted.ensureDeferred
async def test_trusting_the_ca_still_checks_the_host_name(pki, https_feed):
    """--ca-file adds a root; it does not switch verification off."""
    feed = https_feed(pki.wrong_host)
    hunter = Hunter(feed.url(), agent=trusting_agent(pki.ca))
    with pytest.raises(Exception) as refused:
        await hunter.tide_on(limit=5)
    assert "127.0.0.1" in str(refused.value), repr(refused.value)
    assert "mismatch" in str(refused.value).lower(), repr(refused.value)
    assert list(hunter.q.pending) == []
    assert feed.resource.requests == 0


# -- the daemon, against an HTTPS feed in another process -----------------------

#: The emulator over TLS: argv[1] is the certificate + key (PEM).
TLS_FEED_SCRIPT = textwrap.dedent(
    """
    import sys
    from twisted.internet import reactor, ssl
    from tidehunter_tx.firehose import make_site

    with open(sys.argv[1]) as pem:
        options = ssl.PrivateCertificate.loadPEM(pem.read()).options()
    port = reactor.listenSSL(0, make_site(), options, interface="127.0.0.1")
    print(f"listening on https://127.0.0.1:{port.getHost().port}", flush=True)
    reactor.run()
    """
)


@pytest.fixture
def tls_feed_process(pki: PKI, tmp_path: Path) -> Iterator[str]:
    """The firehose emulator over TLS in its own process; yields its base URL."""
    script = tmp_path / "tls_feed.py"
    script.write_text(TLS_FEED_SCRIPT)
    with open(tmp_path / "tls_feed.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(pki.server)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on "), (tmp_path / "tls_feed.log").read_text()
        yield line.split()[-1]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _daemon(tmp_path: Path, *args: str) -> Daemon:
    workdir = tmp_path / "daemon"
    workdir.mkdir(exist_ok=True)
    return Daemon(workdir, *args)


@pytest.mark.slow
def test_daemon_with_ca_file_streams_the_limit_and_exits_0(
    pki, tls_feed_process, tmp_path
):
    out = tmp_path / "records.jsonl"
    daemon = _daemon(
        tmp_path,
        "--url",
        f"{tls_feed_process}/firehose?size=100",
        "--ca-file",
        str(pki.ca),
        "--limit",
        "5",
        "--sink",
        f"file:{out}",
    )
    try:
        assert daemon.wait(timeout=30) == 0, daemon.output()
    finally:
        daemon.kill()
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [record["id"] for record in records] == [0, 1, 2, 3, 4]
    assert "5 records delivered" in daemon.output()


@pytest.mark.slow
def test_daemon_without_ca_file_and_no_reconnect_fails_with_the_reason(
    pki, tls_feed_process, tmp_path
):
    out = tmp_path / "records.jsonl"
    daemon = _daemon(
        tmp_path,
        "--url",
        f"{tls_feed_process}/firehose?size=100",
        "--limit",
        "5",
        "--sink",
        f"file:{out}",
        "--no-reconnect",
    )
    try:
        assert daemon.wait(timeout=30) != 0, daemon.output()
    finally:
        daemon.kill()
    log = daemon.output()
    assert "stream failed" in log and VERIFY_FAILED in log, log
    assert not out.exists() or out.read_bytes() == b""


@pytest.mark.slow
def test_daemon_without_ca_file_tries_a_few_times_then_exits_1_with_the_reason(
    pki, tls_feed_process, tmp_path
):
    out = tmp_path / "records.jsonl"
    daemon = _daemon(
        tmp_path,
        "--url",
        f"{tls_feed_process}/firehose?size=100",
        "--limit",
        "5",
        "--sink",
        f"file:{out}",
    )
    try:
        assert daemon.wait(timeout=30) == 1, daemon.output()  # 1 + 2 + 4 s
    finally:
        daemon.kill()
    log = daemon.output()
    assert VERIFY_FAILED in log, log
    assert "giving up after 3 attempts" in log, log
    assert not out.exists() or out.read_bytes() == b""
