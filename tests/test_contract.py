"""The shape users build on: the gate contract, one status schema, the surface."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
import tomllib
from support import wait_for
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import Agent, ResponseDone
from zope.interface.verify import verifyObject

import tidehunter_tx
from tidehunter_tx import (
    STATUS_FIELDS,
    Hunter,
    IGate,
    LineFramer,
    LocalGate,
    QueueSink,
    RecordQueue,
    StateCounter,
    StreamProtocol,
)
from tidehunter_tx.control import Status
from tidehunter_tx.redis import RedisGate, RedisStateCounter

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tidehunter_tx"


def test_both_gates_provide_the_admission_contract():
    verifyObject(IGate, LocalGate(StateCounter(), QueueSink(RecordQueue())))
    counter = RedisStateCounter(connection=None, key="sc", clock=Clock())
    verifyObject(IGate, RedisGate(counter, local=QueueSink(RecordQueue())))


def test_no_module_probes_sinks_or_counters_with_getattr():
    offenders = [
        path.relative_to(ROOT)
        for path in PACKAGE.rglob("*.py")
        if "getattr(self.s" in path.read_text() or "getattr(sink" in path.read_text()
    ]
    assert offenders == []


@pytest_twisted.ensureDeferred
async def test_amp_status_and_hunter_status_have_the_same_fields(firehose):
    h = Hunter(f"{firehose}/firehose?size=60&rate=500")
    run = h.tide_on(limit=20)
    await run
    status = h.status()
    amp_fields = {name.decode() for name, _ in Status.response}
    assert set(status) == amp_fields == {field.name for field in STATUS_FIELDS}
    assert "dropped" in amp_fields


def test_the_version_is_written_once_and_the_user_agent_reads_it():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert tidehunter_tx.__version__ == project["version"]
    from tidehunter_tx._version import USER_AGENT

    assert USER_AGENT.startswith(f"tidehunter-tx/{project['version']} ")
    versions = [
        path.relative_to(ROOT)
        for path in PACKAGE.rglob("*.py")
        if project["version"] in path.read_text()
    ]
    assert versions == []


def test_the_package_ships_py_typed_and_exports_the_exceptions():
    assert (PACKAGE / "py.typed").exists()
    for name in ("HTTPStatusError", "StreamFailed", "ConnectFailed", "GaveUp"):
        assert issubclass(getattr(tidehunter_tx, name), Exception)
    assert {"Hunter", "HunterService", "LocalGate", "IGate"} <= set(
        tidehunter_tx.__all__
    )


def test_an_agent_and_a_ca_file_together_are_refused():
    with pytest.raises(ValueError, match="either agent or ca_file"):
        Hunter("https://127.0.0.1:1/", agent=Agent(reactor), ca_file="ca.pem")


class _Transport:
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...

    def stopProducing(self) -> None:
        self.stopped = True


def test_a_body_protocol_on_its_own_starts_and_stops_its_counter():
    q: RecordQueue[bytes] = RecordQueue()
    counter = StateCounter(limit=3)  # not started: the connection is the run
    protocol = StreamProtocol(LineFramer(), LocalGate(counter, QueueSink(q)))
    transport = _Transport()
    protocol.makeConnection(transport)  # type: ignore[arg-type]
    assert counter.started
    protocol.dataReceived(b"a\nb\nc\nd\ne\n")
    assert list(q.pending) == [b"a", b"b", b"c"]
    assert transport.stopped
    protocol.connectionLost(Failure(ResponseDone()))
    assert (counter.started, counter.count, counter.total) == (False, 0, 3)
    assert protocol.stats.records == 3


@pytest_twisted.ensureDeferred
async def test_records_past_the_limit_are_counted_as_dropped(firehose):
    h = Hunter(f"{firehose}/firehose?size=60&chunk=6000")
    await h.tide_on(limit=5)
    assert len(h.q.pending) == 5
    assert h.status()["dropped"] > 0  # the rest of the chunk had a fate too


@pytest_twisted.ensureDeferred
async def test_status_shows_each_state_of_a_run(firehose):
    h = Hunter(f"{firehose}/firehose?size=60&rate=50")
    assert h.state == "idle"
    run = h.tide_on()
    await wait_for(lambda: h.state == "streaming")
    h.pause()
    assert h.status()["state"] == "paused"
    h.resume()
    h.halt()
    await run
    assert h.state == "stopped"
