"""The first thing a new user does: start the relay, send, receive."""

import json

from websockets.sync.client import connect


def test_send_then_receive_over_websocket(shared_relay):
    """A message POSTed before the client connects is queued, then delivered after the welcome."""
    status, reply = shared_relay.send({"receiver_id": "smoke-alice", "content": {"n": 1}, "sender_id": "billing"})
    assert status == 200
    assert reply["queued"] == ["smoke-alice"] and reply["sent"] == []
    with connect(f"{shared_relay.ws}/ws?id=smoke-alice") as ws:
        welcome = json.loads(ws.recv(timeout=5))
        assert welcome["type"] == "welcome" and welcome["replayed"] == 1 and welcome["lost"] is False
        message = json.loads(ws.recv(timeout=5))
        assert message["id"] == 1 and message["content"] == {"n": 1} and message["sender_id"] == "billing"
        status, reply = shared_relay.send({"receiver_id": "smoke-alice", "content": "live"})
        assert status == 200 and reply["sent"] == ["smoke-alice"]
        assert json.loads(ws.recv(timeout=5))["id"] == 2
