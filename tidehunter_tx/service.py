"""The ``twistd tidehunter`` plugin: options, spec strings and the services.

``twistd -n --pidfile= tidehunter --url URL --limit N`` streams URL into the
sink, answers AMP control commands on a 0600 Unix socket, and exits 0 once
the limit is reached, a Stop arrives or SIGTERM comes; non-zero, with the
reason logged, when the stream fails for good.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
from functools import partial
from typing import Any, ClassVar
from urllib.parse import urlsplit

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from ._client import MAX_HEADER_BYTES
from ._reactor import global_reactor
from ._secrets import url_secrets
from .auth import AuthError, signer_from_env
from .control import (
    MAX_CONTROL_CONNECTIONS,
    MIN_SECRET_BYTES,
    ControlError,
    ControlFactory,
    read_secret_file,
)
from .counter import StateCounter
from .framing import DEFAULT_MAX_RECORD_BYTES, FRAMINGS, RECORD_FORMATS
from .hunter import COMPRESSIONS, Hunter, load_ca_file, public_url
from .hunter_service import HunterService, RunResult
from .metrics import metrics_site
from .redis import (
    RedisGate,
    RedisSpec,
    RedisStateCounter,
    connect,
    parse_redis_spec,
    redis_password,
)
from .resume import RESUME_KINDS, make_resume, watch_body
from .sinks import FileSink, FileState, PipeClosed, PipeSink, StateFileError

__all__ = [
    "DEFAULT_CONTROL",
    "DaemonService",
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


def parse_sink(
    spec: str, reactor: Any = None, state_path: str | None = None
) -> FileSink | PipeSink:
    """Build the local sink a ``--sink`` spec names (``stdout`` or ``file:PATH``).

    A file sink with ``state_path`` keeps the feed's position beside it.
    """
    if spec == "stdout":
        return PipeSink.stdout(reactor)
    return FileSink.open(spec[len("file:") :], state_path)


def _check_sink_spec(spec: str) -> RedisSpec | None:
    """Validate ``--sink``; return the Redis target when it names one."""
    if spec == "stdout":
        return None
    if spec.startswith("file:") and len(spec) > len("file:"):
        problem = _unwritable(spec[len("file:") :])
        if problem:
            raise usage.UsageError(f"--sink {spec}: {problem}")
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


def _unwritable(path: str) -> str | None:
    """Why records could not be appended to ``path``, in words; None if they can."""
    directory = os.path.dirname(path) or "."
    if os.path.isdir(path):
        return "is a directory"
    if not os.path.isdir(directory):
        return f"no directory {directory}"
    if os.path.exists(path):
        return None if os.access(path, os.W_OK) else "not writable"
    writable = os.access(directory, os.W_OK | os.X_OK)
    return None if writable else f"cannot create files in {directory}"


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
        "carries the records only; twistd's log goes to stderr. Credentials come "
        "from the environment, not argv (which ps shows to every user): "
        "TIDEHUNTER_BEARER_TOKEN (Authorization: Bearer), TIDEHUNTER_BASIC_AUTH "
        "(user:password), or all four of TIDEHUNTER_OAUTH1_CONSUMER_KEY, "
        "TIDEHUNTER_OAUTH1_CONSUMER_SECRET, TIDEHUNTER_OAUTH1_TOKEN_KEY and "
        "TIDEHUNTER_OAUTH1_TOKEN_SECRET (OAuth1 signing, with the oauth extra); "
        "only one kind at a time. TIDEHUNTER_REDIS_PASSWORD is the password for "
        "a redis:// --sink or --counter that names none. TIDEHUNTER_URL is the "
        "stream when --url is not given (for a URL whose query holds a key)."
    )

    optFlags: ClassVar[list[list[Any]]] = [
        ["no-reconnect", None, "End the run when the connection ends."],
        [
            "redirect-keep-headers",
            None,
            "Send --header values and credentials on a redirect to another "
            "origin too (by default it gets none of them).",
        ],
    ]
    optParameters: ClassVar[list[list[Any]]] = [
        ["url", None, None, "The stream to read (required)."],
        ["method", None, "GET", "HTTP method."],
        ["data", None, None, "Request body."],
        ["limit", None, 0, "Exact record limit; 0 = none.", _number("limit", int, 0)],
        ["framing", None, "lines", f"How records are cut: {'|'.join(FRAMINGS)}."],
        [
            "format",
            None,
            "lines",
            "How records are written: lines (as they came, one per line) or "
            "json (one JSON object each: data, and an event's event and id).",
        ],
        [
            "compression",
            None,
            "auto",
            "auto (ask for gzip; without it if a gzip body gives nothing for "
            "5 s), gzip or identity.",
        ],
        [
            "max-redirects",
            None,
            10,
            "Redirects followed per connection.",
            _number("max-redirects", int, 0),
        ],
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
            "metrics",
            None,
            None,
            "Serve Prometheus metrics at /metrics on this endpoint, e.g. "
            "tcp:9108:interface=127.0.0.1 [default: off].",
        ],
        [
            "control-secret-file",
            None,
            None,
            "File holding the AMP shared secret (required for TCP control).",
        ],
        [
            "max-control-connections",
            None,
            MAX_CONTROL_CONNECTIONS,
            "Control connections at once; more are closed as they arrive.",
            _number("max-control-connections", int, 1),
        ],
        [
            "stall-timeout",
            None,
            90.0,
            "Seconds without a byte before the connection is judged dead.",
            _number("stall-timeout", float, 0, strict=True),
        ],
        [
            "header-timeout",
            None,
            30.0,
            "Seconds to wait for the whole response headers.",
            _number("header-timeout", float, 0, strict=True),
        ],
        [
            "max-header-bytes",
            None,
            MAX_HEADER_BYTES,
            "Bytes of response headers past which the connection is closed "
            "(and backed off from like an HTTP error).",
            _number("max-header-bytes", int, 1024),
        ],
        ["ca-file", None, None, "Trust this CA (PEM) for the feed's certificate."],
        [
            "resume",
            None,
            None,
            f"Go on where the feed left off: {'|'.join(RESUME_KINDS)} "
            "[default: sse with --framing sse].",
        ],
        [
            "resume-from",
            None,
            None,
            "A JSON pointer (RFC 6901) to each record's position, for any "
            "JSON-lines feed; sent back as --resume-param.",
        ],
        [
            "resume-param",
            None,
            None,
            "The query parameter --resume-from's position is sent as.",
        ],
        [
            "feed-id",
            None,
            None,
            "The name the position is stored under in Redis [default: the "
            "URL without credentials or query].",
        ],
        [
            "state-file",
            None,
            None,
            "With a file sink: where the position and the data's length are "
            "kept [default: PATH.state].",
        ],
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

    def _check_resume(self) -> None:
        """--resume and its friends agree with each other and with the sink."""
        kind, pointer = self["resume"], self["resume-from"]
        framing = self["framing"]
        if kind is None and pointer is None and framing == "sse":
            kind = "sse"
        if kind == "sse" and framing != "sse":
            raise usage.UsageError("--resume sse needs --framing sse")
        try:
            self["resumer"] = make_resume(kind, pointer, self["resume-param"])
            if kind == "etcd":
                data = self["data"]
                watch_body(data.encode() if data else None)
        except ValueError as error:
            raise usage.UsageError(str(error)) from None
        positioned = kind is not None or pointer is not None
        state = self["state-file"]
        if not self["sink"].startswith("file:"):
            if state is not None:
                raise usage.UsageError("--state-file goes with a file:PATH --sink")
            return
        path = self["sink"][len("file:") :]
        if not positioned:
            if state is not None:
                raise usage.UsageError(
                    "--state-file needs a feed with positions (--resume)"
                )
            return
        self["state-file"] = state = state or f"{path}.state"
        try:
            saved = FileState(state).read()
        except StateFileError as error:
            raise usage.UsageError(str(error)) from None
        size = os.path.getsize(path) if os.path.exists(path) else 0
        if saved is not None and size < saved[1]:
            raise usage.UsageError(
                f"{path} holds {size} bytes but its state file {state} describes"
                f" {saved[1]}: the data was cut or replaced; move the state file"
                " away to start the feed from the beginning"
            )

    def postOptions(self) -> None:
        #: Whether the URL was on the command line, where ps shows it.
        self["url-on-argv"] = bool(self["url"])
        if not self["url"]:
            self["url"] = os.environ.get("TIDEHUNTER_URL") or None
        if not self["url"]:
            raise usage.UsageError("--url (or TIDEHUNTER_URL) is required")
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
        for name, choices in (
            ("framing", FRAMINGS),
            ("format", RECORD_FORMATS),
            ("compression", COMPRESSIONS),
        ):
            if self[name] not in choices:
                raise usage.UsageError(
                    f"--{name} must be one of {', '.join(choices)}, not {self[name]!r}"
                )
        self["redis-sink"] = _check_sink_spec(self["sink"])
        self._check_resume()
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
                self["secret"] = read_secret_file(
                    self["control-secret-file"], MIN_SECRET_BYTES
                )
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
        metrics = self["metrics"]
        if metrics is not None and not metrics.startswith(("tcp:", "unix:", "ssl:")):
            raise usage.UsageError(
                f"--metrics must be an endpoint such as tcp:9108:interface=127.0.0.1,"
                f" not {metrics!r}"
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


class DaemonService(MultiService):
    """The process around a :class:`HunterService`: what only a daemon does.

    It exits the process once the run is over (0, or 1 when it failed),
    makes SIGTERM a clean stop with exit 0, and writes the records Redis
    never confirmed to the spill file.
    """

    def __init__(
        self,
        hunting: HunterService,
        reactor: Any,
        control: ControlService | None = None,
        metrics: ListenService | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.hunting = hunting
        self.control = control
        self.metrics = metrics
        self._reactor = reactor
        hunting.setServiceParent(self)  # type: ignore[no-untyped-call]
        #: What the daemon listens on; each must listen before the feed opens.
        self.listeners = [s for s in (control, metrics) if s is not None]
        for listener in self.listeners:
            listener.setServiceParent(self)  # type: ignore[no-untyped-call]
        self.exit_code = 0

    def privilegedStartService(self) -> None:
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        self._refuse_unless_listening()

    def startService(self) -> None:
        # Listening (or refused) before the feed is asked for: a daemon that
        # cannot be steered must not run, and the feed must not see it.
        for listener in self.listeners:
            if not listener.tried:
                listener.privilegedStartService()
        self._refuse_unless_listening()
        self._reactor.callWhenRunning(self._exit_0_on_sigterm)
        super().startService()  # type: ignore[no-untyped-call]
        self.hunting.whenDone().addCallback(self._run_over)

    def _refuse_unless_listening(self) -> None:
        """Exit 1 with one line when an endpoint is someone else's.

        Streaming on without control would leave ``tidehunter-ctl stop``
        stopping the *other* daemon; without metrics, the alerts watching
        them would read another process's numbers, or nothing.
        """
        for listener in self.listeners:
            if listener.refusal is not None:
                log.error(
                    "tidehunter: {refusal}",
                    tidehunter_event="listen_refused",
                    refusal=listener.refusal,
                    listener=listener.what,
                )
                raise ControlTaken(listener.refusal)

    def _run_over(self, result: RunResult) -> None:
        self.exit_code = 0 if result.ok else 1
        if self.running:
            self._stop_process()
        elif self.exit_code:
            # The run failed while a shutdown (SIGTERM) was under way.
            self._exit_after_shutdown(self.exit_code)

    def _exit_0_on_sigterm(self) -> None:
        """SIGTERM is the ordinary way to stop a daemon: stop cleanly, exit 0.

        twistd's own handler re-raises the signal after shutdown, so the
        process would die "killed by SIGTERM" even after a clean flush.
        """
        reactor = self._reactor

        def on_sigterm(signum: int, frame: object) -> None:
            reactor.callFromThread(reactor.stop)

        signal.signal(signal.SIGTERM, on_sigterm)

    def _stop_process(self) -> None:
        """Stop the reactor; twistd exits 0 unless we say otherwise."""
        reactor = self._reactor
        if self.exit_code:
            self._exit_after_shutdown(self.exit_code)
        if reactor.running:
            reactor.stop()

    def _exit_after_shutdown(self, exit_code: int) -> None:
        def exit_with_code() -> None:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exit_code)

        self._reactor.addSystemEventTrigger("after", "shutdown", exit_with_code)


def _reader_gone(hunter: Hunter, reason: Failure) -> None:
    closed = reason.value
    assert isinstance(closed, PipeClosed)
    hunter.sink_lost(closed.lost, reason)


class _Spill:
    """Writes what a Redis gate never confirmed to the spill file, and says so."""

    def __init__(self, gate: RedisGate, path: str) -> None:
        self.gate = gate
        self.path = path

    def __call__(self, hunter: Hunter) -> int:
        # The file written is a fresh one: ``path.N`` when ``path`` was taken.
        sent, unsent, written = self.gate.spill(self.path)
        if written is not None:
            log.warn(
                "tidehunter: Redis did not confirm {total} records; they are in "
                "{path} (JSON lines), not lost: {unsent} never sent, {sent} sent "
                "before the outage (Redis may hold those too; each carries its "
                "producer and seq)",
                tidehunter_event="spill_written",
                total=sent + unsent,
                sent=sent,
                unsent=unsent,
                path=os.path.abspath(written),
            )
        return sent + unsent


class ControlTaken(SystemExit, Exception):
    """Exit status 1, no traceback: the control endpoint is someone else's.

    Also an ``Exception``, so twistd's runner hands the reason to a parent
    waiting for its daemonized child (without ``-n``; a bare SystemExit
    leaves that parent waiting forever) and removes its pid file.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.code = 1


class ListenService(StreamServerEndpointService):
    """A server of the daemon's that must listen before the feed is opened.

    ``refusal`` says, in one line, why it could not listen (None: it does);
    ``what`` names it there ("control", "metrics").
    """

    #: A failed listen is kept in ``refusal``, never logged as unhandled.
    _raiseSynchronously = True

    def __init__(self, endpoint: Any, factory: Any, what: str) -> None:
        super().__init__(endpoint, factory)  # type: ignore[no-untyped-call]
        self.what = what
        self.tried = False
        self.refusal: str | None = None

    def privilegedStartService(self) -> None:
        self.tried = True
        try:
            super().privilegedStartService()  # type: ignore[no-untyped-call]
        except CannotListenError as error:
            self.refusal = _why_not_listening(error, self.what)


class ControlService(ListenService):
    """The AMP server; on stop, replies already written still go out."""

    def __init__(self, endpoint: Any, factory: ControlFactory) -> None:
        super().__init__(endpoint, factory, "control")
        self.control_factory = factory

    def stopService(self) -> Deferred[Any]:
        stopped = super().stopService()  # type: ignore[no-untyped-call]
        return DeferredList(
            [stopped or succeed(None), self.control_factory.close_all()]
        )


def _why_not_listening(error: CannotListenError, what: str) -> str:
    """One line for an endpoint that is taken (or cannot be had)."""
    reason = error.socketError
    in_use = getattr(reason, "errno", None) == errno.EADDRINUSE
    if error.interface is None and isinstance(error.port, (bytes, str)):
        path = os.fsdecode(error.port)
        if isinstance(reason, str):  # the lock (PATH.lock) is a live pid's
            try:
                holder = f" (pid {os.readlink(path + '.lock')})"
            except OSError:
                holder = ""
            return f"{what} socket {path} is held by another daemon{holder}"
        _release_own_lock(path)
        if in_use:
            return (
                f"{what} socket {path} exists and no live daemon's lock names "
                "it: remove it if no daemon uses it"
            )
        return f"cannot listen on {what} socket {path}: {_strerror(reason)}"
    where = f"{error.interface}:{error.port}" if error.interface else error.port
    if in_use:
        return f"{what} port {where} is taken"
    return f"cannot listen on {what} port {where}: {_strerror(reason)}"


def _release_own_lock(path: str) -> None:
    """Twisted keeps the lock it took when the bind then fails: drop it, so
    a refused daemon leaves nothing behind and the next start is refused
    the same way."""
    lock = f"{path}.lock"
    with contextlib.suppress(OSError):
        if os.readlink(lock) == str(os.getpid()):
            os.remove(lock)


def _strerror(reason: object) -> str:
    return getattr(reason, "strerror", None) or str(reason)


def makeService(options: Options) -> IService:
    reactor = global_reactor()
    target: RedisSpec | None = options["redis-sink"]
    counter_spec: RedisSpec | None = options["redis-counter"]
    local_sink = (
        None if target else parse_sink(options["sink"], reactor, options["state-file"])
    )
    gate: RedisGate | None = None
    if counter_spec is not None:
        connection = connect(counter_spec)
        gate = RedisGate(
            RedisStateCounter(connection, counter_spec.key, clock=reactor),
            target=target,
            local=local_sink,
        )
    elif target is not None:
        # A Redis sink with the count kept here: no counter key in Redis.
        gate = RedisGate(StateCounter(), connection=connect(target), target=target)

    if options["url-on-argv"] and url_secrets(options["url"]):
        log.warn(
            "tidehunter: --url holds credentials (a password or query values), "
            "and every user of this machine can read the command line (ps): "
            "give user:password in TIDEHUNTER_BASIC_AUTH and the URL in "
            "TIDEHUNTER_URL instead",
            tidehunter_event="credentials_on_argv",
        )
    headers: dict[str | bytes, list[str | bytes]] = {}
    for name, value in options["headers"]:
        headers.setdefault(name, []).append(value)
    hunter = Hunter(
        options["url"],
        method=options["method"],
        headers=headers or None,
        data=options["data"].encode() if options["data"] else None,
        framing=options["framing"],
        max_record_bytes=options["max-record-bytes"],
        record_format=options["format"],
        compression=options["compression"],
        max_redirects=options["max-redirects"],
        redirect_keep_headers=bool(options["redirect-keep-headers"]),
        sink=local_sink if gate is None else None,
        gate=gate,
        reconnect=not options["no-reconnect"],
        stall_timeout=options["stall-timeout"],
        timeout=options["header-timeout"],
        max_header_bytes=options["max-header-bytes"],
        ca_file=options["ca-file"],
        signer=options["signer"],
        resume=options["resumer"],
        feed_id=options["feed-id"],
        position_store=local_sink.state if isinstance(local_sink, FileSink) else None,
        reactor=reactor,
    )
    # Redis passwords are the daemon's secrets too: masked in what it says.
    hunter.secrets.update(
        redis_password(spec) for spec in (target, counter_spec) if spec is not None
    )
    if isinstance(local_sink, PipeSink):
        # The reader went away (`| head -3`, a crash): end the run, exit 1.
        local_sink.on_broken = partial(_reader_gone, hunter)
    spill_path = options["spill-file"] or f"tidehunter-spill-{os.getpid()}.jsonl"
    hunting = HunterService(
        hunter,
        options["limit"],
        on_unsettled=_Spill(gate, spill_path) if gate is not None else None,
        clock=reactor,
    )
    endpoint = serverFromString(reactor, options["control"])
    factory = ControlFactory(
        hunting,
        options["secret"],
        reactor=reactor,
        max_connections=options["max-control-connections"],
    )
    control = ControlService(endpoint, factory)
    metrics = None
    if options["metrics"] is not None:
        metrics = ListenService(
            serverFromString(reactor, options["metrics"]),
            metrics_site(hunter.metrics()),
            "metrics",
        )
    return DaemonService(hunting, reactor, control, metrics)
