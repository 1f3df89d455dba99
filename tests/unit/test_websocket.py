"""
The WebSocket transport (CONTRACT.md section 4) in memory: an Autobahn
client talks to the whole Site over ``twisted.test.iosim``, Autobahn's
timers run on the fake clock.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from itertools import pairwise

import pytest
from twisted.internet import defer

from relayd.core.session import Delivery
from relayd.transports.rota import SLICES
from relayd.transports.sendqueue import SendQueue
from relayd.transports.websocket import RelayWebSocketProtocol
from tests.unit.helpers import result_of
from tests.unit.sim import SilentClient


def test_welcome_is_the_first_frame(sim):
    conn = sim.ws("id=alice")
    assert conn.client.opened
    assert conn.client.frames == [conn.client.welcome]
    welcome = conn.client.welcome
    assert set(welcome) == {"type", "client_id", "epoch", "last_id", "replayed", "lost"}
    assert (welcome["client_id"], welcome["last_id"], welcome["replayed"], welcome["lost"]) == ("alice", 0, 0, False)
    assert sim.registry.clients == 1 and sim.registry.counts["ws"] == 1


def test_replay_then_live(sim):
    sim.send(receiver_id="alice", content="q1")
    sim.send(receiver_id="alice", content="q2")
    conn = sim.ws("id=alice")
    sim.send(receiver_id="alice", content="live", sender_id="billing")
    frames = conn.client.frames
    assert [f["type"] for f in frames] == ["welcome", "message", "message", "message"]
    assert frames[0]["replayed"] == 2 and frames[0]["last_id"] == 2
    assert [f["id"] for f in frames[1:]] == [1, 2, 3]
    assert [f["content"] for f in frames[1:]] == ["q1", "q2", "live"]
    assert frames[3]["sender_id"] == "billing" and frames[1]["sender_id"] is None


def test_resume_with_last_id_and_epoch(sim):
    first = sim.ws("id=alice")
    epoch = first.client.welcome["epoch"]
    for n in range(3):
        sim.send(receiver_id="alice", content=n)
    first.client.sendClose(1000)
    sim.flush()
    assert sim.registry.clients == 0
    sim.send(receiver_id="alice", content=3)
    again = sim.ws(f"id=alice&last_id=1&epoch={epoch}")
    assert again.client.welcome["replayed"] == 3 and again.client.welcome["lost"] is False
    assert [m["id"] for m in again.client.messages] == [2, 3, 4]


def test_resume_with_an_old_epoch_is_lost(sim):
    sim.send(receiver_id="alice", content="x")
    conn = sim.ws("id=alice&last_id=5&epoch=stale")
    assert conn.client.welcome["lost"] is True
    assert [m["content"] for m in conn.client.messages] == ["x"]


def test_send_frame_is_acked_with_the_same_lists_as_http(make_relay):
    sim = make_relay(history_size=0)
    bob = sim.ws("id=bob")
    alice = sim.ws("id=alice")
    alice.client.send_json({"type": "send", "ref": "r1", "receiver_ids": ["bob", "carol"], "content": {"n": 1}})
    sim.flush()
    (ack,) = alice.client.of_type("ack")
    assert ack["ref"] == "r1"
    assert (ack["sent"], ack["queued"], ack["dropped"]) == (["bob"], [], ["carol"])
    assert len(ack["message_id"]) == 32
    (message,) = bob.client.messages
    assert message["sender_id"] == "alice" and message["content"] == {"n": 1} and message["id"] == 1
    http = sim.post({"receiver_ids": ["bob", "carol"], "content": {"n": 1}}).json()
    assert set(http) == set(ack) - {"type", "ref"}
    assert (http["sent"], http["queued"], http["dropped"]) == (ack["sent"], ack["queued"], ack["dropped"])


def test_send_frame_broadcast_and_queued(sim):
    alice = sim.ws("id=alice")
    bob = sim.ws("id=bob")
    alice.client.send_json({"type": "send", "receiver_id": "carol", "content": 1})
    alice.client.send_json({"type": "send", "ref": 2, "broadcast": True, "content": "all"})
    sim.flush()
    acks = alice.client.of_type("ack")
    assert acks[0]["ref"] is None and acks[0]["queued"] == ["carol"]
    assert acks[1]["ref"] == 2 and acks[1]["sent"] == acks[1]["queued"] == acks[1]["dropped"] == []
    for client in (alice.client, bob.client):
        assert [(m["id"], m["receiver_id"], m["content"]) for m in client.messages] == [(None, None, "all")]


@pytest.mark.parametrize("payload, ref", [
    (b"not json", None),
    (b"[1, 2]", None),
    (b'{"type": "subscribe", "ref": "r1"}', "r1"),
    (b'{"type": "send", "ref": "r2", "content": 1}', "r2"),
    (b'{"type": "send", "ref": "r3", "receiver_id": "bob"}', "r3"),
    (b'{"type": "send", "ref": "r4", "receiver_id": "bob", "content": 1, "sender_id": "ceo"}', "r4"),
])
def test_bad_frames_get_an_error_and_the_connection_stays_open(sim, payload, ref):
    bob = sim.ws("id=bob")
    alice = sim.ws("id=alice")
    alice.client.sendMessage(payload)
    sim.flush()
    (error,) = alice.client.of_type("error")
    assert error["error"] == "invalid_frame" and error["ref"] == ref and error["detail"]
    assert alice.client.close_code is None
    alice.client.send_json({"type": "send", "ref": "ok", "receiver_id": "bob", "content": "still works"})
    sim.flush()
    assert alice.client.of_type("ack")[0]["sent"] == ["bob"]
    assert [m["content"] for m in bob.client.messages] == ["still works"]


def test_binary_frame_gets_an_error(sim):
    alice = sim.ws("id=alice")
    alice.client.sendMessage(b'{"type": "send", "receiver_id": "alice", "content": 1}', isBinary=True)
    sim.flush()
    (error,) = alice.client.of_type("error")
    assert error == {"type": "error", "ref": None, "error": "invalid_frame",
                     "detail": "binary frames are not accepted: send JSON text"}
    assert alice.client.close_code is None and alice.client.messages == []
    sim.send(receiver_id="alice", content="live")
    assert [m["content"] for m in alice.client.messages] == ["live"]


def test_oversize_frame_closes_with_1009(make_relay):
    sim = make_relay(max_message_size=1024)
    bob = sim.ws("id=bob")
    alice = sim.ws("id=alice")
    alice.client.send_json({"type": "send", "receiver_id": "bob", "content": "x" * 2000})
    sim.flush()
    assert alice.client.close_code == 1009
    assert bob.client.messages == []
    assert sim.registry.sessions("alice") == ()
    sim.send(receiver_id="bob", content="others are fine")
    assert bob.client.close_code is None
    assert [m["content"] for m in bob.client.messages] == ["others are fine"]


def test_frame_at_the_limit_is_accepted(make_relay):
    sim = make_relay(max_message_size=1024)
    alice = sim.ws("id=alice")
    frame = {"type": "send", "receiver_id": "alice", "content": ""}
    frame["content"] = "x" * (1024 - len(json.dumps(frame).encode()))
    alice.client.sendMessage(json.dumps(frame).encode())
    sim.flush()
    assert alice.client.close_code is None
    assert alice.client.of_type("ack")[0]["sent"] == ["alice"]


def test_a_newer_connection_replaces_the_older_with_4000(sim):
    old = sim.ws("id=alice")
    new = sim.ws("id=alice")
    sim.flush()
    assert old.client.close_code == 4000
    assert new.client.close_code is None
    assert sim.registry.counts["ws"] == 1
    sim.send(receiver_id="alice", content="to the newest")
    assert [m["content"] for m in new.client.messages] == ["to the newest"]
    assert old.client.messages == []


def test_fanout_both_receive(make_relay):
    sim = make_relay(duplicates="fanout", max_per_id=2)
    a, b = sim.ws("id=alice"), sim.ws("id=alice")
    sim.send(receiver_id="alice", content=1)
    assert a.client.messages[0]["content"] == b.client.messages[0]["content"] == 1
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"}
    third = sim.request("GET", "/ws?id=alice", headers=upgrade)
    assert third.status == 409 and third.json()["error"] == "duplicate"


def test_normal_close_unregisters(sim):
    conn = sim.ws("id=alice")
    conn.client.sendClose(1000)
    sim.flush()
    assert conn.client.close_code == 1000
    assert len(sim.registry) == 0 and sim.registry.clients == 0
    assert sim.send(receiver_id="alice", content=1)["queued"] == ("alice",)


def test_dropped_tcp_connection_unregisters(sim):
    conn = sim.ws("id=alice")
    conn.client.transport.abortConnection()
    sim.flush()
    assert len(sim.registry) == 0


def test_server_close_1001(sim):
    conn = sim.ws("id=alice")
    conn.server.close(1001, "server shutting down")
    sim.flush()
    assert conn.client.close_code == 1001
    assert len(sim.registry) == 0


# Slow consumers

class FakeWrites:
    """A send queue's sink that records what it is told."""

    def __init__(self):
        self.frames = []
        self.overflows = 0
        self.went_out = []
        self.stops = 0

    def write_now(self, frame):
        self.frames.append(frame)

    def overflowed(self):
        self.overflows += 1

    def held_written(self, item):
        self.went_out.append(item)

    def stopped(self):
        self.stops += 1


def test_send_queue_writes_at_once_while_not_paused():
    writes = FakeWrites()
    queue = SendQueue(writes, 10)
    assert queue.push(b"abc") is Delivery.WRITTEN and queue.push(b"def") is Delivery.WRITTEN
    assert writes.frames == [b"abc", b"def"] and queue.held == 0


def test_send_queue_holds_while_paused_and_writes_in_order_on_resume():
    writes = FakeWrites()
    queue = SendQueue(writes, 10)
    queue.pauseProducing()
    assert queue.push(b"1234") is Delivery.HELD and queue.push(b"5678") is Delivery.HELD
    assert writes.frames == [] and queue.held == 8
    queue.resumeProducing()
    assert writes.frames == [b"1234", b"5678"] and queue.held == 0
    assert writes.overflows == 0


def test_send_queue_stops_writing_when_paused_again_during_resume():
    class PausingWrites(FakeWrites):
        def write_now(self, frame):
            super().write_now(frame)
            queue.pauseProducing()  # what Twisted does when its buffer fills again

    writes = PausingWrites()
    queue = SendQueue(writes, 100)
    queue.pauseProducing()
    for frame in (b"a", b"b", b"c"):
        queue.push(frame)
    queue.resumeProducing()
    assert writes.frames == [b"a"] and queue.held == 2
    queue.push(b"d")  # still paused: held behind the others
    queue.resumeProducing()
    queue.resumeProducing()
    queue.resumeProducing()
    assert writes.frames == [b"a", b"b", b"c", b"d"] and queue.held == 0


def test_send_queue_keeps_order_after_resume_with_frames_left():
    """A frame pushed while older ones wait is held behind them even when not paused."""
    writes = FakeWrites()
    queue = SendQueue(writes, 100)
    queue.pauseProducing()
    queue.push(b"old")
    queue.paused = False  # as if resumed but not yet drained
    queue.push(b"new")
    assert writes.frames == []
    queue.resumeProducing()
    assert writes.frames == [b"old", b"new"]


def test_send_queue_overflow():
    writes = FakeWrites()
    queue = SendQueue(writes, 10)
    queue.pauseProducing()
    assert queue.push(b"x" * 6) is Delivery.HELD
    assert queue.push(b"x" * 4) is Delivery.HELD      # exactly at the limit: fine
    assert queue.push(b"x") is Delivery.REFUSED       # one byte past: overflow
    assert writes.overflows == 1 and queue.held == 0
    queue.resumeProducing()
    assert writes.frames == []


def test_send_queue_stop_producing_forgets_frames():
    writes = FakeWrites()
    queue = SendQueue(writes, 10)
    queue.pauseProducing()
    queue.push(b"abc")
    queue.stopProducing()
    assert queue.held == 0 and writes.stops == 1
    queue.resumeProducing()
    assert writes.frames == []


def test_slow_consumer_is_closed_with_4008_and_resumes_without_loss(make_relay):
    sim = make_relay(send_buffer=2048)
    bob = sim.ws("id=bob")
    slow = sim.ws("id=alice")
    epoch = slow.client.welcome["epoch"]
    sim.send(receiver_id="alice", content="first")
    queue = slow.server.link.queue
    assert slow.server.transport.producer is queue  # registered in place of the HTTP channel
    queue.pauseProducing()  # what Twisted does while this connection's buffer is full
    reports = [sim.send(receiver_id="alice", content="m" * 200) for _ in range(12)]
    sim.flush()
    assert slow.client.close_code == 4008
    assert [m["content"] for m in slow.client.messages] == ["first"]
    outcomes = ["sent" if r["sent"] == ("alice",) else "queued" for r in reports]
    held = outcomes.count("sent")
    assert 2048 // 400 <= held <= 2048 // 200   # each frame is a little over 200 bytes
    assert outcomes == ["sent"] * held + ["queued"] * (12 - held)
    assert sim.parts.metrics.registry.get_sample_value("relay_slow_consumer_disconnects_total") == 1
    assert sim.registry.sessions("alice") == ()
    sim.send(receiver_id="bob", content="unaffected")
    assert [m["content"] for m in bob.client.messages] == ["unaffected"]
    again = sim.ws(f"id=alice&last_id=1&epoch={epoch}")
    assert again.client.welcome["lost"] is False
    assert [m["id"] for m in again.client.messages] == list(range(2, 14))


# Keepalive

def test_a_silent_connection_is_dropped_after_the_ping_timeout(make_relay):
    sim = make_relay(ping_interval=5, ping_timeout=2)
    silent = sim.ws("id=mute", client=SilentClient)
    alive = sim.ws("id=alive")
    sim.advance(2)  # nobody is dropped before a ping and its timeout
    assert len(sim.registry) == 2
    sim.advance(5.5)  # pinged within 5 s of opening, no pong 2 s later
    assert silent.client.lost
    assert sim.registry.sessions("mute") == ()
    assert sim.registry.sessions("alive") != []
    assert alive.client.close_code is None
    sim.advance(20)
    assert alive.client.close_code is None and sim.registry.clients == 1
    sim.send(receiver_id="alive", content="still here")
    assert [m["content"] for m in alive.client.messages] == ["still here"]


def test_a_round_of_pings_is_spread_over_the_interval_each_connection_pinged_once(make_relay, monkeypatch):
    pinged = defaultdict(list)  # connection -> when it was pinged
    real_ping = RelayWebSocketProtocol.ping

    def ping(self):
        pinged[self].append(sim.clock.seconds())
        real_ping(self)

    monkeypatch.setattr(RelayWebSocketProtocol, "ping", ping)
    sim = make_relay(ping_interval=10, ping_timeout=5)
    connections = [sim.ws(f"id=c{n}") for n in range(100)]
    sim.advance(35, step=10 / SLICES / 2)
    assert set(pinged) == {c.server for c in connections}
    for times in pinged.values():  # every connection every 10 s
        assert len(times) >= 3 and all(abs(b - a - 10) < 1e-6 for a, b in pairwise(times))
    at_once = Counter(t for times in pinged.values() for t in times)
    assert max(at_once.values()) <= 100 // SLICES + 1, at_once  # a 20th at a time, not all 100
    assert all(c.client.close_code is None for c in connections)
    for connection in connections[:10]:
        connection.client.sendClose(1000)
    sim.advance(1)
    pings = sim.parts.ws_factory.pings
    assert len(pings.rota) == 90  # the closed ones are forgotten


def test_ping_interval_0_never_pings(make_relay):
    sim = make_relay(ping_interval=0, ping_timeout=1)
    silent = sim.ws("id=mute", client=SilentClient)
    sim.advance(120, step=1)
    assert not silent.client.lost and sim.registry.clients == 1


# Internal errors on a connection

def test_a_failing_send_gets_an_internal_error_frame(sim, logged_failures):
    alice = sim.ws("id=alice")

    def broken(request, timestamp, message_id):
        raise RuntimeError("secret internals")

    sim.relay.broker.publish = broken
    alice.client.send_json({"type": "send", "ref": "r1", "receiver_id": "bob", "content": 1})
    sim.flush()
    (error,) = alice.client.of_type("error")
    assert error["ref"] == "r1" and error["error"] == "internal"
    assert "secret internals" not in json.dumps(error)
    assert alice.client.close_code is None
    assert any(f.check(RuntimeError) for f in logged_failures)


def test_forbidden_send_without_send_scope(make_relay):
    class NoSend:
        secured = True

        def authenticate(self, client_id, token):
            return client_id, "grant"

        def may_send(self, grant):
            return False

    sim = make_relay(auth=NoSend())
    alice = sim.ws("id=alice")
    alice.client.send_json({"type": "send", "ref": "r1", "receiver_id": "bob", "content": 1})
    sim.flush()
    (error,) = alice.client.of_type("error")
    assert error["error"] == "forbidden" and error["ref"] == "r1"
    assert alice.client.close_code is None


class HeldReplays:
    """While in force, the broker's replays wait until :meth:`answer` (as a store or Redis answers later)."""

    def __init__(self, sim):
        self._broker = sim.relay.broker
        self._real = self._broker.replay
        self.pending: list[tuple[defer.Deferred, defer.Deferred]] = []
        self._broker.replay = self._held

    def _held(self, client_id, last_id, epoch):
        d = defer.Deferred()
        self.pending.append((d, self._real(client_id, last_id, epoch)))
        return d

    def stop(self) -> None:
        """Replays answer at once again (the held ones still wait)."""
        self._broker.replay = self._real

    def answer(self) -> None:
        """Answer every held replay."""
        pending, self.pending = self.pending, []
        for d, answer in pending:
            d.callback(result_of(answer))


def test_a_connection_replaced_before_its_welcome_is_closed_with_4000(sim):
    """With a slow broker, a newer connection can replace one still waiting for its replay."""
    held = HeldReplays(sim)
    old = sim.ws("id=alice")
    held.stop()
    new = sim.ws("id=alice")
    assert old.client.frames == [] and new.client.welcome["client_id"] == "alice"
    assert len(held.pending) == 1
    held.answer()
    sim.flush()
    assert old.client.close_code == 4000 and old.client.frames == []
    assert new.client.close_code is None
    assert sim.registry.counts["ws"] == 1


def test_a_failed_handshake_releases_the_reserved_place(make_relay):
    sim = make_relay(max_connections=1)
    bad_key = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": "not-a-key", "Sec-WebSocket-Version": "13"}
    response = sim.request("GET", "/ws?id=alice", headers=bad_key)
    assert response.status == 400  # Autobahn refuses the malformed key after the gate admitted it
    assert response.json()["error"] == "bad_handshake"
    assert len(sim.registry) == 0
    assert sim.ws("id=alice").client.welcome["client_id"] == "alice"


def test_send_queue_holds_replayed_frames_without_counting_them():
    """A long resume is not a slow consumer: replayed frames are kept in history anyway."""
    writes = FakeWrites()
    queue = SendQueue(writes, 10)
    queue.pauseProducing()
    for index in range(20):
        assert queue.push(b"replay-%02d" % index, counted=False) is Delivery.HELD
    assert queue.held == 0 and writes.overflows == 0
    assert queue.push(b"live-1") is Delivery.HELD and queue.held == 6
    assert queue.push(b"live-2") is Delivery.REFUSED and writes.overflows == 1
    queue.pauseProducing()
    assert queue.push(b"after", counted=False) is Delivery.HELD
    queue.resumeProducing()
    assert writes.frames == [b"after"] and queue.held == 0


def test_send_queue_reports_held_frames_as_written_only_when_they_go_out():
    writes = FakeWrites()
    queue = SendQueue(writes, 100)
    assert queue.push(b"now", item="m0") is Delivery.WRITTEN and writes.went_out == []  # the caller counts it
    queue.pauseProducing()
    assert queue.push(b"later-1", item="m1") is Delivery.HELD and queue.push(b"later-2", item="m2") is Delivery.HELD
    assert writes.went_out == []
    queue.resumeProducing()
    assert writes.went_out == ["m1", "m2"] and writes.frames == [b"now", b"later-1", b"later-2"]


def test_autobahn_config_dump_is_formatted_only_when_written(make_relay):
    """The per-connection debug dump is lazy, and still the same text when a log line is written."""
    from pprint import pformat

    from autobahn import util
    from autobahn.websocket import protocol as autobahn_protocol

    from relayd.transports import autobahn_shim

    autobahn_shim.install()
    make_relay().ws("id=alice")
    attrs = [("maxFramePayloadSize", 65536, "RelayWebSocketFactory")]
    dump = autobahn_protocol.pformat(attrs)
    assert not isinstance(dump, str) and str(dump) == pformat(attrs)
    name = autobahn_protocol.hltype(test_autobahn_config_dump_is_formatted_only_when_written)
    assert not isinstance(name, str)
    assert f"{name}" == str(name) == util.hltype(test_autobahn_config_dump_is_formatted_only_when_written)


def test_autobahn_timings_still_format_after_the_shim():
    from autobahn.websocket.protocol import Timings

    from relayd.transports import autobahn_shim

    autobahn_shim.install()
    timings = Timings()
    timings.track("onOpen")
    assert isinstance(str(timings), str) and "onOpen" in str(timings)


def test_frames_sent_with_the_request_head_are_read_after_the_upgrade(sim):
    """
    A client may send frames before it sees the 101; an HTTP channel hands
    them over as the request's ``content``: they are the WebSocket's first input.
    """
    import io
    from types import SimpleNamespace

    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport
    from twisted.web.http_headers import Headers

    from relayd.core.admission import Admission

    bob = sim.ws("id=bob")
    payload = json.dumps({"type": "send", "ref": "r1", "receiver_id": "bob", "content": "early"}).encode()
    mask = b"\x01\x02\x03\x04"
    frame = bytes((0x81, 0x80 | len(payload))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40999))
    request = SimpleNamespace(
        requestHeaders=Headers({b"sec-websocket-key": [b"dGhlIHNhbXBsZSBub25jZQ=="]}),
        content=io.BytesIO(frame),
        channel=SimpleNamespace(transport=transport),
    )
    session = result_of(sim.relay.prepare(result_of(sim.relay.admit("eager", "ws")), None, None))
    sim.parts.ws_factory.accept(request, Admission(session, None, None, "127.0.0.1", "/ws?id=eager"))
    sim.flush()
    assert transport.value().startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in transport.value()  # RFC 6455's example accept key
    assert [m["content"] for m in bob.client.messages] == ["early"]
    assert b'"type":"ack","ref":"r1"' in transport.value()


def test_a_connection_starts_with_every_attribute_autobahn_would_give_it(sim):
    """Guards the reduced set-up against an Autobahn that adds per-connection state."""
    from autobahn.twisted.websocket import WebSocketServerProtocol

    factory = sim.parts.ws_factory
    theirs = WebSocketServerProtocol()
    theirs.factory = factory
    WebSocketServerProtocol._connectionMade(theirs)
    ours = factory.protocol()
    ours.factory = factory
    ours._connectionMade()
    missing = sorted(name for name in vars(theirs) if not hasattr(ours, name))
    assert missing == []
    differ = sorted(name for name, value in vars(theirs).items()
                    if isinstance(value, (bool, int, float, str, bytes, type(None))) and getattr(ours, name) != value)
    assert differ == []
    assert len(vars(ours)) < len(vars(theirs)) / 4


def test_a_connection_admitted_later_no_longer_counts_as_an_http_connection(make_relay):
    """A WebSocket upgraded after its admission waited (a store commit, Redis) leaves the HTTP count.

    Counted twice (its HTTP channel and its session), the upgrades waited
    for would fill ``--max-connections`` at half of it: later upgrades got
    503, and idle keep-alive connections were evicted.
    """
    sim = make_relay(max_connections=3)
    held = HeldReplays(sim)
    early = [sim.ws(f"id=early{n}") for n in range(2)]
    held.stop()
    held.answer()
    sim.flush()
    assert [conn.client.welcome["client_id"] for conn in early] == ["early0", "early1"]
    assert list(sim.parts.site.channels) == []
    late = sim.ws("id=late")
    assert late.client.welcome["client_id"] == "late"
    assert sim.registry.counts["ws"] == 3


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 300, 65535, 65536, 70000])
def test_a_text_frame_carries_its_length_in_the_smallest_form(length):
    from relayd.transports.websocket import text_frame

    payload = b"x" * length
    frame = text_frame(payload)
    assert frame[0] == 0x81 and frame.endswith(payload)
    head = frame[:-length] if length else frame
    if length < 126:
        assert head == bytes((0x81, length))
    elif length < 65536:
        assert head[1] == 126 and int.from_bytes(head[2:], "big") == length and len(head) == 4
    else:
        assert head[1] == 127 and int.from_bytes(head[2:], "big") == length and len(head) == 10
