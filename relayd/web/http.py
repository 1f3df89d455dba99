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
import time
from http.client import responses
from urllib.parse import parse_qsl

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from relayd.core.auth import redact
from relayd.wire import dumps

log = Logger()

KNOWN_PATHS = frozenset((
    "/ws", "/events", "/send-message", "/health-check", "/livez", "/readyz", "/metrics", "/", "/relay-client.js",
))


def path_label(request) -> str:
    """The request path as a metrics label: known paths, else ``other``."""
    path = request.path.decode("utf-8", "replace")
    return path if path in KNOWN_PATHS else "other"


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


def json_reply(request, status: int, body: object, headers: dict | None = None) -> bytes:
    """Set status and JSON content type; return the encoded body."""
    request.setResponseCode(status, responses.get(status, "Error").encode("ascii"))
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    for name, value in (headers or {}).items():
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

    def render(self, request):
        """Dispatch to ``render_<METHOD>``; 405 for the rest (HEAD goes to GET); 404 below it."""
        if request.postpath:
            return json_error(request, 404, "not_found", f"no such path: {redact(request.path)}")
        method = request.method.decode("ascii", "replace")
        if method == "HEAD" and "GET" in self.methods:
            method = "GET"
        if method not in self.methods:
            allow = ", ".join(self.methods).encode()
            return json_error(
                request, 405, "method_not_allowed",
                f"use {' or '.join(self.methods)} on this path", {b"allow": allow},
            )
        return getattr(self, f"render_{method}")(request)


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


class RelayRequest(Request):
    """
    A request that stops buffering its body past ``site.max_body`` bytes
    (``too_large`` is then set and the resource answers 413), and answers
    unexpected errors with a JSON 500.
    """

    too_large = False
    is_stream = False
    _body_seen = 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.began = time.monotonic()

    def __repr__(self):
        """Twisted logs requests by repr (e.g. a HEAD answered with a body): never show a token."""
        method = (self.method or b"?").decode("ascii", "replace")
        return f"<{type(self).__name__} at 0x{id(self):x} method={method} uri={redact(self.uri or b'')}>"

    def gotLength(self, length):
        """Refuse to buffer a body announced as too large."""
        if length is not None and length > self.channel.site.max_body:
            self.too_large = True
        super().gotLength(None if self.too_large else length)

    def handleContentChunk(self, data):
        """Keep at most ``max_body`` bytes; note when there was more."""
        self._body_seen += len(data)
        if self._body_seen > self.channel.site.max_body:
            self.too_large = True
        if not self.too_large:
            super().handleContentChunk(data)

    def processingFailed(self, reason):
        """Log the traceback; the client only learns it was internal."""
        log.failure("internal error on {path}", reason, path=redact(self.uri))
        if not self.finished and not self.startedWriting:
            body = json_reply(self, 500, {"error": "internal", "detail": "internal error; it has been logged"})
            self.setHeader(b"content-length", str(len(body)).encode())
            self.write(body)
            self.finish()
        return reason


class RelaySite(Site):
    """The one Site: relayd's requests, redacted access lines, request metrics."""

    requestFactory = RelayRequest
    displayTracebacks = False
    noisy = False

    def __init__(self, resource, access, max_body: int, reactor=None):
        super().__init__(resource, reactor=reactor, parsePOSTFormSubmission=False)  # JSON only: never parse forms
        self.access = access
        self.max_body = max_body

    def log(self, request):
        """One access line per finished HTTP request (WebSocket and SSE connections log their own)."""
        if not request.is_stream:
            self.access.request(request)

