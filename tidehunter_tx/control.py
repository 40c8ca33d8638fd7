"""Steering a running hunter from another process, over AMP.

The server side wraps anything that looks like a :class:`Controller` (the
daemon's service, or :class:`HunterController` around a plain ``Hunter``);
the client side, :class:`ControlClient`, is what ``tidehunter-ctl`` uses and
what other Twisted programs can use too.  With a shared secret every command
before a good ``Authenticate`` is refused, and a wrong secret ends the
connection.  Status replies never carry a credential.
"""

from __future__ import annotations

import hmac
import json
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.protocols import amp
from twisted.python.failure import Failure

from ._reactor import or_global_reactor
from .hunter import Hunter
from .status import STATUS_FIELDS, StatusField

#: Before ``Authenticate`` succeeds: the bytes of one box, and its keys.
MAX_PREAUTH_BOX_BYTES = 16 * 1024
MAX_PREAUTH_KEYS = 4
#: Seconds an unauthenticated connection may stay.
PREAUTH_TIMEOUT = 10.0
#: Seconds a connection refused a secret has to read the answer and hang up.
LINGER_TIMEOUT = 2.0
#: Seconds between refused secrets, from all clients together.
GUESS_INTERVAL = 0.25
#: Control connections at once; more are closed as they arrive.
MAX_CONTROL_CONNECTIONS = 64
#: The shortest secret a secret file may hold.
MIN_SECRET_BYTES = 16

__all__ = [
    "Authenticate",
    "BadSecret",
    "ControlClient",
    "ControlError",
    "ControlFactory",
    "ControlProtocol",
    "Controller",
    "HunterController",
    "NotAuthenticated",
    "Pause",
    "Resume",
    "SetLimit",
    "Status",
    "Stop",
    "client_endpoint",
    "read_secret_file",
]


class NotAuthenticated(Exception):
    """A command came before a good ``Authenticate``."""


class BadSecret(Exception):
    """``Authenticate`` with the wrong secret; the connection is closed."""


class BadLimit(Exception):
    """``SetLimit`` with a negative limit."""


class ControlError(Exception):
    """What a control client reports to its user, in one line."""


_LOST = Failure(ConnectionDone())

_AUTH_ERRORS: dict[type[Exception], bytes] = {NotAuthenticated: b"NOT_AUTHENTICATED"}


def _amp_argument(field: StatusField) -> amp.Argument:
    kinds: dict[type, type[amp.Argument]] = {
        int: amp.Integer,
        float: amp.Float,
        str: amp.Unicode,
        dict: amp.Unicode,  # a JSON object
    }
    return kinds[field.kind](optional=field.optional)


class Status(amp.Command):
    """The hunter's state and counters (``STATUS_FIELDS``); never a credential."""

    arguments = []
    response = [(field.name.encode(), _amp_argument(field)) for field in STATUS_FIELDS]
    errors = _AUTH_ERRORS


class Stop(amp.Command):
    """Stop now, flush the sink; answers with the records delivered."""

    arguments = []
    response = [(b"count", amp.Integer())]
    errors = _AUTH_ERRORS


class Pause(amp.Command):
    """Stop reading from the socket; the connection and counts are kept."""

    arguments = []
    response = [(b"state", amp.Unicode())]
    errors = _AUTH_ERRORS


class Resume(amp.Command):
    arguments = []
    response = [(b"state", amp.Unicode())]
    errors = _AUTH_ERRORS


class SetLimit(amp.Command):
    """Change the limit; at or below the current count the run stops at once."""

    arguments = [(b"limit", amp.Integer())]
    response = [(b"limit", amp.Integer()), (b"count", amp.Integer())]
    errors = {**_AUTH_ERRORS, BadLimit: b"BAD_LIMIT"}


class Authenticate(amp.Command):
    arguments = [(b"secret", amp.Unicode())]
    response = []
    errors = {BadSecret: b"BAD_SECRET"}


class Controller(Protocol):
    """What the control server steers."""

    def status(self) -> dict[str, Any]: ...

    def stop(self) -> Deferred[int]: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def set_limit(self, limit: int) -> None: ...


class HunterController:
    """Steers a :class:`Hunter` whose run was started by someone else.

    ``run`` is the Deferred ``tide_on`` returned; ``stop`` waits for it.
    """

    def __init__(self, hunter: Hunter, run: Deferred[Any] | None = None) -> None:
        self.hunter = hunter
        self.run = run

    def status(self) -> dict[str, Any]:
        return self.hunter.status()

    def stop(self) -> Deferred[int]:
        # This hunter only: a shared counter stays on for the others.
        self.hunter.halt()
        if self.run is None or self.run.called:
            return succeed(self.hunter.delivered)
        finished: Deferred[int] = Deferred()
        self.run.addBoth(
            _pass_through(lambda: finished.callback(self.hunter.delivered))
        )
        return finished

    def pause(self) -> None:
        self.hunter.pause()

    def resume(self) -> None:
        self.hunter.resume()

    def set_limit(self, limit: int) -> None:
        self.hunter.set_limit(limit)


def _pass_through(action: Callable[[], None]) -> Callable[[Any], Any]:
    def run(result: Any) -> Any:
        action()
        return result

    return run


class ControlProtocol(amp.AMP):
    """One control connection."""

    def __init__(
        self,
        controller: Controller,
        secret: bytes | None,
        reactor: IReactorTime | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._reactor: IReactorTime = or_global_reactor(reactor)
        self._controller = controller
        self._secret = secret
        self._authenticated = secret is None
        self.closed: Deferred[None] = Deferred()
        #: Set by the factory: the one place refused guesses are paced.
        self.guesses: GuessPacer | None = None
        self._box_bytes = 0  # of the box being received
        self._refusing = False  # a wrong secret: no later box is read
        self._reader_stalled = False  # our replies back up: the peer reads none
        self._lost = False
        self._deadline: Any = None  # closes a connection that overstays

    def connectionMade(self) -> None:
        super().connectionMade()  # type: ignore[no-untyped-call]
        assert self.transport is not None
        # Told when our replies back up (a peer that never reads them).
        self.transport.registerProducer(self, True)  # type: ignore[attr-defined]
        if not self._authenticated:
            self._close_within(PREAUTH_TIMEOUT)

    def _close_within(self, seconds: float | None) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        if seconds is not None:
            self._deadline = self._reactor.callLater(seconds, self._abort)

    def pauseProducing(self) -> None:
        self._reader_stalled = True

    def resumeProducing(self) -> None:
        self._reader_stalled = False

    def stopProducing(self) -> None:
        """The connection is going; connectionLost follows."""

    def dataReceived(self, data: bytes) -> None:
        if self._refusing:
            return  # after a wrong secret: drained, never parsed
        super().dataReceived(data)  # type: ignore[no-untyped-call]

    def stringReceived(self, string: bytes) -> None:
        """One key or value (each at most 64 KiB, by AMP's framing)."""
        if self._refusing:
            return
        if not self._authenticated:
            # Bounded before the secret is known: no endless box grows us.
            self._box_bytes += 2 + len(string)
            if self._box_bytes > MAX_PREAUTH_BOX_BYTES:
                self._abort()
                return
        super().stringReceived(string)  # type: ignore[no-untyped-call]

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        if self._refusing:
            return  # pipelined after a wrong secret: never read
        self._box_bytes = 0
        if not self._authenticated and len(box) > MAX_PREAUTH_KEYS:
            self._abort()
            return
        if self._reader_stalled:
            # Replies are piling up unread: bounded, the peer goes.
            self._abort()
            return
        super().ampBoxReceived(box)  # type: ignore[no-untyped-call]

    def _abort(self) -> None:
        self._refusing = True
        self.paused = True  # the box parser stops where it is
        if self.transport is not None and not self._lost:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = _LOST) -> None:
        self._lost = True
        self._close_within(None)
        super().connectionLost(reason)  # type: ignore[no-untyped-call]
        if not self.closed.called:
            self.closed.callback(None)

    def _require_auth(self) -> None:
        if not self._authenticated:
            raise NotAuthenticated("authenticate first: this daemon has a secret")

    @Authenticate.responder
    def authenticate(self, secret: str) -> Deferred[dict[str, Any]]:
        if self._secret is None:
            return succeed({})
        # Nothing after a guess is parsed until it is judged: what was
        # pipelined waits, unparsed, and the socket is not read meanwhile.
        # Guesses are paced across all connections.
        self.paused = True  # the box parser stops after this box
        if self.transport is not None:
            self.transport.pauseProducing()  # type: ignore[attr-defined]
        turn = self.guesses.turn() if self.guesses is not None else succeed(None)
        return turn.addCallback(lambda _: self._judge(secret))

    def _judge(self, secret: str) -> dict[str, Any]:
        assert self._secret is not None
        right = hmac.compare_digest(secret.encode("utf-8"), self._secret)
        if self.guesses is not None:
            self.guesses.judged(refused=not right)
        # Either way the answer goes out first, then the connection goes on
        # with what was pipelined, or hangs up.
        if right:
            self._authenticated = True
            self._close_within(None)
            self._reactor.callLater(0, self._go_on)
            return {}
        self._refusing = True
        self._reactor.callLater(0, self._hang_up)
        raise BadSecret("wrong secret")

    def _go_on(self) -> None:
        """Read again, starting with the boxes pipelined behind the secret."""
        if self._refusing or self._lost or self.transport is None:
            return
        self.paused = False
        self.transport.resumeProducing()  # type: ignore[attr-defined]
        self.dataReceived(b"")  # parse what waited

    def _hang_up(self) -> None:
        """Close once the answer is out; what the peer sent is drained unread.

        Closing with unread bytes would reset the connection, and a reset
        can discard the answer before the peer reads it.
        """
        if self._lost or self.transport is None:
            return
        self.transport.resumeProducing()  # type: ignore[attr-defined]
        close = getattr(self.transport, "loseWriteConnection", None)
        (close or self.transport.loseConnection)()
        self._close_within(LINGER_TIMEOUT)

    @Status.responder
    def status(self) -> dict[str, Any]:
        self._require_auth()
        status = dict(self._controller.status())
        for field in STATUS_FIELDS:
            if field.kind is dict:
                status[field.name] = json.dumps(status[field.name])
        return {field.name: status[field.name] for field in STATUS_FIELDS}

    @Stop.responder
    def stop(self) -> Deferred[dict[str, int]]:
        self._require_auth()
        return self._controller.stop().addCallback(lambda count: {"count": count})

    @Pause.responder
    def pause(self) -> dict[str, str]:
        self._require_auth()
        self._controller.pause()
        return {"state": self._controller.status()["state"]}

    @Resume.responder
    def resume(self) -> dict[str, str]:
        self._require_auth()
        self._controller.resume()
        return {"state": self._controller.status()["state"]}

    @SetLimit.responder
    def set_limit(self, limit: int) -> dict[str, int]:
        self._require_auth()
        if limit < 0:
            raise BadLimit(f"limit must be >= 0, not {limit}")
        self._controller.set_limit(limit)
        status = self._controller.status()
        return {"limit": status["limit"], "count": status["count"]}


class GuessPacer:
    """One secret judged at a time, from all clients together, and no sooner
    than ``interval`` after a refused one: concurrent connections guess no
    faster than one."""

    def __init__(self, reactor: IReactorTime, interval: float = GUESS_INTERVAL):
        self._reactor = reactor
        self._interval = interval
        self._next = 0.0
        self._waiting: deque[Deferred[None]] = deque()
        self._judging = False
        self._timer: Any = None

    def turn(self) -> Deferred[None]:
        """Fires when this guess may be judged; then call :meth:`judged`."""
        waiting: Deferred[None] = Deferred()
        self._waiting.append(waiting)
        self._next_turn()
        return waiting

    def judged(self, refused: bool) -> None:
        """The guess whose turn it was is judged; let the next one come."""
        self._judging = False
        if refused:
            self._next = self._reactor.seconds() + self._interval
        self._next_turn()

    def _next_turn(self) -> None:
        if self._judging or not self._waiting:
            return
        if self._timer is not None and self._timer.active():
            return
        wait = self._next - self._reactor.seconds()
        if wait > 0:
            self._timer = self._reactor.callLater(wait, self._next_turn)
            return
        self._judging = True
        self._waiting.popleft().callback(None)


class ControlFactory(ServerFactory):
    """Makes control connections and can close them all, replies flushed."""

    noisy = False

    def __init__(
        self,
        controller: Controller,
        secret: bytes | None = None,
        reactor: IReactorTime | None = None,
        max_connections: int = MAX_CONTROL_CONNECTIONS,
    ) -> None:
        self.controller = controller
        self.secret = secret
        self.reactor = reactor
        self.max_connections = max_connections
        self.connections: set[ControlProtocol] = set()
        self._guesses = GuessPacer(or_global_reactor(reactor))

    def buildProtocol(self, addr: Any) -> ControlProtocol | None:
        if len(self.connections) >= self.max_connections:
            return None  # closed at once: the feed's reconnects keep their fds
        protocol = ControlProtocol(self.controller, self.secret, self.reactor)
        protocol.factory = self
        protocol.guesses = self._guesses
        self.connections.add(protocol)
        protocol.closed.addCallback(lambda _: self.connections.discard(protocol))
        return protocol

    def close_all(self) -> Deferred[Any]:
        """Hang up on every client once what was written to it has gone out."""
        waits = []
        for protocol in list(self.connections):
            waits.append(protocol.closed)
            if protocol.transport is not None:
                protocol.transport.loseConnection()
        return DeferredList(waits)


def read_secret_file(path: str, minimum: int = 1) -> bytes:
    """The shared secret: the file's content without surrounding whitespace.

    The daemon asks for at least :data:`MIN_SECRET_BYTES`: a short secret
    is guessed, however slowly guesses are answered.
    """
    try:
        with open(path, "rb") as file:
            secret = file.read().strip()
    except OSError as error:
        raise ControlError(
            f"cannot read secret file {path}: {error.strerror}"
        ) from None
    if not secret:
        raise ControlError(f"secret file {path} is empty")
    if len(secret) < minimum:
        raise ControlError(
            f"secret file {path} holds {len(secret)} bytes; a secret needs at "
            f"least {minimum} (make one: head -c 32 /dev/urandom | base64)"
        )
    return secret


def _split_endpoint(description: str) -> list[str]:
    """Split an endpoint string on unescaped colons, keeping the escapes."""
    parts, current, escaped = [], [], False
    for char in description:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def client_endpoint(description: str) -> str:
    """Translate a server endpoint string into the client form.

    Users paste the string they gave the daemon (``unix:th.sock:mode=600``,
    ``tcp:8750:interface=127.0.0.1``); a client form is passed through.
    """
    kind, *rest = _split_endpoint(description)
    named = dict(part.split("=", 1) for part in rest if "=" in part)
    positional = [part for part in rest if "=" not in part]
    if kind == "unix":
        if "path" in named:
            return f"unix:path={named['path']}"
        if not positional:
            raise ControlError(f"no socket path in {description!r}")
        return f"unix:path={positional[0]}"
    if kind in ("tcp", "tcp6"):
        if "host" in named:
            return description
        if len(positional) == 2 and "port" not in named:
            # Twisted's client form, tcp:HOST:PORT.
            host, given = positional
            return f"{kind}:host={host}:port={_checked_port(given, description)}"
        named_port = named.get("port") or (positional[0] if positional else None)
        if named_port is None:
            raise ControlError(f"no port in {description!r}")
        port = _checked_port(named_port, description)
        default = "\\:\\:1" if kind == "tcp6" else "127.0.0.1"
        host = named.get("interface", default)
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host in ("\\:\\:", "::"):
            host = "\\:\\:1"
        return f"{kind}:host={host}:port={port}"
    raise ControlError(
        f"unsupported control endpoint {description!r}: use unix: or tcp:"
    )


def _checked_port(port: str, description: str) -> str:
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ControlError(f"not a port: {port!r} in {description!r}")
    return port


class ControlClient:
    """Steers a hunter over AMP: ``await ControlClient.connect(endpoint)``."""

    def __init__(self, protocol: amp.AMP) -> None:
        self._protocol = protocol
        self.disconnected: Deferred[None] = Deferred()

    @classmethod
    async def connect(
        cls,
        endpoint: str,
        secret: bytes | str | None = None,
        reactor: Any = None,
    ) -> ControlClient:
        """Connect (server-form endpoint strings accepted) and authenticate."""
        target = clientFromString(or_global_reactor(reactor), client_endpoint(endpoint))
        protocol = _ClientAMP()  # type: ignore[no-untyped-call]
        try:
            await connectProtocol(target, protocol)
        except Exception as error:
            raise ControlError(f"no daemon at {endpoint}: {_reason(error)}") from None
        client = cls(protocol)
        protocol.lost = client.disconnected
        if secret is not None:
            text = secret.decode("utf-8") if isinstance(secret, bytes) else secret
            await client._call(Authenticate, secret=text)
        return client

    async def status(self) -> dict[str, Any]:
        reply = await self._call(Status)
        for field in STATUS_FIELDS:
            if field.kind is dict:
                reply[field.name] = json.loads(reply[field.name])
        return reply

    async def stop(self) -> int:
        reply = await self._call(Stop)
        return int(reply["count"])

    async def pause(self) -> str:
        return str((await self._call(Pause))["state"])

    async def resume(self) -> str:
        return str((await self._call(Resume))["state"])

    async def set_limit(self, limit: int) -> dict[str, int]:
        return dict(await self._call(SetLimit, limit=limit))

    def close(self) -> None:
        if self._protocol.transport is not None:
            self._protocol.transport.loseConnection()

    async def _call(
        self, command: type[amp.Command], **arguments: Any
    ) -> dict[str, Any]:
        try:
            return dict(await self._protocol.callRemote(command, **arguments))
        except NotAuthenticated:
            raise ControlError(
                "the daemon wants a secret: pass --secret-file"
            ) from None
        except BadSecret:
            raise ControlError("wrong secret") from None
        except BadLimit as error:
            raise ControlError(str(error)) from None
        except amp.UnknownRemoteError as error:
            raise ControlError(f"the daemon failed: {error}") from None
        except Exception as error:
            raise ControlError(f"lost the daemon: {_reason(error)}") from None


class _ClientAMP(amp.AMP):
    lost: Deferred[None] | None = None

    def connectionLost(self, reason: Failure = _LOST) -> None:
        super().connectionLost(reason)  # type: ignore[no-untyped-call]
        if self.lost is not None and not self.lost.called:
            self.lost.callback(None)


def _reason(error: BaseException) -> str:
    text = str(error).strip()
    return text or type(error).__name__
