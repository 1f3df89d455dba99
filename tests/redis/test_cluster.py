"""
Several real ``twistd relay`` processes sharing one Redis behave as one relay.

Every test starts its own nodes on loopback (``tcp:0``) with a key prefix of
its own on the shared Redis, or with a private ``redis-server`` it may kill.
Waits are bounded and generous; nothing here measures speed (see
``python -m relayd.bench --only redis``).
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

pytestmark = [pytest.mark.integration, pytest.mark.redis]

WAIT = 10


def receive(ws, timeout=WAIT):
    """The next frame, parsed."""
    return json.loads(ws.recv(timeout=timeout))


def welcome(ws):
    """The welcome frame (asserting it is one)."""
    frame = receive(ws)
    assert frame["type"] == "welcome", frame
    return frame


def eventually(check, timeout=WAIT, interval=0.1):
    """Poll ``check`` until it returns a true value; return it (or fail)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {check}")
        time.sleep(interval)


def health_ok(node) -> bool:
    """True when ``node`` answers /health-check with 200."""
    return node.health()[0] == 200


def connect_unless_503(url):
    """A WebSocket to ``url``, or None while the node answers 503 (retry later)."""
    try:
        return connect(url, open_timeout=WAIT)
    except InvalidStatus as refusal:
        if refusal.response.status_code == 503:
            return None
        raise


def refused(url):
    """The HTTP status and JSON body with which ``/ws`` at ``url`` is refused."""
    with pytest.raises(InvalidStatus) as failed:
        connect(url, open_timeout=WAIT)
    response = failed.value.response
    return response.status_code, json.loads(response.body)


def nodes(start_relay, url, count, *args):
    """``count`` relay processes on one broker URL, each answering its health check."""
    started = [start_relay("--broker", url, *args, name=f"node{i}") for i in range(count)]
    for node in started:
        eventually(lambda node=node: node.health()[0] == 200)
    return started


def test_message_reaches_the_id_on_another_node(start_relay, shared_redis):
    url, _ = shared_redis
    a, b = nodes(start_relay, url, 2)
    status, reply = a.send({"receiver_id": "carol", "content": "early", "sender_id": "billing"})
    assert status == 200 and reply["queued"] == ["carol"]
    with connect(f"{b.ws}/ws?id=carol") as ws:
        hello = welcome(ws)
        assert hello["last_id"] == 1 and hello["replayed"] == 1
        assert receive(ws)["content"] == "early"
        status, reply = a.send({"receiver_ids": ["carol", "nobody"], "content": {"n": 2}})
        assert status == 200 and reply["sent"] == ["carol"] and reply["queued"] == ["nobody"]
        frame = receive(ws)
        assert (frame["id"], frame["receiver_id"], frame["content"]) == (2, "carol", {"n": 2})
        assert b.health()[1]["clients"] == 1 and a.health()[1]["clients"] == 0
    # Node b learns of the close (and releases the id in Redis) a moment after the client closed.
    eventually(lambda: b.health()[1]["clients"] == 0)
    status, reply = a.send({"receiver_id": "carol", "content": "later"})
    assert status == 200 and reply["queued"] == ["carol"]
    with connect(f"{a.ws}/ws?id=carol") as ws:
        hello = welcome(ws)
        assert (hello["last_id"], hello["replayed"]) == (3, 1)
        frame = receive(ws)
        assert (frame["id"], frame["content"]) == (3, "later")


def test_broadcast_reaches_every_node_once(start_relay, shared_redis):
    url, _ = shared_redis
    a, b = nodes(start_relay, url, 2)
    with connect(f"{a.ws}/ws?id=on-a") as wa, connect(f"{b.ws}/ws?id=on-b") as wb:
        welcome(wa), welcome(wb)
        status, _ = b.send({"broadcast": True, "content": "all"})
        assert status == 200
        status, _ = a.send({"receiver_id": "on-a", "content": "marker"})
        status, _ = b.send({"receiver_id": "on-b", "content": "marker"})
        for ws in (wa, wb):
            first, second = receive(ws), receive(ws)
            assert (first["id"], first["content"]) == (None, "all")
            assert second["content"] == "marker"


def test_nothing_kept_means_dropped_cluster_wide(start_relay, shared_redis):
    url, _ = shared_redis
    a, b = nodes(start_relay, url, 2, "--history-size", "0")
    status, reply = a.send({"receiver_id": "dana", "content": 1})
    assert status == 404 and reply["dropped"] == ["dana"]
    with connect(f"{b.ws}/ws?id=dana") as ws:
        assert welcome(ws)["replayed"] == 0
        status, reply = a.send({"receiver_id": "dana", "content": 2})
        assert status == 200 and reply["sent"] == ["dana"]
        assert receive(ws)["content"] == 2


def test_concurrent_senders_on_two_nodes_never_interleave_ids(start_relay, shared_redis):
    url, _ = shared_redis
    a, b, c = nodes(start_relay, url, 3)
    per_sender = 60
    replies = {"a": [], "b": []}

    def sender(node, name):
        for n in range(per_sender):
            status, reply = node.send({"receiver_id": "erin", "content": {"from": name, "n": n}})
            replies[name].append((status, reply["sent"]))

    with connect(f"{c.ws}/ws?id=erin") as ws:
        welcome(ws)
        threads = [threading.Thread(target=sender, args=(a, "a")), threading.Thread(target=sender, args=(b, "b"))]
        for thread in threads:
            thread.start()
        got = [receive(ws) for _ in range(2 * per_sender)]
        for thread in threads:
            thread.join(WAIT)
    assert [frame["id"] for frame in got] == list(range(1, 2 * per_sender + 1))
    for name in ("a", "b"):
        assert [frame["content"]["n"] for frame in got if frame["content"]["from"] == name] == list(range(per_sender))
        assert replies[name] == [(200, ["erin"])] * per_sender


def test_replace_closes_the_older_connection_on_another_node(start_relay, shared_redis):
    url, _ = shared_redis
    a, b = nodes(start_relay, url, 2)
    with connect(f"{a.ws}/ws?id=frank") as old:
        welcome(old)
        with connect(f"{b.ws}/ws?id=frank") as new:
            welcome(new)
            with pytest.raises(ConnectionClosed) as closed:
                receive(old)
            assert closed.value.rcvd.code == 4000
            status, reply = a.send({"receiver_id": "frank", "content": "to the new one"})
            assert status == 200 and reply["sent"] == ["frank"]
            assert receive(new)["content"] == "to the new one"
            eventually(lambda: a.health()[1]["clients"] == 0)


def test_reject_and_fanout_limits_hold_across_nodes(start_relay, shared_redis):
    url, _ = shared_redis
    a, b = nodes(start_relay, url, 2, "--duplicates", "reject")
    with connect(f"{a.ws}/ws?id=gina") as ws:
        welcome(ws)
        status, body = refused(f"{b.ws}/ws?id=gina")
        assert status == 409 and body["error"] == "duplicate"
        status, reply = b.send({"receiver_id": "gina", "content": "still here"})
        assert status == 200 and receive(ws)["content"] == "still here"
    c, d = nodes(start_relay, url + "x", 2, "--duplicates", "fanout", "--max-per-id", "2")
    with connect(f"{c.ws}/ws?id=hal") as one, connect(f"{d.ws}/ws?id=hal") as two:
        welcome(one), welcome(two)
        status, body = refused(f"{d.ws}/ws?id=hal")
        assert status == 409 and body["error"] == "duplicate"
        status, reply = c.send({"receiver_id": "hal", "content": "both"})
        assert status == 200
        assert receive(one)["content"] == receive(two)["content"] == "both"


def test_resume_on_another_node_and_after_a_node_restart(start_relay, shared_redis):
    url, _ = shared_redis
    a, b = nodes(start_relay, url, 2)
    with connect(f"{a.ws}/ws?id=ivan") as ws:
        epoch = welcome(ws)["epoch"]
        for n in range(3):
            a.send({"receiver_id": "ivan", "content": n})
        assert [receive(ws)["id"] for _ in range(3)] == [1, 2, 3]
    a.stop()
    assert "Server Shut Down" in a.log()
    b.send({"receiver_id": "ivan", "content": 3})
    b.send({"receiver_id": "ivan", "content": 4})
    (a2,) = nodes(start_relay, url, 1)
    with connect(f"{a2.ws}/ws?id=ivan&last_id=3&epoch={epoch}") as ws:
        hello = welcome(ws)
        assert (hello["epoch"], hello["last_id"], hello["replayed"], hello["lost"]) == (epoch, 5, 2, False)
        assert [receive(ws)["id"] for _ in range(2)] == [4, 5]
    with connect(f"{b.ws}/ws?id=ivan&last_id=2&epoch=not-the-epoch") as ws:
        hello = welcome(ws)
        assert hello["lost"] is True and hello["replayed"] == 5


def test_redis_outage_and_recovery(start_relay, private_redis):
    a, b = nodes(start_relay, private_redis.url, 2)
    a.send({"receiver_id": "offline", "content": "kept before the outage"})
    with connect(f"{b.ws}/ws?id=judy") as ws:
        welcome(ws)
        status, reply = a.send({"receiver_id": "judy", "content": "before"})
        assert status == 200 and receive(ws)["content"] == "before"

        private_redis.kill()
        killed = time.monotonic()
        for node in (a, b):
            status, health = eventually(lambda node=node: (lambda h: h if h[0] == 503 else None)(node.health()), timeout=5)
            assert health["status"] == "degraded"
        assert time.monotonic() - killed < 3.0
        asked = time.monotonic()
        status, reply = a.send({"receiver_id": "judy", "content": "during"})
        assert status == 503 and reply["error"] == "broker_unavailable"
        assert time.monotonic() - asked < 3.0
        status, body = refused(f"{b.ws}/ws?id=newcomer")
        assert status == 503 and body["error"] == "broker_unavailable"

        private_redis.start()
        for node in (a, b):
            eventually(lambda node=node: node.health()[0] == 200, timeout=20)
        status, reply = a.send({"receiver_id": "judy", "content": "after"})
        assert status == 200 and reply["sent"] == ["judy"]
        frame = receive(ws)
        assert (frame["id"], frame["content"]) == (2, "after")
    with connect(f"{a.ws}/ws?id=offline") as ws:
        assert welcome(ws)["replayed"] == 1
        assert receive(ws)["content"] == "kept before the outage"


def test_redis_losing_its_data_starts_a_new_epoch(start_relay, private_redis):
    from tests.redis.conftest import redis_cli

    a, b = nodes(start_relay, private_redis.url, 2)
    with connect(f"{b.ws}/ws?id=kim") as ws:
        epoch = welcome(ws)["epoch"]
        a.send({"receiver_id": "kim", "content": "old"})
        assert receive(ws)["id"] == 1
        assert redis_cli(private_redis.port, "FLUSHALL") == "OK"
        eventually(lambda: a.send({"receiver_id": "kim", "content": "new"})[0] == 200)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                receive(ws)
        assert closed.value.rcvd.code == 4009
    # Each node notices the flush at its next heartbeat and registers again;
    # meanwhile it refuses new connections with 503 (retry later), as a client would.
    url = f"{a.ws}/ws?id=kim&last_id=1&epoch={epoch}"
    eventually(lambda: health_ok(a) and health_ok(b))
    with eventually(lambda: connect_unless_503(url)) as ws:
        hello = welcome(ws)
        assert hello["epoch"] != epoch and hello["lost"] is True and hello["replayed"] >= 1
        assert receive(ws)["content"] == "new"


def test_bad_broker_url_stops_start_up_with_a_clear_message(start_relay):
    with pytest.raises(RuntimeError) as failed:
        start_relay("--broker", "redis://127.0.0.1:6379/zero")
    assert "--broker" in str(failed.value) and "database must be a number" in str(failed.value)


def test_a_stream_outlives_its_last_use_by_the_ttl_and_publishes_push_that_back_once_per_tenth(start_relay, shared_redis):
    from tests.redis.conftest import SHARED_PORT, redis_cli

    url, prefix = shared_redis
    (node,) = nodes(start_relay, url, 1, "--history-ttl", "5")  # kept 5 s plus a tenth: 5,500 ms

    def expiry():
        return [int(redis_cli(SHARED_PORT, "PTTL", f"{prefix}{kind}:dora")) for kind in "sh"]

    def touched():
        return redis_cli(SHARED_PORT, "HGET", f"{prefix}s:dora", "touched")

    assert node.send({"receiver_id": "dora", "content": 1})[0] == 200
    first, when = expiry(), touched()
    assert all(5000 < ms <= 5500 for ms in first), first
    assert node.send({"receiver_id": "dora", "content": 2})[0] == 200
    assert touched() == when and all(ms <= kept for ms, kept in zip(expiry(), first, strict=True))
    time.sleep(0.6)  # past a tenth of the TTL: the next message pushes the expiry back
    assert node.send({"receiver_id": "dora", "content": 3})[0] == 200
    assert touched() != when and all(5000 < ms <= 5500 for ms in expiry()), expiry()
