"""
Prometheus metrics (``GET /metrics``), one registry per relay so that tests
can run several relays in one process.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from relayd.web.http import JsonResource

disable_created_metrics()

DELIVERY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


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
        for transport in ("ws", "sse"):
            self.connections.labels(transport).set_function(lambda t=transport: connection_counts()[t])
        for outcome in ("sent", "queued", "dropped"):
            self.messages.labels(outcome)
        self._http_counters: dict[tuple[str, int], Counter] = {}

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

    def http_request(self, path: str, code: int) -> None:
        """Count one HTTP request."""
        counter = self._http_counters.get((path, code))
        if counter is None:
            counter = self._http_counters[(path, code)] = self.http_requests.labels(path, str(code))
        counter.inc()


class MetricsPage(JsonResource):
    """``GET /metrics`` in the Prometheus text format."""

    def __init__(self, metrics: Metrics):
        super().__init__()
        self._metrics = metrics

    def render_GET(self, request):
        """The current metrics."""
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self._metrics.registry)
