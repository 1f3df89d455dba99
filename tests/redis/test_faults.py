"""
Faults on the Redis path, against real ``twistd relay`` processes and a
private ``redis-server`` each test starts (CONTRACT.md sections 7 and 14).
Every wait is bounded.
"""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
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


class Watcher:
    """One live client that checks every id it gets and resumes after a close, recording why."""

    def __init__(self, node, client_id):
        self.node, self.client_id = node, client_id
        self.closes: list[int] = []
        self.welcomes: list[dict] = []
        self.after_4010: list[dict] = []  # the welcome of each resume after a 4010
        self.silent_gaps: list[tuple[int, int]] = []
        self.contents: list = []
        self.last: tuple[str, int] | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            query = f"id={self.client_id}"
            if self.last is not None:
                query += f"&last_id={self.last[1]}&epoch={self.last[0]}"
            try:
                with connect(f"{self.node.ws}/ws?{query}", open_timeout=5, max_size=None) as ws:
                    self._read(ws)
            except ConnectionClosed as closed:
                self.closes.append(closed.rcvd.code if closed.rcvd else 1006)
            except (OSError, TimeoutError, InvalidStatus):
                pass
            time.sleep(0.05)

    def _read(self, ws):
        hello = json.loads(ws.recv(timeout=10))
        if self.closes and self.closes[-1] == 4010 and len(self.after_4010) < self.closes.count(4010):
            self.after_4010.append(hello)
        self.welcomes.append(hello)
        if self.last is None and hello["replayed"] == 0:  # first connection: resume from its welcome
            self.last = (hello["epoch"], hello["last_id"])
        expected = None if hello["lost"] or self.last is None else self.last[1] + 1
        while not self.stop.is_set():
            try:
                frame = json.loads(ws.recv(timeout=0.5))
            except TimeoutError:
                continue
            if expected is not None and frame["id"] != expected:
                self.silent_gaps.append((expected, frame["id"]))
            self.last = (hello["epoch"], frame["id"])
            self.contents.append(frame["content"])
            expected = frame["id"] + 1


def test_a_subscriber_cut_by_redis_closes_with_4010_and_never_skips_silently(start_relay, small_buffer_redis):
    """
    Each batch publishes more than the subscriber may hold unsent (64 KiB):
    Redis cuts it, and messages published meanwhile are past what is kept
    (one message per id), so some connections cannot get the next id.
    """
    (node,) = nodes(start_relay, small_buffer_redis.url, 1, "--history-size", "1", "--send-buffer", "67108864",
                    "--max-message-size", "1048576")
    ids = [f"flood-{n}" for n in range(4)]
    watchers = [Watcher(node, client_id) for client_id in ids]
    eventually(lambda: all(w.welcomes for w in watchers))
    content = "x" * 30000
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline and not all(4010 in w.closes for w in watchers):
            node.send([{"receiver_ids": ids, "content": {"n": n, "pad": content}} for n in range(3)])
        eventually(lambda: node.health()[0] == 200, timeout=20)
        for n in range(3):  # after the storm, each id's next messages arrive in order
            assert node.send({"receiver_ids": ids, "content": {"after": n}})[0] == 200
        time.sleep(1.5)
    finally:
        for watcher in watchers:
            watcher.stop.set()
        for watcher in watchers:
            watcher.thread.join(15)
    assert "closed for overcoming of output buffer limits" in small_buffer_redis.log() or "redis connection lost" in node.log()
    for watcher in watchers:
        assert watcher.silent_gaps == [], (watcher.client_id, watcher.silent_gaps)
        assert 4010 in watcher.closes, (watcher.client_id, watcher.closes)
    # A resume after a 4010 says lost when what was skipped is no longer kept (else its replay goes on in order).
    assert any(hello["lost"] for watcher in watchers for hello in watcher.after_4010)


def test_an_overload_is_refused_with_503_and_loses_nothing_acknowledged(start_relay, tmp_path):
    """
    Senders POST as fast as they can for a while to ids with 12 connections
    each (fanout: delivering costs more than accepting). What got a 200
    reaches every live connection of its id once, in order; Redis never has
    to cut the subscriber (here at 256 KiB of unsent output), because the node
    refuses with 503 what it cannot deliver promptly.
    """
    from tests.redis.conftest import PrivateRedis

    redis = PrivateRedis(tmp_path, "--appendonly", "no", "--client-output-buffer-limit", "pubsub 256kb 128kb 1").start()
    try:
        (node,) = nodes(start_relay, redis.url, 1, "--history-size", "1000", "--duplicates", "fanout",
                        "--max-per-id", "16")
        ids = [f"ov-{n}" for n in range(2)]
        watchers = [Watcher(node, client_id) for client_id in ids for _ in range(12)]
        eventually(lambda: all(w.welcomes for w in watchers))
        acknowledged, statuses = [], []

        def send(worker: int) -> None:
            connection = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10)
            deadline = time.monotonic() + 12
            n = 0
            while time.monotonic() < deadline:
                batch = [{"receiver_id": ids[k % 2], "content": f"{ids[k % 2]}/{worker}-{n}-{k}"} for k in range(20)]
                connection.request("POST", "/send-message", json.dumps(batch), {"Content-Type": "application/json"})
                response = connection.getresponse()
                body = json.loads(response.read())
                statuses.append(200 if response.status == 200 else body["error"])
                if response.status == 200:
                    acknowledged.extend(message["content"] for message in batch)
                n += 1

        senders = [threading.Thread(target=send, args=(worker,), daemon=True) for worker in range(6)]
        for thread in senders:
            thread.start()
        for thread in senders:
            thread.join(30)
        # Wait for what was acknowledged itself: a batch refused part-way (503 after some of its messages were
        # published) delivers messages that are not in `acknowledged`, so counting frames could stop too early.
        owed = {client_id: {content for content in acknowledged if content.startswith(client_id + "/")} for client_id in ids}
        eventually(lambda: all(owed[w.client_id] <= set(w.contents) for w in watchers), timeout=30)
    finally:
        for watcher in watchers:
            watcher.stop.set()
        for watcher in watchers:
            watcher.thread.join(15)
        redis.kill()
    assert set(statuses) <= {200, "overloaded"}, set(statuses)
    assert "output buffer limits" not in redis.log()
    for watcher in watchers:
        mine = {content for content in acknowledged if content.startswith(watcher.client_id + "/")}
        assert len(watcher.contents) == len(set(watcher.contents)), watcher.client_id
        assert mine <= set(watcher.contents), (watcher.client_id, len(mine - set(watcher.contents)))
        assert watcher.silent_gaps == [] and 4010 not in watcher.closes, (watcher.client_id, watcher.closes)
