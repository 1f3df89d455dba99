"""Helpers for the security tests: tokens, raw upgrade requests, frames."""

from __future__ import annotations

import base64
import http.client
import json
import os
import time

import jwt

SECRET = b"test-secret-0123456789abcdef0123456789abcdef0123456789abcdef0123"


def token(sub="alice", ttl=300, scope=None, secret=SECRET, algorithm="HS256", **claims):
    """A token signed like a backend would sign it (override anything to break it)."""
    payload = {"sub": sub, "exp": int(time.time()) + ttl}
    if scope is not None:
        payload["scope"] = scope
    payload.update(claims)
    payload = {name: value for name, value in payload.items() if value is not None}
    return jwt.encode(payload, secret, algorithm=algorithm)


def unsigned(sub="alice", ttl=300, scope="send"):
    """An ``alg: none`` token: header and claims with an empty signature."""
    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part({'sub': sub, 'exp': int(time.time()) + ttl, 'scope': scope})}."


def upgrade(relay, path, headers=None):
    """A WebSocket upgrade request; returns ``(status, headers, JSON body or None)`` of a refusal."""
    conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=10)
    all_headers = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
    }
    all_headers.update(headers or {})
    conn.request("GET", path, headers=all_headers)
    response = conn.getresponse()
    body = response.read() if response.status != 101 else b""
    conn.close()
    parsed = json.loads(body) if body and "json" in (response.getheader("Content-Type") or "") else None
    return response.status, response, parsed


def recv_json(ws, timeout=10):
    """The next frame as JSON."""
    return json.loads(ws.recv(timeout=timeout))


def recv_until(ws, predicate, timeout=10, limit=500):
    """Frames until one matches ``predicate``; return it."""
    deadline = time.monotonic() + timeout
    for _ in range(limit):
        frame = recv_json(ws, max(0.1, deadline - time.monotonic()))
        if predicate(frame):
            return frame
    raise AssertionError("no matching frame")
