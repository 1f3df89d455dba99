"""
The legacy Server-Sent Events transport: ``GET /events``, a thin adapter
between a long twisted.web response and the relay core.

It shares everything with ``/ws`` but the framing: the same gate (every
refusal happens before the stream starts, with a JSON body), the same
registry (an SSE and a WebSocket connection with one id are duplicates of
each other), the same history and resume. What goes on the wire::

    GET /events?id=alice            (or with Last-Event-ID: k3v9q2:41,
                                     or ?last_id=41&epoch=k3v9q2)

    HTTP/1.1 200 OK
    Content-Type: text/event-stream
    Cache-Control: no-cache
    X-Accel-Buffering: no

    retry: 3172
    event: welcome
    data: {"type":"welcome","client_id":"alice","epoch":"k3v9q2",...}

    id: k3v9q2:42
    event: message
    data: {"type":"message","id":42,...}

    : keepalive

    event: close
    data: {"type":"close","code":4000,"reason":"replaced by a newer connection"}

The ``id:`` line is ``<epoch>:<id>``, so what ``EventSource`` sends back in
``Last-Event-ID`` carries the epoch; a broadcast has no ``id:`` line (it is
never replayed). The welcome has no ``id:`` line either: a resume point must
only ever name a message the client has seen. When the relay ends a stream
it first writes an ``event: close`` with the WebSocket close code it would
have used (4000 replaced, 1001 shutting down, 4009 epoch changed), so a
client can tell "do not reconnect" from "reconnect". The ``retry:`` field
(a random 1–5 s per stream) spreads the reconnects of native ``EventSource``
clients after a restart instead of bringing them all back 3 s later at once.

The lifecycle is the WebSocket transport's (:class:`~relayd.transports.link.Link`):
its send queue is the request's streaming producer; past ``--send-buffer``
held bytes the stream is cut as a slow consumer (its messages stay in
history for the resume). The ``: keepalive`` comments come from one timer
for every stream (:meth:`SSEStreams.tick`, a round spread over the
interval), never one per stream; at a stream's tick, if its reader has
taken none of the bytes waiting for it for ``--ping-interval`` +
``--ping-timeout``, it is ended (the WebSocket transport has pings for that).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger

from relayd import sockets
from relayd.core.admission import Admission
from relayd.sockets import Progress
from relayd.transports.link import CLOSE_ABNORMAL, Link, Links
from relayd.transports.rota import Rota
from relayd.wire import Message, dumps

KEEPALIVE = b": keepalive\n\n"
RETRY_MS = (1000, 5000)
HEADERS = (
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
)

log = Logger(namespace="relayd.sse")


def sse_event(event: str, data: bytes, event_id: str | None = None) -> bytes:
    """
    One SSE event. ``data`` is a JSON frame (JSON text never holds a raw
    line break, so one ``data:`` line carries it whole).
    """
    head = b"" if event_id is None else b"id: " + event_id.encode("ascii") + b"\n"
    return head + b"event: " + event.encode("ascii") + b"\ndata: " + data + b"\n\n"


def allow_origin(request) -> None:
    """
    Let a page of another origin read the stream (``EventSource`` is subject
    to CORS). The gate has already refused origins not in
    ``--allowed-origins``, so the request's own origin is echoed.
    """
    origin = request.getHeader(b"origin")
    if origin:
        request.setHeader(b"access-control-allow-origin", origin)
        request.setHeader(b"vary", b"Origin")


def message_event(message: Message) -> bytes:
    """A message as an SSE event, encoded once and kept on the message."""
    encoded = message.sse
    if encoded is None:
        event_id = None if message.id is None else f"{message.epoch}:{message.id}"
        encoded = message.sse = sse_event("message", message.frame, event_id)
    return encoded


class SSEStream:
    """One client's event stream: the :class:`~relayd.transports.link.Wire` of its link."""

    __slots__ = ("request", "link", "transport", "progress", "_retry")

    def __init__(self, request, admission: Admission, links: Links, retry_ms: int):
        self.request = request
        self.link = Link(self, admission, links)
        self.transport = request.channel.transport
        self.progress = Progress(self.transport)
        self._retry = retry_ms

    def begin(self) -> None:
        """Send the headers, take over flow control, and open the link."""
        request = self.request
        for name, value in HEADERS:
            request.setHeader(name, value)
        allow_origin(request)
        request.setResponseCode(200)
        request.is_stream = True  # its access lines are written at open and close
        request.registerProducer(self.link.queue, True)
        request.write(b"")
        request.notifyFinish().addErrback(self._client_went_away)
        self.link.open()

    def tick(self, now: float, patience: float) -> None:
        """
        The keepalive timer: end the stream if its reader has taken nothing
        waiting for it for ``patience`` seconds, else write a keepalive
        comment (unless the stream is already backed up).
        """
        link = self.link
        if link.code is not None:
            return
        if self.progress.stalled_for(now, link.queue.paused) >= patience:
            log.info("{client_id}: the reader has taken nothing for {seconds:.0f}s; ending its event stream",
                     client_id=link.client_id, seconds=patience)
            link.cut(CLOSE_ABNORMAL, "the reader has taken nothing")
        elif not link.queue.paused:
            link.push(KEEPALIVE)

    # The link's Wire

    def encode_welcome(self, frame: bytes) -> bytes:
        """The welcome as ``event: welcome``, with this stream's ``retry:`` delay."""
        return b"retry: %d\n" % self._retry + sse_event("welcome", frame)

    def encode_message(self, message: Message) -> bytes:
        """A message as an SSE event."""
        return message_event(message)

    def write(self, data: bytes) -> None:
        """Write to the response."""
        if not self.request.finished:
            self.request.write(data)

    def end(self, code: int, reason: str, abort: bool) -> None:
        """
        Finish the response and drop the TCP connection (EventSource opens a
        new one), first telling the client why with an ``event: close``
        unless it is not reading.
        """
        request = self.request
        if not abort:
            self.write(sse_event("close", dumps({"type": "close", "code": code, "reason": reason})))
        sockets.rewire(self.transport, Ended(request.channel, self.lost))
        request.unregisterProducer()
        request.finish()
        if abort:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

    def abort(self) -> None:
        """Drop the TCP connection now."""
        self.transport.abortConnection()

    def lost(self) -> None:
        """The TCP connection is gone."""
        self.link.gone(self.link.code)

    # Internals

    def _client_went_away(self, failure) -> None:
        self.link.gone(self.link.code)


class Ended(Protocol):
    """
    Stands in for the HTTP channel once a stream is over, until its TCP
    connection is gone (flushed and closed): ignores what the client still
    sends, then tells both the channel and ``on_lost``.
    """

    def __init__(self, channel, on_lost: Callable[[], None]):
        self._channel = channel
        self._on_lost = on_lost

    def dataReceived(self, data: bytes) -> None:
        """The stream is over: nothing more is read."""

    def connectionLost(self, reason=connectionDone) -> None:
        """The connection is gone."""
        self._channel.connectionLost(reason)
        self._on_lost()


class SSEStreams:
    """
    Starts the ``/events`` streams and ticks them (keepalive and stalled
    readers): each stream once a round, a round spread over
    ``--ping-interval`` as the pings' are (:class:`~relayd.transports.rota.Rota`).
    """

    def __init__(self, links: Links, patience: float, rng: random.Random | None = None):
        self.links = links
        self.patience = patience
        self.random = rng or random.Random()
        self.rota: Rota[SSEStream] = Rota()

    def accept(self, request, admission: Admission) -> None:
        """The gate admitted ``request``: turn it into an event stream, ticked from now on in the slice of its turn."""
        stream = SSEStream(request, admission, self.links, self.random.randint(*RETRY_MS))
        stream.begin()
        if not stream.link.is_gone:
            self.rota.join(stream)

    def tick(self) -> None:
        """One tick (the timer's, every ``--ping-interval`` / SLICES): the streams of this tick's slice."""
        members = self.rota.next()
        now = self.links.clock.seconds()
        for stream in list(members):
            if stream.link.is_gone:
                members.discard(stream)
            else:
                stream.tick(now, self.patience)
