"""
Prometheus metrics (``GET /metrics``), one registry per relay so that tests
can run several relays in one process: relayd's own ``relay_*`` series,
``relay_build_info{version}``, and the standard ``process_*`` and
``python_*`` collectors. The text format, or OpenMetrics when the scraper's
``Accept`` asks for it.
"""

from __future__ import annotations

import platform
from bisect import bisect_left

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from relayd import __version__
from relayd.web.http import JsonResource

disable_created_metrics()

DELIVERY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class Tally:
    """A histogram as plain numbers: a count per bucket (the last is +Inf) and a sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, int]]:
        """Cumulative ``(le, count)`` pairs, as Prometheus shows them."""
        cumulative, buckets = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))
        return buckets


class Metrics:
    """
    Every metric relayd exports.

    The series a request or a message touches (messages by outcome, HTTP
    requests and their durations, the delivery histogram) are plain numbers
    turned into Prometheus families when ``/metrics`` is scraped: counting
    one is an addition, not a labelled child's lookup and a lock.
    """

    def __init__(self, connection_counts):
        """``connection_counts()`` returns the open connections by transport (a Counter)."""
        self.registry = CollectorRegistry()
        self.connections = Gauge(
            "relay_connections", "Open connections by transport", ["transport"], registry=self.registry
        )
        self.slow_consumers = Counter(
            "relay_slow_consumer_disconnects", "Connections closed with 4008", registry=self.registry
        )
        Info("relay_build", "The running relayd", registry=self.registry).info(
            {"version": __version__, "python": platform.python_version()}
        )
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        for transport in ("ws", "sse"):
            self.connections.labels(transport).set_function(lambda t=transport: connection_counts()[t])
        self.outcomes = {"sent": 0, "queued": 0, "dropped": 0}
        self.requests: dict[tuple[str, int], int] = {}
        self.request_durations: dict[str, Tally] = {}
        self.delivery = Tally(DELIVERY_BUCKETS)
        self.registry.register(_Tallies(self))

    def message_outcome(self, outcome: str, count: int = 1) -> None:
        """Count ``count`` messages with ``outcome``."""
        self.outcomes[outcome] += count

    def delivered(self, seconds: float) -> None:
        """Observe one POST-to-write delay (Tally.observe, inline: once per message written)."""
        tally = self.delivery
        if seconds < 0.0:  # the clock stepped back
            seconds = 0.0
        tally.counts[bisect_left(tally.bounds, seconds)] += 1
        tally.sum += seconds

    def slow_consumer(self) -> None:
        """Count one slow-consumer close."""
        self.slow_consumers.inc()

    def http_request(self, path: str, code: int, seconds: float | None = None) -> None:
        """Count one HTTP request, and observe its duration when given."""
        key = (path, code)
        self.requests[key] = self.requests.get(key, 0) + 1
        if seconds is not None:
            tally = self.request_durations.get(path)
            if tally is None:
                tally = self.request_durations[path] = Tally(REQUEST_BUCKETS)
            tally.observe(seconds)


class _Tallies(Collector):
    """The plain-number series of :class:`Metrics`, as Prometheus families when scraped."""

    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def collect(self):
        """Messages by outcome, HTTP requests by path and code and their durations, the delivery histogram."""
        metrics = self._metrics
        messages = CounterMetricFamily("relay_messages", "Messages by outcome, one per receiver", labels=["outcome"])
        for outcome, count in metrics.outcomes.items():
            messages.add_metric([outcome], count)
        requests = CounterMetricFamily("relay_http_requests", "HTTP requests by path and status", labels=["path", "code"])
        for (path, code), count in sorted(metrics.requests.items()):
            requests.add_metric([path, str(code)], count)
        durations = HistogramMetricFamily(
            "relay_http_request_duration_seconds", "HTTP request duration by path, request received to reply finished",
            labels=["path"],
        )
        for path, tally in sorted(metrics.request_durations.items()):
            durations.add_metric([path], tally.buckets(), tally.sum)
        delivery = HistogramMetricFamily("relay_delivery_seconds", "Time from POST received to frame written")
        delivery.add_metric([], metrics.delivery.buckets(), metrics.delivery.sum)
        return [messages, requests, durations, delivery]


class MetricsPage(JsonResource):
    """``GET /metrics``: the Prometheus text format, or OpenMetrics when ``Accept`` asks for it."""

    def __init__(self, metrics: Metrics):
        super().__init__()
        self._metrics = metrics

    def render_GET(self, request):
        """The current metrics, in the format the scraper accepts."""
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        encoder, content_type = choose_encoder(accept)
        request.setHeader(b"content-type", content_type.encode())
        request.setHeader(b"vary", b"Accept")
        return encoder(self._metrics.registry)
