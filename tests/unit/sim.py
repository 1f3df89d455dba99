"""
A whole relay in memory: ``relayd.site.build`` on a fake clock, driven by
raw HTTP over a ``StringTransport`` and by Autobahn WebSocket clients over
``twisted.test.iosim``. No global reactor, no sockets.

Autobahn runs its timers (auto-ping, handshake and close timeouts) on
``txaio.config.loop``; :func:`relay_clock` swaps that for the fake clock.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import count

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from txaio.testutil import replace_loop

from relayd.options import Config
from relayd.site import build
from relayd.wire import parse_send
from tests.unit.helpers import result_of

SERVER_ADDRESS = IPv4Address("TCP", "127.0.0.1", 8080)
_ports = count(40000)


@contextmanager
def relay_clock():
    """A fake clock that is also the loop Autobahn's timers run on."""
    clock = MemoryReactorClock()
    with replace_loop(clock):
        yield clock


@dataclass
class Response:
    """An HTTP response as the client saw it."""

    status: int
    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def json(self):
        assert self.header("content-type") == "application/json", self.headers
        return json.loads(self.body)


def parse_response(data: bytes) -> Response:
    """Parse one HTTP/1.1 response (Content-Length, chunked, or to the end)."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, f"no complete response in {data!r}"
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.setdefault(name.strip().lower().decode("latin-1"), []).append(value.strip().decode("latin-1"))
    if "chunked" in (headers.get("transfer-encoding") or [""])[0]:
        body = b""
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            body, rest = body + rest[:size], rest[size + 2:]
    elif "content-length" in headers:
        body = rest[: int(headers["content-length"][0])]
    else:
        body = rest
    return Response(status, headers, body)


class Client(WebSocketClientProtocol):
    """An Autobahn WebSocket client that records what it receives."""

    answer_pings = True

    def __init__(self):
        super().__init__()
        self.frames: list[dict] = []
        self.opened = False
        self.close_code: int | None = None
        self.lost = False

    def onOpen(self):
        self.opened = True

    def onMessage(self, payload, isBinary):
        self.frames.append(json.loads(payload))

    def onPing(self, payload):
        if self.answer_pings:
            super().onPing(payload)

    def onClose(self, wasClean, code, reason):
        self.close_code = code
        self.lost = True

    def send_json(self, value) -> None:
        self.sendMessage(json.dumps(value).encode())

    def of_type(self, kind: str) -> list[dict]:
        return [f for f in self.frames if f["type"] == kind]

    @property
    def messages(self) -> list[dict]:
        return self.of_type("message")

    @property
    def welcome(self) -> dict:
        assert self.frames and self.frames[0]["type"] == "welcome", self.frames
        return self.frames[0]


class SSEClient(Protocol):
    """
    An ``EventSource``-like client over ``iosim``: sends ``GET <path>`` and
    records the welcome and message events' JSON in ``frames`` (the same
    shape as :class:`Client`'s), the code of an ``event: close``, and
    whether the connection is gone.
    """

    def __init__(self, path: str, headers: dict | None = None):
        self.path = path
        self.headers = headers or {}
        self.status: int | None = None
        self.frames: list[dict] = []
        self.close_code: int | None = None
        self.lost = False
        self._raw = b""
        self._body = b""

    def connectionMade(self):
        lines = [f"GET {self.path} HTTP/1.1", "Host: relay.test", *(f"{k}: {v}" for k, v in self.headers.items())]
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def dataReceived(self, data):
        self._raw += data
        if self.status is None:
            head, sep, rest = self._raw.partition(b"\r\n\r\n")
            if not sep:
                return
            self.status = int(head.split(b" ", 2)[1])
            self._raw = rest
        while True:  # chunked body
            size_line, sep, rest = self._raw.partition(b"\r\n")
            if not sep or len(rest) < int(size_line, 16) + 2:
                break
            size = int(size_line, 16)
            self._body += rest[:size]
            self._raw = rest[size + 2:]
        while b"\n\n" in self._body:
            event, _, self._body = self._body.partition(b"\n\n")
            self._event(event.decode())

    def _event(self, text: str) -> None:
        fields = dict(line.split(": ", 1) for line in text.split("\n") if ": " in line and not line.startswith(":"))
        if fields.get("event") in ("welcome", "message"):
            self.frames.append(json.loads(fields["data"]))
        elif fields.get("event") == "close":
            self.close_code = json.loads(fields["data"])["code"]

    def connectionLost(self, reason):
        self.lost = True

    @property
    def messages(self) -> list[dict]:
        return [f for f in self.frames if f["type"] == "message"]

    @property
    def welcome(self) -> dict:
        assert self.frames and self.frames[0]["type"] == "welcome", self.frames
        return self.frames[0]


class SilentClient(Client):
    """A client whose TCP connection is up but who never answers a ping."""

    answer_pings = False


@dataclass
class WsConnection:
    """A client connected to the relay in memory, and the pump between them."""

    client: Client
    pump: iosim.IOPump
    server_transport: iosim.FakeTransport = field(repr=False)

    @property
    def server(self):
        """The server-side protocol (the RelayWebSocketProtocol after the upgrade)."""
        return self.server_transport.protocol

    def flush(self) -> None:
        self.pump.flush()


class SimRelay:
    """One relay (``relayd.site.build``) on a fake clock."""

    def __init__(self, clock: MemoryReactorClock, broker=None, auth=None, **options):
        self.clock = clock
        self.config = Config(**options)
        self.parts = build(self.config, clock, broker=broker, auth=auth)
        result_of(self.parts.relay.start())
        self.connections: list[WsConnection] = []

    @property
    def relay(self):
        return self.parts.relay

    @property
    def registry(self):
        return self.parts.relay.registry

    # HTTP

    def raw(self, data: bytes, peer_port: int | None = None) -> bytes:
        """Send raw request bytes on a fresh connection; return what the server wrote."""
        address = IPv4Address("TCP", "127.0.0.1", peer_port or next(_ports))
        transport = StringTransport(peerAddress=address, hostAddress=IPv4Address("TCP", "127.0.0.1", 8080))
        channel = self.parts.site.buildProtocol(address)
        transport.protocol = channel
        channel.makeConnection(transport)
        channel.dataReceived(data)
        self.clock.advance(0)
        if transport.disconnecting:  # what a real transport does once the server closes it
            channel.connectionLost(Failure(ConnectionDone()))
        return transport.value()

    def request(self, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> Response:
        """One HTTP/1.1 request; the response as parsed by the client."""
        lines = [f"{method} {path} HTTP/1.1", "Host: relay.test", "Connection: close"]
        headers = dict(headers or {})
        if body or method in ("POST", "PUT"):
            headers.setdefault("Content-Length", str(len(body)))
        lines += [f"{name}: {value}" for name, value in headers.items()]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        return parse_response(self.raw(data))

    def post(self, body, content_type: str = "application/json", headers: dict | None = None) -> Response:
        """``POST /send-message``; ``body`` is bytes or a value to encode as JSON."""
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
        return self.request("POST", "/send-message", body, {"Content-Type": content_type, **(headers or {})})

    # WebSocket

    def ws(self, query: str, client: type[Client] = Client, headers: dict | None = None) -> WsConnection:
        """Open a WebSocket to ``/ws?<query>`` and pump until the handshake is done."""
        factory = WebSocketClientFactory(f"ws://relay.test/ws?{query}", reactor=self.clock, headers=headers)
        factory.protocol = client
        return self._connect(factory.buildProtocol(SERVER_ADDRESS))

    def sse(self, query: str, headers: dict | None = None) -> WsConnection:
        """Open ``/events?<query>`` and pump until the stream has started."""
        return self._connect(SSEClient(f"/events?{query}", headers))

    def _connect(self, client_protocol) -> WsConnection:
        """Join ``client_protocol`` to the Site over an in-memory pump, from a fresh client port."""
        client_address = IPv4Address("TCP", "127.0.0.1", next(_ports))
        server_address = SERVER_ADDRESS
        server_protocol = self.parts.site.buildProtocol(client_address)
        server_transport = iosim.FakeTransport(server_protocol, True, server_address, client_address)
        client_transport = iosim.FakeTransport(client_protocol, False, client_address, server_address)
        pump = iosim.connect(server_protocol, server_transport, client_protocol, client_transport, clock=self.clock)
        connection = WsConnection(client_protocol, pump, server_transport)
        self.connections.append(connection)
        return connection

    def connect(self, transport: str, query: str, headers: dict | None = None) -> WsConnection:
        """Open a connection over ``transport`` (``ws`` or ``sse``)."""
        return self.ws(query, headers=headers) if transport == "ws" else self.sse(query, headers)

    def link(self, client_id: str):
        """The server side's lifecycle (relayd.transports.link.Link) of ``client_id``'s only connection."""
        (link,) = [link for link in self.parts.links.live if link.client_id == client_id]
        return link

    def flush(self) -> None:
        """Pump every WebSocket connection until nothing moves."""
        moved = True
        while moved:
            moved = False
            for connection in self.connections:
                moved = connection.pump.flush() or moved

    def advance(self, seconds: float, step: float = 0.1) -> None:
        """Let ``seconds`` pass in small steps, pumping every connection between them."""
        steps = round(seconds / step)
        for _ in range(steps):
            self.clock.advance(step)
            self.flush()

    def send(self, **message) -> dict:
        """Send a message through the core (as the HTTP API does); flush; the report."""
        report = result_of(self.relay.send(parse_send(message)))
        self.flush()
        return report
