"""``HunterService``: a hunter's run as a Twisted service, for any application.

Add it to your own ``MultiService``: ``startService`` starts the run,
``stopService`` halts it and fires once the sink is flushed, ``whenDone()``
fires with how the run ended.  It never stops the reactor and never touches
signal handlers; ``twistd tidehunter`` wraps it to do that (exit codes,
SIGTERM, the spill file).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ._describe import counted, public_url
from ._reactor import or_global_reactor
from .control import HunterController
from .hunter import GaveUp, Hunter

__all__ = ["HunterService", "RunResult", "UnconfirmedRecords"]

log = Logger()


@dataclass(frozen=True)
class RunResult:
    """How a run ended."""

    #: Records this hunter delivered in the run.
    delivered: int
    #: None for a run that ended as asked (limit, stop, end of stream).
    error: BaseException | None = None
    #: Records read but not confirmed by the sink when the service gave up
    #: waiting (handed to ``on_unsettled``).
    unconfirmed: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


class UnconfirmedRecords(Exception):
    """The run ended with records the sink never confirmed, and nothing saved them."""

    def __init__(self, count: int) -> None:
        self.count = count
        super().__init__(f"{count} records were never confirmed by the sink")


#: Called when the sink did not confirm everything within ``settle_timeout``;
#: returns how many records it saved (the daemon writes a spill file).
Unsettled = Callable[[Hunter], int]


class HunterService(Service, HunterController):
    """Runs one hunter's run for the life of the service.

    Also a :class:`~tidehunter_tx.control.Controller`, so a
    :class:`~tidehunter_tx.control.ControlFactory` can steer it; a Stop
    answers once the sink is flushed.
    """

    def __init__(
        self,
        hunter: Hunter,
        limit: int = 0,
        *,
        settle_timeout: float = 3.0,
        on_unsettled: Unsettled | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        HunterController.__init__(self, hunter)
        self.limit = limit
        self.settle_timeout = settle_timeout
        self._on_unsettled = on_unsettled
        self._clock: IReactorTime = or_global_reactor(clock)
        self._result: RunResult | None = None
        self._waiting: list[Deferred[RunResult]] = []
        self._winding_down = False

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        log.info(
            "tidehunter: streaming {url} (limit {limit_text})",
            tidehunter_event="started",
            url=public_url(self.hunter.url),
            limit=self.limit,
            limit_text=str(self.limit or "none"),
        )
        self._result = None
        self._winding_down = False
        run = self.hunter.tide_on(self.limit)
        run.addCallbacks(self._ended, self._failed)

    def stopService(self) -> Deferred[None]:
        """Halt this hunter (a shared counter stays on); fire once flushed."""
        super().stopService()  # type: ignore[no-untyped-call]
        if self.hunter.running:
            self.hunter.halt()
        return self.whenDone().addCallback(lambda _: None)

    def whenDone(self) -> Deferred[RunResult]:
        """Fires with the :class:`RunResult` once the run is over and flushed."""
        done: Deferred[RunResult] = Deferred()
        if self._result is not None:
            done.callback(self._result)
        else:
            self._waiting.append(done)
        return done

    def stop(self) -> Deferred[int]:
        """AMP Stop: halt, and answer with the count once the sink is flushed."""
        if self.hunter.running:
            self.hunter.halt()
        return self.whenDone().addCallback(lambda result: result.delivered)

    # -- winding down

    def _ended(self, _: object) -> None:
        ensureDeferred(self._wind_down(None))

    def _failed(self, failure: Failure) -> None:
        reason = failure.value
        message = (
            str(reason) if isinstance(reason, GaveUp) else failure.getErrorMessage()
        )
        message = self.hunter.secrets.mask(message)
        log.error(
            "tidehunter: stream failed: {reason}",
            tidehunter_event="failed",
            reason=message,
            error=type(reason).__name__,
        )
        ensureDeferred(self._wind_down(reason))

    async def _wind_down(self, error: BaseException | None) -> None:
        """Wait for what the sink still owes, flush it, then tell whoever waits."""
        if self._winding_down:
            return
        self._winding_down = True
        unconfirmed = 0
        try:
            # A refusal ends the run with its records owed even once settled.
            if not await self._settle() or self.hunter.gate.unconfirmed:
                unconfirmed = self.hunter.gate.unconfirmed
                saved = self._on_unsettled(self.hunter) if self._on_unsettled else 0
                if saved < unconfirmed:
                    log.error(
                        "tidehunter: the sink never confirmed {count} records; "
                        "they are lost",
                        tidehunter_event="records_lost",
                        count=unconfirmed - saved,
                    )
                    error = error or UnconfirmedRecords(unconfirmed - saved)
            await self._close()
            self._report()
        except Exception as failure:
            log.failure(
                "tidehunter: error while stopping", tidehunter_event="stop_error"
            )
            error = error or failure
        result = RunResult(self.hunter.delivered, error, unconfirmed)
        self._result = result
        waiting, self._waiting = self._waiting, []
        for done in waiting:
            done.callback(result)

    async def _settle(self) -> bool:
        return await self._within_timeout(self.hunter.settled())

    async def _close(self) -> None:
        """Flush the sink; a reader that never reads again does not hold us."""
        if not await self._within_timeout(self.hunter.close()):
            log.warn(
                "tidehunter: the reader of the records stopped reading",
                tidehunter_event="flush_timeout",
                seconds=self.settle_timeout,
            )

    async def _within_timeout(self, waiting: Deferred[None]) -> bool:
        """Whether ``waiting`` fired within ``settle_timeout``."""
        waiting.addTimeout(self.settle_timeout, self._clock)
        try:
            await waiting
        except DeferredTimeoutError:
            return False
        return True

    def _report(self) -> None:
        status = self.hunter.status()
        # Every record read has one fate; the line names each, so they add up.
        # The socket's pauses (mostly a full sink's) are told here, in sum,
        # never one event each.
        delivered, limit = self.hunter.delivered, self.hunter.sc.limit
        log.info(
            "tidehunter: {delivered_text} delivered (limit {limit_text}); "
            "{read_text} read: "
            "{in_flight} unconfirmed, {spilled} spilled, {dropped} dropped after "
            "the run ended, {lost} lost by the sink; {skipped} skipped (too "
            "big), {truncated} cut off at a body's end; {bytes} bytes, "
            "{keepalives} keep-alives, {reconnects} reconnects",
            tidehunter_event="stopped",
            delivered=delivered,
            delivered_text=counted(delivered, "record"),
            limit=limit,
            limit_text=str(limit or "none"),
            read_text=counted(status["read"], "record"),
            **{
                key: status[key]
                for key in (
                    "read",
                    "in_flight",
                    "spilled",
                    "dropped",
                    "lost",
                    "skipped",
                    "truncated",
                    "bytes",
                    "keepalives",
                    "reconnects",
                    "reconnects_by_cause",
                    "stalls",
                    "pauses",
                    "paused_seconds",
                )
            },
        )
