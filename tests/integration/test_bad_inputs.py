"""
Every bad input gets its exact status or close code, and a healthy client
connected throughout still receives a message afterwards (CONTRACT 3, 4, 7, 8).
"""

from __future__ import annotations

import itertools
import json
import subprocess

import pytest

from tests.integration.clients import (
    Healthy,
    close_code,
    open_ws,
    recv_json,
    refused,
)

pytestmark = pytest.mark.integration

_names = itertools.count(1)


def fresh(prefix: str) -> str:
    """A client id no other test in the module uses."""
    return f"{prefix}-{next(_names)}"


@pytest.fixture
def healthy(shared_relay):
    """A healthy client connected for the whole test; checked after it."""
    client = Healthy(shared_relay, fresh("healthy"))
    yield client
    client.check()
    client.close()


# Client ids and the query of /ws (section 3, 4)


@pytest.mark.parametrize(
    "query",
    [
        "id=" + "a" * 129,
        "id=",
        "id=bad%20space",
        "id=bad/slash",
        "id=%C3%A9t%C3%A9",
        "id=a%00b",
        "",
        "last_id=3",
    ],
    ids=["too-long", "empty", "space", "slash", "non-ascii", "nul", "no-query", "missing-id"],
)
def test_bad_or_missing_id_is_400(shared_relay, healthy, query):
    """A bad or missing id is refused with 400 invalid_id before the upgrade."""
    status, headers, body = refused(shared_relay, query)
    assert status == 400
    assert headers["Content-Type"] == "application/json"
    assert body["error"] == "invalid_id" and "'id'" in body["detail"]


def test_longest_id_is_accepted(shared_relay, healthy):
    """128 characters from the whole alphabet is a valid id (the boundary)."""
    client_id = ("Az09_.:@-" * 15)[:128]
    ws, welcome = open_ws(shared_relay, f"id={client_id}")
    assert welcome["client_id"] == client_id
    ws.close()


@pytest.mark.parametrize("last_id", ["-1", "abc", "1.5", "1e3", "9" * 19, "%EF%BC%91"])
def test_bad_last_id_is_400(shared_relay, healthy, last_id):
    """``last_id`` must be a non-negative integer."""
    status, _, body = refused(shared_relay, f"id={fresh('resume')}&last_id={last_id}")
    assert status == 400 and body["error"] == "invalid_last_id"


@pytest.mark.parametrize("epoch", ["e" * 65, "%07bad"])
def test_bad_epoch_is_400(shared_relay, healthy, epoch):
    """``epoch`` must look like an epoch from a welcome (short, printable)."""
    status, _, body = refused(shared_relay, f"id={fresh('resume')}&last_id=1&epoch={epoch}")
    assert status == 400 and body["error"] == "invalid_epoch"


def test_plain_get_ws_is_426_json(shared_relay, healthy):
    """A plain GET on /ws is 426 with a JSON body, never an HTML status page."""
    status, headers, body = shared_relay.request("GET", "/ws?id=plain")
    assert status == 426
    assert headers["Content-Type"] == "application/json"
    assert headers["Upgrade"] == "websocket"
    assert body["error"] == "upgrade_required"


def test_plain_get_ws_with_curl(shared_relay, healthy):
    """The same with curl, as an operator would try it: JSON, no HTML."""
    result = subprocess.run(
        ["curl", "-s", "-i", "--max-time", "10", f"{shared_relay.http}/ws"],
        capture_output=True, text=True, timeout=20, check=True,
    )
    head, _, body = result.stdout.partition("\n\n")
    assert head.startswith("HTTP/1.1 426")
    assert "<html" not in body.lower()
    assert json.loads(body)["error"] == "upgrade_required"


def test_426_comes_before_400(shared_relay, healthy):
    """The refusals are checked in order: a plain GET with a bad id is still 426."""
    status, _, body = shared_relay.request("GET", "/ws?id=bad%20id")
    assert status == 426 and body["error"] == "upgrade_required"


# Frames from the client (section 4)


@pytest.mark.parametrize(
    "frame, ref",
    [
        ("not json", None),
        ("[1, 2]", None),
        ('"a string"', None),
        ('{"type": "nope", "ref": "r1"}', "r1"),
        ('{"ref": "r2"}', "r2"),
        ('{"type": "send", "ref": "r3", "content": 1}', "r3"),
        ('{"type": "send", "ref": "r4", "receiver_id": "x", "broadcast": true, "content": 1}', "r4"),
        ('{"type": "send", "ref": "r5", "receiver_id": "x"}', "r5"),
        ('{"type": "send", "ref": "r6", "receiver_id": "bad id", "content": 1}', "r6"),
        ('{"type": "send", "ref": "r7", "receiver_id": "x", "content": 1, "sender_id": "forged"}', "r7"),
        ('{"type": "refresh", "ref": "r8"}', "r8"),
    ],
    ids=["not-json", "array", "string", "unknown-type", "no-type", "no-target", "two-targets",
         "no-content", "bad-receiver", "forged-sender", "refresh-without-token"],
)
def test_bad_frame_gets_error_and_stays_open(shared_relay, healthy, frame, ref):
    """A bad frame gets an ``invalid_frame`` error (``ref`` echoed); the connection stays open."""
    client_id = fresh("framer")
    ws, _ = open_ws(shared_relay, f"id={client_id}")
    ws.send(frame)
    error = recv_json(ws)
    assert error["type"] == "error" and error["error"] == "invalid_frame" and error["ref"] == ref
    assert error["detail"]
    status, reply = shared_relay.send({"receiver_id": client_id, "content": "still here"})
    assert status == 200 and reply["sent"] == [client_id]
    assert recv_json(ws)["content"] == "still here"
    ws.close()


def test_binary_frame_gets_error_and_stays_open(shared_relay, healthy):
    """A binary frame gets an ``invalid_frame`` error; a good send then works."""
    client_id = fresh("binary")
    ws, _ = open_ws(shared_relay, f"id={client_id}")
    ws.send(b'{"type": "send"}')
    error = recv_json(ws)
    assert error["type"] == "error" and error["error"] == "invalid_frame" and error["ref"] is None
    ws.send(json.dumps({"type": "send", "ref": "ok", "receiver_id": healthy.client_id, "content": "from binary"}))
    ack = recv_json(ws)
    assert ack == {**ack, "type": "ack", "ref": "ok", "sent": [healthy.client_id]}
    message = recv_json(healthy.ws)
    assert message["content"] == "from binary" and message["sender_id"] == client_id
    healthy.last_id = message["id"]
    ws.close()


def test_oversize_frame_closes_1009(start_relay):
    """A frame over --max-message-size is closed with 1009; others are served."""
    relay = start_relay("--max-message-size", "1024")
    healthy = Healthy(relay, "healthy")
    ws, _ = open_ws(relay, "id=big")
    ws.send(json.dumps({"type": "send", "receiver_id": "x", "content": "y" * 2000}))
    assert close_code(ws) == 1009
    ok, _ = open_ws(relay, "id=small")
    ok.send(json.dumps({"type": "send", "ref": "s", "receiver_id": "healthy", "content": "y" * 900}))
    assert recv_json(ok)["sent"] == ["healthy"]
    assert recv_json(healthy.ws)["content"] == "y" * 900
    healthy.last_id += 1
    healthy.check()


# Connection limits and duplicates (section 4)


def test_reject_policy_gives_409(start_relay):
    """Under ``--duplicates reject`` a second connection of an id is 409; the first keeps working."""
    relay = start_relay("--duplicates", "reject")
    healthy = Healthy(relay, "healthy")
    status, _, body = refused(relay, "id=healthy")
    assert status == 409 and body["error"] == "duplicate"
    healthy.check()
    healthy.close()


def test_fanout_past_max_per_id_gives_409(start_relay):
    """Under fanout, ``--max-per-id`` connections of an id all receive; one more is 409."""
    relay = start_relay("--duplicates", "fanout", "--max-per-id", "3")
    healthy = Healthy(relay, "healthy")
    tabs = [open_ws(relay, "id=tabs")[0] for _ in range(3)]
    status, _, body = refused(relay, "id=tabs")
    assert status == 409 and body["error"] == "duplicate"
    status, reply = relay.send({"receiver_id": "tabs", "content": "to all tabs"})
    assert status == 200 and reply["sent"] == ["tabs"]
    for tab in tabs:
        assert recv_json(tab)["content"] == "to all tabs"
    tabs[0].close()
    extra, _ = open_ws(relay, "id=tabs")
    extra.close()
    healthy.check()


def test_max_connections_gives_503(start_relay):
    """Past ``--max-connections`` new /ws requests get 503; a freed place can be taken again."""
    relay = start_relay("--max-connections", "3")
    healthy = Healthy(relay, "healthy")
    others = [open_ws(relay, f"id=other-{n}")[0] for n in range(2)]
    status, _, body = refused(relay, "id=one-too-many")
    assert status == 503 and body["error"] == "too_many_connections"
    healthy.check()
    others[0].close()
    from tests.integration.clients import health_clients, wait_for

    wait_for(lambda: health_clients(relay) == 2, what="the closed connection to be unregistered")
    late, _ = open_ws(relay, "id=late")
    late.close()


def test_replace_closes_older_with_4000(shared_relay, healthy):
    """Under ``replace`` (the default) the older connection gets 4000; the newer one receives."""
    client_id = fresh("tab")
    older, _ = open_ws(shared_relay, f"id={client_id}")
    newer, _ = open_ws(shared_relay, f"id={client_id}")
    assert close_code(older) == 4000
    status, reply = shared_relay.send({"receiver_id": client_id, "content": "newest"})
    assert status == 200 and reply["sent"] == [client_id]
    assert recv_json(newer)["content"] == "newest"
    newer.close()


# POST /send-message (section 7, 8)


def _post_raw(relay, raw: bytes, content_type="application/json", method="POST"):
    return relay.request(method, "/send-message", raw=raw, headers={"Content-Type": content_type})


@pytest.mark.parametrize(
    "body, needle",
    [
        (b'{"receiver_id": "x", ', "invalid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b'"just a string"', "JSON object"),
        (b'{"ReceiverID": "x", "content": 1}', "unknown field 'ReceiverID' (did you mean 'receiver_id'?)"),
        (b'{"receiver_id": "x", "broadcast": true, "content": 1}', "exactly one of"),
        (b'{"content": 1}', "exactly one of"),
        (b'{"receiver_id": "x"}', "'content' is required"),
        (b'{"receiver_id": "bad id", "content": 1}', "receiver_id"),
        (b'{"receiver_ids": [], "content": 1}', "receiver_ids"),
        (json.dumps({"receiver_ids": [f"r{n}" for n in range(1001)], "content": 1}).encode(), "1 to 1000 ids"),
        (b'{"broadcast": false, "content": 1}', "broadcast"),
        (b'{"receiver_id": "x", "content": 1, "sender_id": "bad id"}', "sender_id"),
        (b"[]", "1 to 1000"),
    ],
    ids=["invalid-json", "not-utf8", "not-object", "unknown-field", "two-targets", "no-target",
         "no-content", "bad-receiver", "empty-receivers", "1001-receivers", "broadcast-false", "bad-sender", "empty-batch"],
)
def test_bad_post_is_400(shared_relay, healthy, body, needle):
    """Each invalid body is 400 JSON naming the problem; nothing is delivered."""
    status, headers, reply = _post_raw(shared_relay, body)
    assert status == 400
    assert headers["Content-Type"] == "application/json"
    assert reply["error"] == "invalid_request" or reply["error"] == "invalid_id"
    assert needle in reply["detail"]


def test_bad_batch_item_names_index_and_sends_nothing(shared_relay, healthy):
    """A batch with one bad item is 400 naming its index; the good items are not sent."""
    good = {"receiver_id": healthy.client_id, "content": "must not arrive"}
    status, _, reply = shared_relay.request("POST", "/send-message", [good, good, {"receiver_id": healthy.client_id}])
    assert status == 400 and "[2]" in reply["detail"] and "content" in reply["detail"]
    status, reply = shared_relay.send({"receiver_id": healthy.client_id, "content": "after the bad batch"})
    assert status == 200
    message = recv_json(healthy.ws)
    assert message["content"] == "after the bad batch" and message["id"] == healthy.last_id + 1
    healthy.last_id = message["id"]


def test_batch_of_1001_is_400(shared_relay, healthy):
    """A batch holds at most 1000 messages (1000 is fine, 1001 is 400)."""
    item = {"receiver_id": fresh("batch"), "content": 0}
    status, _, reply = shared_relay.request("POST", "/send-message", [item] * 1001)
    assert status == 400 and "1 to 1000" in reply["detail"]
    status, _, replies = shared_relay.request("POST", "/send-message", [item] * 1000)
    assert status == 200 and len(replies) == 1000 and all(r["queued"] == [item["receiver_id"]] for r in replies)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_wrong_method_is_405_with_allow(shared_relay, healthy, method):
    """Only POST is allowed on /send-message: 405 with ``Allow: POST``."""
    status, headers, reply = shared_relay.request(method, "/send-message")
    assert status == 405 and headers["Allow"] == "POST" and reply["error"] == "method_not_allowed"


def test_body_too_large_is_413(start_relay):
    """A body over --max-message-size is 413, announced or chunked; nothing is sent."""
    relay = start_relay("--max-message-size", "1000")
    healthy = Healthy(relay, "healthy")
    body = json.dumps({"receiver_id": "healthy", "content": "z" * 2000}).encode()
    status, _, reply = relay.request("POST", "/send-message", raw=body)
    assert status == 413 and reply["error"] == "too_large"
    result = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
         "-H", "Content-Type: application/json", "-H", "Transfer-Encoding: chunked",
         "--data-binary", "@-", f"{relay.http}/send-message"],
        input=body, capture_output=True, timeout=20, check=True,
    )
    assert result.stdout == b"413"
    healthy.check()


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
def test_wrong_content_type_is_415(shared_relay, healthy, content_type):
    """Anything but application/json is 415."""
    body = json.dumps({"receiver_id": healthy.client_id, "content": "no"}).encode()
    status, _, reply = _post_raw(shared_relay, body, content_type)
    assert status == 415 and reply["error"] == "unsupported_media_type"


def test_json_with_charset_is_accepted(shared_relay, healthy):
    """``application/json; charset=utf-8`` is JSON too."""
    body = json.dumps({"receiver_id": healthy.client_id, "content": "charset"}).encode()
    status, _, reply = _post_raw(shared_relay, body, "application/json; charset=utf-8")
    assert status == 200 and reply["sent"] == [healthy.client_id]
    message = recv_json(healthy.ws)
    assert message["content"] == "charset"
    healthy.last_id = message["id"]


def test_not_delivered_is_404_without_history(start_relay):
    """With ``--history-size 0`` a message for an absent id is 404 not_delivered, with the lists."""
    relay = start_relay("--history-size", "0")
    healthy = Healthy(relay, "healthy")
    status, reply = relay.send({"receiver_id": "nobody", "content": 1})
    assert status == 404
    assert reply["error"] == "not_delivered" and reply["dropped"] == ["nobody"] and reply["sent"] == []
    status, reply = relay.send({"receiver_ids": ["nobody", "healthy"], "content": 2})
    assert status == 200 and reply["sent"] == ["healthy"] and reply["dropped"] == ["nobody"]
    assert recv_json(healthy.ws)["content"] == 2
    healthy.last_id += 1
    healthy.check()


@pytest.mark.parametrize("path", ["/nope", "/ws/extra", "/send-message/x", "/../etc/passwd", "/index.html"])
def test_unknown_path_is_json_404(shared_relay, healthy, path):
    """Unknown paths get a JSON 404, for any method."""
    for method in ("GET", "POST"):
        status, headers, reply = shared_relay.request(method, path, raw=b"{}" if method == "POST" else None)
        assert status == 404, (method, path)
        assert headers["Content-Type"] == "application/json" and reply["error"] == "not_found"
