"""
The HTTP/1.1 channel under relayd's twisted.web resources, parsed by
``httptools`` (llhttp).

twisted.web's own channel parses heads line by line and builds a heavy
``Request`` per request; this one parses a whole buffer at once and builds a
:class:`Request` that has the part of twisted.web's ``IRequest`` relayd's
resources use. Resources are still found by the :class:`~twisted.web.server.Site`
(``site.getResourceFor``) and rendered as twisted.web renders them (bytes, or
``NOT_DONE_YET`` then ``write``/``finish``).

* A reply is sent with ``Content-Length`` in one write once it is
  finished: gathered, with the channel's other output, until the end of the
  reactor turn (``send``; relayd.sockets.Flusher writes it then, before the
  turn's frames). A *streaming* reply (SSE) is sent chunked as it is
  written: a reply streams once it registers a producer, sets
  ``is_stream``, or writes ``b""`` (send the head now).
* Keep-alive and pipelining: requests are answered one at a time, in order;
  past :data:`MAX_QUEUED` waiting requests the channel stops reading.
* The channel's own errors are section 8's JSON: 400 for what the parser
  refuses and for HTTP/1.1 without ``Host``, 431 for a head over
  :data:`MAX_HEAD` bytes, 408 for a head not received within the site's
  ``request_timeout``. Each closes the connection after its reply.
* A connection accepted past the site's connection limit (``overflow``)
  gets 503 for ``site.limited_paths`` (the upgrades) and is served otherwise.
* During a shutdown (``site.draining``) every reply says ``Connection:
  close`` and nothing more is read from the connection.

The upgrade (``/ws``) interface, for the WebSocket side: the gate's
``accept(request, admission)`` gets a :class:`Request` with ``method``,
``uri``, ``raw_headers`` (the header ``(name, value)`` byte pairs as
received), ``content`` (any bytes the client sent after the head, e.g. frames
sent before the 101; ``body`` holds the same bytes), ``channel`` and
``transport``. It takes the connection over with
``request.channel.detach()``, which returns the transport: from
then on the channel reads and writes nothing, and the connection no longer
counts as an HTTP connection. (Autobahn's ``WebSocketResource``, which takes
``channel.transport`` and sets it to ``None``, is detected the same way.)
"""

from __future__ import annotations

import time
from collections import deque
from functools import cached_property
from io import BytesIO
from urllib.parse import parse_qs, unquote_to_bytes

import httptools
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET

from relayd import sockets
from relayd.wire import dumps

log = Logger()

MAX_HEAD = 16384
"""Bytes a request head (request line and headers) may take: past it, 431."""
MAX_HEADERS = 200
"""Headers a request may carry: past it, 431."""
MAX_QUEUED = 16
"""Pipelined requests held while one is answered: past it, the channel stops reading."""

REASONS = {
    100: b"Continue", 101: b"Switching Protocols", 200: b"OK", 204: b"No Content", 304: b"Not Modified",
    400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found",
    405: b"Method Not Allowed", 408: b"Request Timeout", 409: b"Conflict", 413: b"Payload Too Large",
    415: b"Unsupported Media Type", 426: b"Upgrade Required", 431: b"Request Header Fields Too Large",
    500: b"Internal Server Error", 503: b"Service Unavailable",
}
_NAMES: dict[bytes, bytes] = {b"www-authenticate": b"WWW-Authenticate", b"etag": b"ETag"}
_LINE_STARTS: dict[bytes, bytes] = {}
_STATUS_LINES: dict[tuple[bytes, int, bytes], bytes] = {}


def header_name(name: bytes) -> bytes:
    """``content-type`` → ``Content-Type`` (cached)."""
    canonical = _NAMES.get(name)
    if canonical is None:
        canonical = _NAMES[name] = name.title()
    return canonical


def line_start(name: bytes) -> bytes:
    """``content-type`` → ``\\r\\nContent-Type: ``, what a reply head has before the value (cached)."""
    start = _LINE_STARTS.get(name)
    if start is None:
        start = _LINE_STARTS[name] = b"\r\n" + header_name(name) + b": "
    return start


def status_line(clientproto: bytes, code: int, message: bytes) -> bytes:
    """A reply's status line and ``Server`` header, up to the ``Date`` value (cached)."""
    key = (clientproto, code, message)
    line = _STATUS_LINES.get(key)
    if line is None:
        version = b"HTTP/1.0" if clientproto == b"1.0" else b"HTTP/1.1"
        line = _STATUS_LINES[key] = b"%s %d %s\r\nServer: relayd\r\nDate: " % (version, code, message)
    return line


class HTTPDate:
    """The ``Date`` header's value, formatted once per second of ``clock``."""

    def __init__(self, clock):
        self._clock = clock
        self._second = -1
        self._text = b""

    def now(self) -> bytes:
        """The current date as RFC 7231 text."""
        second = int(self._clock.seconds())
        if second != self._second:
            self._second = second
            self._text = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(second)).encode("ascii")
        return self._text


def last_by_name(raw: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """The last value of each of the ``(name, value)`` pairs ``raw`` by lower-case name."""
    return {name.lower(): value for name, value in raw}


def values_by_name(raw: list[tuple[bytes, bytes]]) -> dict[bytes, list[bytes]]:
    """The values of the ``(name, value)`` pairs ``raw`` by lower-case name."""
    by_name: dict[bytes, list[bytes]] = {}
    for name, value in raw:
        by_name.setdefault(name.lower(), []).append(value)
    return by_name


class RequestHeaders:
    """
    The request headers with the part of twisted.web's ``Headers`` API that
    relayd and Autobahn use; names are matched without regard to case.
    """

    __slots__ = ("_raw", "_by_name", "_last")

    def __init__(self, raw: list[tuple[bytes, bytes]], last: dict[bytes, bytes] | None = None):
        """``raw``: the ``(name, value)`` pairs as sent; ``last``: the last value by lower-case name, kept in step."""
        self._raw = raw
        self._by_name = values_by_name(raw)
        self._last = last_by_name(raw) if last is None else last

    def getRawHeaders(self, name, default=None):
        """Every value of ``name``, or ``default``."""
        if isinstance(name, str):
            name = name.encode("latin-1")
        return self._by_name.get(name.lower(), default)

    def hasHeader(self, name) -> bool:
        """True when ``name`` was sent."""
        return self.getRawHeaders(name) is not None

    def setRawHeaders(self, name, values) -> None:
        """Replace every value of ``name``."""
        if isinstance(name, str):
            name = name.encode("latin-1")
        values = [v.encode("latin-1") if isinstance(v, str) else v for v in values]
        lower = name.lower()
        self._raw[:] = [(n, v) for n, v in self._raw if n.lower() != lower] + [(name, v) for v in values]
        if values:
            self._by_name[lower] = values
            self._last[lower] = values[-1]
        else:
            self._by_name.pop(lower, None)
            self._last.pop(lower, None)

    def getAllRawHeaders(self):
        """``(name, [values])`` for each header name."""
        return ((header_name(name), values) for name, values in self._by_name.items())


class Request:
    """
    One HTTP request and its reply: the twisted.web ``IRequest`` surface
    relayd's resources use (and Autobahn's ``WebSocketResource``).
    """

    site = None
    sitepath: list = []

    def __init__(self, channel: HTTPChannel, method: bytes, uri: bytes, version: bytes,
                 raw_headers: list, keep_alive: bool, began: float, last_headers: dict | None = None,
                 body: bytes = b""):
        self.channel = channel
        self.method = method
        self.uri = uri
        self.clientproto = version
        self.raw_headers = raw_headers
        self._last = last_by_name(raw_headers) if last_headers is None else last_headers  # by lower-case name
        self.keep_alive = keep_alive
        self.began = began
        path, _, self._query = uri.partition(b"?")
        self.path = path
        self.prepath: list[bytes] = []
        segments = path[1:].split(b"/")
        # (find, not ``in``: bytes.__contains__ first tries its argument as an integer, and that costs an exception)
        self.postpath = [unquote_to_bytes(segment) for segment in segments] if path.find(b"%") >= 0 else segments
        self.body = body
        """The request body (``content`` is the same bytes as a file, made when first asked for)."""
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        # The state as the instance's own attributes, not class defaults: Python 3.11 specialises reading an
        # instance's attribute, not a class attribute read through the instance (each such read takes the slow path).
        self.too_large = False
        self.is_stream = False
        self.finished = False
        self.startedWriting = False
        self._disconnected = False
        self.code = 200
        self.code_message = b"OK"
        self.sentLength = 0
        self._notifications: list[defer.Deferred] | tuple = ()  # a list from the first notifyFinish: most requests have none
        self._chunked = False
        self._producer = None

    def __repr__(self):
        """Never shows a token (the query string is left out)."""
        return f"<Request at 0x{id(self):x} method={self.method.decode('ascii', 'replace')} path={self.path.decode('utf-8', 'replace')}>"

    # What resources read

    @cached_property
    def content(self) -> BytesIO:
        """The body as a file (made when first asked for)."""
        return BytesIO(self.body)

    @cached_property
    def requestHeaders(self) -> RequestHeaders:
        """The request headers (made when first asked for: most requests are read with getHeader only)."""
        return RequestHeaders(self.raw_headers, self._last)

    @property
    def transport(self):
        """The connection's transport (None once it is taken over or gone)."""
        return self.channel.transport if self.channel is not None else None

    @property
    def args(self) -> dict[bytes, list[bytes]]:
        """The query string's parameters, as twisted.web parses them."""
        return parse_qs(self._query, keep_blank_values=True)

    def getHeader(self, name) -> bytes | None:
        """The last value of request header ``name``."""
        if isinstance(name, str):
            name = name.encode("latin-1")
        return self._last.get(name.lower())

    def getClientAddress(self):
        """The peer's address."""
        return self.channel.peer


    # The reply

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:
        """Set the status."""
        self.code = code
        self.code_message = message or REASONS.get(code, b"Unknown")

    def setHeader(self, name, value) -> None:
        """Set (replace) a reply header."""
        if isinstance(name, str):
            name = name.encode("latin-1")
        if isinstance(value, str):
            value = value.encode("latin-1")
        self._headers[name.lower()] = value

    def set_headers(self, headers: dict[bytes, bytes]) -> None:
        """Set (replace) several reply headers at once; their names are lower-case bytes."""
        self._headers.update(headers)

    def registerProducer(self, producer, streaming: bool) -> None:
        """Let ``producer`` follow the connection's flow control; the reply streams."""
        self.is_stream = True
        self._producer = producer
        if self.channel is not None and self.channel.transport is not None:
            self.channel.lend_producer(producer, streaming)

    def unregisterProducer(self) -> None:
        """Stop following the connection's flow control."""
        if self._producer is not None:
            self._producer = None
            if self.channel is not None and self.channel.transport is not None:
                self.channel.take_back_producer()

    def write(self, data: bytes) -> None:
        """Write part of the body (held until ``finish`` unless the reply streams)."""
        if self.finished or self._disconnected:
            return
        if not (self.is_stream or data == b"" or self.startedWriting):
            self._body.append(data)
            return
        if not self.startedWriting:
            self._start_stream()
        if data and self.method != b"HEAD":
            self.sentLength += len(data)
            self.channel.send(b"%x\r\n%s\r\n" % (len(data), data) if self._chunked else data)

    def finish(self) -> None:
        """End the reply: sent in one write at the end of this reactor turn (a stream's end at once)."""
        if self.finished or self._disconnected:
            return
        self.finished = True
        channel = self.channel
        if self.startedWriting:
            if self._chunked:
                channel.send(b"0\r\n\r\n")
            channel.flush()  # a stream ends rarely, and its connection may be closed next
        else:
            body = b"".join(self._body)
            self._body = []
            if self.code in (204, 304):
                body = b""
            else:
                self._headers[b"content-length"] = b"%d" % len(body)
            if self.method == b"HEAD":
                body = b""
            self.sentLength = len(body)
            channel.send(self._head(body))
        notifications = self._notifications
        if notifications:
            self._notifications = ()
            for d in notifications:
                d.callback(None)
        channel.request_done(self)

    def notifyFinish(self) -> defer.Deferred:
        """A Deferred that fires when the reply is finished, or fails when the connection is lost first."""
        d = defer.Deferred()
        if self.finished:
            d.callback(None)
        elif self._disconnected:
            d.errback(Failure(ConnectionDone("connection lost before the reply was finished")))
        else:
            self._notifications = [*self._notifications, d]
        return d

    def connection_lost(self, reason: Failure) -> None:
        """The connection is gone before the reply was finished."""
        self._disconnected = True
        notifications, self._notifications = self._notifications, ()
        for d in notifications:
            d.errback(reason)

    def processingFailed(self, reason: Failure):
        """An exception while rendering: logged with its traceback; the client gets a JSON 500."""
        log.failure("internal error on {path}", reason, path=self.path.decode("utf-8", "replace"))
        if not self.finished and not self.startedWriting and not self._disconnected:
            self._headers = {}
            self._body = [dumps({"error": "internal", "detail": "internal error; it has been logged"})]
            self.setResponseCode(500)
            self.setHeader(b"content-type", b"application/json")
            self.setHeader(b"cache-control", b"no-store")
            self.finish()

    # Internals

    def _start_stream(self) -> None:
        self.startedWriting = True
        if b"content-length" not in self._headers:
            if self.clientproto == b"1.1":
                self._chunked = True
                self._headers[b"transfer-encoding"] = b"chunked"
            else:
                self.keep_alive = False
        self.channel.send(self._head())

    def _head(self, body: bytes = b"") -> bytes:
        """
        The reply head, and ``body`` after it: one join of cached pieces (the
        status line, each header's name), since a reply head is built per request.
        """
        channel = self.channel
        keep_alive = self.keep_alive and not channel.draining
        if not keep_alive:
            channel.closing = channel.last_reply_sent = True
        version = self.clientproto
        parts = [status_line(version, self.code, self.code_message), channel.date.now()]
        for name, value in self._headers.items():
            parts += (_LINE_STARTS.get(name) or line_start(name), value)
        if not keep_alive:
            parts.append(b"\r\nConnection: close\r\n\r\n")
        elif version == b"1.0":
            parts.append(b"\r\nConnection: keep-alive\r\n\r\n")
        else:
            parts.append(b"\r\n\r\n")
        parts.append(body)
        return b"".join(parts)


def error_reply(status: int, error: str, detail: str, version: bytes = b"HTTP/1.1") -> bytes:
    """A whole JSON error reply that closes the connection (the channel's own errors)."""
    body = dumps({"error": error, "detail": detail})
    return (
        b"%s %d %s\r\nServer: relayd\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
    ) % (version, status, REASONS.get(status, b"Error"), len(body), body)


class ChannelError(Exception):
    """A request the channel answers itself (``status``, section 8's ``error`` and ``detail``)."""

    def __init__(self, status: int, error: str, detail: str):
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail


class HTTPChannel(Protocol):
    """
    One HTTP connection of a :class:`~relayd.web.http.RelaySite`.

    ``head_started`` (when the current request head began, else None),
    ``body_since`` (when its body began) and ``idle_since`` (when the
    channel went idle between requests) are read by the site's timeout sweep.
    """

    transport = None

    def __init__(self, site, peer):
        # (Flags read per request as the instance's own attributes: see Request.__init__.)
        self.closing = False
        """True once the channel reads no more requests."""
        self.last_reply_sent = False
        """True once a reply said ``Connection: close``: nothing more is answered."""
        self.draining = False
        """True once the server shuts down: the reply under way says ``Connection: close``."""
        self.detached = False
        self.overflow = False
        """True for a connection accepted past ``--max-connections``: ``site.limited_paths`` get 503."""
        self.site = site
        self.peer = peer
        self.peer_host: str = getattr(peer, "host", None) or str(peer)
        """The peer's address as text (its host, for an IP address)."""
        self.date = site.date
        self._clock = site.clock
        self._flusher = site.flusher
        self._out: list[bytes] | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._queue: deque[Request] = deque()
        self._current: Request | None = None
        self._dispatching = False
        self._paused_for_queue = False
        self._paused_for_writes = False
        self._upgraded = False
        self._tail = b""
        self._error: ChannelError | None = None
        self._head_received = 0
        self._refused = False
        self.lingering_since: float | None = None
        self.head_started: float | None = None
        self.body_since: float | None = None
        self.idle_since: float | None = None
        self._reset_head()

    def _reset_head(self) -> None:
        self._url = b""
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._last: dict[bytes, bytes] = {}
        self._head_size = 0
        self._body: list[bytes] | None = None
        self._body_size = 0
        self._too_large = False

    # Protocol

    def connectionMade(self):
        """Count the connection and start its head timer."""
        self.head_started = self._clock.seconds()
        self._own_transport = self.transport
        sockets.own_state(self.transport)
        self.site.channel_opened(self)
        self.transport.registerProducer(self, True)

    def dataReceived(self, data: bytes):
        """Parse what arrived; answer the requests completed, in order."""
        if self.closing or self._upgraded or self.detached:
            return
        try:
            self._parser.feed_data(data)
            if self.head_started is not None:
                self._head_received += len(data)
                if self._head_received > 2 * MAX_HEAD:  # a header still incomplete (on_header counts whole ones)
                    self._refuse(ChannelError(431, "request_header_fields_too_large",
                                              f"the request head is larger than {MAX_HEAD} bytes"))
        except httptools.HttpParserUpgrade as upgrade:
            self._upgraded = True
            self._tail = data[upgrade.args[0]:]
        except httptools.HttpParserError as error:
            self._refuse(self._error or ChannelError(400, "bad_request", f"malformed HTTP request: {error}"))
        self._dispatch()

    def connectionLost(self, reason=None):
        """Fail what is unanswered; uncount the connection."""
        reason = reason or Failure(ConnectionDone("connection lost before the reply was finished"))
        self._out = None
        self.site.channel_closed(self)
        current, self._current = self._current, None
        queued, self._queue = list(self._queue), deque()
        for request in ([current] if current else []) + queued:
            request.connection_lost(reason)
            request.channel = None
        self.transport = None

    # Output: gathered during a reactor turn, written at its end (relayd.sockets.Flusher)

    def send(self, data: bytes) -> None:
        """Write ``data`` at the end of this reactor turn, after what the channel was given before."""
        if self._out is None:
            self._out = [data]
            self._flusher.schedule(self, first=True)
        else:
            self._out.append(data)

    def flush(self) -> None:
        """Write what the channel gathered (now, not at the end of the turn: before a close, say)."""
        out, self._out = self._out, None
        if out:
            sockets.write(self._own_transport, out[0] if len(out) == 1 else b"".join(out))

    # IPushProducer (for the transport's write buffer)

    def pauseProducing(self):
        """The client reads replies too slowly: stop reading requests."""
        self._paused_for_writes = True
        self._flow()

    def resumeProducing(self):
        """Replies drained: read again."""
        self._paused_for_writes = False
        self._flow()

    def stopProducing(self):
        """The transport is going away."""

    # httptools callbacks (an exception in one stops the parser: see _fail)

    def _fail(self, status: int, error: str, detail: str):
        """Refuse the request being parsed (the parser raises HttpParserCallbackError, and this is answered)."""
        self._error = ChannelError(status, error, detail)
        raise self._error

    def on_message_begin(self):
        """A request head begins."""
        self.head_started = self._clock.seconds()
        self._head_received = 0
        self.idle_since = None

    def on_url(self, url: bytes):
        """Part of the request target."""
        self._url += url
        self._head_size += len(url)
        if self._head_size > MAX_HEAD:
            self._fail(431, "request_header_fields_too_large", f"the request head is larger than {MAX_HEAD} bytes")

    def on_header(self, name: bytes, value: bytes):
        """One header."""
        self._head_size += len(name) + len(value) + 4
        self._raw_headers.append((name, value))
        self._last[name.lower()] = value
        if self._head_size > MAX_HEAD:
            self._fail(431, "request_header_fields_too_large", f"the request head is larger than {MAX_HEAD} bytes")

    def on_headers_complete(self):
        """The head is whole: check it, and expect a body."""
        self.head_started = None
        self.body_since = self._clock.seconds()
        if len(self._raw_headers) > MAX_HEADERS:
            self._fail(431, "request_header_fields_too_large", f"the request head has over {MAX_HEADERS} headers")
        last = self._last
        parser = self._parser
        version = parser.get_http_version().encode("ascii")
        if version == b"1.1" and b"host" not in last:
            self._fail(400, "bad_request", "an HTTP/1.1 request needs a Host header")
        self._body = []
        if last.get(b"expect", b"").lower() == b"100-continue":
            self.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._head = (parser.get_method(), version, parser.should_keep_alive())

    def on_body(self, body: bytes):
        """Part of the body: kept up to ``site.max_body`` bytes."""
        self._body_size += len(body)
        if self._body_size > self.site.max_body:
            self._too_large = True
            self._body = []
        elif not self._too_large:
            self._body.append(body)

    def on_message_complete(self):
        """A whole request: queue it."""
        self.body_since = None
        method, version, keep_alive = self._head
        request = Request(self, method, self._url, version, self._raw_headers, keep_alive, time.monotonic(), self._last,
                          b"".join(self._body))
        request.too_large = self._too_large
        self._reset_head()
        self._queue.append(request)
        if self.draining:
            self.closing = True

    # Answering

    def _dispatch(self) -> None:
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while self._current is None and self._queue and self.transport is not None and not self.last_reply_sent:
                request = self._current = self._queue.popleft()
                if isinstance(request, _Refusal):
                    request.answer()
                    continue
                if self._upgraded and not self._queue:
                    self.flush()  # the replies before the upgrade go first, whoever takes the connection
                    request.body += self._tail
                    request.content = BytesIO(request.body)
                    request.keep_alive = False
                self._render(request)
                if self.transport is None and not self.detached:
                    self._detach_taken_over(self._own_transport)
        finally:
            self._dispatching = False
        if self._current is None and self.transport is not None:
            if self.last_reply_sent or (self.closing and not self._queue):
                self._queue.clear()
                self._close()
            elif not self._queue:
                self.idle_since = self._clock.seconds()
        self._flow()

    def _render(self, request: Request) -> None:
        site = self.site
        if self.overflow and request.path in site.limited_paths:
            _too_many_connections(request)
            return
        try:
            resource = site.getResourceFor(request)
            body = resource.render(request)
        except Exception:
            request.processingFailed(Failure())
            return
        if body is NOT_DONE_YET:
            return
        if not isinstance(body, bytes):
            request.processingFailed(Failure(TypeError(f"{resource!r} rendered {type(body).__name__}, not bytes")))
            return
        if not request.finished:
            if body:
                request.write(body)
            request.finish()

    def request_done(self, request: Request) -> None:
        """``request`` is answered: log it, then answer the next one."""
        self.site.log(request)
        if request is self._current:
            self._current = None
            self._dispatch()

    def _refuse(self, error: ChannelError) -> None:
        """Answer a request the channel cannot parse or accept, after those before it, and close."""
        self.closing = True
        reply = error_reply(error.status, error.error, error.detail)
        self._reset_head()
        if self._current is None and not self._queue:
            self.send(reply)
            self.site.access.refused(self.peer, error.status, len(reply))
            self.last_reply_sent = self._refused = True
        else:
            self._queue.append(_Refusal(self, error))

    @property
    def answering(self) -> bool:
        """True while a request is being answered, waits to be, or has its body on the way."""
        return self._current is not None or bool(self._queue) or self.body_since is not None

    def time_out(self, timeout: float) -> None:
        """The request head took too long: 408 (unless a reply is under way) and close."""
        self.closing = self.last_reply_sent = True
        if self._current is None and not self._queue:
            reply = error_reply(408, "request_timeout", f"the request head took more than {timeout:g} seconds")
            self.send(reply)
            self.site.access.refused(self.peer, 408, len(reply))
        self.close()  # no lingering for a client this slow

    def _close(self) -> None:
        """
        Close the connection. After an error reply the client may still be
        sending (the rest of a huge head): closing with unread data would
        reset the connection before it reads the reply, so the channel only
        shuts its side and reads on (``lingering_since``; the site's sweep
        aborts it soon).
        """
        self.flush()
        transport = self.transport
        if self._refused and hasattr(transport, "loseWriteConnection"):
            if self.lingering_since is None:
                self.lingering_since = self._clock.seconds()
                self.site.channel_lingering(self)
                self._release_producer()
                transport.loseWriteConnection()
        else:
            self.close()

    def close(self) -> None:
        """Close the connection; from now on it no longer counts against the limit."""
        self.closing = True
        self.site.channel_closed(self)
        self._release_producer()
        self.flush()
        self.transport.loseConnection()

    def _release_producer(self) -> None:
        """
        Stop being the transport's producer: Twisted does not close a
        connection whose producer is registered (and paused, when the
        client read slowly) until it is unregistered.
        """
        if getattr(self.transport, "producer", None) is self:
            self.transport.unregisterProducer()

    def evict(self) -> None:
        """Make room for a new connection (this one waits for a head, or idles): abort it."""
        self.closing = True
        self.site.channel_closed(self)
        self.transport.abortConnection()

    def drain(self) -> None:
        """
        Shutting down: the reply under way says ``Connection: close``; close
        when idle. A request whose body is still arriving is read to its end
        and answered (it is in flight); nothing after it is read.
        """
        self.draining = True
        if self.body_since is not None:
            return
        self.closing = True
        if not self.answering:
            self.close()

    def _flow(self) -> None:
        """Read while fewer than MAX_QUEUED requests wait and the replies drain."""
        transport = self.transport
        if transport is None or self.detached:
            return
        pause = self._paused_for_writes or len(self._queue) >= MAX_QUEUED
        if pause and not self._paused_for_queue:
            self._paused_for_queue = True
            transport.pauseProducing()
        elif not pause and self._paused_for_queue:
            self._paused_for_queue = False
            transport.resumeProducing()

    # Hand-over

    def lend_producer(self, producer, streaming: bool) -> None:
        """A streaming reply follows the transport's flow control instead of the channel."""
        self.site.channel_streaming(self)
        self.transport.unregisterProducer()
        self.transport.registerProducer(producer, streaming)

    def take_back_producer(self) -> None:
        """The streaming reply is over."""
        self.transport.unregisterProducer()

    def detach(self):
        """
        Give the connection to another protocol (the WebSocket upgrade):
        return the transport; the channel no longer reads, writes or counts it.
        """
        self.flush()
        transport = self.transport
        self.transport = None
        self._detach_taken_over(transport)
        return transport

    def _detach_taken_over(self, transport=None) -> None:
        self.detached = True
        self._current = None
        self._queue.clear()
        self.site.channel_closed(self)
        if transport is not None and getattr(transport, "producer", None) is self:
            transport.unregisterProducer()


def _too_many_connections(request: Request) -> None:
    request.setResponseCode(503)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    request.write(dumps({"error": "too_many_connections", "detail": "the relay is at its connection limit; retry later"}))
    request.finish()


class _Refusal:
    """A queued channel error: answered in its turn, after the requests before it."""

    def __init__(self, channel: HTTPChannel, error: ChannelError):
        self.channel = channel
        self.error = error
        self.finished = False

    def connection_lost(self, reason) -> None:
        """Nothing to tell anyone."""

    def answer(self) -> None:
        """Write the error reply; nothing more is answered."""
        channel = self.channel
        reply = error_reply(self.error.status, self.error.error, self.error.detail)
        channel.send(reply)
        channel.site.access.refused(channel.peer, self.error.status, len(reply))
        channel.last_reply_sent = channel._refused = True
        channel._current = None
