"""The ``twistd tidehunter`` plugin: options, spec strings and the service.

``twistd -n --pidfile= tidehunter --url URL --limit N`` streams URL into the
sink and exits 0 once the limit is reached or the stream ends.
"""

from __future__ import annotations

import os
import sys
from typing import Any, ClassVar

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from .framing import DEFAULT_MAX_RECORD_BYTES, FRAMINGS
from .hunter import Hunter
from .sinks import FileSink

__all__ = ["HunterService", "Options", "makeService", "parse_sink"]

log = Logger()


def _non_negative_int(name: str) -> Any:
    def coerce(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"--{name} must be an integer, not {value!r}") from None
        if number < 0:
            raise ValueError(f"--{name} must be >= 0, not {number}")
        return number

    coerce.coerceDoc = "An integer >= 0."  # type: ignore[attr-defined]
    return coerce


def _positive_int(name: str) -> Any:
    base = _non_negative_int(name)

    def coerce(value: str) -> int:
        number: int = base(value)
        if number == 0:
            raise ValueError(f"--{name} must be >= 1, not 0")
        return number

    coerce.coerceDoc = "An integer >= 1."  # type: ignore[attr-defined]
    return coerce


def parse_sink(spec: str) -> FileSink:
    """Build the sink a ``--sink`` spec names (``stdout`` or ``file:PATH``)."""
    if spec == "stdout":
        return FileSink.stdout()
    if spec.startswith("file:"):
        path = spec[len("file:") :]
        if not path:
            raise usage.UsageError("--sink file:PATH needs a path")
        return FileSink.open(path)
    raise usage.UsageError(
        f"--sink: unknown sink {spec!r}; expected 'stdout' or 'file:PATH'"
    )


def _check_sink_spec(spec: str) -> None:
    if spec != "stdout" and not (spec.startswith("file:") and len(spec) > 5):
        raise usage.UsageError(
            f"--sink: unknown sink {spec!r}; expected 'stdout' or 'file:PATH'"
        )


class Options(usage.Options):
    """Options of ``twistd tidehunter`` (see DESIGN.md for the full table)."""

    synopsis = "--url URL [options]"
    longdesc = (
        "Stream an HTTP feed (JSON lines) into a sink with an exact record limit. "
        "Records go to stdout by default; twistd's own log then goes to stderr."
    )

    optParameters: ClassVar[list[list[Any]]] = [
        ["url", None, None, "The stream to read (required)."],
        ["method", None, "GET", "HTTP method."],
        ["data", None, None, "Request body."],
        ["limit", None, 0, "Exact record limit; 0 = none.", _non_negative_int("limit")],
        ["framing", None, "lines", f"How records are cut: {'|'.join(FRAMINGS)}."],
        [
            "max-record-bytes",
            None,
            DEFAULT_MAX_RECORD_BYTES,
            "Larger records are skipped and counted.",
            _positive_int("max-record-bytes"),
        ],
        ["sink", None, "stdout", "Where records go: stdout or file:PATH."],
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
        if not self["url"].startswith(("http://", "https://")):
            raise usage.UsageError(
                f"--url must be an http:// or https:// URL, not {self['url']!r}"
            )
        if self["framing"] not in FRAMINGS:
            raise usage.UsageError(
                f"--framing must be one of {', '.join(FRAMINGS)}, "
                f"not {self['framing']!r}"
            )
        _check_sink_spec(self["sink"])


class HunterService(Service):
    """Runs one hunter; stops the reactor when its run is over."""

    def __init__(self, hunter: Hunter, sink: FileSink, limit: int) -> None:
        self.hunter = hunter
        self.sink = sink
        self.limit = limit
        self.run: Deferred[Any] | None = None
        self.exit_code = 0

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.run = self.hunter.tide_on(self.limit)
        self.run.addCallbacks(self._ended, self._failed)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self.hunter.running:
            self.hunter.tide_off()
        self.sink.close()
        return None

    def _ended(self, _: object) -> None:
        self._report()
        self._shutdown()

    def _failed(self, failure: Failure) -> None:
        log.error("tidehunter: {error}", error=failure.getErrorMessage())
        self.exit_code = 1
        self._report()
        self._shutdown()

    def _report(self) -> None:
        stats, counter, framer = self.hunter.stats, self.hunter.sc, self.hunter.framer
        log.info(
            "tidehunter: {records} records delivered (total {total}, limit {limit}); "
            "{bytes} bytes, {keepalives} keep-alives, {skipped} skipped",
            records=stats.records,
            total=counter.total,
            limit=self.limit or "none",
            bytes=stats.bytes,
            keepalives=framer.keepalives,
            skipped=framer.skipped,
        )

    def _shutdown(self) -> None:
        from twisted.internet import reactor

        self.sink.close()
        if self.exit_code:
            code = self.exit_code

            def exit_with_code() -> None:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)

            reactor.addSystemEventTrigger("after", "shutdown", exit_with_code)
        if reactor.running:
            reactor.stop()


def makeService(options: Options) -> IService:
    sink = parse_sink(options["sink"])
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
        sink=sink,
    )
    top = MultiService()
    HunterService(hunter, sink, options["limit"]).setServiceParent(top)  # type: ignore[no-untyped-call]
    return top
