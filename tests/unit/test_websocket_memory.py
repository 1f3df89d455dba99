"""
The WebSocket side of tokens and limits in memory: the whole Site, a real
Autobahn client over ``twisted.test.iosim``, and a ``task.Clock`` for the
relay, the expiry sweep and the send bucket. Deterministic: no sleeps.
"""

from __future__ import annotations

import json

import pytest
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.test import iosim
from txaio.testutil import replace_loop

from relayd.options import Config
from relayd.site import build
from tests.security_helpers import SECRET, token

NOW = 1_800_000_000


class Client(WebSocketClientProtocol):
    """Records frames and the close code."""

    def __init__(self):
        super().__init__()
        self.frames = []
        self.close_code = None

    def onMessage(self, payload, isBinary):
        self.frames.append(json.loads(payload))

    def onClose(self, wasClean, code, reason):
        self.close_code = code


class Harness:
    """One relay Site on a fake clock; ``connect`` opens an in-memory WebSocket."""

    def __init__(self, **options):
        self.clock = Clock()
        self.clock.advance(NOW)
        self.parts = build(Config(secret=SECRET, ping_interval=0, **options), self.clock)
        self.parts.relay.start()
        self.pumps = []

    def connect(self, query: str) -> Client:
        server = self.parts.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        factory = WebSocketClientFactory(f"ws://127.0.0.1:8080/ws?{query}")
        factory.protocol = Client
        client = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8080))
        server_transport = iosim.FakeTransport(server, isServer=True)
        client_transport = iosim.FakeTransport(client, isServer=False)
        pump = iosim.connect(server, server_transport, client, client_transport, clock=self.clock)
        self.pumps.append(pump)
        self.flush()
        return client

    def flush(self):
        for _ in range(3):
            for pump in self.pumps:
                pump.flush()

    def tick(self, seconds: float):
        self.clock.advance(seconds)
        self.parts.expiry.sweep()
        self.flush()


def tok(sub, ttl=60, scope=None):
    return token(sub, scope=scope, exp=NOW + ttl)


@pytest.fixture
def harness():
    with replace_loop(Clock()):
        yield Harness(send_rate=2, send_burst=3)


def send(harness, client, frame):
    client.sendMessage(json.dumps(frame).encode())
    harness.flush()
    return client.frames[-1]


def test_expiry_closes_4001_at_exp_and_not_before(harness):
    client = harness.connect(f"id=alice&token={tok('alice', ttl=10)}")
    assert client.frames[0]["type"] == "welcome"
    harness.tick(9.5)
    assert client.close_code is None and len(harness.parts.expiry) == 1
    harness.tick(0.5)
    assert client.close_code == 4001
    assert len(harness.parts.expiry) == 0 and harness.parts.relay.registry.clients == 0


def test_refresh_moves_expiry_both_ways(harness):
    client = harness.connect(f"id=alice&token={tok('alice', ttl=10)}")
    assert send(harness, client, {"type": "refresh", "ref": 1, "token": tok("alice", ttl=100)})["type"] == "ack"
    harness.tick(50)
    assert client.close_code is None
    assert send(harness, client, {"type": "refresh", "ref": 2, "token": tok("bob", ttl=500)})["error"] == "invalid_token"
    assert send(harness, client, {"type": "refresh", "ref": 3, "token": tok("alice", ttl=55)})["type"] == "ack"
    harness.tick(4)
    assert client.close_code is None
    harness.tick(1)
    assert client.close_code == 4001
    assert len(harness.parts.expiry) == 0


def test_closed_connections_leave_the_watch(harness):
    clients = [harness.connect(f"id=c{n}&token={tok(f'c{n}', ttl=1000)}") for n in range(5)]
    assert len(harness.parts.expiry) == 5
    for client in clients:
        client.sendClose(1000)
    harness.flush()
    assert len(harness.parts.expiry) == 0


def test_send_scope_and_rate_limit_on_the_fake_clock(harness):
    reader = harness.connect(f"id=reader&token={tok('reader')}")
    assert send(harness, reader, {"type": "send", "ref": "r", "receiver_id": "x", "content": 1})["error"] == "forbidden"
    writer = harness.connect(f"id=writer&token={tok('writer', scope='send')}")
    frame = {"type": "send", "receiver_id": "reader", "content": 1}
    assert [send(harness, writer, frame)["type"] for _ in range(3)] == ["ack"] * 3
    assert send(harness, writer, frame)["error"] == "rate_limited"
    harness.tick(0.5)  # one more token at 2/s
    assert send(harness, writer, frame)["type"] == "ack"
    for _ in range(3):
        assert send(harness, writer, frame)["error"] == "rate_limited"
    send(harness, writer, frame)
    assert writer.close_code == 1008
    assert [f["content"] for f in reader.frames if f["type"] == "message"] == [1, 1, 1, 1]
    assert reader.close_code is None
