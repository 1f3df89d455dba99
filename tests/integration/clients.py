"""
Clients for integration tests: a healthy WebSocket client to check that the
relay still serves everyone after a bad input, a raw socket WebSocket that
misbehaves on purpose, and small waiting helpers.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

TIMEOUT = 10.0


def open_ws(relay, query: str, **kwargs):
    """Connect to ``/ws?<query>``; return ``(ws, welcome)``."""
    # Entered as a context manager (websockets 17 warns otherwise); the test closes it.
    ws = connect(f"{relay.ws}/ws?{query}", open_timeout=TIMEOUT, **kwargs).__enter__()
    welcome = json.loads(ws.recv(timeout=TIMEOUT))
    assert welcome["type"] == "welcome", welcome
    return ws, welcome


def recv_json(ws, timeout: float = TIMEOUT) -> dict:
    """The next frame, parsed."""
    return json.loads(ws.recv(timeout=timeout))


def refused(relay, query: str, headers=None) -> tuple[int, dict, dict]:
    """Try to open ``/ws?<query>``; return the refusal's ``(status, headers, JSON body)``."""
    try:
        ws = connect(f"{relay.ws}/ws?{query}", open_timeout=TIMEOUT, additional_headers=headers).__enter__()
    except InvalidStatus as error:
        response = error.response
        return response.status_code, response.headers, json.loads(response.body)
    ws.close()
    raise AssertionError(f"/ws?{query} was not refused")


def close_code(ws, timeout: float = TIMEOUT) -> int:
    """Read until the server closes ``ws``; return the close code it sent."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ws.recv(timeout=max(0.1, deadline - time.monotonic()))
    except ConnectionClosed as closed:
        assert closed.rcvd is not None, "the server closed without a close frame"
        return closed.rcvd.code
    raise AssertionError("the server did not close the connection")


class Healthy:
    """
    A well-behaved client connected for a whole test: ``check()`` proves the
    relay still delivers to it and still answers ``/health-check``.
    """

    def __init__(self, relay, client_id: str):
        self.relay = relay
        self.client_id = client_id
        self.ws, self.welcome = open_ws(relay, f"id={client_id}")
        self.last_id = self.welcome["last_id"]

    def check(self) -> None:
        """POST one message to this client and receive it; health is 200."""
        status, reply = self.relay.send({"receiver_id": self.client_id, "content": {"check": self.last_id + 1}})
        assert status == 200 and reply["sent"] == [self.client_id], (status, reply)
        message = recv_json(self.ws)
        assert message["type"] == "message" and message["id"] == self.last_id + 1, message
        self.last_id = message["id"]
        status, health = self.relay.health()
        assert status == 200 and health["status"] == "ok", (status, health)

    def close(self) -> None:
        """Leave."""
        self.ws.close()


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.1, what: str = "condition"):
    """Poll ``predicate`` until it returns a true value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def health_clients(relay) -> int:
    """The ``clients`` count of ``/health-check``."""
    status, health = relay.health()
    assert status == 200, health
    return health["clients"]


class RawWebSocket:
    """
    A WebSocket client on a bare socket: it completes the handshake and then
    does only what the test tells it (it never answers a ping by itself).
    """

    def __init__(self, relay, query: str, rcvbuf: int | None = None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(("127.0.0.1", relay.port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /ws?{query} HTTP/1.1\r\nHost: 127.0.0.1:{relay.port}\r\n"
                f"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self._buffer = b""
        while b"\r\n\r\n" not in self._buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise AssertionError("connection closed during the handshake")
            self._buffer += chunk
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head

    def frames(self, timeout: float = TIMEOUT):
        """
        Read frames until the connection ends; yield ``(opcode, payload)``.

        Stops after a close frame (opcode 8) or at EOF.
        """
        self.sock.settimeout(timeout)
        while True:
            frame = self._next_frame()
            if frame is None:
                return
            yield frame
            if frame[0] == 8:
                return

    def _next_frame(self):
        while True:
            parsed = _parse_frame(self._buffer)
            if parsed is not None:
                opcode, payload, used = parsed
                self._buffer = self._buffer[used:]
                return opcode, payload
            try:
                chunk = self.sock.recv(1 << 16)
            except (TimeoutError, ConnectionResetError):
                return None
            if not chunk:
                return None
            self._buffer += chunk

    def close(self) -> None:
        """Drop the socket."""
        self.sock.close()


def _parse_frame(data: bytes):
    """One unmasked server frame from ``data``: ``(opcode, payload, bytes used)`` or None."""
    if len(data) < 2:
        return None
    opcode = data[0] & 0x0F
    length = data[1] & 0x7F
    offset = 2
    if length == 126:
        if len(data) < 4:
            return None
        length = struct.unpack("!H", data[2:4])[0]
        offset = 4
    elif length == 127:
        if len(data) < 10:
            return None
        length = struct.unpack("!Q", data[2:10])[0]
        offset = 10
    if len(data) < offset + length:
        return None
    return opcode, data[offset:offset + length], offset + length
