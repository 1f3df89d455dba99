"""
The HTTP side under hostile clients and at shutdown, against a real
``twistd relay`` (CONTRACT.md section 14): trickling heads are cut at
``--request-timeout`` and count against ``--max-connections`` while the
relay keeps answering; the server's own errors are JSON; a SIGTERM under
keep-alive POST load leaves no request read and unanswered.
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import threading
import time

import pytest

from relayd.web.pages import client_script
from tests.integration.clients import open_ws, refused

pytestmark = pytest.mark.integration

def exchange(relay, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` on a new connection; everything the relay writes until it closes."""
    with socket.create_connection(("127.0.0.1", relay.port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                raise AssertionError(f"reset after {received!r}") from None
            if not chunk:
                return received
            received += chunk


def json_status(reply: bytes) -> tuple[int, dict]:
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"\r\ncontent-type: application/json" in head.lower(), reply[:300]
    return int(head.split(b" ", 2)[1]), json.loads(body)


@pytest.mark.parametrize("data, status, error", [
    (b"GARBAGE\r\n\r\n", 400, "bad_request"),
    (b"GET /health-check HTTP/1.1\r\n\r\n", 400, "bad_request"),
    (b"GET /health-check?" + b"x" * 65536 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 431, "request_header_fields_too_large"),
    (b"GET /health-check HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 102400 + b"\r\n\r\n", 431, "request_header_fields_too_large"),
    (b"POST /send-message HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "bad_request"),
    (b'POST /send-message HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 54\r\n'
     b'Connection: close\r\n\r\n{"receiver_id": "a", "receiver_id": "b", "content": 1}', 400, "invalid_request"),
])
def test_the_servers_own_errors_are_json(shared_relay, data, status, error):
    got_status, body = json_status(exchange(shared_relay, data))
    assert (got_status, body["error"]) == (status, error), body
    assert body["detail"]


def test_pipelined_requests_are_answered_in_order(shared_relay):
    paths = ["/health-check", "/nope", "/send-message", "/health-check"]
    data = b"".join(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for path in paths)
    reply = exchange(shared_relay, data + b"GET /health-check HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    statuses = [int(m) for m in re.findall(rb"HTTP/1.1 (\d{3}) ", reply)]
    assert statuses == [200, 404, 405, 200, 200]


def test_slowloris_is_cut_and_the_relay_keeps_answering(start_relay):
    relay = start_relay("--max-connections", "20", "--request-timeout", "2")
    trickling = []
    for _ in range(120):  # six times the limit, and more than the overflow it accepts
        sock = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
        sock.sendall(b"GET /health-check HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        trickling.append(sock)
    try:
        for _ in range(3):
            started = time.monotonic()
            status, _, body = relay.request("GET", "/health-check")
            assert status == 200 and time.monotonic() - started < 1.0
            status, _, body = refused(relay, "id=newcomer")
            assert status == 503 and body["error"] == "too_many_connections"
            for sock in trickling:
                try:
                    sock.send(b"a")
                except OSError:
                    pass
            time.sleep(0.5)
        deadline = time.monotonic() + 6
        open_left = list(trickling)
        while open_left and time.monotonic() < deadline:
            still = []
            for sock in open_left:
                sock.settimeout(0.01)
                try:
                    data = sock.recv(4096)
                except TimeoutError:
                    still.append(sock)
                    continue
                except OSError:
                    continue
                if data and not data.startswith(b"HTTP/1.1 408 "):
                    raise AssertionError(data)
                if data:
                    still.append(sock)  # the 408, then the close
            open_left = still
            time.sleep(0.1)
        assert not open_left, f"{len(open_left)} trickling connections still open"
        ws, welcome = open_ws(relay, "id=newcomer")
        assert welcome["client_id"] == "newcomer"
        ws.close()
    finally:
        for sock in trickling:
            sock.close()
    assert "EMFILE" not in relay.log()


def test_sigterm_under_keep_alive_post_load_leaves_nothing_read_and_unanswered(start_relay):
    relay = start_relay()
    receiver, welcome = open_ws(relay, "id=sink")
    assert welcome["type"] == "welcome"
    answered, failed, closes = [], [], []
    stop = threading.Event()

    def sender(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=10)
        body = json.dumps({"receiver_id": f"offline-{n}", "content": n}).encode()
        while not stop.is_set():
            try:
                conn.request("POST", "/send-message", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                failed.append(n)
                return
            answered.append(response.status)
            if (response.getheader("connection") or "").lower() == "close":
                closes.append(n)
                return

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(24)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    assert relay.stop(timeout=10) == 0
    stop.set()
    for thread in threads:
        thread.join(10)
    receiver.close()
    assert answered and set(answered) == {200}
    assert len(failed) + len(closes) == 24
    logged = len(re.findall(r'"POST /send-message" 200', relay.log()))
    assert logged == len(answered), (logged, len(answered))  # every request read was answered


def test_a_post_whose_body_is_still_arriving_at_sigterm_is_answered_with_connection_close(start_relay):
    """In flight at the stop: its head was read, half its body sent; the rest comes after SIGTERM."""
    relay = start_relay()
    # A WebSocket that never answers the close handshake keeps the stop going for a few seconds.
    stubborn = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
    stubborn.sendall(b"GET /ws?id=stubborn HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    assert stubborn.recv(4096).startswith(b"HTTP/1.1 101")
    body = json.dumps({"receiver_id": "offline", "content": "in flight"}).encode()
    post = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
    post.sendall(b"POST /send-message HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body[:10])
    time.sleep(0.3)
    relay.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    post.sendall(body[10:])
    reply = b""
    while chunk := post.recv(4096):
        reply += chunk
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" in head, reply
    assert json.loads(payload)["queued"] == ["offline"]
    stubborn.close()
    assert relay.process.wait(15) == 0


def test_a_client_that_reads_late_gets_every_pipelined_reply_whole_and_in_order(shared_relay):
    """Replies sent at once and replies left to Twisted's buffer (the socket full) stay whole and in order."""
    count = 300  # 300 copies of the 21 KB client script: more than the socket buffers hold
    script = client_script().body
    data = b"".join(b"GET /relay-client.js HTTP/1.1\r\nHost: x\r\n\r\nGET /nope-%d HTTP/1.1\r\nHost: x\r\n\r\n" % n
                    for n in range(count))
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(30)
        sock.connect(("127.0.0.1", shared_relay.port))
        sock.sendall(data + b"GET /health-check HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        time.sleep(1.0)  # let the relay fill the socket and its own buffer
        received = bytearray()
        while chunk := sock.recv(65536):
            received += chunk
    replies = []
    while received:
        head, _, rest = bytes(received).partition(b"\r\n\r\n")
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
        replies.append(rest[:length])
        del received[:len(head) + 4 + length]
    assert len(replies) == 2 * count + 1
    for n in range(count):
        assert replies[2 * n] == script, n
        assert json.loads(replies[2 * n + 1])["detail"] == f"no such path: /nope-{n}"
    assert json.loads(replies[-1])["status"] == "ok"
