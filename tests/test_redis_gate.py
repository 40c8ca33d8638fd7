"""RedisGate edge cases against a real redis-server: order, refusals, re-runs."""

from __future__ import annotations

import json

import pytest_twisted
from twisted.internet import reactor

import tidehunter_tx.redis._gate as gate_module
from tidehunter_tx.redis import RedisGate, RedisStateCounter, connect, parse_redis_spec
from tidehunter_tx.redis._connection import encode_command


class Listener:
    def __init__(self) -> None:
        self.endings: list[object] = []
        self.admitted_total = 0

    def admitted(self, count: int) -> None:
        self.admitted_total += count

    def ended(self, ending: object, reason: object) -> None:
        self.endings.append(ending)


def make_gate(redis_server):
    counter_spec = parse_redis_spec(redis_server.url(key="c"))
    target = parse_redis_spec(redis_server.url(key="q"))
    counter = RedisStateCounter(connect(counter_spec), "c", clock=reactor)
    gate = RedisGate(counter, target=target)
    listener = Listener()
    gate.set_listener(listener)
    return gate, listener


@pytest_twisted.ensureDeferred
async def test_a_script_reloaded_by_another_client_keeps_our_batches_in_order(
    redis_server, monkeypatch
):
    gate, listener = make_gate(redis_server)
    await gate.start(1000)
    gate.offer([b"a0"], None)
    await gate.settled()
    redis_server.command("SCRIPT", "FLUSH")
    send = gate_module.execute_encoded
    calls = []

    def another_client_loads_the_script_in_between(connection, payload):
        calls.append(payload)
        if len(calls) == 2:
            send(connection, encode_command(b"SCRIPT", [b"LOAD", b"return 1"]))
            send(
                connection,
                encode_command(b"SCRIPT", [b"LOAD", gate_module.ADMIT_AND_PUSH.source]),
            )
        return send(connection, payload)

    monkeypatch.setattr(
        gate_module, "execute_encoded", another_client_loads_the_script_in_between
    )
    gate.offer([b"a1-x", b"a1-y"], None)  # NOSCRIPT: re-sent in full
    gate.offer([b"a2-x"], None)  # found the script: must wait for a1
    await gate.settled()
    assert redis_server.command("LRANGE", "q", 0, -1) == [
        b"a0",
        b"a1-x",
        b"a1-y",
        b"a2-x",
    ]
    assert (gate.dropped, listener.admitted_total, listener.endings) == (0, 4, [])
    await gate.close()


@pytest_twisted.ensureDeferred
async def test_a_refusal_no_retry_cures_keeps_every_record_for_the_spill(
    redis_server, tmp_path
):
    redis_server.command("SET", "q", "not a list")  # WRONGTYPE for RPUSH
    gate, listener = make_gate(redis_server)
    await gate.start(1000)
    for n in range(6):
        gate.offer([b"r%d" % n], None)
    await gate.settled()
    # Nothing is dropped: the run fails, and all six are still owed.
    assert (gate.dropped, gate.unconfirmed) == (0, 6)
    assert [str(e) for e in listener.endings] == ["Ending.FAILED"]
    spill = tmp_path / "spill.jsonl"
    assert gate.spill(str(spill)) == (1, 5, str(spill))
    lines = [json.loads(line) for line in spill.read_text().splitlines()]
    assert [line["data"] for line in lines] == [f"r{n}" for n in range(6)]
    # Only the refused batch was sent; the ones behind it surely were not applied.
    assert [line["sent"] for line in lines] == [True] + [False] * 5
    await gate.close()
