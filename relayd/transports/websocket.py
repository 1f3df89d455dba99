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
``--ping-interval`` seconds (Autobahn's auto-ping, batched per factory: no
timer per connection) and drops a connection that has not answered within
``--ping-timeout``. Close codes: 1000 normal, 1001 shutdown, 1008 kept
sending past the send rate limit, 1009 frame too big, 4000 replaced, 4001
token expired, 4008 slow consumer, 4009 epoch changed.

Limits and tokens: ``send`` frames go through a per-connection token bucket
(``--send-rate``/``--send-burst``, relayd.core.ratelimit); a frame past it gets an
``error`` frame ``rate_limited``. With tokens, a connection's grant is watched
by the factory's :class:`~relayd.core.auth.ExpiryWatch` (one sweep for all) and
the connection is closed with 4001 when the token in force expires; a
``refresh`` frame swaps in a new token for the same id.

Buffers and backpressure: Autobahn writes straight into Twisted's unbounded
transport buffer. Each connection registers a small streaming producer
(:class:`SendQueue`); while Twisted has paused it (its buffer holds more than
64 KiB) message frames wait in the connection's own queue, and when the
queue holds more than ``--send-buffer`` bytes the client is a slow consumer
and is closed with 4008. Its messages stay in history for the resume.
"""

from __future__ import annotations

import secrets
from pprint import pformat

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket import protocol as autobahn_protocol
from autobahn.websocket.types import ConnectionDeny
from twisted.logger import Logger
from twisted.python.failure import Failure

from relayd import __version__
from relayd.core.admission import Admission
from relayd.core.auth import ExpiryWatch, expiry_of, redact
from relayd.core.ports import BrokerUnavailable
from relayd.core.ratelimit import ALLOWED, EXCEEDED, SendLimit
from relayd.core.registry import (
    CLOSE_POLICY,
    CLOSE_SLOW_CONSUMER,
    CLOSE_TOKEN_EXPIRED,
    Refused,
)
from relayd.transports.sendqueue import SendQueue, prepared_size
from relayd.wire import (
    InvalidRequest,
    Message,
    ack_frame,
    error_frame,
    parse_client_frame,
)

ADMISSION_HEADER = "x-relayd-admission"


log = Logger(namespace="relayd.websocket")

class RelayWebSocketProtocol(WebSocketServerProtocol):
    """One client's WebSocket: the relay core's :class:`~relayd.core.registry.Connection`."""

    admission: Admission | None = None
    _queue: SendQueue | None = None
    _opened_at: float | None = None
    _send_limit: SendLimit | None = None
    _expiry = None

    @property
    def client_id(self) -> str | None:
        """The connection's client id, once admitted."""
        return self.admission.session.client_id if self.admission else None

    def onConnect(self, request):
        """Pick up what the gate admitted; refuse anything that bypassed it."""
        nonce = request.headers.get(ADMISSION_HEADER, "")
        self.admission = self.factory.admissions.pop(nonce, None)
        if self.admission is None:
            raise ConnectionDeny(403, "not admitted")
        return None

    def failHandshake(self, reason, code=400, responseHeaders=None):
        """Autobahn logs ``reason`` (it may quote the request line or URI): redact tokens first."""
        return super().failHandshake(redact(str(reason).encode("utf-8")), code, responseHeaders)

    def onOpen(self):
        """Take over flow control, then let the core send the welcome and replay."""
        self._opened_at = self.factory.clock.seconds()
        self.transport.unregisterProducer()
        self._queue = SendQueue(
            self._write_frame, self.factory.send_buffer, self._slow_consumer, prepared_size,
            on_written=self.admission.session.written,
        )
        self.transport.registerProducer(self._queue, True)
        self.factory.connections.add(self)
        admission = self.admission
        self._send_limit = self.factory.send_limit()
        self._expiry = self.factory.expiry.watch(expiry_of(admission.grant), self._token_expired)
        self.factory.access.opened("ws", admission.session.client_id, admission.peer, admission.path)
        try:
            self.factory.relay.open(admission.session, self)
        except Exception:
            self._open_failed(Failure())

    def onMessage(self, payload: bytes, isBinary: bool):
        """Handle one client frame: ``send`` or ``refresh``; anything else is an error frame."""
        if self.state != self.STATE_OPEN:
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

    def onClose(self, wasClean, code, reason):
        """Unregister and write the access line."""
        self.factory.connections.discard(self)
        self.factory.expiry.cancel(self._expiry)
        self._expiry = None
        if self._queue is not None:
            self._queue.clear()
        if self.admission is None:
            return
        self.factory.relay.close(self.admission.session)
        if self._opened_at is not None:
            duration = self.factory.clock.seconds() - self._opened_at
            sent_code = self.localCloseCode if self.closedByMe else self.remoteCloseCode
            self.factory.access.closed("ws", self.client_id, self.admission.peer, sent_code or code, duration)

    # The relay core's Connection interface

    def send_welcome(self, frame: bytes) -> None:
        """Write the welcome frame."""
        self._reply(frame)

    def send_message(self, message: Message, replay: bool = False) -> bool:
        """Write (or hold) a message frame, encoded once for every WebSocket."""
        if self.state != self.STATE_OPEN:
            return False
        prepared = message.cache.get("ws")
        if prepared is None:
            prepared = message.cache["ws"] = self.factory.prepareMessage(message.frame)
        return self._queue.push(prepared, counted=not replay, item=message)

    def close(self, code: int, reason: str) -> None:
        """Close with ``code`` (any code, 1001 included)."""
        if self.state == self.STATE_OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8")[:120], isReply=False)
        elif self.state != self.STATE_CLOSED:
            self.dropConnection(abort=True)

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
        if not self.factory.auth.may_send(self.admission.grant):
            self._reply(error_frame(frame.ref, "forbidden", "this connection's token has no 'send' scope"))
            return
        d = self.factory.relay.send(frame.send)
        d.addCallbacks(
            lambda report: self._reply(ack_frame(frame.ref, report)),
            lambda failure: self._reply(self.factory.send_failure(failure, frame.ref)),
        )

    def _on_refresh(self, frame) -> None:
        try:
            grant = self.factory.auth.refresh(self.client_id, frame.token)
        except Refused as refused:
            self._reply(error_frame(frame.ref, refused.error, refused.detail))
            return
        self.admission.grant = grant
        self.factory.expiry.cancel(self._expiry)
        self._expiry = self.factory.expiry.watch(expiry_of(grant), self._token_expired)
        self._reply(ack_frame(frame.ref))

    def _token_expired(self) -> None:
        self._expiry = None
        log.info("{client_id}: token expired; closing with 4001", client_id=self.client_id)
        self.close(CLOSE_TOKEN_EXPIRED, "token expired: reconnect with a new token and last_id")

    def _reply(self, frame: bytes) -> None:
        if self.state == self.STATE_OPEN:
            prepared = self.factory.prepareMessage(frame)
            self._queue.push(prepared)

    def _write_frame(self, prepared) -> None:
        """
        Write a prepared frame. relayd never accepts permessage-deflate, so
        this is what ``sendPreparedMessage`` does, minus the debug line that
        Autobahn formats eagerly on every frame (a third of a broadcast's CPU).
        """
        if self.state != self.STATE_OPEN:
            return
        if self._perMessageCompress is None and not self.send_queue:
            self.transport.write(prepared.payloadHybi)
        else:
            self.sendPreparedMessage(prepared)

    def _slow_consumer(self) -> None:
        self.factory.metrics.slow_consumer()
        log.info(
            "slow consumer {client_id}: more than {limit} bytes waiting; closing with 4008",
            client_id=self.client_id,
            limit=self.factory.send_buffer,
        )
        self.close(CLOSE_SLOW_CONSUMER, "slow consumer: reconnect with last_id")

    def _open_failed(self, failure) -> None:
        log.failure("opening {client_id} failed", failure, client_id=self.client_id)
        self.close(1011, "internal error")


class _Deferred:
    """``pformat(value)``, computed only if a log line is really written."""

    def __init__(self, value):
        self.value = value

    def __str__(self) -> str:
        return pformat(self.value)


def defer_autobahn_config_dump() -> None:
    """
    Autobahn pretty-prints every protocol option for a debug line on every
    new connection, whether or not debug logging is on: about 350 us, a fifth
    of a handshake's CPU here. Make that formatting lazy; the debug line is
    unchanged when it is actually logged.
    """
    autobahn_protocol.pformat = _Deferred


class RelayWebSocketFactory(WebSocketServerFactory):
    """
    Builds :class:`RelayWebSocketProtocol` connections and holds what they share.

    ``admissions`` maps the nonce the gate puts in a request header to the
    :class:`Admission` it granted; ``connections`` is every open WebSocket
    (for shutdown).
    """

    protocol = RelayWebSocketProtocol

    def __init__(self, relay, config, clock, access, metrics, auth, expiry: ExpiryWatch | None = None):
        super().__init__(server=f"relayd/{__version__}")
        defer_autobahn_config_dump()
        self.relay = relay
        self.clock = clock
        self.access = access
        self.metrics = metrics
        self.auth = auth
        self.expiry = expiry if expiry is not None else ExpiryWatch(clock)
        self.send_buffer = config.send_buffer
        self.send_rate = config.send_rate
        self.send_burst = config.send_burst
        self.admissions: dict[str, Admission] = {}
        self.connections: set[RelayWebSocketProtocol] = set()
        self.setProtocolOptions(
            webStatus=False,
            maxFramePayloadSize=config.max_message_size,
            maxMessagePayloadSize=config.max_message_size,
            failByDrop=False,
            autoPingInterval=config.ping_interval,
            autoPingTimeout=config.ping_timeout,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=5,
            allowNullOrigin=True,
        )

    def send_limit(self) -> SendLimit:
        """A new connection's limit on ``send`` frames."""
        return SendLimit(self.send_rate, self.send_burst, self.clock)

    def admit(self, admission: Admission) -> str:
        """Remember ``admission``; return the nonce the request must carry."""
        nonce = secrets.token_urlsafe(16)
        self.admissions[nonce] = admission
        return nonce

    def start(self, resource, request, admission: Admission) -> None:
        """
        Hand an admitted request to Autobahn's ``resource`` (a WebSocketResource).

        The admission travels in a request header only the gate sets; if the
        handshake fails before ``onConnect`` picks it up, the reserved
        session is released here.
        """
        nonce = self.admit(admission)
        request.requestHeaders.setRawHeaders(ADMISSION_HEADER, [nonce])
        resource.render(request)
        if self.admissions.pop(nonce, None) is not None:
            self.relay.close(admission.session)

    def send_failure(self, failure, ref) -> bytes:
        """The error frame for a ``send`` that failed; logs what is unexpected."""
        if failure.check(BrokerUnavailable):
            return error_frame(ref, "unavailable", "the broker is unavailable; retry later")
        log.failure("send frame failed", failure)
        return error_frame(ref, "internal", "internal error")
