"""
twisted.web plumbing shared by every resource: JSON replies and errors, a
request that caps its body, a site that writes redacted access lines, and
the client address behind a trusted proxy.

Every HTTP error relayd answers is ``application/json``:
``{"error": "<code>", "detail": "<what to do>"}``; an unexpected exception
becomes 500 ``{"error": "internal"}`` and is logged with its traceback, never
shown to the client.
"""

from __future__ import annotations

import ipaddress
from http.client import responses
from urllib.parse import parse_qsl

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site

from relayd import sockets
from relayd.core.auth import redact
from relayd.web.channel import HTTPChannel, HTTPDate
from relayd.wire import dumps

log = Logger()

KNOWN_PATHS = frozenset((
    "/ws", "/events", "/send-message", "/health-check", "/livez", "/readyz", "/metrics", "/", "/relay-client.js",
))


_LABELS = {path.encode("ascii"): path for path in KNOWN_PATHS}


def path_label(request) -> str:
    """The request path as a metrics label: known paths, else ``other``."""
    return _LABELS.get(request.path, "other")


def client_address(request, trust_proxy: int) -> str:
    """
    The client's address: the peer, or with ``trust_proxy`` N > 0 the N-th
    ``X-Forwarded-For`` entry from the right (the last hop our N proxies saw).
    A hop that is not an IP address (``unknown``, garbage) is not trusted:
    the peer's address is used.
    """
    peer = request.getClientAddress()
    address = getattr(peer, "host", None) or str(peer)
    if trust_proxy <= 0:
        return address
    hops = []
    for value in request.requestHeaders.getRawHeaders(b"x-forwarded-for", []):
        hops.extend(h.strip() for h in value.decode("latin-1").split(",") if h.strip())
    if not hops:
        return address
    hop = hops[-min(trust_proxy, len(hops))]
    try:
        return str(ipaddress.ip_address(hop))
    except ValueError:
        return address


def query(request) -> dict[str, str]:
    """The query string's parameters (first value of each), decoded as UTF-8."""
    raw = request.uri.partition(b"?")[2].decode("utf-8", "replace")
    params: dict[str, str] = {}
    for name, value in parse_qsl(raw, keep_blank_values=True):
        params.setdefault(name, value)
    return params


def header(request, name: bytes) -> str | None:
    """A request header decoded as Latin-1 (None when absent)."""
    value = request.getHeader(name)
    return None if value is None else value.decode("latin-1")


_REASONS = {status: reason.encode("ascii") for status, reason in responses.items()}
_JSON_HEADERS = {b"content-type": b"application/json", b"cache-control": b"no-store"}


def json_reply(request, status: int, body: object, headers: dict | None = None) -> bytes:
    """Set status and JSON content type; return the encoded body."""
    request.setResponseCode(status, _REASONS.get(status, b"Error"))
    request.set_headers(_JSON_HEADERS)  # both at once: every JSON reply sets them
    if headers:
        for name, value in headers.items():
            request.setHeader(name, value)
    return dumps(body)


def json_error(request, status: int, error: str, detail: str, headers: dict | None = None, **extra) -> bytes:
    """A JSON error reply: ``{"error": error, "detail": detail, **extra}``."""
    return json_reply(request, status, {"error": error, "detail": detail, **extra}, headers)


class JsonResource(Resource):
    """
    A leaf resource whose unsupported methods get a JSON 405 with ``Allow``;
    any path below it (``/send-message/x``) is a JSON 404.
    """

    isLeaf = True
    methods: tuple[str, ...] = ("GET",)
    _renderers: dict = {}

    def __init_subclass__(cls, **kwargs):
        """Each class's ``render_<METHOD>`` by method as sent (HEAD goes to GET), looked up once."""
        super().__init_subclass__(**kwargs)
        found = {method: getattr(cls, f"render_{method}", None) for method in cls.methods}
        cls._renderers = {method.encode("ascii"): render for method, render in found.items() if render is not None}
        if b"GET" in cls._renderers:
            cls._renderers[b"HEAD"] = cls._renderers[b"GET"]

    def render(self, request):
        """Dispatch to ``render_<METHOD>``; 405 for the rest (HEAD goes to GET); 404 below it."""
        if request.postpath:
            return json_error(request, 404, "not_found", f"no such path: {redact(request.path)}")
        renderer = self._renderers.get(request.method)
        if renderer is None:
            allow = ", ".join(self.methods).encode()
            return json_error(
                request, 405, "method_not_allowed",
                f"use {' or '.join(self.methods)} on this path", {b"allow": allow},
            )
        return renderer(self, request)


class NotFound(JsonResource):
    """JSON 404 for every path relayd does not serve."""

    def render(self, request):
        """Every method: 404."""
        return json_error(request, 404, "not_found", f"no such path: {redact(request.path)}")


class Root(Resource):
    """The site root: named children, JSON 404 for anything else."""

    def __init__(self, index: Resource | None = None):
        super().__init__()
        self._index = index

    def getChild(self, path, request):
        """Serve ``/`` from the index resource, everything unknown as 404."""
        if path == b"" and self._index is not None and request.postpath == []:
            return self._index
        return NotFound()

    def render(self, request):
        """``/`` without an index page."""
        return json_error(request, 404, "not_found", "nothing is served at /")


OVERFLOW = 32
"""
Connections accepted past ``--max-connections`` (upgrades get 503 there);
past it a new connection takes the place of the oldest one that is not
being answered (waiting for a head, or idle), so fresh requests are always
answered and file descriptors never run out.
"""
LINGER = 2.0
"""Seconds a connection closed after an error reply may still send before it is aborted."""
IDLE_TIMEOUT = 60.0
"""Seconds a keep-alive connection may wait between requests, and a request body may take."""


class RelaySite(Site):
    """
    The one Site: relayd's HTTP channel (relayd.web.channel), redacted
    access lines, request metrics, and the limits of section 14.

    ``connections()`` counts the upgraded connections (WebSocket, SSE);
    with the HTTP connections not upgraded, past ``max_connections`` a new
    connection gets 503 for :attr:`limited_paths` (``/ws``, ``/events``),
    and is served otherwise (health checks and backends' POSTs go on);
    :data:`OVERFLOW` connections past the limit at most. :meth:`sweep`,
    called every second or so, closes connections that take more than
    ``request_timeout`` seconds to send a request head. :meth:`drain`
    starts a shutdown. Replies are written at the end of the reactor turn
    by ``flusher`` (the one the WebSocket frames share, so that a turn's
    replies and frames leave together, replies first; see relayd.sockets).
    """

    displayTracebacks = False
    noisy = False
    limited_paths = frozenset((b"/ws", b"/events"))

    def __init__(self, resource, access, max_body: int, flusher: sockets.Flusher, reactor=None,
                 request_timeout: float = 10.0, max_connections: int = 10000, connections=lambda: 0):
        super().__init__(resource, reactor=reactor, parsePOSTFormSubmission=False)  # JSON only: never parse forms
        self.access = access
        self.max_body = max_body
        self.clock = self.reactor
        self.flusher = flusher
        self.date = HTTPDate(self.clock)
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.connections = connections
        self.channels: dict[HTTPChannel, None] = {}  # oldest first
        self.lingering: dict[HTTPChannel, None] = {}
        self.draining = False

    def getResourceFor(self, request):
        """
        twisted.web's walk down the resource tree, with one step taken at
        once for the usual request: one path segment naming a leaf child of
        the root (``/send-message``, ``/health-check``, ``/ws``...).
        """
        postpath = request.postpath
        if len(postpath) == 1:
            child = self.resource.children.get(postpath[0])
            if child is not None and child.isLeaf:
                request.site, request.sitepath = self, []
                request.prepath.append(postpath.pop(0))
                return child
        return super().getResourceFor(request)

    def buildProtocol(self, addr):
        """A channel for a new connection; past the overflow, in place of the oldest one not answered."""
        if len(self.channels) + self.connections() >= self.max_connections + OVERFLOW:
            victim = next((channel for channel in self.channels if not channel.answering), None)
            if victim is None:
                return None
            victim.evict()
        return HTTPChannel(self, addr)

    def channel_opened(self, channel: HTTPChannel) -> None:
        """Count an HTTP connection; past the limit it may only ask for the health paths."""
        if len(self.channels) + self.connections() >= self.max_connections:
            channel.overflow = True
        self.channels[channel] = None
        if self.draining:
            channel.closing = True
            channel.transport.loseConnection()

    def channel_closed(self, channel: HTTPChannel) -> None:
        """An HTTP connection is closing, closed, or upgraded: it no longer counts."""
        self.channels.pop(channel, None)
        self.lingering.pop(channel, None)

    def channel_lingering(self, channel: HTTPChannel) -> None:
        """An HTTP connection reads what its client still sends after an error reply, for LINGER seconds."""
        self.channels.pop(channel, None)
        self.lingering[channel] = None

    channel_streaming = channel_closed

    def sweep(self) -> None:
        """Close connections past their head timeout (408), idle for too long, or whose body stalls."""
        now = self.clock.seconds()
        head_deadline, idle_deadline = now - self.request_timeout, now - IDLE_TIMEOUT
        for channel in list(self.lingering):
            if channel.lingering_since < now - LINGER:
                channel.transport.abortConnection()
        for channel in list(self.channels):
            if channel.closing:
                continue
            elif channel.head_started is not None and channel.head_started < head_deadline:
                channel.time_out(self.request_timeout)
            elif (channel.idle_since is not None and channel.idle_since < idle_deadline) or (
                    channel.body_since is not None and channel.body_since < idle_deadline):
                channel.close()

    def drain(self) -> None:
        """Shutting down: replies say ``Connection: close``; idle connections close now."""
        self.draining = True
        for channel in list(self.channels):
            channel.drain()

    @property
    def busy(self) -> int:
        """HTTP connections with a request being answered."""
        return sum(1 for channel in self.channels if channel.answering)

    def log(self, request):
        """One access line per finished HTTP request (WebSocket and SSE connections log their own)."""
        if not request.is_stream:
            self.access.request(request)
