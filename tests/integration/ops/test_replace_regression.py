"""
Regression, on a real relay: under ``--duplicates replace`` the older
WebSocket is closed with 4000 and the newer one keeps receiving (the core's
side in memory: tests/unit/test_replace_regression.py).
"""

from __future__ import annotations

import json

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect


@pytest.mark.integration
def test_replaced_websocket_gets_4000_and_the_newer_one_keeps_receiving(shared_relay):
    with connect(f"{shared_relay.ws}/ws?id=replace-alice") as older:
        assert json.loads(older.recv(timeout=10))["type"] == "welcome"
        with connect(f"{shared_relay.ws}/ws?id=replace-alice") as newer:
            assert json.loads(newer.recv(timeout=10))["type"] == "welcome"
            with pytest.raises(ConnectionClosed) as closed:
                older.recv(timeout=10)
            assert closed.value.rcvd.code == 4000
            status, reply = shared_relay.send({"receiver_id": "replace-alice", "content": "still here"})
            assert status == 200 and reply["sent"] == ["replace-alice"]
            assert json.loads(newer.recv(timeout=10))["content"] == "still here"
    assert shared_relay.health()[1]["status"] == "ok"
