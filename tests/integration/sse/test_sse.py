"""
``GET /events`` from outside: real relay processes, a plain HTTP client
reading the event stream line by line (as EventSource does).
"""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.error
import urllib.request

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

pytestmark = pytest.mark.integration


class EventStream:
    """An open ``/events`` response, read one SSE event (or comment) at a time."""

    def __init__(self, relay, query: str, headers=None):
        request = urllib.request.Request(f"{relay.http}/events?{query}", headers=headers or {})
        self.response = urllib.request.urlopen(request, timeout=15)
        self.headers = self.response.headers

    def next(self) -> dict:
        """The next event: ``{"id", "event", "data", "comments"}`` (data parsed as JSON)."""
        event = {"id": None, "event": None, "data": None, "comments": []}
        while True:
            line = self.response.readline()
            if not line:
                raise EOFError("the stream ended")
            line = line.decode("utf-8").rstrip("\n")
            if line == "":
                if event["data"] is not None or event["comments"]:
                    return event
                continue
            if line.startswith(":"):
                event["comments"].append(line[1:].strip())
                continue
            name, _, value = line.partition(": ")
            event[name] = json.loads(value) if name == "data" else value

    def next_event(self) -> dict:
        """The next event that is not a comment."""
        while True:
            event = self.next()
            if event["data"] is not None:
                return event

    def close(self):
        self.response.close()


@pytest.fixture
def stream(shared_relay):
    opened = []

    def open_stream(query, headers=None, relay=None):
        opened.append(EventStream(relay or shared_relay, query, headers))
        return opened[-1]

    yield open_stream
    for s in opened:
        s.close()


def test_stream_headers_welcome_messages_and_broadcast(shared_relay, stream):
    """No-buffering headers, welcome first, ``id: <epoch>:<id>``, and a broadcast without an id line."""
    status, reply = shared_relay.send({"receiver_id": "sse-ann", "content": "queued", "sender_id": "billing"})
    assert status == 200 and reply["queued"] == ["sse-ann"]
    events = stream("id=sse-ann")
    assert events.headers["Content-Type"].startswith("text/event-stream")
    assert events.headers["Cache-Control"] == "no-cache"
    assert events.headers["X-Accel-Buffering"] == "no"
    welcome = events.next_event()
    assert welcome["event"] == "welcome" and welcome["id"] is None
    epoch = welcome["data"]["epoch"]
    assert welcome["data"] == {"type": "welcome", "client_id": "sse-ann", "epoch": epoch, "last_id": 1,
                               "replayed": 1, "lost": False}
    replayed = events.next_event()
    assert replayed["id"] == f"{epoch}:1" and replayed["event"] == "message"
    assert replayed["data"]["content"] == "queued" and replayed["data"]["sender_id"] == "billing"
    status, reply = shared_relay.send({"receiver_id": "sse-ann", "content": {"live": True}})
    assert reply["sent"] == ["sse-ann"]
    live = events.next_event()
    assert live["id"] == f"{epoch}:2" and live["data"]["content"] == {"live": True}
    status, _ = shared_relay.send({"broadcast": True, "content": "to all"})
    assert status == 200
    broadcast = events.next_event()
    assert broadcast["id"] is None and broadcast["data"]["id"] is None and broadcast["data"]["content"] == "to all"
    _, health = shared_relay.health()
    assert health["connections"]["sse"] >= 1


@pytest.mark.parametrize("how", ["last-event-id", "bare-last-event-id", "query"])
def test_resume(shared_relay, stream, how):
    """Last-Event-ID (``<epoch>:<id>`` or bare ``<id>``) or ``last_id`` + ``epoch`` resume after that id."""
    client_id = f"sse-resume-{how}"
    for n in range(1, 4):
        assert shared_relay.send({"receiver_id": client_id, "content": n})[0] == 200
    first = stream(f"id={client_id}")
    epoch = first.next_event()["data"]["epoch"]
    assert [first.next_event()["data"]["content"] for _ in range(3)] == [1, 2, 3]
    first.close()
    assert shared_relay.send({"receiver_id": client_id, "content": 4})[0] == 200
    headers, query = {}, f"id={client_id}"
    if how == "last-event-id":
        headers["Last-Event-ID"] = f"{epoch}:2"
    elif how == "bare-last-event-id":
        headers["Last-Event-ID"] = "2"
    else:
        query += f"&last_id=2&epoch={epoch}"
    again = stream(query, headers)
    welcome = again.next_event()["data"]
    assert welcome["replayed"] == 2 and welcome["lost"] is False and welcome["last_id"] == 4
    assert [(e["id"], e["data"]["content"]) for e in (again.next_event(), again.next_event())] == [
        (f"{epoch}:3", 3), (f"{epoch}:4", 4)]


def test_resume_from_another_epoch_is_lost(shared_relay, stream):
    """A Last-Event-ID from an earlier epoch: lost, and every kept message of the current one."""
    assert shared_relay.send({"receiver_id": "sse-lost", "content": "kept"})[0] == 200
    events = stream("id=sse-lost", {"Last-Event-ID": "oldepoch:7"})
    welcome = events.next_event()["data"]
    assert welcome["lost"] is True and welcome["replayed"] == 1
    assert events.next_event()["data"]["content"] == "kept"


def test_refusals_are_json_and_the_relay_keeps_serving(shared_relay, stream):
    """Bad id, bad Last-Event-ID, wrong method: JSON errors; a healthy stream still works afterwards."""
    for path, headers, code, error in [
        ("/events?id=bad%20id", {}, 400, "invalid_id"),
        ("/events", {}, 400, "invalid_id"),
        ("/events?id=ok", {"Last-Event-ID": "e:notanumber"}, 400, "invalid_last_id"),
    ]:
        status, response_headers, body = shared_relay.request("GET", path, headers=headers)
        assert (status, body["error"]) == (code, error), path
        assert response_headers["Content-Type"] == "application/json"
    status, _, body = shared_relay.request("POST", "/events?id=ok", body={})
    assert status == 405 and body["error"] == "method_not_allowed"
    events = stream("id=sse-after-bad")
    assert events.next_event()["event"] == "welcome"
    assert shared_relay.send({"receiver_id": "sse-after-bad", "content": "fine"})[1]["sent"] == ["sse-after-bad"]
    assert events.next_event()["data"]["content"] == "fine"


def test_sse_and_websocket_with_one_id_replace_each_other(shared_relay, stream):
    """Under ``replace`` a WebSocket takes the id from a stream (event: close, 4000) and the other way round."""
    events = stream("id=sse-dup")
    assert events.next_event()["event"] == "welcome"
    with connect(f"{shared_relay.ws}/ws?id=sse-dup") as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "welcome"
        closing = events.next_event()
        assert closing["event"] == "close" and closing["data"]["code"] == 4000
        with pytest.raises(EOFError):
            events.next()
        newer = stream("id=sse-dup")
        assert newer.next_event()["event"] == "welcome"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd.code == 4000
    assert shared_relay.send({"receiver_id": "sse-dup", "content": "newest"})[1]["sent"] == ["sse-dup"]
    assert newer.next_event()["data"]["content"] == "newest"


def test_reject_policy_refuses_a_second_stream(start_relay):
    """Under ``reject`` the second connection (SSE after SSE) gets 409 JSON."""
    relay = start_relay("--duplicates", "reject")
    first = EventStream(relay, "id=sse-one")
    try:
        assert first.next_event()["event"] == "welcome"
        status, _, body = relay.request("GET", "/events?id=sse-one")
        assert status == 409 and body["error"] == "duplicate"
    finally:
        first.close()


def test_keepalive_comments(start_relay):
    """``: keepalive`` every --ping-interval (one timer for every stream)."""
    relay = start_relay("--ping-interval", "1")
    streams = [EventStream(relay, f"id=sse-keep-{n}") for n in range(3)]
    try:
        for s in streams:
            assert s.next_event()["event"] == "welcome"
            assert s.next()["comments"] == ["keepalive"]
    finally:
        for s in streams:
            s.close()


def test_no_sse_turns_events_off(start_relay):
    """With --no-sse, /events is a JSON 404 and /ws still works."""
    relay = start_relay("--no-sse")
    status, _, body = relay.request("GET", "/events?id=x")
    assert status == 404 and body["error"] == "not_found"
    with connect(f"{relay.ws}/ws?id=x") as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "welcome"


def test_shutdown_ends_every_stream(start_relay):
    """SIGTERM: every stream gets ``event: close`` 1001 and ends; the process exits by itself (not killed)."""
    relay = start_relay()
    streams = [EventStream(relay, f"id=sse-stop-{n}") for n in range(3)]
    for s in streams:
        assert s.next_event()["event"] == "welcome"
    started = time.monotonic()
    assert relay.stop() in (0, -signal.SIGTERM)  # twistd re-raises SIGTERM on its way out
    assert time.monotonic() - started < 10
    for s in streams:
        closing = s.next_event()
        assert closing["event"] == "close" and closing["data"]["code"] == 1001
        with pytest.raises(EOFError):
            s.next()
        s.close()
    log = relay.log()
    assert "sse open sse-stop-0" in log and "sse close sse-stop-0" in log and "code=1001" in log
    assert '"GET /events' not in log, "a stream has its open/close lines, not an HTTP request line"


def test_static_pages(shared_relay):
    """``/`` is the demo page using /relay-client.js; the client is a JavaScript module; ETag revalidation."""
    status, headers, page = shared_relay.request("GET", "/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert 'from "/relay-client.js"' in page
    assert re.search(r"https?://\w", page) is None, "no CDN, nothing loaded from elsewhere"
    status, headers, script = shared_relay.request("GET", "/relay-client.js")
    assert status == 200 and headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert "export class RelayClient" in script and "globalThis.RelayClient = RelayClient" in script
    assert headers["Access-Control-Allow-Origin"] == "*", "pages of other origins may import the module"
    request = urllib.request.Request(f"{shared_relay.http}/relay-client.js", headers={"If-None-Match": headers["ETag"]})
    with pytest.raises(urllib.error.HTTPError) as not_modified:
        urllib.request.urlopen(request, timeout=10)
    assert not_modified.value.code == 304
    status, _, body = shared_relay.request("GET", "/nothing-here")
    assert status == 404 and body["error"] == "not_found"


def test_cross_origin_pages_may_read_the_stream_only_from_allowed_origins(start_relay):
    """An allowed Origin is echoed in Access-Control-Allow-Origin (EventSource obeys CORS); others get 403."""
    relay = start_relay("--allowed-origins", "https://app.example.com")
    events = EventStream(relay, "id=cors", {"Origin": "https://app.example.com"})
    try:
        assert events.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
        assert events.next_event()["event"] == "welcome"
    finally:
        events.close()
    status, _, body = relay.request("GET", "/events?id=cors2", headers={"Origin": "https://evil.example.net"})
    assert status == 403 and body["error"] == "origin_not_allowed"


def test_a_frozen_reader_is_ended_and_unregistered(start_relay):
    """
    A reader that takes nothing (a socket that never reads, with a small
    receive buffer) under messages is ended after --ping-interval +
    --ping-timeout, even below --send-buffer (CONTRACT section 14).
    """
    import socket

    relay = start_relay("--ping-interval", "1", "--ping-timeout", "1", "--send-buffer", "100000000")
    frozen = socket.socket()
    frozen.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    frozen.connect(("127.0.0.1", relay.port))
    frozen.sendall(b"GET /events?id=frozen HTTP/1.1\r\nHost: relay\r\n\r\n")
    live = EventStream(relay, "id=live")
    assert live.next_event()["event"] == "welcome"
    deadline = time.monotonic() + 5
    while relay.health()[1]["connections"]["sse"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert relay.health()[1]["connections"]["sse"] == 2
    content = "x" * 10000
    for _ in range(400):
        status, _ = relay.send({"receiver_id": "frozen", "content": content})
        assert status == 200
    deadline = time.monotonic() + 10
    while relay.health()[1]["connections"]["sse"] != 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert relay.health()[1]["connections"]["sse"] == 1, "the frozen reader is still registered"
    assert "the reader has taken nothing" in relay.log()
    assert live.next()["comments"] == ["keepalive"], "a reader that reads is kept"
    frozen.close()
    live.close()
