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

Backpressure is the WebSocket transport's: each stream registers a
:class:`~relayd.transports.websocket.SendQueue` as the request's streaming producer;
past ``--send-buffer`` held bytes the stream is cut as a slow consumer (its
messages stay in history for the resume). The ``: keepalive`` comments come
from one timer for every stream (:meth:`SSEStreams.keepalive`), never one
per stream.
"""

from __future__ import annotations

import random

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from relayd.core.admission import Admission
from relayd.core.auth import ExpiryWatch, expiry_of
from relayd.core.registry import CLOSE_SLOW_CONSUMER, CLOSE_TOKEN_EXPIRED
from relayd.core.waiting import wait_until
from relayd.transports.sendqueue import SendQueue
from relayd.wire import Message, dumps

KEEPALIVE = b": keepalive\n\n"
SHUTDOWN_GRACE = 5.0
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
    """A message as an SSE event, encoded once and cached on the message."""
    encoded = message.cache.get("sse")
    if encoded is None:
        event_id = None if message.id is None else f"{message.epoch}:{message.id}"
        encoded = message.cache["sse"] = sse_event("message", message.frame, event_id)
    return encoded


class SSEStream:
    """One client's event stream: the relay core's :class:`~relayd.core.registry.Connection`."""

    def __init__(self, request, admission: Admission, streams: SSEStreams):
        self.request = request
        self.admission = admission
        self.streams = streams
        self.opened_at = streams.clock.seconds()
        self.ended = False
        self.code: int | None = None
        self.queue = SendQueue(self._write, streams.send_buffer, self._slow_consumer,
                               on_written=admission.session.written)
        self._expiry = None

    @property
    def client_id(self) -> str:
        """The stream's client id."""
        return self.admission.session.client_id

    def begin(self) -> None:
        """Send the headers, take over flow control, and open the session."""
        for name, value in HEADERS:
            self.request.setHeader(name, value)
        allow_origin(self.request)
        self.request.setResponseCode(200)
        self.request.is_stream = True  # its access lines are written at open and close
        self.request.registerProducer(self.queue, True)
        self.request.write(b"")
        self.request.notifyFinish().addBoth(self._gone)
        self._expiry = self.streams.expiry.watch(expiry_of(self.admission.grant), self._token_expired)
        try:
            self.streams.relay.open(self.admission.session, self)
        except Exception:
            self._open_failed(Failure())

    def keepalive(self) -> None:
        """Write a keepalive comment unless the stream is already backed up."""
        if not self.queue.paused and not self.ended:
            self.queue.push(KEEPALIVE)

    # The relay core's Connection interface

    def send_welcome(self, frame: bytes) -> None:
        """Write the welcome as ``event: welcome``, with this stream's ``retry:`` delay."""
        retry = b"retry: %d\n" % self.streams.random.randint(*RETRY_MS)
        self.queue.push(retry + sse_event("welcome", frame))

    def send_message(self, message: Message, replay: bool = False) -> bool:
        """Write (or hold) a message event, encoded once for every stream."""
        if self.ended:
            return False
        return self.queue.push(message_event(message), counted=not replay, item=message)

    def close(self, code: int, reason: str) -> None:
        """End the stream, telling the client why with an ``event: close``."""
        if self.ended:
            return
        # Straight to the transport: what the queue holds is dropped, the reason must not be.
        self._write(sse_event("close", dumps({"type": "close", "code": code, "reason": reason})))
        self._end(code, abort=False)

    # Internals

    def _write(self, data: bytes) -> None:
        if not self.ended:
            self.request.write(data)

    def _end(self, code: int, abort: bool) -> None:
        """Finish the response and drop the TCP connection (EventSource opens a new one)."""
        self.ended = True
        self.code = code
        self.queue.clear()
        channel = self.request.channel
        transport = channel.transport if channel is not None else None
        if not self.request.finished and channel is not None:
            self.request.unregisterProducer()
            self.request.finish()
        if transport is not None:
            if abort:
                transport.abortConnection()
            else:
                transport.loseConnection()

    def _slow_consumer(self) -> None:
        self.streams.metrics.slow_consumer()
        log.info(
            "slow consumer {client_id}: more than {limit} bytes waiting; ending its event stream",
            client_id=self.client_id,
            limit=self.streams.send_buffer,
        )
        self._end(CLOSE_SLOW_CONSUMER, abort=True)

    def _gone(self, result) -> None:
        """The response is over (we finished it or the client went): unregister."""
        self.ended = True
        self.queue.clear()
        self.streams.expiry.cancel(self._expiry)
        self.streams.forget(self)
        duration = self.streams.clock.seconds() - self.opened_at
        code = self.code if self.code is not None else 1006
        self.streams.access.closed("sse", self.client_id, self.admission.peer, code, duration)

    def _token_expired(self) -> None:
        log.info("{client_id}: token expired; ending its event stream with 4001", client_id=self.client_id)
        self.close(CLOSE_TOKEN_EXPIRED, "token expired: reconnect with a new token and last_id")

    def _open_failed(self, failure) -> None:
        log.failure("opening {client_id} failed", failure, client_id=self.client_id)
        self.close(1011, "internal error")


def _abort_open(transports: list) -> None:
    for transport in transports:
        if getattr(transport, "connected", False):
            transport.abortConnection()


class SSEStreams:
    """
    Starts the ``/events`` streams and holds what they share: every open
    stream (for the keepalive timer and for shutdown).
    """

    def __init__(self, relay, config, clock, access, metrics, expiry: ExpiryWatch, rng: random.Random | None = None):
        self.relay = relay
        self.expiry = expiry
        self.random = rng or random.Random()
        self.clock = clock
        self.access = access
        self.metrics = metrics
        self.send_buffer = config.send_buffer
        self.streams: set[SSEStream] = set()

    def start(self, request, admission: Admission) -> None:
        """The gate admitted ``request``: turn it into an event stream."""
        stream = SSEStream(request, admission, self)
        self.streams.add(stream)
        self.access.opened("sse", admission.session.client_id, admission.peer, admission.path)
        stream.begin()

    def forget(self, stream: SSEStream) -> None:
        """``stream`` has ended: release its session."""
        if stream in self.streams:
            self.streams.discard(stream)
            self.relay.close(stream.admission.session)

    def keepalive(self) -> None:
        """Write ``: keepalive`` to every stream (called by one timer for all)."""
        for stream in list(self.streams):
            stream.keepalive()

    def close_all(self, code: int, reason: str, grace: float = SHUTDOWN_GRACE) -> defer.Deferred:
        """
        End every stream (shutdown). Fires once every stream's connection
        has flushed and closed, or after ``grace`` seconds (the rest are
        aborted): the reactor drops unflushed bytes when it stops.
        """
        transports = []
        for stream in list(self.streams):
            channel = stream.request.channel
            if channel is not None and channel.transport is not None:
                transports.append(channel.transport)
            stream.close(code, reason)
        d = wait_until(self.clock, lambda: not any(getattr(t, "connected", False) for t in transports), grace)
        d.addCallback(lambda _: _abort_open(transports))
        return d
