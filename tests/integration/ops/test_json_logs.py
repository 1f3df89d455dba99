"""
``--log-format json`` (or ``RELAY_LOG_FORMAT=json``) under ``twistd -n
relay``: every line the process prints is one JSON object, access and
monitor lines included, tokens redacted.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from websockets.sync.client import connect

from tests.relayproc import ROOT

pytestmark = pytest.mark.integration


def records(relay) -> list[dict]:
    """Every line of the relay's output, parsed (fails on any non-JSON line)."""
    lines = [line for line in relay.log().splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            value = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
        assert isinstance(value, dict), line
        parsed.append(value)
    return parsed


def documented_keys() -> set[str]:
    """The keys in the first column of the JSON log table in docs/operations.md (| `key`, `key` | ...)."""
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("### JSON log keys", 1)[1].split("\n## ", 1)[0]
    cells = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    return {key for cell in cells for key in re.findall(r"`([A-Za-z_]+)`", cell)}


def undocumented_keys(records) -> set[str]:
    """Keys a record carries that docs/operations.md does not name (one meaning, one unit each)."""
    return {key for record in records for key in record} - documented_keys() - {"traceback"}


@pytest.mark.parametrize("how", ["option", "environment"])
def test_every_line_is_one_json_object(start_relay, how):
    if how == "option":
        relay = start_relay("--log-format", "json", "--monitor-interval", "0.2")
    else:
        relay = start_relay("--monitor-interval", "0.2", env={"RELAY_LOG_FORMAT": "json"})
    with connect(f"{relay.ws}/ws?id=json-alice&token=s3cret") as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "welcome"
        status, _ = relay.send({"receiver_id": "json-alice", "content": {"line": "one\ntwo"}})
        assert status == 200
        assert json.loads(ws.recv(timeout=10))["content"] == {"line": "one\ntwo"}
    assert relay.send({"receiver_id": "json-alice", "content": 1, "bogus": 2})[0] == 400
    deadline = time.monotonic() + 10
    while not any(r.get("message", "").startswith("clients=") for r in records(relay)):
        assert time.monotonic() < deadline, relay.log()
        time.sleep(0.1)
    relay.stop()

    logged = records(relay)
    for record in logged:
        assert {"time", "level", "logger", "message"} <= set(record), record
        assert record["level"] in ("debug", "info", "warning", "error", "critical"), record
    assert {r["level"] for r in logged if r["message"].startswith("open mode")} == {"warning"}
    assert undocumented_keys(logged) == set()
    texts = [r["message"] for r in logged]
    assert any(t.startswith(f"listening on 127.0.0.1:{relay.port}") for t in texts)
    opened = [r for r in logged if r.get("transport") == "ws" and r["message"].startswith("ws open")]
    closed = [r for r in logged if r.get("transport") == "ws" and r["message"].startswith("ws close")]
    assert opened and opened[0]["client_id"] == "json-alice"
    assert closed and closed[0]["close_code"] == 1000 and closed[0]["duration_ms"] >= 0
    assert closed[0]["logger"].startswith("relayd.web.access")
    bad_post = [r for r in logged if r.get("path") == "/send-message" and r.get("status") == 400]
    assert bad_post and bad_post[0]["method"] == "POST" and bad_post[0]["duration_ms"] >= 0
    monitor = [r for r in logged if r["message"].startswith("clients=")]
    assert {"clients", "ws", "sse"} <= set(monitor[0])
    assert "s3cret" not in relay.log() and "token=[redacted]" in relay.log()




