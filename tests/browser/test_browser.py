"""
End-to-end tests in a real headless Chromium: the demo page, relay-client.js
(reconnect, resume across relay restarts, 4000, SSE fallback) and a native
``EventSource`` against ``/events``.

Every page is loaded from the relay first (Chromium blocks loopback
WebSockets from other pages), then the test's script runs there.
"""

from __future__ import annotations

import json
import time

import pytest
from websockets.sync.client import connect

pytestmark = [pytest.mark.browser, pytest.mark.integration]

# Installs a RelayClient on the page and records what the application sees.
START_CLIENT = """
async ({ url, options }) => {
  const { RelayClient } = await import("/relay-client.js");
  const seen = { messages: [], states: [], welcomes: [], transports: [] };
  const client = new RelayClient(url, options);
  client.addEventListener("message", (e) => seen.messages.push(e.detail));
  client.addEventListener("state", (e) => seen.states.push(e.detail));
  client.addEventListener("welcome", (e) => {
    seen.welcomes.push(e.detail);
    seen.transports.push(client.transport);
  });
  window.client = client;
  window.seen = seen;
  return globalThis.RelayClient === RelayClient;
}
"""


def start_client(page, relay_base: str, **options) -> None:
    """Load the relay's page, then start a RelayClient there with ``options``."""
    page.goto(f"{relay_base}/")
    ws_url = relay_base.replace("http://", "ws://") + "/ws"
    assert page.evaluate(START_CLIENT, {"url": ws_url, "options": options}) is True


def seen(page) -> dict:
    """What the page's application has seen so far."""
    return page.evaluate("window.seen")


def wait_welcomes(page, count: int) -> dict:
    """Wait until the client has had ``count`` welcomes and is open."""
    page.wait_for_function(
        "n => window.seen.welcomes.length >= n && window.client.state === 'open'", arg=count
    )
    return seen(page)


def wait_messages(page, count: int) -> list[dict]:
    """Wait until the application has ``count`` messages; return them."""
    page.wait_for_function("n => window.seen.messages.length >= n", arg=count)
    return seen(page)["messages"]


def contents(messages) -> list:
    return [m["content"] for m in messages]


def test_demo_page_shows_a_posted_message(page, shared_relay, output_dir):
    """A person connects on the demo page; a message POSTed to that id appears; screenshot."""
    page.goto(f"{shared_relay.http}/")
    page.fill("#client-id", "demo-alice")
    page.click("#connect")
    page.wait_for_selector("#state[data-state='open']")
    status, reply = shared_relay.send({"receiver_id": "demo-alice", "content": {"text": "hello from the test"},
                                       "sender_id": "billing"})
    assert status == 200 and reply["sent"] == ["demo-alice"]
    item = page.wait_for_selector("#log li.message")
    assert "hello from the test" in item.text_content() and "billing" in item.text_content()

    page.fill("#receiver-id", "demo-alice")
    page.fill("#content", '{"text": "sent from the page"}')
    page.click("#send")
    page.wait_for_function("document.querySelectorAll('#log li.message').length === 2")
    assert "sent from the page" in page.text_content("#log li.message")
    assert "demo-alice: sent" in page.text_content("#log")

    path = output_dir / "demo-page.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.errors == []


def test_client_reconnects_across_relay_restarts_without_duplicates(page, context, restartable_relay):
    """
    The relay restarts on the same port (a new epoch each time): the client
    reconnects by itself, resumes with last_id + epoch, gets what was queued
    while it was away, and never hands a message over twice.
    """
    relay = restartable_relay()
    start_client(page, relay.http, id="restart-bob")
    first = wait_welcomes(page, 1)["welcomes"][0]
    status, reply = relay.send({"receiver_id": "restart-bob", "content": "m1"})
    assert status == 200 and reply["sent"] == ["restart-bob"]
    assert contents(wait_messages(page, 1)) == ["m1"]

    # 1. A plain restart: the client sees 1001 and comes back by itself.
    relay = relay.restarted()
    second = wait_welcomes(page, 2)["welcomes"][1]
    assert second["epoch"] != first["epoch"] and second["lost"] is True
    status, reply = relay.send({"receiver_id": "restart-bob", "content": "m2"})
    assert status == 200 and reply["sent"] == ["restart-bob"]
    messages = wait_messages(page, 2)
    assert contents(messages) == ["m1", "m2"]
    assert messages[1]["id"] == 1, "id 1 of the new epoch is not a duplicate of id 1 of the old one"

    # 2. The client is away (the browser went offline) while the relay restarts
    #    and messages are queued: when it is back online it gets them, in order.
    context.set_offline(True)
    page.wait_for_function("window.client.state === 'connecting'")
    relay = relay.restarted()
    for text in ("m3", "m4"):
        status, reply = relay.send({"receiver_id": "restart-bob", "content": text})
        assert status == 200 and reply["queued"] == ["restart-bob"]
    context.set_offline(False)
    third = wait_welcomes(page, 3)["welcomes"][2]
    assert third["lost"] is True and third["replayed"] == 2 and third["epoch"] != second["epoch"]
    messages = wait_messages(page, 4)
    assert contents(messages) == ["m1", "m2", "m3", "m4"]
    assert page.evaluate("[window.client.lastId, window.client.epoch]") == [2, third["epoch"]]

    # Nothing more arrives (no replay of what was already handed over), and a new one does.
    status, reply = relay.send({"receiver_id": "restart-bob", "content": "m5"})
    assert status == 200 and reply["sent"] == ["restart-bob"]
    assert contents(wait_messages(page, 5)) == ["m1", "m2", "m3", "m4", "m5"]
    assert seen(page)["states"].count("closed") == 0
    assert page.errors == []


def test_replaced_client_does_not_reconnect(page, shared_relay):
    """A 4000 close (a newer connection took the id) ends the client: no reconnect, no fight."""
    start_client(page, shared_relay.http, id="replace-carol")
    wait_welcomes(page, 1)
    with connect(f"{shared_relay.ws}/ws?id=replace-carol") as newer:
        assert json.loads(newer.recv(timeout=10))["type"] == "welcome"
        page.wait_for_function("window.client.state === 'closed'")
        # The first backoff delay is at most 0.5 s; give it several times that.
        time.sleep(3)
        assert len(seen(page)["welcomes"]) == 1
        assert seen(page)["states"][-1] == "closed"
        status, reply = shared_relay.send({"receiver_id": "replace-carol", "content": "to the newer one"})
        assert status == 200 and reply["sent"] == ["replace-carol"]
        assert json.loads(newer.recv(timeout=10))["content"] == "to the newer one"
        assert seen(page)["messages"] == []
        status, health = shared_relay.health()
        assert health["connections"]["ws"] >= 1
    assert page.errors == []


def test_falls_back_to_sse_when_websocket_is_blocked(page, shared_relay, proxy):
    """Behind a proxy that refuses WebSocket upgrades the client uses /events, and still receives and sends."""
    blocking = proxy(shared_relay.port, block_upgrades=True)
    start_client(page, f"http://127.0.0.1:{blocking.port}", id="fallback-dave")
    state = wait_welcomes(page, 1)
    assert state["transports"] == ["sse"]
    assert blocking.upgrades_refused >= 1
    status, reply = shared_relay.send({"receiver_id": "fallback-dave", "content": "over sse"})
    assert status == 200 and reply["sent"] == ["fallback-dave"]
    assert contents(wait_messages(page, 1)) == ["over sse"]
    ack = page.evaluate("window.client.send({receiver_id: 'fallback-dave', content: 'from the page'})")
    assert ack["type"] == "ack" and ack["sent"] == ["fallback-dave"]
    messages = wait_messages(page, 2)
    assert contents(messages) == ["over sse", "from the page"] and messages[1]["sender_id"] == "fallback-dave"
    _, health = shared_relay.health()
    assert health["connections"]["sse"] >= 1
    assert page.errors == []


def test_dead_connection_is_found_and_replaced(page, shared_relay, proxy):
    """A WebSocket whose path silently stops carrying bytes: the probe finds it dead; the client resumes on a new one."""
    path = proxy(shared_relay.port)
    start_client(page, f"http://127.0.0.1:{path.port}", id="dead-frank", heartbeat=1000, probeTimeout=2000)
    assert wait_welcomes(page, 1)["transports"] == ["websocket"]
    assert shared_relay.send({"receiver_id": "dead-frank", "content": "before"})[1]["sent"] == ["dead-frank"]
    assert contents(wait_messages(page, 1)) == ["before"]
    path.freeze()
    status, reply = shared_relay.send({"receiver_id": "dead-frank", "content": "into the void"})
    assert status == 200  # written to the frozen connection: it stays kept for the resume
    second = wait_welcomes(page, 2)["welcomes"][1]
    assert second["lost"] is False and second["replayed"] == 1
    assert contents(wait_messages(page, 2)) == ["before", "into the void"]
    assert "connecting" in seen(page)["states"]
    assert page.errors == []


NATIVE_EVENT_SOURCE = """
() => {
  window.events = [];
  const source = new EventSource("/events?id=native-erin");
  for (const type of ["welcome", "message"]) {
    source.addEventListener(type, (e) => window.events.push({ type, lastEventId: e.lastEventId, data: JSON.parse(e.data) }));
  }
  window.source = source;
}
"""


def test_native_event_source_resumes_with_last_event_id_after_restart(page, restartable_relay):
    """A plain EventSource on /events: ids are <epoch>:<id>; after a restart it resumes with Last-Event-ID."""
    relay = restartable_relay("--ping-interval", "1")
    page.goto(f"{relay.http}/")
    page.evaluate(NATIVE_EVENT_SOURCE)
    page.wait_for_function("window.events.length === 1")
    welcome = page.evaluate("window.events[0]")
    assert welcome["type"] == "welcome" and welcome["data"]["lost"] is False
    epoch = welcome["data"]["epoch"]
    status, reply = relay.send({"receiver_id": "native-erin", "content": "before"})
    assert status == 200 and reply["sent"] == ["native-erin"]
    page.wait_for_function("window.events.length === 2")
    assert page.evaluate("window.events[1].lastEventId") == f"{epoch}:1"

    relay = relay.restarted()
    page.wait_for_function("window.events.length === 3", timeout=60_000)
    again = page.evaluate("window.events[2]")
    # lost is only ever true when the client named a resume point: EventSource sent Last-Event-ID.
    assert again["type"] == "welcome" and again["data"]["lost"] is True
    new_epoch = again["data"]["epoch"]
    assert new_epoch != epoch
    status, reply = relay.send({"receiver_id": "native-erin", "content": "after"})
    assert status == 200
    page.wait_for_function("window.events.length === 4")
    after = page.evaluate("window.events[3]")
    assert after["lastEventId"] == f"{new_epoch}:1" and after["data"]["content"] == "after"
    assert page.errors == []
