"""Prometheus metrics of a :class:`~tidehunter_tx.Hunter`: the numbers of ``Status``.

:class:`HunterCollector` reads ``Hunter.status()`` once per scrape and turns
each field into a metric, so a scrape and a ``Status`` taken in the same
reactor turn agree exactly.  Names follow Prometheus's conventions: the
``tidehunter_`` prefix, base units (seconds, bytes), ``_total`` on counters.
No label or value carries a credential: the only text exported is the
feed's URL without user, password or query, the state, and counted reasons.

:class:`MetricsPage` serves a registry from the reactor thread.
prometheus_client's own ``twisted.MetricsResource`` runs the exposition in
the reactor's thread pool, where reading a hunter's state would race the
reactor that changes it.

Embedders register the collector in their own registry::

    registry.register(hunter.metrics())          # or HunterCollector(hunter)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    StateSetMetricFamily,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry
from twisted.internet.interfaces import IAddress
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

if TYPE_CHECKING:
    from .hunter import Hunter

__all__ = ["STATES", "HunterCollector", "MetricsPage", "metrics_root", "metrics_site"]

#: Scrapers at once; more are closed as they arrive (each costs a socket).
MAX_METRICS_CONNECTIONS = 16
#: Seconds a metrics connection may sit idle (a client that never asks).
METRICS_IDLE_TIMEOUT = 30

#: Every state ``Status`` shows, each a member of the ``tidehunter_state`` set.
STATES = (
    "idle",
    "connecting",
    "streaming",
    "paused",
    "backing_off",
    "stopping",
    "stopped",
)

#: (metric name without ``_total``, Status field, help) of the plain counters.
_COUNTERS = (
    ("tidehunter_records", "records", "Records this hunter delivered."),
    (
        "tidehunter_read_records",
        "read",
        "Records read (each delivered, in flight, spilled or dropped).",
    ),
    ("tidehunter_received_bytes", "bytes", "Body bytes read."),
    ("tidehunter_keepalives", "keepalives", "Keep-alives read (never records)."),
    (
        "tidehunter_truncated_records",
        "truncated",
        "Partial records at a body's end, dropped.",
    ),
    (
        "tidehunter_dropped_records",
        "dropped",
        "Records read after the run was over, dropped.",
    ),
    (
        "tidehunter_spilled_records",
        "spilled",
        "Records written to the spill file instead of the sink.",
    ),
    (
        "tidehunter_lost_records",
        "lost",
        "Records a sink took but could not deliver.",
    ),
    ("tidehunter_stalls", "stalls", "Connections judged dead by the stall timer."),
    ("tidehunter_pauses", "pauses", "Times the socket was paused."),
    (
        "tidehunter_paused_seconds",
        "paused_seconds",
        "Seconds the socket was paused (sink full or asked).",
    ),
)

#: (metric name, Status field, help) of the plain gauges.
_GAUGES = (
    (
        "tidehunter_backoff_seconds",
        "backoff",
        "Seconds of the backoff wait under way (0 when not backing off).",
    ),
    (
        "tidehunter_retry_in_seconds",
        "retry_in",
        "Seconds left until the next connection attempt.",
    ),
    (
        "tidehunter_in_flight_records",
        "in_flight",
        "Records read whose fate the sink has not told yet.",
    ),
    (
        "tidehunter_queued_records",
        "queued",
        "Records in the API queue, not taken yet.",
    ),
    (
        "tidehunter_counter_count",
        "count",
        "Records counted in this run (the counter's).",
    ),
    ("tidehunter_counter_limit", "limit", "The run's record limit; 0 = none."),
    ("tidehunter_counter_total", "total", "Records of earlier runs (the counter's)."),
)

#: (metric name, Status field, help) of timestamps, absent until they happen.
_TIMES = (
    (
        "tidehunter_last_record_timestamp_seconds",
        "last_record_at",
        "When the last record arrived (Unix time).",
    ),
    (
        "tidehunter_connected_since_timestamp_seconds",
        "connected_since",
        "When the stream connected (Unix time); absent while not connected.",
    ),
)


class HunterCollector(Collector):
    """The metrics of one hunter, read from ``status()`` at each scrape.

    :param labels: constant labels for every sample, to tell several hunters
        in one registry apart (e.g. ``{"feed": "pods"}``).
    """

    def __init__(self, hunter: Hunter, labels: Mapping[str, str] | None = None):
        self.hunter = hunter
        self.labels = dict(labels or {})

    def describe(self) -> Iterator[Metric]:
        # The families, without reading the hunter (registering must not).
        return iter(())

    def collect(self) -> Iterator[Metric]:
        status = self.hunter.status()
        names, values = list(self.labels), list(self.labels.values())
        yield self._info(status, names, values)
        states = StateSetMetricFamily(
            "tidehunter_state", "The run's state, as Status shows it.", labels=names
        )
        states.add_metric(values, {s: s == status["state"] for s in STATES})
        yield states
        for name, key, text in _COUNTERS:
            counter = CounterMetricFamily(name, text, labels=names)
            counter.add_metric(values, status[key])
            yield counter
        yield self._by(
            "tidehunter_skipped_records",
            "Records skipped, by reason (oversize: over max_record_bytes).",
            "reason",
            {"oversize": status["skipped"]},
        )
        yield self._by(
            "tidehunter_reconnects",
            "Reconnects scheduled, by cause.",
            "cause",
            status["reconnects_by_cause"],
        )
        yield self._by(
            "tidehunter_not_records",
            "Lines that only move the position or report (bookmark, ...), by reason.",
            "reason",
            status["not_records"],
        )
        for name, key, text in _GAUGES:
            gauge = GaugeMetricFamily(name, text, labels=names)
            gauge.add_metric(values, status[key])
            yield gauge
        yield self._flag(
            "tidehunter_connected",
            "1 while a stream is connected.",
            status["connected_since"] is not None,
        )
        yield self._flag(
            "tidehunter_paused",
            "1 while the socket is paused (sink full or asked).",
            status["paused_since"] is not None,
        )
        yield self._flag(
            "tidehunter_waiting",
            "1 while delivery waits for a Redis refusal to pass.",
            status["waiting"] is not None,
        )
        for name, key, text in _TIMES:
            gauge = GaugeMetricFamily(name, text, labels=names)
            if status[key] is not None:
                gauge.add_metric(values, status[key])
            yield gauge
        yield from self._redis(status)

    def _info(
        self, status: dict[str, Any], names: list[str], values: list[str]
    ) -> Metric:
        info = InfoMetricFamily(
            "tidehunter",
            "The feed (its URL without credentials or query).",
            labels=names,
        )
        info.add_metric(values, {"url": status["url"]})
        return info

    def _by(
        self, name: str, text: str, label: str, counts: Mapping[str, int]
    ) -> Metric:
        counter = CounterMetricFamily(name, text, labels=[*self.labels, label])
        for reason, count in sorted(counts.items()):
            counter.add_metric([*self.labels.values(), reason], count)
        return counter

    def _flag(self, name: str, text: str, on: bool) -> Metric:
        gauge = GaugeMetricFamily(name, text, labels=list(self.labels))
        gauge.add_metric(list(self.labels.values()), 1 if on else 0)
        return gauge

    def _redis(self, status: dict[str, Any]) -> Iterator[Metric]:
        """Only a gate that writes to Redis has batches and a push latency."""
        latency = self.hunter.gate.push_latency
        if latency is None:
            return
        gauge = GaugeMetricFamily(
            "tidehunter_redis_batches_in_flight",
            "Redis script calls sent and not answered yet.",
            labels=list(self.labels),
        )
        gauge.add_metric(list(self.labels.values()), status["batches_in_flight"])
        yield gauge
        histogram = HistogramMetricFamily(
            "tidehunter_redis_push_duration_seconds",
            "Round trip of each admit-and-push script call.",
            labels=list(self.labels),
        )
        cumulative, buckets = 0, []
        for bound, count in zip(latency.buckets, latency.counts, strict=False):
            cumulative += count
            buckets.append((repr(float(bound)), cumulative))
        buckets.append(("+Inf", latency.count))
        histogram.add_metric(list(self.labels.values()), buckets, sum_value=latency.sum)
        yield histogram


class MetricsPage(Resource):
    """``/metrics``: a registry in Prometheus's text format (or OpenMetrics,
    when the scraper asks for it), rendered in the reactor thread."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        accept = request.getHeader("accept")
        encoder, content_type = choose_encoder(accept or "")
        request.setHeader(b"content-type", content_type.encode())
        return bytes(encoder(self.registry))


def metrics_root(registry: CollectorRegistry) -> Resource:
    """A site root with ``/metrics`` only (anything else is 404)."""
    root = Resource()
    root.putChild(b"metrics", MetricsPage(registry))
    return root


class _QuietSite(Site):
    """A site that logs no line per scrape: a scraper comes every few
    seconds for weeks, and the daemon's log is for its feed."""

    noisy = False

    def log(self, request: http.Request) -> None:
        pass


class _ConnectionCap(WrappingFactory):
    """A factory that closes connections past ``limit`` as they arrive, so
    idle clients of the metrics port cannot take the feed's descriptors."""

    def __init__(self, wrapped: Site, limit: int) -> None:
        super().__init__(wrapped)  # type: ignore[no-untyped-call]
        self.limit = limit
        self.noisy = False

    def buildProtocol(self, addr: IAddress | None) -> ProtocolWrapper:
        if len(self.protocols) >= self.limit:
            return None  # type: ignore[return-value]  # Twisted: None refuses
        return super().buildProtocol(addr)


def metrics_site(collector: Collector) -> WrappingFactory:
    """A daemon's ``/metrics`` server: a registry of its own holding
    ``collector`` and the process's (memory, CPU, open descriptors)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)
    site = _QuietSite(  # type: ignore[no-untyped-call]
        metrics_root(registry), timeout=METRICS_IDLE_TIMEOUT
    )
    site.displayTracebacks = False
    return _ConnectionCap(site, MAX_METRICS_CONNECTIONS)
