"""
The HTTP side of the Site (CONTRACT.md sections 4 refusals, 7, 8, 9), over
raw HTTP/1.1 on a ``StringTransport`` so that relayd's own RelaySite and
RelayRequest (body cap, JSON 500) are what answers.
"""

from __future__ import annotations

import json

import pytest
from twisted.internet import defer

from relayd import __version__
from relayd.core.registry import Refused
from tests.unit.sim import parse_response

UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
           "Sec-WebSocket-Version": "13"}


def assert_error(response, status, error, detail_part=""):
    assert response.status == status, (response.status, response.body)
    body = response.json()
    assert body["error"] == error
    assert isinstance(body["detail"], str) and body["detail"]
    assert detail_part in body["detail"]
    return body


# POST /send-message: success

def test_send_to_a_connected_client_is_200_sent(sim):
    alice = sim.ws("id=alice")
    response = sim.post({"receiver_id": "alice", "content": {"n": 1}, "sender_id": "billing"})
    assert response.status == 200
    body = response.json()
    assert set(body) == {"message_id", "sent", "queued", "dropped"}
    assert (body["sent"], body["queued"], body["dropped"]) == (["alice"], [], [])
    sim.flush()
    (message,) = alice.client.messages
    assert message["content"] == {"n": 1} and message["sender_id"] == "billing"


def test_send_to_an_offline_client_is_200_queued(sim):
    response = sim.post({"receiver_id": "bob", "content": 1})
    assert response.status == 200
    assert response.json()["queued"] == ["bob"]


def test_content_type_with_charset_is_accepted(sim):
    response = sim.post({"receiver_id": "bob", "content": 1}, content_type="application/json; charset=utf-8")
    assert response.status == 200


def test_nothing_delivered_is_404_with_the_lists(make_relay):
    sim = make_relay(history_size=0)
    response = sim.post({"receiver_ids": ["x", "y"], "content": 1})
    body = assert_error(response, 404, "not_delivered")
    assert (body["sent"], body["queued"], body["dropped"]) == ([], [], ["x", "y"])
    assert len(body["message_id"]) == 32


def test_partly_delivered_is_200(make_relay):
    sim = make_relay(history_size=0)
    sim.ws("id=online")
    response = sim.post({"receiver_ids": ["gone", "online"], "content": 1})
    assert response.status == 200
    assert (response.json()["sent"], response.json()["dropped"]) == (["online"], ["gone"])


def test_broadcast_is_200_with_empty_lists(sim):
    a, b = sim.ws("id=a"), sim.ws("id=b")
    response = sim.post({"broadcast": True, "content": "all"})
    assert response.status == 200
    body = response.json()
    assert body["sent"] == body["queued"] == body["dropped"] == []
    sim.flush()
    assert [m["content"] for m in a.client.messages] == [m["content"] for m in b.client.messages] == ["all"]


def test_batch_replies_in_order(make_relay):
    sim = make_relay(history_size=0)
    sim.ws("id=b")
    batch = [{"receiver_id": "a", "content": 1}, {"receiver_id": "b", "content": 2},
             {"receiver_ids": ["b", "c"], "content": 3}, {"broadcast": True, "content": 4}]
    response = sim.post(batch)
    assert response.status == 200
    replies = response.json()
    assert isinstance(replies, list) and len(replies) == 4
    assert [(r["sent"], r["queued"], r["dropped"]) for r in replies] == [
        ([], [], ["a"]), (["b"], [], []), (["b"], [], ["c"]), ([], [], []),
    ]
    assert len({r["message_id"] for r in replies}) == 4


def test_batch_messages_are_numbered_in_order(sim):
    bob = sim.ws("id=bob")
    response = sim.post([{"receiver_id": "bob", "content": n} for n in range(5)])
    assert response.status == 200
    sim.flush()
    assert [(m["id"], m["content"]) for m in bob.client.messages] == [(n + 1, n) for n in range(5)]


# POST /send-message: refusals

@pytest.mark.parametrize("body, detail", [
    (b"{", "invalid JSON"),
    (b"", "invalid JSON"),
    (b'{"receiver_id": "a", "content": "\xff"}', "not UTF-8"),
])
def test_invalid_json_is_400(sim, body, detail):
    assert_error(sim.post(body), 400, "invalid_request", detail)


def test_unknown_field_is_400_with_a_hint(sim):
    body = assert_error(sim.post({"ReceiverID": "alice", "content": "hi"}), 400, "invalid_request")
    assert body == {"error": "invalid_request",
                    "detail": "unknown field 'ReceiverID' (did you mean 'receiver_id'?)"}


@pytest.mark.parametrize("message, error, detail", [
    ({"content": 1}, "invalid_request", "exactly one of"),
    ({"receiver_id": "a"}, "invalid_request", "'content' is required"),
    ({"receiver_id": "not ok", "content": 1}, "invalid_id", "'receiver_id'"),
    ({"receiver_ids": [], "content": 1}, "invalid_request", "1 to 1000"),
    ({"receiver_id": "a", "content": 1, "sender_id": ""}, "invalid_id", "'sender_id'"),
    ([], "invalid_request", "a batch must hold 1 to 1000 messages"),
    ("text", "invalid_request", "a message must be a JSON object"),
])
def test_invalid_fields_are_400(sim, message, error, detail):
    assert_error(sim.post(message), 400, error, detail)


def test_bad_batch_item_is_named_and_nothing_is_sent(sim):
    bob = sim.ws("id=bob")
    batch = [{"receiver_id": "bob", "content": 1}, {"receiver_id": "bob", "content": 2},
             {"receiver_id": "bob"}, {"receiver_id": "bob", "content": 4}]
    body = assert_error(sim.post(batch), 400, "invalid_request")
    assert body["detail"] == "message [2]: 'content' is required"
    sim.flush()
    assert bob.client.messages == []
    assert sim.post({"receiver_id": "bob", "content": "ok"}).json()["sent"] == ["bob"]
    sim.flush()
    assert [(m["id"], m["content"]) for m in bob.client.messages] == [(1, "ok")]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_wrong_method_is_405_with_allow(sim, method):
    response = sim.request(method, "/send-message")
    assert_error(response, 405, "method_not_allowed")
    assert response.header("allow") == "POST"


def test_post_to_health_check_is_405(sim):
    response = sim.request("POST", "/health-check", b"{}", {"Content-Type": "application/json"})
    assert_error(response, 405, "method_not_allowed")
    assert response.header("allow") == "GET"


def test_body_too_large_is_413(make_relay):
    sim = make_relay(max_message_size=1024)
    content = "x" * 2000
    body = assert_error(sim.post({"receiver_id": "a", "content": content}), 413, "too_large", "1024")
    assert set(body) == {"error", "detail"}
    assert sim.parts.history.replay("a", 0, None).last_id == 0
    assert sim.post({"receiver_id": "a", "content": "x" * 900}).status == 200


def test_chunked_body_too_large_is_413(make_relay):
    sim = make_relay(max_message_size=1024)
    payload = json.dumps({"receiver_id": "a", "content": "x" * 3000}).encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(payload[i:i + 500]), payload[i:i + 500])
                      for i in range(0, len(payload), 500))
    raw = (b"POST /send-message HTTP/1.1\r\nHost: relay.test\r\nConnection: close\r\n"
           b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
    assert_error(parse_response(sim.raw(raw)), 413, "too_large")
    assert sim.parts.history.replay("a", 0, None).last_id == 0


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
def test_wrong_content_type_is_415(sim, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    response = sim.request("POST", "/send-message", b'{"receiver_id": "a", "content": 1}', headers)
    assert_error(response, 415, "unsupported_media_type", "application/json")


def test_broker_unavailable_is_503(sim):
    from relayd.core.ports import BrokerUnavailable

    sim.relay.broker.publish = lambda request, timestamp, message_id: defer.fail(BrokerUnavailable("down"))
    assert_error(sim.post({"receiver_id": "a", "content": 1}), 503, "broker_unavailable")


# Internal errors

def test_internal_error_while_sending_is_500_without_traceback(sim, logged_failures):
    def broken(request, timestamp, message_id):
        raise RuntimeError("db password is hunter2")

    sim.relay.broker.publish = broken
    response = sim.post({"receiver_id": "a", "content": 1})
    assert response.status == 500
    body = response.json()
    assert body["error"] == "internal" and set(body) <= {"error", "detail"}
    assert b"hunter2" not in response.body and b"Traceback" not in response.body
    assert any(f.check(RuntimeError) for f in logged_failures)


def test_internal_error_in_a_resource_is_a_json_500(make_relay, logged_failures):
    class BrokenAuth:
        def authenticate(self, client_id, token):
            raise KeyError("internal detail")

        def authorize_send(self, token):
            raise ZeroDivisionError("internal detail")

    sim = make_relay(auth=BrokenAuth())
    for response in (sim.post({"receiver_id": "a", "content": 1}),
                     sim.request("GET", "/ws?id=alice", headers=UPGRADE)):
        assert response.status == 500
        assert response.json()["error"] == "internal"
        assert b"internal detail" not in response.body and b"Traceback" not in response.body
    assert {f.type for f in logged_failures} >= {KeyError, ZeroDivisionError}
    assert sim.request("GET", "/health-check").status == 200


# GET /health-check, unknown paths, /metrics

def test_health_check_shape(sim):
    sim.ws("id=a")
    sim.ws("id=b")
    sim.clock.advance(12.5)
    response = sim.request("GET", "/health-check")
    assert response.status == 200
    assert response.json() == {
        "status": "ok", "clients": 2, "connections": {"ws": 2, "sse": 0},
        "uptime_s": 12.5, "version": __version__, "broker": "memory",
    }


def test_health_check_counts_distinct_ids(make_relay):
    sim = make_relay(duplicates="fanout")
    sim.ws("id=a")
    sim.ws("id=a")
    body = sim.request("GET", "/health-check").json()
    assert body["clients"] == 1 and body["connections"]["ws"] == 2


def test_health_check_degraded_when_the_broker_fails(sim):
    sim.relay.broker.probe = lambda: defer.fail(RuntimeError("redis down"))
    response = sim.request("GET", "/health-check")
    assert response.status == 503 and response.json()["status"] == "degraded"


@pytest.mark.parametrize("method, path", [
    ("GET", "/nope"), ("GET", "/index.html/x"), ("POST", "/send-message/extra"), ("GET", "/ws/x"), ("GET", "/health-check/"), ("DELETE", "/a/b/c"),
])
def test_unknown_path_is_a_json_404(sim, method, path):
    assert_error(sim.request(method, path), 404, "not_found")


def test_metrics_count_outcomes(sim):
    sim.ws("id=a")
    sim.post({"receiver_ids": ["a", "b"], "content": 1})
    response = sim.request("GET", "/metrics")
    assert response.status == 200
    text = response.body.decode()
    assert 'relay_messages_total{outcome="sent"} 1.0' in text
    assert 'relay_messages_total{outcome="queued"} 1.0' in text
    assert 'relay_connections{transport="ws"} 1.0' in text


# /ws refusals, before any upgrade

def test_plain_get_ws_is_426(sim):
    response = sim.request("GET", "/ws?id=alice")
    assert_error(response, 426, "upgrade_required")
    assert response.header("upgrade") == "websocket"
    assert len(sim.registry) == 0


@pytest.mark.parametrize("query", ["", "?id=", "?id=al%20ice", "?id=" + "x" * 129, "?id=a/b", "?other=1"])
def test_bad_or_missing_id_is_400(sim, query):
    assert_error(sim.request("GET", f"/ws{query}", headers=UPGRADE), 400, "invalid_id")
    assert len(sim.registry) == 0


@pytest.mark.parametrize("last_id", ["-1", "abc", "1.5", "%D9%A1", "9" * 19, "0x10", "%201"])
def test_bad_last_id_is_400(sim, last_id):
    assert_error(sim.request("GET", f"/ws?id=alice&last_id={last_id}", headers=UPGRADE), 400, "invalid_last_id")
    assert len(sim.registry) == 0


def test_bad_epoch_is_400(sim):
    assert_error(sim.request("GET", f"/ws?id=alice&last_id=1&epoch={'e' * 65}", headers=UPGRADE),
                 400, "invalid_epoch")


def test_origin_not_allowed_is_403(make_relay):
    sim = make_relay(allowed_origins=["https://app.example.com"])
    response = sim.request("GET", "/ws?id=alice", headers={**UPGRADE, "Origin": "https://evil.example"})
    assert_error(response, 403, "origin_not_allowed")
    ok = sim.ws("id=alice", headers={"Origin": "https://app.example.com"})
    assert ok.client.welcome["client_id"] == "alice"


def test_connection_limit_is_503(make_relay):
    sim = make_relay(max_connections=1)
    sim.ws("id=a")
    assert_error(sim.request("GET", "/ws?id=b", headers=UPGRADE), 503, "too_many_connections")


def test_reject_policy_is_409(make_relay):
    sim = make_relay(duplicates="reject")
    first = sim.ws("id=a")
    assert_error(sim.request("GET", "/ws?id=a", headers=UPGRADE), 409, "duplicate")
    sim.post({"receiver_id": "a", "content": "still"})
    sim.flush()
    assert [m["content"] for m in first.client.messages] == ["still"]


@pytest.mark.parametrize("drop", ["Sec-WebSocket-Key", "Sec-WebSocket-Version"])
def test_upgrade_without_its_websocket_headers_is_a_json_400(sim, drop):
    headers = {name: value for name, value in UPGRADE.items() if name != drop}
    assert_error(sim.request("GET", "/ws?id=a", headers=headers), 400, "bad_handshake", "Sec-WebSocket-Key")
    assert sim.relay.registry.clients == 0


def test_refusal_order_426_before_400(sim):
    assert sim.request("GET", "/ws?id=bad%20id&last_id=x").status == 426
    assert_error(sim.request("GET", "/ws?id=bad%20id&last_id=x", headers=UPGRADE), 400, "invalid_id")


def test_refused_with_401_carries_www_authenticate(make_relay):
    class TokenAuth:
        def authenticate(self, client_id, token):
            raise Refused(401, "unauthorized", "a valid token is required")

    sim = make_relay(auth=TokenAuth())
    response = sim.request("GET", "/ws?id=a", headers=UPGRADE)
    assert_error(response, 401, "unauthorized")
    assert response.header("www-authenticate") == 'Bearer realm="relayd"'


def test_deeply_nested_content_is_never_a_500(sim):
    """Every depth a body can have is either accepted or refused with 400, never an internal error."""
    statuses = set()
    for depth in range(0, 1100, 7):
        body = b'{"receiver_id": "a", "content": ' + b"[" * depth + b"]" * depth + b"}"
        statuses.add(sim.post(body).status)
    assert statuses == {200, 400}


def test_body_exactly_at_the_limit_is_accepted(make_relay):
    sim = make_relay(max_message_size=1024)
    message = {"receiver_id": "a", "content": ""}
    message["content"] = "x" * (1024 - len(json.dumps(message).encode()))
    body = json.dumps(message).encode()
    assert len(body) == 1024
    assert sim.post(body).status == 200
    assert sim.post(body + b" ").status == 413


def test_tokens_never_reach_the_log(sim, log_lines):
    conn = sim.ws("id=alice&token=SECRET-ONE&last_id=0")
    sim.request("GET", "/health-check?token=SECRET-TWO")
    sim.request("GET", "/nowhere?x=1&token=SECRET-THREE")
    conn.client.sendClose(1000)
    sim.flush()
    text = "\n".join(log_lines)
    assert "ws open alice" in text and "ws close alice" in text and "/health-check" in text
    assert "token=[redacted]" in text
    assert "SECRET" not in text


@pytest.mark.parametrize("step", ["claim", "replay"])
def test_broker_down_while_admitting_is_a_json_503_before_the_upgrade(sim, step):
    """Never a connection upgraded and then closed: the client gets 503 (retry later) and no place is kept."""
    from relayd.core.ports import BrokerUnavailable

    setattr(sim.relay.broker, step, lambda *args: defer.fail(BrokerUnavailable("down")))
    assert_error(sim.request("GET", "/ws?id=a", headers=UPGRADE), 503, "broker_unavailable")
    assert len(sim.relay.registry) == 0 and sim.parts.links.live == set()


@pytest.mark.parametrize("body", [
    b'{"receiver_id": "a", "receiver_id": "b", "content": 1}',
    b'{"receiver_id": "a", "content": {"x": 1, "x": 2}}',
    b'[{"receiver_id": "a", "content": 1, "\\u0063ontent": 2}]',
])
def test_a_duplicated_key_is_400(sim, body):
    assert_error(sim.post(body), 400, "invalid_request", "appears twice")
    assert sim.parts.history.replay("a", 0, None).last_id == 0


@pytest.mark.parametrize("body, content", [
    (b'{"receiver_id": "a", "content": {"url": "http://x:1/", "a:b": ":"}}', {"url": "http://x:1/", "a:b": ":"}),
    (b'{"receiver_id": "a", "content": 123456789012345678901234567890}', 123456789012345678901234567890),
    (b'{"receiver_id": "a", "content": "\\ud83d\\ude00 \\" :"}', "\U0001F600 \" :"),
])
def test_colons_in_strings_and_long_integers_are_kept(sim, body, content):
    bob = sim.ws("id=a")
    assert sim.post(body).status == 200
    sim.flush()
    assert bob.client.messages[0]["content"] == content


def test_metrics_count_requests_and_delivery_times(sim):
    alice = sim.ws("id=alice")
    sim.post({"receiver_id": "alice", "content": 1})
    sim.flush()
    sim.request("GET", "/nope")
    text = sim.request("GET", "/metrics").body.decode()
    assert 'relay_http_requests_total{code="200",path="/send-message"} 1.0' in text
    assert 'relay_http_requests_total{code="404",path="other"} 1.0' in text
    assert "relay_delivery_seconds_count 1.0" in text
    assert 'relay_delivery_seconds_bucket{le="+Inf"} 1.0' in text
    assert alice.client.messages


def later(clock, publish):
    """``publish`` whose Deferred fires on the next turn (as a broker on the network, or the store, answers)."""

    def deferred(request, timestamp, message_id):
        d = defer.Deferred()
        clock.callLater(0, lambda: defer.maybeDeferred(publish, request, timestamp, message_id).chainDeferred(d))
        return d

    return deferred


def test_batch_through_a_broker_that_answers_later_is_sent_in_order(sim):
    bob = sim.ws("id=bob")
    sim.relay.broker.publish = later(sim.clock, sim.relay.broker.publish)
    response = sim.post([{"receiver_id": "bob", "content": n} for n in range(3)])
    assert response.status == 200
    assert [r["sent"] for r in response.json()] == [["bob"]] * 3
    sim.flush()
    assert [(m["id"], m["content"]) for m in bob.client.messages] == [(1, 0), (2, 1), (3, 2)]


def test_batch_stops_at_the_first_failed_send(sim):
    from relayd.core.ports import BrokerUnavailable

    bob = sim.ws("id=bob")
    publish = sim.relay.broker.publish
    calls = []

    def second_fails(request, timestamp, message_id):
        calls.append(request.content)
        return defer.fail(BrokerUnavailable("down")) if len(calls) == 2 else publish(request, timestamp, message_id)

    sim.relay.broker.publish = later(sim.clock, second_fails)
    assert_error(sim.post([{"receiver_id": "bob", "content": n} for n in range(3)]), 503, "broker_unavailable")
    assert calls == [0, 1]
    sim.flush()
    assert [m["content"] for m in bob.client.messages] == [0]
