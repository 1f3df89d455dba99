"""
The life of one connection, whatever its transport: the one
:class:`~relayd.core.session.Connection` the relay core talks to.

A :class:`Link` joins an admitted session to a :class:`Wire` (the
WebSocket protocol or the SSE stream, which only frame, write and end) and
does everything else once, for both: the welcome and message frames through
a :class:`~relayd.transports.sendqueue.SendQueue`, the slow-consumer close
(4008), the token-expiry close (4001), a failure to open (1011), the access
lines at open and close, and a Deferred for "this connection is gone".

:class:`Links` holds what links share, every live link, and the one
graceful-shutdown path: close them all, wait for each to be gone (an event
per link, no polling), abort what is left after a grace period.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from relayd.core.admission import Admission
from relayd.core.auth import ExpiryWatch, expiry_of
from relayd.core.session import (
    CLOSE_INTERNAL,
    CLOSE_SLOW_CONSUMER,
    CLOSE_TOKEN_EXPIRED,
    REFUSED,
    WRITTEN,
    Delivery,
)
from relayd.transports.sendqueue import SendQueue
from relayd.wire import Message

log = Logger(namespace="relayd.link")

CLOSE_ABNORMAL = 1006


class Wire(Protocol):
    """What a transport does for its :class:`Link`: frame, write, end."""

    def encode_welcome(self, frame: bytes) -> bytes:
        """The welcome frame as this transport puts it on the wire."""

    def encode_message(self, message: Message) -> bytes:
        """A message as this transport puts it on the wire."""

    def write(self, data: bytes) -> None:
        """Hand ``data`` to the transport."""

    def end(self, code: int, reason: str, abort: bool) -> None:
        """
        End the connection, telling the peer ``code`` and ``reason`` if the
        transport can; ``abort``: the peer is not reading, do not wait for it.
        """

    def abort(self) -> None:
        """Drop the connection now."""

    def lost(self) -> None:
        """The transport's connection is gone (its producer was stopped)."""


class Links:
    """What every link shares, and every live link (for shutdown)."""

    def __init__(self, relay, clock, access, metrics, expiry: ExpiryWatch, send_buffer: int):
        self.relay = relay
        self.clock = clock
        self.access = access
        self.metrics = metrics
        self.expiry = expiry
        self.send_buffer = send_buffer
        self.live: set[Link] = set()

    def close_all(self, code: int, reason: str, grace: float, abort_grace: float) -> defer.Deferred:
        """
        Close every live link with ``code``; fire once each is gone. Links
        still there after ``grace`` seconds are aborted; ``abort_grace``
        seconds later the Deferred fires whatever is left.
        """
        links = list(self.live)
        everyone = defer.DeferredList([link.when_gone() for link in links])
        for link in links:
            link.close(code, reason)
        done: defer.Deferred = defer.Deferred()
        aborting = self.clock.callLater(grace, self._abort, links)
        giving_up = self.clock.callLater(grace + abort_grace, done.callback, None)

        def finished(_) -> None:
            for call in (aborting, giving_up):
                if call.active():
                    call.cancel()
            if not done.called:
                done.callback(None)

        everyone.addCallback(finished)
        return done

    @staticmethod
    def _abort(links: list[Link]) -> None:
        for link in links:
            if not link.is_gone:
                link.wire.abort()


class Link:
    """
    One connection's lifecycle: opened by its transport with :meth:`open`,
    ended by its transport with :meth:`gone`. ``code`` is the close code it
    was closed with (None while it is open).
    """

    __slots__ = ("wire", "admission", "links", "queue", "code", "is_gone", "_opened_at", "_expiry", "_waiters")

    def __init__(self, wire: Wire, admission: Admission, links: Links):
        self.wire = wire
        self.admission = admission
        self.links = links
        self.queue = SendQueue(self, links.send_buffer)
        self.code: int | None = None
        self.is_gone = False
        self._opened_at = 0.0
        self._expiry = None
        self._waiters: list[defer.Deferred] | None = None

    @property
    def client_id(self) -> str:
        """The connection's client id."""
        return self.admission.session.client_id

    @property
    def transport(self) -> str:
        """``ws`` or ``sse``."""
        return self.admission.session.transport

    def open(self) -> None:
        """The transport is up: log it, watch the token, and let the core send the welcome and replay."""
        links = self.links
        admission = self.admission
        self._opened_at = links.clock.seconds()
        links.live.add(self)
        links.access.opened(self.transport, self.client_id, admission.peer, admission.path)
        self._expiry = links.expiry.watch(expiry_of(admission.grant), self._token_expired)
        try:
            links.relay.open(admission.session, self)
        except Exception:
            log.failure("opening {client_id} failed", Failure(), client_id=self.client_id)
            self.close(CLOSE_INTERNAL, "internal error")

    def push(self, data: bytes) -> None:
        """Write (or hold) a frame that is not a message: a reply, a keepalive."""
        if self.code is None:
            self.queue.push(data)

    def refresh(self, grant: object) -> None:
        """A new grant (token) is in force: watch its expiry instead."""
        self.admission.grant = grant
        self.links.expiry.cancel(self._expiry)
        self._expiry = self.links.expiry.watch(expiry_of(grant), self._token_expired)

    def gone(self, code: int | None) -> None:
        """The connection has ended (``code`` as the peer saw it): unregister, log, tell who waits."""
        if self.is_gone:
            return
        self.is_gone = True
        links = self.links
        links.live.discard(self)
        links.expiry.cancel(self._expiry)
        self._expiry = None
        self.queue.clear()
        links.relay.close(self.admission.session)
        duration = links.clock.seconds() - self._opened_at
        links.access.closed(self.transport, self.client_id, self.admission.peer, code or CLOSE_ABNORMAL, duration)
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            waiter.callback(None)

    def when_gone(self) -> defer.Deferred:
        """A Deferred that fires once the connection is gone."""
        if self.is_gone:
            return defer.succeed(None)
        if self._waiters is None:
            self._waiters = []
        waiter: defer.Deferred = defer.Deferred()
        self._waiters.append(waiter)
        return waiter

    # The relay core's Connection

    def send_welcome(self, frame: bytes) -> None:
        """Write the welcome frame."""
        self.push(self.wire.encode_welcome(frame))

    def send_message(self, message: Message, replay: bool = False) -> Delivery:
        """Write (or hold) a message frame."""
        if self.code is not None:
            return REFUSED
        queue = self.queue
        if queue.paused or queue.waiting:
            return queue.push(self.wire.encode_message(message), not replay, message)
        self.wire.write(self.wire.encode_message(message))  # the queue's own first case, inline: the hot path
        return WRITTEN

    def close(self, code: int, reason: str) -> None:
        """Close with ``code`` (1001 and 4000-4999 included), once."""
        self._end(code, reason, abort=False)

    def cut(self, code: int, reason: str) -> None:
        """End at once, without waiting for the peer: it is not reading."""
        self._end(code, reason, abort=True)

    # The send queue's sink

    def write_now(self, frame: bytes) -> None:
        """Hand a frame to the transport."""
        self.wire.write(frame)

    def overflowed(self) -> None:
        """More than ``--send-buffer`` bytes wait: close as a slow consumer."""
        self.links.metrics.slow_consumer()
        log.info("slow consumer {client_id}: more than {limit} bytes waiting; closing with 4008",
                 client_id=self.client_id, limit=self.links.send_buffer)
        self._end(CLOSE_SLOW_CONSUMER, "slow consumer: reconnect with last_id", abort=True)

    def held_written(self, item: object) -> None:
        """A held message frame went out."""
        self.admission.session.written(item)

    def stopped(self) -> None:
        """The transport stopped its producer: its connection is gone."""
        self.wire.lost()

    # Internals

    def _end(self, code: int, reason: str, abort: bool) -> None:
        if self.code is not None or self.is_gone:
            return
        self.code = code
        self.queue.clear()
        self.wire.end(code, reason, abort)

    def _token_expired(self) -> None:
        self._expiry = None
        log.info("{client_id}: token expired; closing with 4001", client_id=self.client_id)
        self.close(CLOSE_TOKEN_EXPIRED, "token expired: reconnect with a new token and last_id")
