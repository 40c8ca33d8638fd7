"""Secrets are judged one at a time, paced after refusals, and boxes pipelined
behind a good one wait for it (a clock and an in-memory transport: exact)."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols import amp

from tidehunter_tx import Hunter
from tidehunter_tx.control import (
    GUESS_INTERVAL,
    ControlFactory,
    ControlProtocol,
    GuessPacer,
    HunterController,
)

SECRET = b"correct horse battery staple"


def box(**fields: str) -> bytes:
    return amp.AmpBox(**{k: v.encode() for k, v in fields.items()}).serialize()


def connect(factory: ControlFactory) -> tuple[ControlProtocol, StringTransport]:
    protocol = factory.buildProtocol(None)
    assert protocol is not None
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def test_concurrent_guesses_are_judged_one_at_a_time():
    clock = Clock()
    pacer = GuessPacer(clock)
    turns = [pacer.turn() for _ in range(3)]
    assert [turn.called for turn in turns] == [True, False, False]
    pacer.judged(refused=True)
    clock.advance(GUESS_INTERVAL * 0.9)
    assert not turns[1].called  # a refusal paces every client
    clock.advance(GUESS_INTERVAL * 0.1)
    assert turns[1].called and not turns[2].called
    pacer.judged(refused=False)
    assert turns[2].called  # after a good secret, no wait


def test_boxes_pipelined_behind_a_paced_good_secret_are_answered_in_order():
    clock = Clock()
    controller = HunterController(Hunter("http://127.0.0.1:9/"))
    factory = ControlFactory(controller, SECRET, reactor=clock)
    guesser, refused = connect(factory)
    guesser.dataReceived(box(_command="Authenticate", _ask="1", secret="x"))
    assert b"wrong secret" in refused.value()
    clock.advance(0)
    assert refused.disconnecting  # once the answer is written

    protocol, transport = connect(factory)
    protocol.dataReceived(
        box(_command="Authenticate", _ask="1", secret=SECRET.decode())
        + box(_command="Status", _ask="2")
    )
    assert transport.value() == b""  # the secret waits for its turn
    assert transport.producerState == "paused"  # and nothing more is read
    clock.advance(GUESS_INTERVAL)
    clock.advance(0)
    answers = amp.parseString(transport.value())
    assert [answer[b"_answer"] for answer in answers] == [b"1", b"2"]
    assert answers[1][b"state"] == b"idle"
    assert transport.producerState == "producing"
