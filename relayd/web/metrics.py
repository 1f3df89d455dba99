"""
Prometheus metrics (``GET /metrics``), one registry per relay so that tests
can run several relays in one process: relayd's own ``relay_*`` series,
``relay_build_info{version}``, and the standard ``process_*`` and
``python_*`` collectors. The text format, or OpenMetrics when the scraper's
``Accept`` asks for it.
"""

from __future__ import annotations

import platform

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder

from relayd import __version__
from relayd.web.http import JsonResource

disable_created_metrics()

DELIVERY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class Metrics:
    """Every metric relayd exports."""

    def __init__(self, connection_counts):
        """``connection_counts()`` returns the open connections by transport (a Counter)."""
        self.registry = CollectorRegistry()
        self.connections = Gauge(
            "relay_connections", "Open connections by transport", ["transport"], registry=self.registry
        )
        self.messages = Counter(
            "relay_messages", "Messages by outcome, one per receiver", ["outcome"], registry=self.registry
        )
        self.slow_consumers = Counter(
            "relay_slow_consumer_disconnects", "Connections closed with 4008", registry=self.registry
        )
        self.http_requests = Counter(
            "relay_http_requests", "HTTP requests by path and status", ["path", "code"], registry=self.registry
        )
        self.delivery = Histogram(
            "relay_delivery_seconds", "Time from POST received to frame written",
            buckets=DELIVERY_BUCKETS, registry=self.registry,
        )
        self.request_duration = Histogram(
            "relay_http_request_duration_seconds", "HTTP request duration by path, request received to reply finished",
            ["path"], buckets=REQUEST_BUCKETS, registry=self.registry,
        )
        Info("relay_build", "The running relayd", registry=self.registry).info(
            {"version": __version__, "python": platform.python_version()}
        )
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._counted = {}
        self._timed = {}
        for transport in ("ws", "sse"):
            self.connections.labels(transport).set_function(lambda t=transport: connection_counts()[t])
        for outcome in ("sent", "queued", "dropped"):
            self.messages.labels(outcome)

    def message_outcome(self, outcome: str, count: int = 1) -> None:
        """Count ``count`` messages with ``outcome``."""
        if count:
            self.messages.labels(outcome).inc(count)

    def delivered(self, seconds: float) -> None:
        """Observe one POST-to-write delay."""
        self.delivery.observe(max(0.0, seconds))

    def slow_consumer(self) -> None:
        """Count one slow-consumer close."""
        self.slow_consumers.inc()

    def http_request(self, path: str, code: int, seconds: float | None = None) -> None:
        """Count one HTTP request, and observe its duration when given (labelled children are cached)."""
        counted = self._counted.get((path, code))
        if counted is None:
            counted = self._counted[(path, code)] = self.http_requests.labels(path, str(code))
        counted.inc()
        if seconds is not None:
            timed = self._timed.get(path)
            if timed is None:
                timed = self._timed[path] = self.request_duration.labels(path)
            timed.observe(seconds)


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
