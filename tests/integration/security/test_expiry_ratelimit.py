"""
Token expiry (close 4001), refresh, and the send-rate limit, against a real
``twistd relay`` with a secret and ``--send-rate 0.5 --send-burst 3``.
"""

from __future__ import annotations

import json
import time

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.relayproc import RelayProcess
from tests.security_helpers import SECRET, recv_json, recv_until, token

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def relay(tmp_path_factory):
    directory = tmp_path_factory.mktemp("expiry")
    process = RelayProcess(
        ["--send-rate", "0.5", "--send-burst", "3"], env={"RELAY_SECRET": SECRET.decode()}, log_dir=directory
    ).start()
    yield process
    process.stop()


def post(relay, receiver, content):
    return relay.send({"receiver_id": receiver, "content": content},
                      headers={"Authorization": f"Bearer {token('backend', scope='send')}"})


def wait_close(ws, timeout=15):
    """Read until the server closes; return the close code."""
    deadline = time.monotonic() + timeout
    with pytest.raises(ConnectionClosed) as info:
        while time.monotonic() < deadline:
            ws.recv(timeout=max(0.1, deadline - time.monotonic()))
    return info.value.rcvd.code if info.value.rcvd else None


def test_expired_token_closes_with_4001(relay):
    with connect(f"{relay.ws}/ws?id=exp-a&token={token('exp-a', ttl=4)}") as ws:
        assert recv_json(ws)["type"] == "welcome"
        assert post(relay, "exp-a", "before")[0] == 200
        assert recv_json(ws)["content"] == "before"
        assert wait_close(ws) == 4001
    deadline = time.monotonic() + 10
    while relay.health()[1]["clients"] and time.monotonic() < deadline:
        time.sleep(0.05)  # the server unregisters once the TCP connection is gone
    assert relay.health()[1]["clients"] == 0


def test_refresh_extends_then_shortens(relay):
    with connect(f"{relay.ws}/ws?id=exp-b&token={token('exp-b', ttl=4)}") as ws:
        recv_json(ws)
        ws.send(json.dumps({"type": "refresh", "ref": "f1", "token": token("exp-b", ttl=300)}))
        assert recv_json(ws) == {"type": "ack", "ref": "f1"}
        for bad, error in ((token("mallory", ttl=300), "invalid_token"), (token("exp-b", ttl=-1), "token_expired"),
                           ("junk", "invalid_token")):
            ws.send(json.dumps({"type": "refresh", "ref": "bad", "token": bad}))
            frame = recv_json(ws)
            assert frame["type"] == "error" and frame["error"] == error
        time.sleep(5.5)  # past the first token's exp and at least two sweeps
        assert post(relay, "exp-b", "still here")[0] == 200
        assert recv_json(ws)["content"] == "still here"
        ws.send(json.dumps({"type": "refresh", "token": token("exp-b", ttl=3)}))
        assert recv_json(ws)["type"] == "ack"
        assert wait_close(ws) == 4001


def test_send_rate_limit_then_1008(relay):
    with connect(f"{relay.ws}/ws?id=flood&token={token('flood', scope='send')}") as healthy_ws, \
            connect(f"{relay.ws}/ws?id=spammer&token={token('spammer', scope='send')}") as ws:
        recv_json(healthy_ws)
        recv_json(ws)
        for n in range(3):
            ws.send(json.dumps({"type": "send", "ref": n, "receiver_id": "flood", "content": n}))
        replies = [recv_json(ws) for _ in range(3)]
        assert [r["type"] for r in replies] == ["ack"] * 3
        ws.send(json.dumps({"type": "send", "ref": "over", "receiver_id": "flood", "content": "over"}))
        refused = recv_json(ws)
        assert (refused["type"], refused["ref"], refused["error"]) == ("error", "over", "rate_limited")
        for _ in range(10):
            ws.send(json.dumps({"type": "send", "receiver_id": "flood", "content": "more"}))
        assert wait_close(ws) == 1008
        # The healthy client got exactly the three allowed messages, and still receives.
        assert [recv_json(healthy_ws)["content"] for _ in range(3)] == [0, 1, 2]
        assert post(relay, "flood", "after")[0] == 200
        assert recv_until(healthy_ws, lambda f: f.get("content") == "after")


def test_rate_limit_refills(relay):
    with connect(f"{relay.ws}/ws?id=steady&token={token('steady', scope='send')}") as ws:
        recv_json(ws)
        kinds = []
        for n in range(5):
            ws.send(json.dumps({"type": "send", "receiver_id": "nobody-here", "content": n}))
            kinds.append(recv_json(ws).get("error", "ack"))
        assert kinds == ["ack", "ack", "ack", "rate_limited", "rate_limited"]
        time.sleep(2.2)  # one token back at 0.5/s
        ws.send(json.dumps({"type": "send", "receiver_id": "nobody-here", "content": "later"}))
        assert recv_json(ws)["type"] == "ack"
