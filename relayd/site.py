"""
Site wiring: one twisted.web Site serving every path.

    /               demo page (relayd/web/static/index.html)
    /relay-client.js the browser client (relayd/web/static/relay-client.js)
    /ws             WebSocket (gate → RelayWebSocketFactory.accept → Autobahn)
    /events         legacy SSE (gate → SSEStreams.accept); 404 with --no-sse
    /send-message   POST API
    /health-check   health
    /livez /readyz  probes for supervisors and load balancers
    /metrics        Prometheus
"""

from __future__ import annotations

from dataclasses import dataclass

from relayd.brokers.memory import MemoryBroker
from relayd.brokers.store import Store
from relayd.core.auth import ExpiryWatch, OpenAuth, TokenAuth
from relayd.core.history import MemoryHistory
from relayd.core.origins import OriginPolicy
from relayd.core.registry import Registry
from relayd.core.relay import Relay
from relayd.options import Config
from relayd.sockets import Flusher
from relayd.transports.link import Links
from relayd.transports.sse import HEADERS as SSE_HEADERS
from relayd.transports.sse import SSEStreams
from relayd.transports.websocket import RelayWebSocketFactory
from relayd.web.access import AccessLog
from relayd.web.api import HealthCheck, SendMessage
from relayd.web.gate import Gate
from relayd.web.http import RelaySite, Root
from relayd.web.metrics import Metrics, MetricsPage
from relayd.web.pages import client_script, index_page
from relayd.web.probes import Drain, Livez, Readyz
from relayd.wire import dumps


@dataclass
class Parts:
    """Everything the site is made of, for the service (and tests) to reach."""

    config: Config
    relay: Relay
    site: RelaySite
    ws_factory: RelayWebSocketFactory
    links: Links
    metrics: Metrics
    flusher: Flusher
    history: MemoryHistory | None
    expiry: ExpiryWatch | None = None
    sse: SSEStreams | None = None
    drain: Drain | None = None


def build(config: Config, clock, broker=None, auth=None) -> Parts:
    """
    Build the relay and its Site from ``config``.

    ``clock`` is the reactor (or a ``task.Clock`` in tests); ``broker``
    defaults to a Redis one when ``config.broker`` is set (a ValueError
    names what is wrong with its URL), else to an in-memory one, on the
    SQLite file ``config.store`` if it is set (a ValueError names what is
    wrong with it); ``auth``
    defaults to tokens checked with ``config.secret`` when there is one,
    else open mode. ``expiry`` (in the result) must be swept periodically
    to close connections whose token expired.
    """
    registry = Registry(config.duplicates, config.max_per_id, config.max_connections)
    metrics = Metrics(lambda: registry.counts)
    history = None
    if broker is None and config.broker:
        # Imported here: txredisapi imports the global reactor at import time.
        from relayd.brokers.redis.broker import RedisBroker, parse_url

        try:
            address = parse_url(config.broker)
        except ValueError as error:
            raise ValueError(f"--broker: {error}") from None
        broker = RedisBroker(address, clock, config.history_size, config.history_ttl)
    if broker is None:
        history = MemoryHistory(clock, config.history_size, config.history_ttl, config.history_memory)
        store = None
        if config.store:
            store = Store(config.store, clock)
            store.load(history)
        broker = MemoryBroker(history, dumps, store)
    if auth is None:
        auth = TokenAuth(config.secret, clock) if config.secret else OpenAuth()
    expiry = ExpiryWatch(clock)
    relay = Relay(broker, registry, clock, metrics)
    access = AccessLog(metrics, config.trust_proxy)
    origins = OriginPolicy(config.allowed_origins)

    links = Links(relay, clock, access, metrics, expiry, config.send_buffer)
    flusher = Flusher(clock)  # one for replies and frames: a turn's writes leave together
    ws_factory = RelayWebSocketFactory(links, config, auth, flusher)

    root = Root(index_page())
    root.putChild(b"relay-client.js", client_script())
    root.putChild(b"ws", Gate("ws", relay, auth, origins, access, ws_factory.accept))
    sse = None
    if config.sse:
        sse = SSEStreams(links, config.ping_interval + config.ping_timeout)
        root.putChild(b"events", Gate("sse", relay, auth, origins, access, sse.accept, head_headers=SSE_HEADERS))
    root.putChild(b"send-message", SendMessage(relay, auth, config.max_message_size, clock))
    root.putChild(b"health-check", HealthCheck(relay, clock, clock.seconds()))
    root.putChild(b"metrics", MetricsPage(metrics))
    drain = Drain()
    root.putChild(b"livez", Livez())
    root.putChild(b"readyz", Readyz(relay, drain, clock))
    site = RelaySite(root, access, config.max_message_size, flusher, reactor=clock,
                     request_timeout=config.request_timeout, max_connections=config.max_connections,
                     connections=lambda: len(registry))
    return Parts(config, relay, site, ws_factory, links, metrics, flusher, history, expiry, sse, drain)
