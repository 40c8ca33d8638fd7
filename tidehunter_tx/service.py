"""The ``twistd tidehunter`` plugin: options, spec strings and the services.

``twistd -n --pidfile= tidehunter --url URL --limit N`` streams URL into the
sink, answers AMP control commands on a 0600 Unix socket, and exits 0 once
the limit is reached, a Stop arrives or SIGTERM comes; non-zero, with the
reason logged, when the stream fails for good.
"""

from __future__ import annotations

import os
import signal
import sys
import uuid
from typing import Any, ClassVar
from urllib.parse import urlsplit

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    ensureDeferred,
    succeed,
)
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from .auth import AuthError, signer_from_env
from .control import ControlError, ControlFactory, read_secret_file
from .framing import DEFAULT_MAX_RECORD_BYTES, FRAMINGS
from .hunter import GaveUp, Hunter, load_ca_file, public_url
from .redis_store import (
    RedisGate,
    RedisSpec,
    RedisStateCounter,
    close_connection,
    connect,
    parse_redis_spec,
)
from .sinks import FileSink, PipeSink

__all__ = [
    "DEFAULT_CONTROL",
    "HunterService",
    "Options",
    "makeService",
    "parse_sink",
]

log = Logger()

DEFAULT_CONTROL = "unix:tidehunter.sock:mode=600:lockfile=1"


def _number(name: str, kind: type, minimum: float, strict: bool = False) -> Any:
    """An option coercer that names the option in its error."""

    def coerce(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            raise ValueError(
                f"--{name} must be a {kind.__name__}, not {value!r}"
            ) from None
        if number < minimum or (strict and number == minimum):
            bound = f"> {minimum}" if strict else f">= {minimum}"
            raise ValueError(f"--{name} must be {bound}, not {value}")
        return number

    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


def parse_sink(spec: str) -> FileSink | PipeSink:
    """Build the local sink a ``--sink`` spec names (``stdout`` or ``file:PATH``)."""
    if spec == "stdout":
        return PipeSink.stdout()
    return FileSink.open(spec[len("file:") :])


def _check_sink_spec(spec: str) -> RedisSpec | None:
    """Validate ``--sink``; return the Redis target when it names one."""
    if spec == "stdout" or (spec.startswith("file:") and len(spec) > len("file:")):
        return None
    if spec.startswith(("redis://", "redis+stream://")):
        try:
            return parse_redis_spec(spec)
        except ValueError as error:
            raise usage.UsageError(f"--sink {_hide_password(spec)}: {error}") from None
    raise usage.UsageError(
        f"--sink: unknown sink {_hide_password(spec)!r}; expected stdout, "
        "file:PATH, redis://HOST:PORT/DB?key=KEY or redis+stream://...?key=KEY"
    )


def _check_counter_spec(spec: str) -> RedisSpec | None:
    if spec == "memory":
        return None
    if spec.startswith("redis://"):
        try:
            return parse_redis_spec(spec)
        except ValueError as error:
            raise usage.UsageError(
                f"--counter {_hide_password(spec)}: {error}"
            ) from None
    raise usage.UsageError(
        f"--counter: unknown counter {_hide_password(spec)!r}; expected memory "
        "or redis://HOST:PORT/DB?key=KEY"
    )


def _hide_password(spec: str) -> str:
    try:
        return parse_redis_spec(spec).public
    except ValueError:
        return spec.split("@")[-1] if "@" in spec else spec


class Options(usage.Options):
    """Options of ``twistd tidehunter`` (the table in DESIGN.md)."""

    synopsis = "--url URL [options]"
    longdesc = (
        "Stream an HTTP feed into a sink with an exact record limit, steerable "
        "over AMP with tidehunter-ctl. With --sink stdout (the default) stdout "
        "carries the records only; twistd's log goes to stderr."
    )

    optFlags: ClassVar[list[list[Any]]] = [
        ["no-reconnect", None, "End the run when the connection ends."],
    ]
    optParameters: ClassVar[list[list[Any]]] = [
        ["url", None, None, "The stream to read (required)."],
        ["method", None, "GET", "HTTP method."],
        ["data", None, None, "Request body."],
        ["limit", None, 0, "Exact record limit; 0 = none.", _number("limit", int, 0)],
        ["framing", None, "lines", f"How records are cut: {'|'.join(FRAMINGS)}."],
        [
            "max-record-bytes",
            None,
            DEFAULT_MAX_RECORD_BYTES,
            "Larger records are skipped and counted.",
            _number("max-record-bytes", int, 1),
        ],
        [
            "sink",
            None,
            "stdout",
            "Where records go: stdout, file:PATH, redis://HOST:PORT/DB?key=KEY "
            "or redis+stream://HOST:PORT/DB?key=KEY[&maxlen=N].",
        ],
        [
            "counter",
            None,
            "memory",
            "The state counter: memory or redis://HOST:PORT/DB?key=KEY.",
        ],
        [
            "spill-file",
            None,
            None,
            "Where records Redis never confirmed go when stopping during an "
            "outage [default: tidehunter-spill-PID.jsonl].",
        ],
        ["control", None, DEFAULT_CONTROL, "AMP control endpoint."],
        [
            "control-secret-file",
            None,
            None,
            "File holding the AMP shared secret (required for TCP control).",
        ],
        [
            "stall-timeout",
            None,
            90.0,
            "Seconds without a byte before the connection is judged dead.",
            _number("stall-timeout", float, 0, strict=True),
        ],
        ["ca-file", None, None, "Trust this CA (PEM) for the feed's certificate."],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["headers"] = []

    def opt_header(self, value: str) -> None:
        """A request header 'Name: value' (repeatable)."""
        name, sep, content = value.partition(":")
        if not sep or not name.strip():
            raise usage.UsageError(
                f"--header must look like 'Name: value', not {value!r}"
            )
        self["headers"].append((name.strip(), content.strip()))

    def postOptions(self) -> None:
        if not self["url"]:
            raise usage.UsageError("--url is required")
        try:
            _ = urlsplit(self["url"]).port  # raises for a port out of range
        except ValueError:
            raise usage.UsageError(
                f"--url has a bad port: {public_url(self['url'])!r}"
            ) from None
        if not self["url"].startswith(("http://", "https://")):
            shown = public_url(self["url"])
            raise usage.UsageError(
                f"--url must be an http:// or https:// URL, not {shown!r}"
            )
        if self["framing"] not in FRAMINGS:
            raise usage.UsageError(
                f"--framing must be one of {', '.join(FRAMINGS)}, "
                f"not {self['framing']!r}"
            )
        self["redis-sink"] = _check_sink_spec(self["sink"])
        self["redis-counter"] = _check_counter_spec(self["counter"])
        sink, counter = self["redis-sink"], self["redis-counter"]
        if (
            sink
            and counter
            and (sink.host, sink.port, sink.db)
            != (
                counter.host,
                counter.port,
                counter.db,
            )
        ):
            raise usage.UsageError(
                "--sink and --counter must name the same Redis server and database "
                "(the admit-and-push script is atomic within one database)"
            )
        self["secret"] = None
        if self["control-secret-file"]:
            try:
                self["secret"] = read_secret_file(self["control-secret-file"])
            except ControlError as error:
                raise usage.UsageError(f"--control-secret-file: {error}") from None
        control = self["control"]
        if control.startswith("unix:") and ":mode=" not in control:
            # Twisted's default is 0666: anyone on the machine could steer us.
            self["control"] = control = f"{control}:mode=600"
        if not control.startswith("unix:") and self["secret"] is None:
            raise usage.UsageError(
                f"--control {control}: a control endpoint other than a Unix socket "
                "needs --control-secret-file"
            )
        try:
            self["signer"] = signer_from_env(os.environ)
        except AuthError as error:
            raise usage.UsageError(f"credentials: {error}") from None
        if self["ca-file"]:
            try:
                load_ca_file(self["ca-file"])
            except (OSError, ValueError) as error:
                raise usage.UsageError(f"--ca-file: {error}") from None
            except Exception as error:  # OpenSSL's own error for a bad PEM
                raise usage.UsageError(
                    f"--ca-file: {self['ca-file']} is not a PEM certificate ({error})"
                ) from None


class HunterService(Service):
    """Runs one hunter; ends the process when its run is over.

    Also the :class:`~tidehunter_tx.control.Controller` the AMP server steers.
    """

    def __init__(
        self,
        hunter: Hunter,
        limit: int,
        *,
        local_sink: FileSink | PipeSink | None = None,
        gate: RedisGate | None = None,
        counter: RedisStateCounter | None = None,
        connection: Any = None,
        spill_path: str | None = None,
        settle_timeout: float = 3.0,
    ) -> None:
        self.hunter = hunter
        self.limit = limit
        self.local_sink = local_sink
        self.gate = gate
        self.counter = counter
        self.connection = connection
        self.spill_path = spill_path or f"tidehunter-spill-{os.getpid()}.jsonl"
        self.settle_timeout = settle_timeout
        self.run: Deferred[Any] | None = None
        self.exit_code = 0
        self._finished: Deferred[None] = Deferred()
        self._winding_down = False

    # -- the service's life

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        from twisted.internet import reactor

        reactor.callWhenRunning(_exit_0_on_sigterm)
        log.info(
            "tidehunter: streaming {url} (limit {limit})",
            url=public_url(self.hunter.url),
            limit=self.limit or "none",
        )
        self.run = self.hunter.tide_on(self.limit)
        self.run.addCallbacks(self._ended, self._failed)

    def stopService(self) -> Deferred[None]:
        """SIGTERM or reactor.stop(): stop, flush, then let the process go."""
        super().stopService()  # type: ignore[no-untyped-call]
        if self.hunter.running:
            # This hunter only: a shared counter stays on for the others.
            self.hunter.halt()
        return self._finished

    def _ended(self, _: object) -> None:
        ensureDeferred(self._wind_down())

    def _failed(self, failure: Failure) -> None:
        reason = failure.value
        message = (
            str(reason) if isinstance(reason, GaveUp) else failure.getErrorMessage()
        )
        log.error("tidehunter: stream failed: {reason}", reason=message)
        self.exit_code = 1
        ensureDeferred(self._wind_down())

    async def _wind_down(self) -> None:
        """Settle what Redis still owes, spill what it never confirmed, flush."""
        if self._winding_down:
            return
        self._winding_down = True
        try:
            if self.gate is not None:
                await self._settle_or_spill(self.gate)
            if self.counter is not None:
                self.counter.close()
            if self.local_sink is not None:
                await self._close_local(self.local_sink)
            self._report()
            if self.connection is not None:
                await close_connection(self.connection)
        except Exception:
            log.failure("tidehunter: error while stopping")
            self.exit_code = 1
        finally:
            if not self._finished.called:
                self._finished.callback(None)
            if self.running:
                _stop_process(self.exit_code)

    async def _close_local(self, sink: FileSink | PipeSink) -> None:
        """Flush the sink; a reader that never reads again does not hold us."""
        from twisted.internet import reactor

        closing = sink.close()
        if closing is None:
            return
        closing.addTimeout(self.settle_timeout, reactor)
        try:
            await closing
        except DeferredTimeoutError:
            log.warn("tidehunter: the reader of the records stopped reading")

    async def _settle_or_spill(self, gate: RedisGate) -> None:
        from twisted.internet import reactor

        settled = gate.settled()
        settled.addTimeout(self.settle_timeout, reactor)
        try:
            await settled
        except DeferredTimeoutError:
            sent, unsent = gate.spill(self.spill_path)
            log.warn(
                "tidehunter: Redis did not confirm {total} records; they are in "
                "{path} (JSON lines), not lost: {unsent} never sent, {sent} sent "
                "before the outage (Redis may hold those too; each carries its "
                "producer and seq)",
                total=sent + unsent,
                sent=sent,
                unsent=unsent,
                path=os.path.abspath(self.spill_path),
            )

    def _report(self) -> None:
        status = self.hunter.status()
        log.info(
            "tidehunter: {delivered} records delivered (limit {limit}); "
            "{bytes} bytes, {keepalives} keep-alives, {skipped} skipped, "
            "{reconnects} reconnects",
            delivered=self.hunter.delivered,
            limit=self.hunter.sc.limit or "none",
            **{
                key: status[key]
                for key in ("bytes", "keepalives", "skipped", "reconnects")
            },
        )

    # -- the Controller interface

    def status(self) -> dict[str, Any]:
        return self.hunter.status()

    def stop(self) -> Deferred[int]:
        if self.hunter.running:
            self.hunter.halt()
        finished: Deferred[int] = Deferred()
        self._finished.addBoth(lambda _: finished.callback(self.hunter.delivered))
        return finished

    def pause(self) -> None:
        self.hunter.pause()

    def resume(self) -> None:
        self.hunter.resume()

    def set_limit(self, limit: int) -> None:
        self.hunter.set_limit(limit)


class ControlService(StreamServerEndpointService):
    """The AMP server; on stop, replies already written still go out."""

    def __init__(self, endpoint: Any, factory: ControlFactory) -> None:
        super().__init__(endpoint, factory)  # type: ignore[no-untyped-call]
        self.control_factory = factory

    def stopService(self) -> Deferred[Any]:
        stopped = super().stopService()  # type: ignore[no-untyped-call]
        return DeferredList(
            [stopped or succeed(None), self.control_factory.close_all()]
        )


def _exit_0_on_sigterm() -> None:
    """SIGTERM is the ordinary way to stop a daemon: stop cleanly, exit 0.

    twistd's own handler re-raises the signal after shutdown, so the process
    would die "killed by SIGTERM" even after a clean flush.
    """
    from twisted.internet import reactor

    def on_sigterm(signum: int, frame: object) -> None:
        reactor.callFromThread(reactor.stop)  # type: ignore[attr-defined]

    signal.signal(signal.SIGTERM, on_sigterm)


def _stop_process(exit_code: int) -> None:
    """Stop the reactor; twistd exits 0 unless we say otherwise."""
    from twisted.internet import reactor

    if exit_code:

        def exit_with_code() -> None:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exit_code)

        reactor.addSystemEventTrigger("after", "shutdown", exit_with_code)
    if reactor.running:
        reactor.stop()


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    target: RedisSpec | None = options["redis-sink"]
    counter_spec: RedisSpec | None = options["redis-counter"]
    local_sink = None if target else parse_sink(options["sink"])
    connection = None
    counter: RedisStateCounter | None = None
    gate: RedisGate | None = None
    if target or counter_spec:
        server = target or counter_spec
        assert server is not None
        connection = connect(server)
        # With a Redis sink but an in-memory counter, the counting still has
        # to happen inside the push script: use a counter key of our own.
        key = counter_spec.key if counter_spec else f"tidehunter:{uuid.uuid4().hex}"
        counter = RedisStateCounter(connection, key)
        gate = RedisGate(counter, target=target, local=local_sink)

    headers: dict[str | bytes, list[str | bytes]] = {}
    for name, value in options["headers"]:
        headers.setdefault(name, []).append(value)
    hunter = Hunter(
        options["url"],
        sc=counter,
        method=options["method"],
        headers=headers or None,
        data=options["data"].encode() if options["data"] else None,
        framing=options["framing"],
        max_record_bytes=options["max-record-bytes"],
        sink=gate if gate is not None else local_sink,
        reconnect=not options["no-reconnect"],
        stall_timeout=options["stall-timeout"],
        ca_file=options["ca-file"],
        signer=options["signer"],
    )
    top = MultiService()
    hunting = HunterService(
        hunter,
        options["limit"],
        local_sink=local_sink,
        gate=gate,
        counter=counter,
        connection=connection,
        spill_path=options["spill-file"],
    )
    hunting.setServiceParent(top)  # type: ignore[no-untyped-call]
    endpoint = serverFromString(reactor, options["control"])
    factory = ControlFactory(hunting, options["secret"])
    ControlService(endpoint, factory).setServiceParent(top)  # type: ignore[no-untyped-call]
    return top
