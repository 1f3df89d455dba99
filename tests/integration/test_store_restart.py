"""
``--store``: a relay stopped (SIGTERM) or killed (SIGKILL) under traffic and
started again on the same file resumes every client with ``lost: false``,
and nothing acknowledged is lost or repeated (CONTRACT.md section 14,
"Restarts"). Real ``twistd relay`` processes; every wait is bounded.

The sender retries each message with its ``idempotency_key`` until it gets a
200, as a backend should: what was in flight at the kill is then sent once,
whether or not its first attempt was committed.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

pytestmark = pytest.mark.integration

COUNT = 1200
SENDERS = 4
BATCH = 5
DEADLINE = 60


class Traffic:
    """SENDERS senders POSTing 0..COUNT-1 to one id in batches, and a receiver that reconnects with last_id and epoch."""

    def __init__(self, relay):
        self.relay = relay
        self.acknowledged: list[int] = []
        self.frames: list[tuple[str, int, int]] = []
        self.welcomes: list[dict] = []
        self.done = threading.Event()
        self.errors: list[BaseException] = []
        work = [lambda first=first: self._send(first) for first in range(0, SENDERS * BATCH, BATCH)] + [self._receive]
        self.threads = [threading.Thread(target=self._guard, args=(f,), daemon=True) for f in work]

    def start(self):
        for thread in self.threads:
            thread.start()
        return self

    def join(self):
        for thread in self.threads:
            thread.join(DEADLINE)
        assert not self.errors, self.errors

    def _guard(self, work):
        try:
            work()
        except BaseException as error:  # noqa: B902 - reported to the test
            self.errors.append(error)
            self.done.set()

    def _post(self, first: int) -> int:
        body = json.dumps([{"receiver_id": "restart-rx", "content": n, "idempotency_key": f"n{n}"}
                           for n in range(first, first + BATCH)]).encode()
        request = urllib.request.Request(f"{self.relay.http}/send-message", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            return 0

    def _send(self, start: int):
        deadline = time.monotonic() + DEADLINE
        for first in range(start, COUNT, SENDERS * BATCH):
            while self._post(first) != 200:
                assert time.monotonic() < deadline, f"messages {first}... never got a 200"
                time.sleep(0.05)
            self.acknowledged.extend(range(first, first + BATCH))

    def _receive(self):
        deadline = time.monotonic() + DEADLINE
        while len(self.frames) < COUNT:
            assert time.monotonic() < deadline, f"received {len(self.frames)} of {COUNT}"
            query = "id=restart-rx"
            if self.frames:
                epoch, last_id, _ = self.frames[-1]
                query += f"&last_id={last_id}&epoch={epoch}"
            try:
                with connect(f"{self.relay.ws}/ws?{query}", open_timeout=2) as ws:
                    self.welcomes.append(json.loads(ws.recv(timeout=5)))
                    while len(self.frames) < COUNT:
                        frame = json.loads(ws.recv(timeout=10))
                        self.frames.append((self.welcomes[-1]["epoch"], frame["id"], frame["content"]))
            except (ConnectionClosed, OSError, TimeoutError):
                time.sleep(0.05)
        self.done.set()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_restart_under_traffic_loses_and_repeats_nothing(start_relay, tmp_path, stop):
    args = ("--store", str(tmp_path / "relay.sqlite3"), "--history-size", str(COUNT))
    relay = start_relay(*args, name="before")
    traffic = Traffic(relay).start()
    deadline = time.monotonic() + DEADLINE
    while len(traffic.frames) < COUNT // 3:
        assert time.monotonic() < deadline and not traffic.errors, traffic.errors
        time.sleep(0.01)
    relay.process.send_signal(stop)
    relay.process.wait(15)
    traffic.relay = start_relay(*args, name="after")
    assert traffic.done.wait(DEADLINE)
    traffic.join()

    assert len(traffic.welcomes) >= 2
    assert all(hello["lost"] is False for hello in traffic.welcomes), traffic.welcomes
    assert len({hello["epoch"] for hello in traffic.welcomes}) == 1
    assert [message_id for _, message_id, _ in traffic.frames] == list(range(1, COUNT + 1))
    assert sorted(content for _, _, content in traffic.frames) == list(range(COUNT))
    assert sorted(traffic.acknowledged) == list(range(COUNT))
