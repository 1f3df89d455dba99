"""
Delivery from outside (CONTRACT 4, 7): order per id, queued then delivered,
resume with ``last_id`` + ``epoch``, ``lost``, never twice, broadcast.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from websockets.exceptions import ConnectionClosed

from tests.integration.clients import Healthy, open_ws, recv_json

pytestmark = pytest.mark.integration


def post_many(relay, client_id: str, count: int, tag: str = "") -> None:
    """POST ``count`` messages to ``client_id``, one request each, content ``{"tag", "n"}``."""
    for n in range(count):
        status, reply = relay.send({"receiver_id": client_id, "content": {"tag": tag, "n": n}})
        assert status == 200, reply


def receive(ws, count: int) -> list[dict]:
    """The next ``count`` message frames."""
    messages = [recv_json(ws) for _ in range(count)]
    assert all(m["type"] == "message" for m in messages), messages
    return messages


def test_order_per_id_under_concurrent_posts(start_relay):
    """Four senders POST 50 messages each at once: ids 1..200 arrive in order, each sender's in its order."""
    relay = start_relay("--history-size", "1000")
    ws, _ = open_ws(relay, "id=busy")
    with ThreadPoolExecutor(4) as pool:
        for future in [pool.submit(post_many, relay, "busy", 50, f"t{t}") for t in range(4)]:
            future.result()
    messages = receive(ws, 200)
    assert [m["id"] for m in messages] == list(range(1, 201))
    for tag in ("t0", "t1", "t2", "t3"):
        assert [m["content"]["n"] for m in messages if m["content"]["tag"] == tag] == list(range(50))
    assert all(m["receiver_id"] == "busy" and m["sender_id"] is None for m in messages)
    ws.close()


def test_queued_then_delivered_after_welcome(shared_relay):
    """Messages for an absent id are queued, then sent right after the welcome, once."""
    for n in range(3):
        status, reply = shared_relay.send({"receiver_id": "offline-1", "content": n, "sender_id": "billing"})
        assert status == 200 and reply["queued"] == ["offline-1"] and reply["sent"] == []
    ws, welcome = open_ws(shared_relay, "id=offline-1")
    assert welcome["replayed"] == 3 and welcome["last_id"] == 3 and welcome["lost"] is False
    messages = receive(ws, 3)
    assert [m["id"] for m in messages] == [1, 2, 3] and [m["content"] for m in messages] == [0, 1, 2]
    assert all(m["sender_id"] == "billing" for m in messages)
    ws.close()
    again, welcome = open_ws(shared_relay, "id=offline-1")
    assert welcome["replayed"] == 0 and welcome["lost"] is False, "delivered messages were queued again"
    status, reply = shared_relay.send({"receiver_id": "offline-1", "content": "live"})
    assert reply["sent"] == ["offline-1"] and recv_json(again)["id"] == 4
    again.close()


def test_resume_replays_exactly_the_missing(shared_relay):
    """Resuming with ``last_id`` + ``epoch`` sends every kept message after it, nothing more."""
    ws, welcome = open_ws(shared_relay, "id=resumer")
    epoch = welcome["epoch"]
    post_many(shared_relay, "resumer", 5)
    assert [m["id"] for m in receive(ws, 5)] == [1, 2, 3, 4, 5]
    ws.close()
    post_many(shared_relay, "resumer", 3, "offline")
    for last_id, expected in ((5, [6, 7, 8]), (3, [4, 5, 6, 7, 8]), (8, [])):
        ws, welcome = open_ws(shared_relay, f"id=resumer&last_id={last_id}&epoch={epoch}")
        assert welcome == {**welcome, "epoch": epoch, "last_id": 8, "replayed": len(expected), "lost": False}
        assert [m["id"] for m in receive(ws, len(expected))] == expected
        ws.close()
    ws, welcome = open_ws(shared_relay, f"id=resumer&last_id=8&epoch={epoch}")
    status, reply = shared_relay.send({"receiver_id": "resumer", "content": "marker"})
    assert reply["sent"] == ["resumer"]
    marker = recv_json(ws)
    assert marker["content"] == "marker" and marker["id"] == 9, "something was replayed beyond what was missing"
    ws.close()


def test_resume_without_epoch_reads_current_epoch(shared_relay):
    """``last_id`` without ``epoch`` is read in the current epoch."""
    post_many(shared_relay, "no-epoch", 4)
    ws, welcome = open_ws(shared_relay, "id=no-epoch&last_id=2")
    assert welcome["replayed"] == 2 and welcome["lost"] is False
    assert [m["id"] for m in receive(ws, 2)] == [3, 4]
    ws.close()


def test_wrong_epoch_is_lost_and_replays_current(shared_relay):
    """An epoch that is not the current one: ``lost`` true, every kept message of the current epoch sent."""
    post_many(shared_relay, "old-epoch", 3)
    ws, welcome = open_ws(shared_relay, "id=old-epoch&last_id=2&epoch=notthis")
    assert welcome["lost"] is True and welcome["replayed"] == 3 and welcome["epoch"] != "notthis"
    assert [m["id"] for m in receive(ws, 3)] == [1, 2, 3]
    ws.close()


def test_last_id_too_high_is_lost(shared_relay):
    """A ``last_id`` above every id assigned in the epoch: ``lost`` true."""
    post_many(shared_relay, "too-high", 2)
    ws, welcome = open_ws(shared_relay, "id=too-high&last_id=2")
    epoch = welcome["epoch"]
    assert welcome["lost"] is False and welcome["replayed"] == 0
    ws.close()
    ws, welcome = open_ws(shared_relay, f"id=too-high&last_id=50&epoch={epoch}")
    assert welcome["lost"] is True and welcome["last_id"] == 2 and welcome["replayed"] == 2
    assert [m["id"] for m in receive(ws, 2)] == [1, 2]
    ws.close()


def test_evicted_history_is_lost(start_relay):
    """With ``--history-size 2`` a resume across evicted messages is ``lost``; the kept ones are sent."""
    relay = start_relay("--history-size", "2")
    healthy = Healthy(relay, "healthy")
    ws, welcome = open_ws(relay, "id=evicted")
    epoch = welcome["epoch"]
    ws.close()
    post_many(relay, "evicted", 5)
    ws, welcome = open_ws(relay, f"id=evicted&last_id=1&epoch={epoch}")
    assert welcome == {**welcome, "lost": True, "replayed": 2, "last_id": 5}
    assert [m["id"] for m in receive(ws, 2)] == [4, 5]
    ws.close()
    ws, welcome = open_ws(relay, f"id=evicted&last_id=3&epoch={epoch}")
    assert welcome["lost"] is False and welcome["replayed"] == 2
    ws.close()
    healthy.check()


def test_restart_gives_new_epoch_and_lost(start_relay):
    """An in-memory relay that restarts starts a new epoch: the old ``(epoch, last_id)`` is ``lost``."""
    first = start_relay()
    ws, _ = open_ws(first, "id=survivor")
    post_many(first, "survivor", 2)
    assert [m["id"] for m in receive(ws, 2)] == [1, 2]
    ws.close()
    ws, welcome = open_ws(first, "id=survivor&last_id=2")
    old_epoch = welcome["epoch"]
    assert welcome["lost"] is False
    ws.close()
    assert first.stop() == 0
    second = start_relay()
    post_many(second, "survivor", 1)
    ws, welcome = open_ws(second, f"id=survivor&last_id=2&epoch={old_epoch}")
    assert welcome["epoch"] != old_epoch and welcome["lost"] is True
    assert welcome["last_id"] == 1 and welcome["replayed"] == 1
    assert receive(ws, 1)[0]["id"] == 1
    ws.close()


def test_nothing_twice_while_reconnecting_under_load(start_relay):
    """
    A sender POSTs 300 messages while the client keeps reconnecting with
    ``last_id`` + ``epoch``: each connection sees strictly increasing ids,
    and together they see every id exactly once, in order, nothing lost.
    """
    relay = start_relay("--history-size", "1000")
    total = 300
    sender = threading.Thread(target=post_many, args=(relay, "hopper", total))
    ws, welcome = open_ws(relay, "id=hopper")
    epoch, seen = welcome["epoch"], []
    sender.start()
    try:
        while len(seen) < total:
            if ws is None:
                ws, welcome = open_ws(relay, f"id=hopper&last_id={seen[-1] if seen else 0}&epoch={epoch}")
            assert welcome["lost"] is False and welcome["epoch"] == epoch
            batch = []
            try:
                for _ in range(25):
                    batch.append(recv_json(ws)["id"])
            except (ConnectionClosed, TimeoutError):
                raise AssertionError(f"stalled after {seen[-1:]} + {batch}") from None
            assert batch == sorted(set(batch)), batch
            seen.extend(batch)
            ws.close()
            ws = None
    finally:
        sender.join(60)
    assert seen == list(range(1, total + 1))


def test_fanout_each_connection_gets_each_message_once(start_relay):
    """Under fanout, every connection of an id receives each message exactly once."""
    relay = start_relay("--duplicates", "fanout")
    tabs = [open_ws(relay, "id=tabbed")[0] for _ in range(3)]
    post_many(relay, "tabbed", 10)
    for tab in tabs:
        assert [m["id"] for m in receive(tab, 10)] == list(range(1, 11))
    relay.send({"receiver_id": "tabbed", "content": "last"})
    for tab in tabs:
        assert recv_json(tab)["content"] == "last", "a message arrived twice"
        tab.close()


def test_broadcast_reaches_all_with_null_id(start_relay):
    """A broadcast reaches every connected client with ``id`` and ``receiver_id`` null; it is not kept."""
    relay = start_relay()
    clients = [open_ws(relay, f"id=b{n}")[0] for n in range(5)]
    status, reply = relay.send({"broadcast": True, "content": {"all": True}, "sender_id": "ops"})
    assert status == 200 and reply == {**reply, "sent": [], "queued": [], "dropped": []}
    for ws in clients:
        message = recv_json(ws)
        assert message == {**message, "type": "message", "id": None, "receiver_id": None,
                           "sender_id": "ops", "content": {"all": True}}
    relay.send({"receiver_id": "b0", "content": "numbered"})
    assert recv_json(clients[0])["id"] == 1, "a broadcast took a number"
    late, welcome = open_ws(relay, "id=late")
    assert welcome["replayed"] == 0, "a broadcast was kept"
    for ws in clients + [late]:
        ws.close()
