"""
Prometheus metrics (``GET /metrics``), one registry per relay so that tests
can run several relays in one process.
"""

from __future__ import annotations

from bisect import bisect_left

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from relayd.web.http import JsonResource

disable_created_metrics()

DELIVERY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """
    Every metric relayd exports.

    The counters a request or a message touches (messages by outcome, HTTP
    requests, the delivery histogram) are plain numbers read when
    ``/metrics`` is scraped: counting one is an addition, not a labelled
    child's lookup and a lock.
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
        for transport in ("ws", "sse"):
            self.connections.labels(transport).set_function(lambda t=transport: connection_counts()[t])
        self.outcomes = {"sent": 0, "queued": 0, "dropped": 0}
        self.requests: dict[tuple[str, int], int] = {}
        self.delivery_buckets = [0] * (len(DELIVERY_BUCKETS) + 1)  # the last one is +Inf
        self.delivery_sum = 0.0
        self.registry.register(_Tallies(self))

    def message_outcome(self, outcome: str, count: int = 1) -> None:
        """Count ``count`` messages with ``outcome``."""
        self.outcomes[outcome] += count

    def delivered(self, seconds: float) -> None:
        """Observe one POST-to-write delay."""
        seconds = max(0.0, seconds)
        self.delivery_buckets[bisect_left(DELIVERY_BUCKETS, seconds)] += 1
        self.delivery_sum += seconds

    def slow_consumer(self) -> None:
        """Count one slow-consumer close."""
        self.slow_consumers.inc()

    def http_request(self, path: str, code: int) -> None:
        """Count one HTTP request."""
        key = (path, code)
        self.requests[key] = self.requests.get(key, 0) + 1


class _Tallies(Collector):
    """The plain-number metrics of :class:`Metrics`, as Prometheus families when scraped."""

    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def collect(self):
        """Messages by outcome, HTTP requests by path and code, the delivery histogram."""
        metrics = self._metrics
        messages = CounterMetricFamily("relay_messages", "Messages by outcome, one per receiver", labels=["outcome"])
        for outcome, count in metrics.outcomes.items():
            messages.add_metric([outcome], count)
        requests = CounterMetricFamily("relay_http_requests", "HTTP requests by path and status", labels=["path", "code"])
        for (path, code), count in sorted(metrics.requests.items()):
            requests.add_metric([path, str(code)], count)
        delivery = HistogramMetricFamily("relay_delivery_seconds", "Time from POST received to frame written")
        cumulative, buckets = 0, []
        for bound, count in zip((*DELIVERY_BUCKETS, float("inf")), metrics.delivery_buckets, strict=True):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))
        delivery.add_metric([], buckets, metrics.delivery_sum)
        return [messages, requests, delivery]


class MetricsPage(JsonResource):
    """``GET /metrics`` in the Prometheus text format."""

    def __init__(self, metrics: Metrics):
        super().__init__()
        self._metrics = metrics

    def render_GET(self, request):
        """The current metrics."""
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self._metrics.registry)
