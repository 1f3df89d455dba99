"""
The WebSocket transport: ``GET /ws``, a thin adapter between Autobahn and the relay core.

The wire protocol (docs/protocol.md has the whole of it):

    client                                   server
    GET /ws?id=alice[&last_id=41&epoch=E]  →          (refusals happen before
                                                       the upgrade: see web/gate.py)
                                           ←  {"type":"welcome","client_id":"alice",
                                               "epoch":"E","last_id":44,
                                               "replayed":3,"lost":false}
                                           ←  {"type":"message","id":42,...}   replay
                                           ←  {"type":"message","id":45,...}   live
    {"type":"send","ref":"r1",
     "receiver_id":"bob","content":...}    →
                                           ←  {"type":"ack","ref":"r1","message_id":"...",
                                               "sent":["bob"],"queued":[],"dropped":[]}
    {"type":"refresh","token":"..."}       →
                                           ←  {"type":"ack","ref":null}
    anything malformed                     →
                                           ←  {"type":"error","ref":...,
                                               "error":"invalid_frame","detail":"..."}

Every frame is one JSON object in a text frame. The server pings every
open connection every ``--ping-interval`` seconds from one timer
(:class:`Pings`; no timer per connection; each round spread over the
interval, a 20th of the connections at a time) and drops a connection that has
not answered within ``--ping-timeout``. Close codes: 1000 normal, 1001 shutdown, 1008 kept
sending past the send rate limit, 1009 frame too big, 4000 replaced, 4001
token expired, 4008 slow consumer, 4009 epoch changed, 4010 a message could not
be delivered in order.

Limits and tokens: ``send`` frames go through a per-connection token bucket
(``--send-rate``/``--send-burst``, relayd.core.ratelimit); a frame past it gets an
``error`` frame ``rate_limited``. With tokens, a connection's grant is watched
by the factory's :class:`~relayd.core.auth.ExpiryWatch` (one sweep for all) and
the connection is closed with 4001 when the token in force expires; a
``refresh`` frame swaps in a new token for the same id.

The upgrade: the gate (relayd.web) has checked the request and admitted a
session; :meth:`WebSockets.accept` builds the Autobahn protocol for the
already-parsed request, takes the transport over from the HTTP channel and
answers the ``101`` itself (Autobahn's ``WebSocketResource`` would replay
the request bytes into Autobahn, which would parse them a second time).

Lifecycle, buffers and backpressure are :class:`~relayd.transports.link.Link`'s,
shared with SSE: its send queue is the transport's streaming producer; while
Twisted has paused it (its buffer holds more than 64 KiB) message frames wait
in the queue, and past ``--send-buffer`` bytes the client is a slow consumer
and is closed with 4008. Its messages stay in history for the resume. Frames
go straight to the socket when nothing is buffered before them
(relayd.sockets).
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections import deque

from autobahn.twisted.util import peer2str
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import TrafficStats, WebSocketProtocol
from autobahn.websocket.utf8validator import Utf8Validator
from twisted.internet import task
from twisted.logger import Logger

from relayd import __version__, sockets
from relayd.core.admission import Admission
from relayd.core.ports import BrokerUnavailable
from relayd.core.ratelimit import ALLOWED, EXCEEDED, SendLimit
from relayd.core.registry import Refused
from relayd.core.session import CLOSE_POLICY
from relayd.transports.autobahn_shim import Lazy
from relayd.transports.link import Link, Links
from relayd.transports.rota import SLICES, Rota
from relayd.wire import InvalidRequest, Message, ack_frame, error_frame, parse_client_frame

log = Logger(namespace="relayd.websocket")

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_PING = b"\x89\x00"  # an empty ping frame
_OPEN = WebSocketProtocol.STATE_OPEN
_CLOSED = WebSocketProtocol.STATE_CLOSED


class _Settled:
    """
    Stands for Autobahn's ``is_open`` and ``is_closed`` futures on a relayd
    connection: nothing waits on them, so none is made per connection.
    """

    __slots__ = ()
    called = True

    def callback(self, result: object) -> None:
        """Nothing waits: nothing to fire."""


_SETTLED = _Settled()


_SHORT_HEADS = [bytes((0x81, length)) for length in range(126)]
_HEAD_16 = struct.Struct("!BBH")


def text_frame(payload: bytes) -> bytes:
    """``payload`` as one unmasked WebSocket text frame (what a server sends)."""
    length = len(payload)
    if length < 126:
        return _SHORT_HEADS[length] + payload
    if length < 65536:
        return _HEAD_16.pack(0x81, 126, length) + payload
    return bytes((0x81, 127)) + length.to_bytes(8, "big") + payload


def accept_key(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` answer to a ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key.strip() + _GUID).digest())


class RelayWebSocketProtocol(WebSocketServerProtocol):
    """
    One client's WebSocket: the :class:`~relayd.transports.link.Wire` of its link.

    Its factory's options are attributes of its class (see
    :meth:`RelayWebSocketFactory.protocol_class`), so that Autobahn does not
    copy some forty of them onto every connection.
    """

    link: Link | None = None
    _send_limit: SendLimit | None = None
    _gathered: list[bytes] | None = None  # written this turn, flushed at its end
    answered = 0  # the latest tick of pings (Pings.round) when it answered
    ping_slice = 0  # which tick of a round pings it (Pings.add)
    send_queue: deque | tuple = ()  # Autobahn's queue of chopped writes: made only if one is ever needed

    # Autobahn's per-connection state that starts out the same on every
    # connection, as class attributes: an instance holds one only once it changes.
    _perMessageCompress = None
    trackedTimings = None
    send_state = WebSocketProtocol.SEND_STATE_GROUND
    triggered = False
    wasMaxFramePayloadSizeExceeded = wasMaxMessagePayloadSizeExceeded = False
    closedByMe = failedByMe = droppedByMe = wasClean = False
    wasNotCleanReason = None
    wasServerConnectionDropTimeout = wasOpenHandshakeTimeout = wasCloseHandshakeTimeout = False
    wasServingFlashSocketPolicyFile = False
    localCloseCode = localCloseReason = remoteCloseCode = remoteCloseReason = None
    openHandshakeTimeoutCall = closeHandshakeTimeoutCall = None
    autoPingTimeoutCall = autoPingPending = autoPingPendingCall = autoPingPendingSent = None
    autoPingPendingSeq = 0
    is_open = is_closed = _SETTLED
    _transport_details = None  # relayd reads none of them

    def __init__(self) -> None:
        """
        Nothing of Autobahn's own set-up (two futures, an event table and
        transport details per connection) that relayd never reads.
        """

    def connectionMade(self) -> None:
        """
        Twisted's hook: Nagle off, then the connection's own state (no
        transport details, no pid/tid syscalls). ``peer``, which Autobahn's
        debug lines name, is worked out only if one is written.
        """
        self.peer = Lazy(peer2str, self.transport)
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except OSError:  # not a TCP socket
                pass
        self._connectionMade()

    def _connectionMade(self) -> None:
        """
        Autobahn's set-up of a new connection, reduced to the state that is
        this connection's own (the rest is above; the options are on the
        class; relayd makes no handshake timer: the gate has the request).
        """
        self.trafficStats = TrafficStats()
        self.state = WebSocketProtocol.STATE_CONNECTING
        self.data = b""
        self.utf8validator = Utf8Validator()
        self.factory.countConnections += 1

    @property
    def client_id(self) -> str | None:
        """The connection's client id, once admitted."""
        return self.link.client_id if self.link is not None else None

    def upgrade(self, key: bytes) -> None:
        """Answer the opening handshake the gate checked with a ``101``; then open."""
        self.websocket_version = 13
        self.websocket_protocols = []
        self.websocket_extensions = []
        self.websocket_protocol_in_use = None
        self.websocket_extensions_in_use = []
        self.sendData(self.factory.switching_protocols + accept_key(key) + b"\r\n\r\n")
        self.state = _OPEN
        self.inside_message = False
        self.current_frame = None
        self.answered = self.factory.pings.round
        self.factory.pings.add(self)
        self.onOpen()

    def onOpen(self):
        """Take over flow control, then open the link (welcome and replay)."""
        if getattr(self.transport, "producer", None) is not None:
            self.transport.unregisterProducer()  # the HTTP channel's place
        self.transport.registerProducer(self.link.queue, True)
        self._send_limit = self.factory.send_limit()
        self.link.open()

    def onMessage(self, payload: bytes, isBinary: bool):
        """Handle one client frame: ``send`` or ``refresh``; anything else is an error frame."""
        if self.state != _OPEN:
            return  # we are closing: what the client still sends is ignored
        if isBinary:
            self._reply(error_frame(None, "invalid_frame", "binary frames are not accepted: send JSON text"))
            return
        try:
            frame = parse_client_frame(payload, self.client_id)
        except InvalidRequest as error:
            self._reply(error_frame(error.ref, error.code, error.detail))
            return
        if frame.type == "send":
            self._on_send(frame)
        else:
            self._on_refresh(frame)

    def dataReceived(self, data: bytes) -> None:
        """
        Read from the client. An empty pong between frames, the answer to
        every keepalive ping, is taken here; everything else is Autobahn's.
        """
        if len(data) == 6 and data[0] == 0x8A and data[1] == 0x80 and self.current_frame is None and not self.data:
            self.onPong(b"")
        else:
            super().dataReceived(data)

    def onPong(self, payload: bytes) -> None:
        """An answer to a ping: alive."""
        self.answered = self.factory.pings.round

    def ping(self) -> None:
        """Send an empty ping."""
        self._gather(_PING)

    def onClose(self, wasClean, code, reason):
        """The connection is gone: end the link (unregister, access line)."""
        self.factory.pings.forget(self)
        if self.link is not None:
            sent_code = self.localCloseCode if self.closedByMe else self.remoteCloseCode
            self.link.gone(sent_code or code)

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        """Autobahn's writes (handshake, pings, close frames) are gathered with the frames, in order."""
        if sync or chopsize or self.send_queue:
            self.flush()
            if not self.send_queue:
                self.send_queue = deque()
            super().sendData(data, sync, chopsize)
        else:
            self._gather(data)

    def _closeConnection(self, abort: bool = False) -> None:
        """
        Write what is gathered before Autobahn closes the TCP connection
        (unless it aborts); when all of it went to the socket, close now.
        """
        if not abort:
            self.flush()
            if sockets.close(self.transport):
                return
        super()._closeConnection(abort)

    def flush(self) -> None:
        """Write what this turn gathered, at once."""
        gathered, self._gathered = self._gathered, None
        if gathered and self.transport is not None:
            sockets.write(self.transport, gathered[0] if len(gathered) == 1 else b"".join(gathered))

    # The link's Wire

    def encode_welcome(self, frame: bytes) -> bytes:
        """The welcome as a text frame."""
        return text_frame(frame)

    @staticmethod
    def encode_message(message: Message) -> bytes:
        """A message as a text frame, encoded once and kept on the message."""
        encoded = message.ws
        if encoded is None:
            encoded = message.ws = text_frame(message.frame)
        return encoded

    def write(self, data: bytes) -> None:
        """Write a frame while open (at the end of this reactor turn)."""
        if self.state == _OPEN:
            self._gather(data)

    def end(self, code: int, reason: str, abort: bool) -> None:
        """Close with ``code`` (any code, 1001 included): a close frame, even to a peer that is not reading."""
        if self.state == _OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8")[:120], isReply=False)
        elif self.state != _CLOSED:
            self.dropConnection(abort=True)

    def abort(self) -> None:
        """Drop the TCP connection now."""
        if self.transport is not None:
            self.transport.abortConnection()

    def lost(self) -> None:
        """The transport is gone: :meth:`onClose` follows and ends the link."""

    def close(self, code: int, reason: str) -> None:
        """Close with ``code`` through the link (once)."""
        self.link.close(code, reason)

    # Internals

    def _on_send(self, frame) -> None:
        verdict = self._send_limit.check()
        if verdict == EXCEEDED:
            log.info("{client_id} kept sending past the rate limit; closing with 1008", client_id=self.client_id)
            self.close(CLOSE_POLICY, "rate limit exceeded")
            return
        if verdict != ALLOWED:
            self._reply(error_frame(frame.ref, "rate_limited", "too many send frames: slow down (see --send-rate)"))
            return
        factory = self.factory
        if not factory.auth.may_send(self.link.admission.grant):
            self._reply(error_frame(frame.ref, "forbidden", "this connection's token has no 'send' scope"))
            return
        d = factory.links.relay.send(frame.send)
        d.addCallbacks(
            lambda report: self._reply(ack_frame(frame.ref, report)),
            lambda failure: self._reply(factory.send_failure(failure, frame.ref)),
        )

    def _on_refresh(self, frame) -> None:
        try:
            grant = self.factory.auth.refresh(self.client_id, frame.token)
        except Refused as refused:
            self._reply(error_frame(frame.ref, refused.error, refused.detail))
            return
        self.link.refresh(grant)
        self._reply(ack_frame(frame.ref))

    def _gather(self, data: bytes) -> None:
        gathered = self._gathered
        if gathered is None:
            self._gathered = [data]
            self.factory.flusher.schedule(self)
        else:
            gathered.append(data)

    def _reply(self, frame: bytes) -> None:
        if self.state == _OPEN:
            self.link.push(text_frame(frame))


def _take_over(request, protocol) -> None:
    """Move the request's connection from its HTTP channel to ``protocol``.

    relayd's channel is told (``detach``), so that the connection stops
    counting as an HTTP one however late its admission fired (a store
    commit, Redis); the channel notices a taken transport by itself only
    while it is still rendering the request. Another channel just has its
    transport taken, as Autobahn's ``WebSocketResource`` does.
    """
    channel = request.channel
    detach = getattr(channel, "detach", None)
    if detach is not None:
        transport = detach()
    else:
        transport, channel.transport = channel.transport, None
    sockets.rewire(transport, protocol)
    protocol.makeConnection(transport)
    resume = getattr(transport, "resumeProducing", None)  # the HTTP channel paused reading while it served the request
    if resume is not None:
        resume()


class Pings:
    """
    Keepalive for every WebSocket from one timer: each connection is pinged
    every ``interval`` seconds and dropped if it has not answered
    ``timeout`` seconds later. A round is spread over the interval
    (:class:`~relayd.transports.rota.Rota`): each tick pings the connections
    of its slice, and one check per tick.
    """

    def __init__(self, links: Links, interval: float, timeout: float):
        self.links = links
        self.interval = interval
        self.timeout = timeout
        self.rota: Rota[RelayWebSocketProtocol] = Rota()
        self._loop: task.LoopingCall | None = None

    @property
    def round(self) -> int:
        """The latest tick: a connection that answers takes it."""
        return self.rota.ticks

    def add(self, connection: RelayWebSocketProtocol) -> None:
        """Ping ``connection`` (just open) from now on, in the slice of its turn."""
        connection.ping_slice = self.rota.join(connection)

    def forget(self, connection: RelayWebSocketProtocol) -> None:
        """``connection`` is gone."""
        self.rota.leave(connection, connection.ping_slice)

    def start(self) -> None:
        """Start pinging (once; never when ``interval`` is 0)."""
        if self._loop is None and self.interval > 0:
            self._loop = task.LoopingCall(self.ping)
            self._loop.clock = self.links.clock
            self._loop.start(self.interval / SLICES, now=False)

    def ping(self) -> None:
        """One tick: ping the open WebSockets of this tick's slice; check their answers ``timeout`` seconds later."""
        pinged = [connection for connection in self.rota.next() if connection.state == _OPEN]
        for connection in pinged:
            connection.ping()
        if pinged:
            self.links.clock.callLater(self.timeout, self._check, pinged, self.rota.ticks)

    @staticmethod
    def _check(pinged: list[RelayWebSocketProtocol], round_: int) -> None:
        for connection in pinged:
            if connection.answered < round_ and connection.state != _CLOSED:
                connection.wasClean = False
                connection.wasNotCleanReason = "WebSocket ping timeout (peer did not respond with pong in time)"
                connection.dropConnection(abort=True)


class RelayWebSocketFactory(WebSocketServerFactory):
    """
    Builds :class:`RelayWebSocketProtocol` connections for admitted requests
    and holds what they share.
    """

    def __init__(self, links: Links, config, auth, flusher: sockets.Flusher):
        super().__init__(server=f"relayd/{__version__}")
        self.links = links
        self.auth = auth
        self.flusher = flusher
        self.pings = Pings(links, config.ping_interval, config.ping_timeout)
        self.send_rate = config.send_rate
        self.send_burst = config.send_burst
        self.setProtocolOptions(
            webStatus=False,
            maxFramePayloadSize=config.max_message_size,
            maxMessagePayloadSize=config.max_message_size,
            failByDrop=False,
            autoPingInterval=0,  # one timer for all instead (Pings)
            openHandshakeTimeout=0,  # the handshake is answered as soon as the gate admits it
            closeHandshakeTimeout=5,
            allowNullOrigin=True,
        )
        self.protocol = self.protocol_class()
        self.switching_protocols = (
            b"HTTP/1.1 101 Switching Protocols\r\nServer: " + self.server.encode("ascii")
            + b"\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "
        )

    def protocol_class(self) -> type[RelayWebSocketProtocol]:
        """:class:`RelayWebSocketProtocol` with this factory's options as class attributes."""
        options = {name: getattr(self, name) for name in RelayWebSocketProtocol.CONFIG_ATTRS}
        return type(RelayWebSocketProtocol.__name__, (RelayWebSocketProtocol,), options)

    def accept(self, request, admission: Admission) -> None:
        """
        Upgrade an admitted request (the gate checked it) to a WebSocket.

        Uses only the request's public surface (``requestHeaders``,
        ``content``, ``channel.transport``), so any HTTP channel will do.
        Bytes the client sent after the request head (frames it did not
        wait to send) are the WebSocket's first input.
        """
        key = request.requestHeaders.getRawHeaders(b"sec-websocket-key")[0]
        early = request.content.read() if hasattr(request.content, "read") else (request.content or b"")
        protocol = self.buildProtocol(request.channel.transport.getPeer())
        protocol.link = Link(protocol, admission, self.links)
        self.pings.start()
        _take_over(request, protocol)
        protocol.upgrade(key)
        if early:
            protocol.dataReceived(early)

    def send_limit(self) -> SendLimit:
        """A new connection's limit on ``send`` frames."""
        return SendLimit(self.send_rate, self.send_burst, self.links.clock)

    def send_failure(self, failure, ref) -> bytes:
        """The error frame for a ``send`` that failed; logs what is unexpected."""
        if failure.check(BrokerUnavailable):
            return error_frame(ref, "unavailable", "the broker is unavailable; retry later")
        log.failure("send frame failed", failure)
        return error_frame(ref, "internal", "internal error")
