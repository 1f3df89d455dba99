"""
Property-based: arbitrary bytes, JSON and tokens thrown at ``POST
/send-message``, at ``/ws`` and at WebSocket frames of one real relay.
Never a 5xx, never a traceback, the fuzzed connection stays open, and a
healthy client connected throughout keeps receiving.
"""

from __future__ import annotations

import itertools
import json
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect

from tests.relayproc import RelayProcess
from tests.security_helpers import SECRET, recv_json, recv_until, token, upgrade

pytestmark = pytest.mark.integration

MAX_SIZE = 4096
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BACKEND = {"Authorization": f"Bearer {token('backend', ttl=3600, scope='send')}"}
markers = itertools.count()


@pytest.fixture(scope="module")
def relay(tmp_path_factory):
    process = RelayProcess(
        ["--max-message-size", str(MAX_SIZE), "--send-rate", "100000", "--send-burst", "100000"],
        env={"RELAY_SECRET": SECRET.decode()}, log_dir=tmp_path_factory.mktemp("fuzz"),
    ).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def healthy(relay):
    """A client that is connected for the whole module and must keep receiving."""
    with connect(f"{relay.ws}/ws?id=healthy&token={token('healthy', ttl=3600)}", max_size=None) as ws:
        assert recv_json(ws)["type"] == "welcome"
        yield ws


@pytest.fixture(scope="module")
def fuzzer(relay):
    """The connection that gets the fuzzed frames (it may send)."""
    with connect(f"{relay.ws}/ws?id=fuzzer&token={token('fuzzer', ttl=3600, scope='send')}", max_size=None) as ws:
        assert recv_json(ws)["type"] == "welcome"
        yield ws


def still_healthy(relay, ws):
    marker = f"marker-{next(markers)}"
    status, reply = relay.send({"receiver_id": "healthy", "content": marker}, BACKEND)
    assert status == 200 and reply["sent"] == ["healthy"], (status, reply)
    recv_until(ws, lambda frame: frame.get("content") == marker)


def assert_clean_reply(status, body):
    assert status < 500, body
    if status >= 400:
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and body.get("detail"), body


scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
ids = st.sampled_from(["healthy", "nobody", "x" * 129, "", "bad id", "fz.1@a:b-c_d"]) | st.text(max_size=12)
message_shaped = st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(["send", "refresh", "message", "ack"]) | json_values,
    "ref": json_values,
    "receiver_id": ids | json_values,
    "receiver_ids": st.lists(ids, max_size=4) | json_values,
    "broadcast": st.booleans() | json_values,
    "content": json_values,
    "sender_id": ids | json_values,
    "token": st.text(max_size=40) | json_values,
    "ReceiverID": ids,
})
bodies = (
    st.binary(max_size=MAX_SIZE + 64)
    | message_shaped.map(lambda m: json.dumps(m).encode())
    | st.lists(message_shaped, max_size=4).map(lambda m: json.dumps(m).encode())
    | json_values.map(lambda v: json.dumps(v).encode())
)


@FUZZ
@given(body=bodies)
def test_post_arbitrary_bodies(relay, healthy, body):
    status, _, reply = relay.request("POST", "/send-message", raw=body, headers=BACKEND)
    assert_clean_reply(status, reply)
    still_healthy(relay, healthy)


@FUZZ
@given(bad=st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.hex())
       | st.tuples(st.binary(min_size=1, max_size=60), st.binary(max_size=60), st.binary(max_size=40)).map(
           lambda parts: ".".join(urllib.parse.quote_from_bytes(p) for p in parts)))
def test_arbitrary_tokens_are_401(relay, healthy, bad):
    header_safe = "".join(ch for ch in bad if 32 < ord(ch) < 127)
    status, _, reply = relay.request("POST", "/send-message", {"receiver_id": "healthy", "content": "no"},
                                     {"Authorization": f"Bearer {header_safe}"})
    assert status == 401 and reply["error"] in ("token_required", "invalid_token"), (status, reply)
    status, _, body = upgrade(relay, f"/ws?id=healthy&token={urllib.parse.quote(bad)}")
    assert status == 401 and body["error"] in ("token_required", "invalid_token"), (status, body)
    still_healthy(relay, healthy)


frames = (
    message_shaped.map(lambda m: json.dumps(m))
    | json_values.map(json.dumps)
    | st.text(max_size=200)
    | st.binary(max_size=200)
)


@FUZZ
@given(frame=frames)
def test_arbitrary_websocket_frames(relay, healthy, fuzzer, frame):
    fuzzer.send(frame)
    reply = recv_until(fuzzer, lambda f: f.get("type") != "message")
    assert reply["type"] in ("ack", "error"), reply
    if reply["type"] == "error":
        assert reply["error"] in ("invalid_frame", "invalid_token", "token_expired", "token_required"), reply
    still_healthy(relay, healthy)


def test_nothing_went_wrong_inside(relay, healthy, fuzzer):
    """After all of the above: no traceback, no internal error, nobody dropped."""
    still_healthy(relay, healthy)
    fuzzer.send(json.dumps({"type": "send", "ref": "last", "receiver_id": "healthy", "content": "bye"}))
    assert recv_until(fuzzer, lambda f: f.get("ref") == "last")["type"] == "ack"
    recv_until(healthy, lambda f: f.get("content") == "bye")
    log = relay.log()
    for bad in ("Traceback", "Unhandled", "internal error", "code=1011", "close healthy", "close fuzzer"):
        assert bad not in log, f"{bad!r} in the relay log"
    assert relay.health()[1]["clients"] == 2
