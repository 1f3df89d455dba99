"""
One behaviour suite, run over both transports (``/ws`` and ``/events``):
the per-connection promises of CONTRACT.md sections 4, 5, 13 and 14, in
memory (the whole Site on a fake clock, clients over ``iosim``).
"""

from __future__ import annotations

import jwt
import pytest

from relayd.core.session import CLOSE_GOING_AWAY

TRANSPORTS = ("ws", "sse")
UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
           "Sec-WebSocket-Version": "13"}
SECRET = b"s" * 32


@pytest.fixture(params=TRANSPORTS)
def transport(request):
    """Each test runs once per transport."""
    return request.param


def ended_as_slow_consumer(client, transport: str) -> bool:
    """WebSocket: a 4008 close frame; SSE: the stream is cut (the reader is not reading: no close event)."""
    return client.close_code == 4008 if transport == "ws" else client.lost and client.close_code is None


def test_welcome_is_the_first_frame(sim, transport):
    conn = sim.connect(transport, "id=alice")
    welcome = conn.client.welcome
    assert conn.client.frames == [welcome]
    assert (welcome["client_id"], welcome["last_id"], welcome["replayed"], welcome["lost"]) == ("alice", 0, 0, False)
    assert sim.registry.counts[transport] == 1


def test_replay_then_live(sim, transport):
    sim.send(receiver_id="alice", content="q1")
    sim.send(receiver_id="alice", content="q2")
    conn = sim.connect(transport, "id=alice")
    sim.send(receiver_id="alice", content="live")
    assert [f["type"] for f in conn.client.frames] == ["welcome", "message", "message", "message"]
    assert conn.client.welcome["replayed"] == 2
    assert [(m["id"], m["content"]) for m in conn.client.messages] == [(1, "q1"), (2, "q2"), (3, "live")]


def test_resume_and_lost(sim, transport):
    first = sim.connect(transport, "id=alice")
    epoch = first.client.welcome["epoch"]
    for n in range(3):
        sim.send(receiver_id="alice", content=n)
    resumed = sim.connect(transport, f"id=alice&last_id=1&epoch={epoch}")
    assert resumed.client.welcome["lost"] is False
    assert [m["id"] for m in resumed.client.messages] == [2, 3]
    stale = sim.connect(transport, "id=alice&last_id=1&epoch=stale")
    assert stale.client.welcome["lost"] is True
    assert [m["id"] for m in stale.client.messages] == [1, 2, 3]


@pytest.mark.parametrize("newer", TRANSPORTS)
def test_a_newer_connection_replaces_the_older_with_4000_across_transports(sim, transport, newer):
    old = sim.connect(transport, "id=tab")
    new = sim.connect(newer, "id=tab")
    sim.flush()
    assert old.client.close_code == 4000 and new.client.close_code is None
    sim.send(receiver_id="tab", content="to the newest")
    assert [m["content"] for m in new.client.messages] == ["to the newest"] and old.client.messages == []
    assert len(sim.registry) == 1


def test_reject_refuses_a_duplicate_with_409(make_relay, transport):
    sim = make_relay(duplicates="reject")
    live = sim.connect(transport, "id=solo")
    for path, headers in (("/ws?id=solo", UPGRADE), ("/events?id=solo", {})):
        response = sim.request("GET", path, headers=headers)
        assert response.status == 409 and response.json()["error"] == "duplicate"
    assert live.client.close_code is None and len(sim.registry) == 1


def test_slow_consumer_4008_keeps_history(make_relay, transport):
    sim = make_relay(send_buffer=1000)
    conn = sim.connect(transport, "id=slow")
    epoch = conn.client.welcome["epoch"]
    sim.link("slow").queue.pauseProducing()  # what Twisted does while this connection's buffer is full
    for _ in range(6):
        sim.send(receiver_id="slow", content="x" * 300)
    sim.flush()
    assert ended_as_slow_consumer(conn.client, transport)
    assert conn.client.messages == [] and sim.registry.sessions("slow") == ()
    again = sim.connect(transport, f"id=slow&last_id=0&epoch={epoch}")
    assert again.client.welcome["lost"] is False and [m["id"] for m in again.client.messages] == [1, 2, 3, 4, 5, 6]


def test_held_frames_count_as_delivered_only_once_written(make_relay, transport):
    sim = make_relay(send_buffer=1000)
    sim.connect(transport, "id=held")
    queue = sim.link("held").queue
    queue.pauseProducing()
    sim.send(receiver_id="held", content="one")
    sim.send(receiver_id="held", content="two")
    queue.resumeProducing()  # both go out
    queue.pauseProducing()
    sim.send(receiver_id="held", content="three")  # held, then the connection is cut
    for _ in range(4):
        sim.send(receiver_id="held", content="x" * 300)
    sim.flush()
    again = sim.connect(transport, "id=held")  # no last_id: what was never written
    assert [m["content"] for m in again.client.messages][:1] == ["three"]
    assert again.client.welcome["replayed"] == 5


def test_4001_when_the_token_expires(make_relay, clock, transport):
    sim = make_relay(secret=SECRET)
    clock.advance(1000)
    token = jwt.encode({"sub": "tok", "exp": 1030}, SECRET, algorithm="HS256")
    conn = sim.connect(transport, f"token={token}")
    assert conn.client.welcome["client_id"] == "tok"
    sim.advance(29, step=1)
    sim.parts.expiry.sweep()
    sim.flush()
    assert conn.client.close_code is None
    sim.advance(2, step=1)
    sim.parts.expiry.sweep()
    sim.flush()
    assert conn.client.close_code == 4001


def test_1001_on_shutdown_and_gone_waits_for_everyone(sim, transport):
    conns = [sim.connect(transport, f"id=c{n}") for n in range(3)]
    done = []
    sim.parts.links.close_all(CLOSE_GOING_AWAY, "server shutting down", 5.0, 0.5).addCallback(done.append)
    sim.flush()
    sim.advance(0.5)
    assert [c.client.close_code for c in conns] == [1001] * 3 and all(c.client.lost for c in conns)
    assert done == [None] and len(sim.registry) == 0 and sim.parts.links.live == set()


def test_head_never_admits(sim, transport):
    live = sim.connect(transport, "id=solo")
    path = "/ws?id=solo" if transport == "ws" else "/events?id=solo"
    response = sim.request("HEAD", path, headers=UPGRADE if transport == "ws" else {})
    assert response.status in (200, 426)
    sim.flush()
    assert live.client.close_code is None and len(sim.registry) == 1
    sim.send(receiver_id="solo", content="still here")
    assert [m["content"] for m in live.client.messages] == ["still here"]


def test_4010_when_the_next_message_cannot_be_delivered_in_order(sim, transport):
    conn = sim.connect(transport, "id=gap")
    sim.relay.gap("gap")
    sim.flush()
    assert conn.client.close_code == 4010 and sim.registry.sessions("gap") == ()
