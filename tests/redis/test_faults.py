"""
Faults on the Redis path, against real ``twistd relay`` processes and a
private ``redis-server`` each test starts (CONTRACT.md sections 7 and 14).
Every wait is bounded.
"""

from __future__ import annotations

import json
import signal
import time

import pytest
from websockets.sync.client import connect

from tests.redis.test_cluster import eventually, nodes, receive, welcome

pytestmark = [pytest.mark.integration, pytest.mark.redis]


def test_a_retry_with_its_idempotency_key_after_a_frozen_redis_is_delivered_once(start_relay, private_redis):
    a, b = nodes(start_relay, private_redis.url, 2)
    with connect(f"{b.ws}/ws?id=ida") as ws:
        welcome(ws)
        private_redis.process.send_signal(signal.SIGSTOP)
        try:
            answers = [a.send({"receiver_id": "ida", "content": n, "idempotency_key": f"k{n}"})[0] for n in range(6)]
            time.sleep(1)
        finally:
            private_redis.process.send_signal(signal.SIGCONT)
        assert 503 in answers
        for node in (a, b):
            eventually(lambda node=node: node.health()[0] == 200, timeout=20)
        retries = [b.send({"receiver_id": "ida", "content": n, "idempotency_key": f"k{n}"}) for n in range(6)]
        assert all(status == 200 for status, _ in retries), retries
        assert len({reply["message_id"] for _, reply in retries}) == 6
        live = []
        while len(live) < 6:
            frame = receive(ws)
            live.append(frame["content"])
        assert sorted(live) == list(range(6))
        with pytest.raises(TimeoutError):
            ws.recv(timeout=1)
    with connect(f"{a.ws}/ws?id=ida&last_id=0") as ws:
        hello = welcome(ws)
        contents = [json.loads(ws.recv(timeout=10))["content"] for _ in range(hello["replayed"])]
        assert hello["lost"] is False and sorted(contents) == list(range(6))
