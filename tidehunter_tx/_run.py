"""The run of a :class:`~tidehunter_tx.Hunter` as one explicit state machine.

Built with automat, as Twisted's ``ClientService`` is.  Each state that owns a
handle (the counter's start, the request, the error-body reader, the body
protocol, the backoff wait) holds it as the state's data, so a handle exists
exactly as long as its state and ``halt`` knows what to cancel without
looking at nullable fields.  A handle that arrives while the run is stopping
is closed at once.

States: idle -> joining -> connecting -> (reading_error | streaming) ->
backing_off -> connecting ... -> stopping -> stopped.  Status shows joining
and reading_error as ``connecting``, and a streaming run that was paused on
request as ``paused`` (the pause holds across reconnects, so it lives in the
core rather than in a state).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from automat import TypeMachineBuilder, pep614
from twisted.internet.defer import Deferred

from .gate import Ending
from .protocol import PAUSE_USER, StreamProtocol

__all__ = ["BackoffWait", "ErrorBodyReader", "RunCore", "RunMachine", "make_run"]


@runtime_checkable
class ErrorBodyReader(Protocol):
    def hang_up(self) -> None: ...


@dataclass
class BackoffWait:
    """The wait before the next connection: how long it was set for, and
    when (reactor time) it ends."""

    waiting: Deferred[None]
    delay: float
    until: float = 0.0


class RunMachine(Protocol):
    """The inputs of a run; the hunter's coroutine and its public methods call them."""

    def join(self, joining: Deferred[Any]) -> None:
        """The gate's start was asked for (a shared counter answers later)."""

    def connect(self, request: Deferred[Any]) -> None:
        """A request is on its way."""

    def read_error(self, reader: ErrorBodyReader) -> None:
        """A non-2xx answer: its body is being read for the error message."""

    def stream(self, protocol: StreamProtocol) -> None:
        """A 2xx answer: its body flows into ``protocol``."""

    def back_off(self, wait: BackoffWait) -> None:
        """The connection is over; wait before the next one."""

    def halt(self, ending: Ending) -> None:
        """End the run now, whatever it is doing."""

    def finish(self) -> None:
        """The run's coroutine is done."""

    def pause(self) -> None:
        """Stop reading; holds across reconnects until resume."""

    def resume(self) -> None: ...


@dataclass
class RunCore:
    """What outlives every state, and what status reads.

    The machine's inputs cannot answer questions while a transition runs
    (cancelling a request runs the hunter's code at once), so each state's
    entry writes its name here, before the transition's outputs run.
    """

    state: str = "idle"
    backoff: float = 0.0
    #: When the backoff wait under way ends (reactor time).
    retry_at: float = 0.0
    user_paused: bool = False

    @property
    def shown_state(self) -> str:
        """The state as status shows it: a paused stream is ``paused``."""
        if self.state == "streaming" and self.user_paused:
            return "paused"
        return self.state

    def enter(self, state: str, backoff: float = 0.0, retry_at: float = 0.0) -> None:
        self.state = state
        self.backoff = backoff
        self.retry_at = retry_at

    def retry_in(self, now: float) -> float:
        """Seconds left of the backoff wait; 0 when not backing off."""
        if self.state != "backing_off":
            return 0.0
        return max(self.retry_at - now, 0.0)


class _Marker:
    """The data of a state that holds no handle."""


def _holding(name: str) -> Any:
    def enter(machine: RunMachine, core: RunCore, handle: object) -> object:
        core.enter(name)
        return handle

    return enter


def _stopping_data(machine: RunMachine, core: RunCore, ending: Ending) -> _Marker:
    core.enter("stopping")
    return _Marker()


def _stopped_data(machine: RunMachine, core: RunCore) -> _Marker:
    core.enter("stopped")
    return _Marker()


def _wait_data(machine: RunMachine, core: RunCore, wait: BackoffWait) -> BackoffWait:
    core.enter("backing_off", wait.delay, wait.until)
    return wait


def _streaming_data(
    machine: RunMachine, core: RunCore, protocol: StreamProtocol
) -> StreamProtocol:
    core.enter("streaming")
    if core.user_paused:
        protocol.pause(PAUSE_USER)
    return protocol


def _build() -> Any:
    builder = TypeMachineBuilder(RunMachine, RunCore)
    idle = builder.state("idle")
    # Status shows joining and reading_error as connecting.
    joining = builder.state("joining", _holding("connecting"))
    connecting = builder.state("connecting", _holding("connecting"))
    reading_error = builder.state("reading_error", _holding("connecting"))
    streaming = builder.state("streaming", _streaming_data)
    backing_off = builder.state("backing_off", _wait_data)
    stopping = builder.state("stopping", _stopping_data)
    stopped = builder.state("stopped", _stopped_data)
    every: tuple[Any, ...] = (
        idle,
        joining,
        connecting,
        reading_error,
        streaming,
        backing_off,
        stopping,
        stopped,
    )

    idle.upon(RunMachine.join).to(joining).returns(None)
    stopped.upon(RunMachine.join).to(joining).returns(None)
    joining.upon(RunMachine.connect).to(connecting).returns(None)
    backing_off.upon(RunMachine.connect).to(connecting).returns(None)
    # A redirect: its body read (and closed), the next request goes out.
    reading_error.upon(RunMachine.connect).to(connecting).returns(None)
    connecting.upon(RunMachine.read_error).to(reading_error).returns(None)
    connecting.upon(RunMachine.stream).to(streaming).returns(None)
    # backing_off -> backing_off: waiting for the gate to settle, then the delay.
    live: tuple[Any, ...] = (connecting, reading_error, streaming, backing_off)
    for state in live:
        state.upon(RunMachine.back_off).to(backing_off).returns(None)
    for state in every:
        if state is not stopped:
            state.upon(RunMachine.finish).to(stopped).returns(None)
    stopped.upon(RunMachine.finish).loop().returns(None)
    quiet: tuple[Any, ...] = (idle, stopped, stopping)
    for state in quiet:
        state.upon(RunMachine.halt).loop().returns(None)

    # -- halting: each state cancels what it holds

    @pep614(joining.upon(RunMachine.halt).to(stopping))
    @pep614(connecting.upon(RunMachine.halt).to(stopping))
    @pep614(backing_off.upon(RunMachine.halt).to(stopping))
    def cancel(
        machine: RunMachine, core: RunCore, handle: object, ending: Ending
    ) -> None:
        waiting = handle.waiting if isinstance(handle, BackoffWait) else handle
        assert isinstance(waiting, Deferred)
        waiting.cancel()

    @pep614(reading_error.upon(RunMachine.halt).to(stopping))
    def hang_up(
        machine: RunMachine, core: RunCore, reader: ErrorBodyReader, ending: Ending
    ) -> None:
        reader.hang_up()

    @pep614(streaming.upon(RunMachine.halt).to(stopping))
    def close_stream(
        machine: RunMachine, core: RunCore, protocol: StreamProtocol, ending: Ending
    ) -> None:
        protocol.stop(ending)

    # -- a handle that arrives while stopping is closed at once

    @pep614(stopping.upon(RunMachine.connect).loop())
    def cancel_late_request(
        machine: RunMachine, core: RunCore, marker: _Marker, request: Deferred[Any]
    ) -> None:
        request.cancel()

    @pep614(stopping.upon(RunMachine.read_error).loop())
    def hang_up_late(
        machine: RunMachine, core: RunCore, marker: _Marker, reader: ErrorBodyReader
    ) -> None:
        reader.hang_up()

    @pep614(stopping.upon(RunMachine.stream).loop())
    def close_late_stream(
        machine: RunMachine, core: RunCore, marker: _Marker, protocol: StreamProtocol
    ) -> None:
        protocol.stop(Ending.STOPPED)

    @pep614(stopping.upon(RunMachine.back_off).loop())
    def cancel_late_wait(
        machine: RunMachine, core: RunCore, marker: _Marker, wait: BackoffWait
    ) -> None:
        wait.waiting.cancel()

    # -- pause and resume hold across states; only a stream acts on them

    def note_pause(machine: RunMachine, core: RunCore, *data: object) -> None:
        core.user_paused = True

    def note_resume(machine: RunMachine, core: RunCore, *data: object) -> None:
        core.user_paused = False

    for state in every:
        if state is not streaming:
            state.upon(RunMachine.pause).loop()(note_pause)
            state.upon(RunMachine.resume).loop()(note_resume)

    @pep614(streaming.upon(RunMachine.pause).loop())
    def pause_stream(
        machine: RunMachine, core: RunCore, protocol: StreamProtocol
    ) -> None:
        core.user_paused = True
        protocol.pause(PAUSE_USER)

    @pep614(streaming.upon(RunMachine.resume).loop())
    def resume_stream(
        machine: RunMachine, core: RunCore, protocol: StreamProtocol
    ) -> None:
        core.user_paused = False
        protocol.resume(PAUSE_USER)

    return builder.build()


_RUN_FACTORY = _build()


def make_run() -> tuple[RunMachine, RunCore]:
    """A fresh run machine, idle, and the core status reads."""
    core = RunCore()
    machine: RunMachine = _RUN_FACTORY(core)
    return machine, core
