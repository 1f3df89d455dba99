"""
Keepalive, slow consumers, shutdown and logging, against real processes
(CONTRACT 1, 4, 12, 13).
"""

from __future__ import annotations

import json
import re
import signal

import pytest

from tests.integration.clients import (
    Healthy,
    RawWebSocket,
    close_code,
    health_clients,
    open_ws,
    recv_json,
    wait_for,
)

pytestmark = pytest.mark.integration


def test_unanswered_pings_drop_the_connection(start_relay):
    """A client that never answers pings is dropped and unregistered; a healthy one stays."""
    relay = start_relay("--ping-interval", "1", "--ping-timeout", "1")
    healthy = Healthy(relay, "healthy")
    mute = RawWebSocket(relay, "id=mute")
    assert health_clients(relay) == 2
    wait_for(lambda: health_clients(relay) == 1, timeout=20, what="the mute client to be dropped")
    assert re.search(r"ws close mute from \S+ code=\S+ duration=", relay.log())
    status, reply = relay.send({"receiver_id": "mute", "content": "gone"})
    assert status == 200 and reply["queued"] == ["mute"], "a dropped connection still counted as live"
    healthy.check()
    mute.close()


def test_slow_consumer_is_cut_and_loses_nothing(start_relay):
    """
    A client that does not read is closed with 4008 once more than
    ``--send-buffer`` bytes wait; when it resumes with ``last_id`` it gets
    every message it missed, in order.
    """
    relay = start_relay(
        "--send-buffer", "65536", "--max-message-size", "1048576", "--history-size", "5000",
    )
    healthy = Healthy(relay, "healthy")
    slow = RawWebSocket(relay, "id=slow", rcvbuf=4096)
    welcome_epoch = None
    content = "x" * 8000
    sent = 0
    while "slow consumer slow" not in relay.log():
        assert sent < 4000, "the slow consumer was never cut"
        batch = [{"receiver_id": "slow", "content": {"n": sent + i, "pad": content}} for i in range(20)]
        status, _, replies = relay.request("POST", "/send-message", batch)
        assert status == 200 and all(r["sent"] == ["slow"] or r["queued"] == ["slow"] for r in replies), replies
        sent += len(batch)
    received, code = [], None
    for opcode, payload in slow.frames():
        if opcode == 1:
            frame = json.loads(payload)
            if frame["type"] == "welcome":
                welcome_epoch = frame["epoch"]
            else:
                received.append(frame["id"])
        elif opcode == 8:
            code = int.from_bytes(payload[:2], "big")
    slow.close()
    assert code == 4008, f"expected close 4008, got {code}"
    assert received == list(range(1, len(received) + 1)), "frames before the cut arrived out of order"
    assert len(received) < sent
    metrics = relay.request("GET", "/metrics")[2]
    assert re.search(r"^relay_slow_consumer_disconnects_total 1(\.0)?$", metrics, re.M), metrics
    last = received[-1] if received else 0
    ws, welcome = open_ws(relay, f"id=slow&last_id={last}&epoch={welcome_epoch}", max_size=None)
    assert welcome["lost"] is False and welcome["replayed"] == sent - last and welcome["last_id"] == sent
    replayed = [recv_json(ws) for _ in range(sent - last)]
    assert [m["id"] for m in replayed] == list(range(last + 1, sent + 1))
    assert [m["content"]["n"] for m in replayed] == list(range(last, sent))
    ws.close()
    healthy.check()


def test_sigterm_closes_with_1001_on_every_listener_and_exits_0(start_relay):
    """
    Two ``--listen`` endpoints each log ``listening on``; on SIGTERM every
    client (on either) gets 1001, and the process exits 0 within 10 s.
    """
    relay = start_relay("--listen", "tcp:0:interface=127.0.0.1")
    ports = [int(p) for p in re.findall(r"listening on 127\.0\.0\.1:(\d+)", relay.log())]
    assert len(ports) == 2 and len(set(ports)) == 2, relay.log()
    clients = []
    for n, port in enumerate(ports):
        for k in range(2):
            relay.port = port
            clients.append(open_ws(relay, f"id=l{n}-{k}")[0])
    relay.process.send_signal(signal.SIGTERM)
    for ws in clients:
        assert close_code(ws) == 1001
    assert relay.process.wait(timeout=10) == 0
    log = relay.log()
    assert log.count("code=1001") == 4, log


def test_access_monitor_and_redaction_in_the_log(start_relay):
    """
    The log has an access line per request and per WebSocket open/close
    (with code and duration), the periodic ``clients=N ws=… sse=…`` line,
    and tokens redacted.
    """
    relay = start_relay("--monitor-interval", "1")
    ws, _ = open_ws(relay, "id=logged&token=s3cr3t-in-query")
    relay.request("GET", "/health-check?token=an0ther-s3cr3t")
    relay.send({"receiver_id": "logged", "content": 1})
    recv_json(ws)
    wait_for(lambda: "clients=1 ws=1 sse=0" in relay.log(), timeout=15, what="the monitor line")
    ws.close()
    wait_for(lambda: "ws close logged" in relay.log(), what="the close access line")
    wait_for(lambda: "clients=0 ws=0 sse=0" in relay.log().split("ws close logged", 1)[1], timeout=15,
             what="the monitor line after the client left")
    log = relay.log()
    assert "s3cr3t" not in log
    assert re.search(r'"GET /health-check\?token=\[redacted\]" 200 \d+ [\d.]+ms', log), log
    assert re.search(r'"POST /send-message" 200 \d+', log), log
    assert re.search(r"ws open logged from 127\.0\.0\.1 /ws\?id=logged&token=\[redacted\]", log), log
    assert re.search(r"ws close logged from 127\.0\.0\.1 code=1000 duration=[\d.]+ms", log), log
