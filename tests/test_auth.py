"""Credentials from the environment: applied to requests, shown nowhere."""

from __future__ import annotations

import base64
import json

import pytest
import pytest_twisted
from oauthlib.oauth1 import RequestValidator, SignatureOnlyEndpoint
from support import Daemon
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site

from tidehunter_tx import Hunter
from tidehunter_tx.auth import AuthError, signer_from_env

TOKEN = "AAAA-very-secret-bearer-token-ZZZZ"


class Guarded(Resource):
    """Streams three records to a request whose credentials check out."""

    isLeaf = True

    def __init__(self, check):  # type: ignore[no-untyped-def]
        super().__init__()
        self.check = check
        self.seen: list[bool] = []

    def render_GET(self, request):  # type: ignore[no-untyped-def]
        ok = self.check(request)
        self.seen.append(ok)
        if not ok:
            request.setResponseCode(401)
            return b'{"error": "unauthorized"}\n'
        return b'{"id": 0}\n{"id": 1}\n{"id": 2}\n'


@pytest.fixture
def guarded():
    ports = []

    def serve(check):  # type: ignore[no-untyped-def]
        resource = Guarded(check)
        port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
        ports.append(port)
        return f"http://127.0.0.1:{port.getHost().port}/stream?x=1", resource

    yield serve
    for port in ports:
        pytest_twisted.blockon(port.stopListening())


def header(request, name: bytes) -> str:  # type: ignore[no-untyped-def]
    values = request.requestHeaders.getRawHeaders(name) or [b""]
    return values[0].decode() if isinstance(values[0], bytes) else values[0]


@pytest_twisted.ensureDeferred
async def test_bearer_token_from_env_reaches_the_server(guarded):
    url, resource = guarded(
        lambda request: header(request, b"authorization") == f"Bearer {TOKEN}"
    )
    signer = signer_from_env({"TIDEHUNTER_BEARER_TOKEN": TOKEN})
    h = Hunter(url, signer=signer)
    await h.tide_on()
    assert len(h.q.pending) == 3
    assert resource.seen == [True]
    assert TOKEN not in json.dumps(h.status())


@pytest_twisted.ensureDeferred
async def test_basic_auth_from_env(guarded):
    expected = "Basic " + base64.b64encode(b"ann:pa:ss").decode()
    url, resource = guarded(lambda r: header(r, b"authorization") == expected)
    h = Hunter(url, signer=signer_from_env({"TIDEHUNTER_BASIC_AUTH": "ann:pa:ss"}))
    await h.tide_on()
    assert resource.seen == [True]


class Validator(RequestValidator):  # type: ignore[misc]
    """oauthlib's server side: checks the signature with the known secrets."""

    enforce_ssl = False
    dummy_client = "dummy"
    dummy_access_token = "dummy"

    def check_client_key(self, key):  # type: ignore[no-untyped-def]
        return True

    def check_access_token(self, token):  # type: ignore[no-untyped-def]
        return True

    def check_nonce(self, nonce):  # type: ignore[no-untyped-def]
        return True

    def validate_client_key(self, key, request):  # type: ignore[no-untyped-def]
        return key == "ck"

    def validate_access_token(self, key, token, request):  # type: ignore[no-untyped-def]
        return token == "tk"

    def validate_timestamp_and_nonce(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return True

    def get_client_secret(self, key, request):  # type: ignore[no-untyped-def]
        return "cs"

    def get_access_token_secret(self, key, token, request):  # type: ignore[no-untyped-def]
        return "ts"


def oauth_ok(request) -> bool:  # type: ignore[no-untyped-def]
    endpoint = SignatureOnlyEndpoint(Validator())
    host = header(request, b"host")
    uri = f"http://{host}{request.uri.decode()}"
    valid, _ = endpoint.validate_request(
        uri,
        http_method=request.method.decode(),
        body=None,
        headers={"Authorization": header(request, b"authorization")},
    )
    return bool(valid)


OAUTH_ENV = {
    "TIDEHUNTER_OAUTH1_CONSUMER_KEY": "ck",
    "TIDEHUNTER_OAUTH1_CONSUMER_SECRET": "cs",
    "TIDEHUNTER_OAUTH1_TOKEN_KEY": "tk",
    "TIDEHUNTER_OAUTH1_TOKEN_SECRET": "ts",
}


@pytest_twisted.ensureDeferred
async def test_oauth1_signature_checks_out_on_the_server(guarded):
    url, resource = guarded(oauth_ok)
    h = Hunter(url, signer=signer_from_env(OAUTH_ENV))
    await h.tide_on()
    assert resource.seen == [True]
    # A wrong secret is refused by the same check: the test can fail.
    bad = Hunter(
        url,
        signer=signer_from_env({**OAUTH_ENV, "TIDEHUNTER_OAUTH1_TOKEN_SECRET": "x"}),
    )
    with pytest.raises(Exception, match="401"):
        await bad.tide_on()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"TIDEHUNTER_BEARER_TOKEN": "t", "TIDEHUNTER_BASIC_AUTH": "a:b"},
            "only one kind",
        ),
        ({"TIDEHUNTER_BASIC_AUTH": "nocolon"}, "user:password"),
        (
            {"TIDEHUNTER_OAUTH1_CONSUMER_KEY": "secretvalue"},
            "TIDEHUNTER_OAUTH1_CONSUMER_SECRET",
        ),
    ],
)
def test_inconsistent_credentials_say_which_never_the_value(env, message):
    with pytest.raises(AuthError, match=message) as caught:
        signer_from_env(env)
    assert "secretvalue" not in str(caught.value)


def test_no_credentials_no_signer():
    assert signer_from_env({}) is None


def test_daemon_token_never_in_logs_status_or_argv(firehose_process, tmp_path):
    import os

    env = {**os.environ, "TIDEHUNTER_BEARER_TOKEN": TOKEN}
    daemon = Daemon(
        tmp_path,
        "--url",
        f"{firehose_process}/firehose?rate=200&size=60",
        "--sink",
        f"file:{tmp_path / 'out.jsonl'}",
        env=env,
    )
    try:
        daemon.wait_until_up()
        status = daemon.wait_for(lambda s: s["count"] > 5)
        assert daemon.ctl("stop").returncode == 0
        assert daemon.wait(timeout=5) == 0
        cmdline = " ".join(daemon.process.args)  # type: ignore[arg-type]
        for place in (json.dumps(status), daemon.output(), cmdline):
            assert TOKEN not in place
    finally:
        daemon.kill()
