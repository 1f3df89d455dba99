"""
The wire format (CONTRACT.md sections 3, 4 and 7): client ids, send
requests, client frames and the frames the server writes.
"""

from __future__ import annotations

import json

import pytest

from relayd import wire
from relayd.wire import InvalidRequest, parse_client_frame, parse_send, parse_send_body

# Client ids (section 3)

@pytest.mark.parametrize("client_id", [
    "a", "alice", "A-Z_a.z:0@9", "user@example.com", "tenant:42", "x" * 128, "-", "..",
])
def test_valid_client_ids(client_id):
    assert wire.is_client_id(client_id)
    assert wire.check_client_id(client_id) == client_id


@pytest.mark.parametrize("client_id", [
    "", "x" * 129, "al ice", "alice/bob", "a?b", "a&b", "é", "a\n", "a\x00", "a+b", "a#b", "a%20",
    None, 42, ["alice"], b"alice",
])
def test_invalid_client_ids(client_id):
    assert not wire.is_client_id(client_id)
    with pytest.raises(InvalidRequest) as raised:
        wire.check_client_id(client_id, "receiver_id")
    assert raised.value.code == "invalid_id"
    assert "'receiver_id'" in raised.value.detail
    assert "1 to 128" in raised.value.detail


def test_trailing_newline_is_not_a_valid_id():
    """``re.match`` with ``$`` would accept "alice\\n"; fullmatch must not."""
    assert not wire.is_client_id("alice\n")


# parse_send (section 7)

def test_single_receiver():
    request = parse_send({"receiver_id": "alice", "content": "hi", "sender_id": "billing"})
    assert request.receiver_ids == ("alice",)
    assert request.broadcast is False
    assert request.content == "hi"
    assert request.sender_id == "billing"


def test_sender_id_is_optional_and_may_be_null():
    assert parse_send({"receiver_id": "alice", "content": 1}).sender_id is None
    assert parse_send({"receiver_id": "alice", "content": 1, "sender_id": None}).sender_id is None


@pytest.mark.parametrize("content", [None, 0, False, "", [], {}, {"nested": [1, {"a": None}]}, 1.5])
def test_content_may_be_any_json_value(content):
    assert parse_send({"receiver_id": "alice", "content": content}).content == content


def test_content_is_required():
    with pytest.raises(InvalidRequest, match="'content' is required"):
        parse_send({"receiver_id": "alice"})


def test_receiver_ids_keep_order_and_drop_duplicates():
    request = parse_send({"receiver_ids": ["b", "a", "b", "c", "a"], "content": 1})
    assert request.receiver_ids == ("b", "a", "c")


def test_broadcast():
    request = parse_send({"broadcast": True, "content": 1})
    assert request.broadcast is True
    assert request.receiver_ids == ()


@pytest.mark.parametrize("value", [False, 1, "true", None])
def test_broadcast_must_be_true(value):
    with pytest.raises(InvalidRequest, match="'broadcast' must be true"):
        parse_send({"broadcast": value, "content": 1})


@pytest.mark.parametrize("obj", [
    {"content": 1},
    {"receiver_id": "a", "receiver_ids": ["b"], "content": 1},
    {"receiver_id": "a", "broadcast": True, "content": 1},
    {"receiver_ids": ["a"], "broadcast": True, "content": 1},
])
def test_exactly_one_target(obj):
    with pytest.raises(InvalidRequest, match="exactly one of 'receiver_id', 'receiver_ids' or 'broadcast'"):
        parse_send(obj)


def test_two_targets_are_named():
    with pytest.raises(InvalidRequest) as raised:
        parse_send({"receiver_id": "a", "broadcast": True, "content": 1})
    assert "got receiver_id, broadcast" in raised.value.detail


@pytest.mark.parametrize("receivers", [[], "alice", {"a": 1}, None, ["ok"] * 1001])
def test_receiver_ids_must_be_a_list_of_1_to_1000(receivers):
    with pytest.raises(InvalidRequest, match="'receiver_ids' must be a list of 1 to 1000 ids"):
        parse_send({"receiver_ids": receivers, "content": 1})


def test_receiver_ids_at_the_limit():
    ids = [f"c{n}" for n in range(1000)]
    assert len(parse_send({"receiver_ids": ids, "content": 1}).receiver_ids) == 1000


def test_bad_receiver_in_list_is_named_by_index():
    with pytest.raises(InvalidRequest) as raised:
        parse_send({"receiver_ids": ["ok", "also-ok", "not ok"], "content": 1})
    assert raised.value.code == "invalid_id"
    assert "'receiver_ids[2]'" in raised.value.detail


def test_bad_receiver_id_and_sender_id():
    with pytest.raises(InvalidRequest, match="'receiver_id'"):
        parse_send({"receiver_id": "a b", "content": 1})
    with pytest.raises(InvalidRequest, match="'sender_id'"):
        parse_send({"receiver_id": "a", "content": 1, "sender_id": "x/y"})


@pytest.mark.parametrize("name, hint", [
    ("ReceiverID", "receiver_id"),
    ("receiverId", "receiver_id"),
    ("receiver-ids", "receiver_ids"),
    ("reciever_id", "receiver_id"),
    ("contents", "content"),
    ("senderID", "sender_id"),
    ("Broadcast", "broadcast"),
])
def test_unknown_field_is_named_with_a_hint(name, hint):
    with pytest.raises(InvalidRequest) as raised:
        parse_send({"receiver_id": "alice", "content": 1, name: "x"})
    assert raised.value.detail == f"unknown field '{name}' (did you mean '{hint}'?)"
    assert raised.value.code == "invalid_request"


def test_contract_example_receiverid():
    with pytest.raises(InvalidRequest) as raised:
        parse_send({"ReceiverID": "alice", "content": "hi"})
    assert raised.value.detail == "unknown field 'ReceiverID' (did you mean 'receiver_id'?)"


def test_unknown_field_without_a_close_match_has_no_hint():
    with pytest.raises(InvalidRequest) as raised:
        parse_send({"receiver_id": "alice", "content": 1, "priority": 5})
    assert raised.value.detail == "unknown field 'priority'"


@pytest.mark.parametrize("obj", [[], "text", 1, None, True])
def test_a_message_must_be_an_object(obj):
    with pytest.raises(InvalidRequest, match="a message must be a JSON object"):
        parse_send(obj)


# parse_send_body (section 7)

def test_body_single_object():
    requests, batch = parse_send_body(b'{"receiver_id": "alice", "content": "hi"}')
    assert batch is False
    assert [r.receiver_ids for r in requests] == [("alice",)]


def test_body_batch_in_order():
    body = json.dumps([{"receiver_id": f"c{n}", "content": n} for n in range(5)]).encode()
    requests, batch = parse_send_body(body)
    assert batch is True
    assert [r.receiver_ids[0] for r in requests] == [f"c{n}" for n in range(5)]
    assert [r.content for r in requests] == list(range(5))


def test_body_batch_of_one_is_still_a_batch():
    requests, batch = parse_send_body(b'[{"broadcast": true, "content": 1}]')
    assert batch is True and len(requests) == 1


@pytest.mark.parametrize("size", [0, 1001])
def test_body_batch_size_bounds(size):
    body = json.dumps([{"receiver_id": "a", "content": 1}] * size).encode()
    with pytest.raises(InvalidRequest, match="a batch must hold 1 to 1000 messages"):
        parse_send_body(body)


def test_body_batch_of_1000_is_accepted():
    body = json.dumps([{"receiver_id": "a", "content": 1}] * 1000).encode()
    requests, _ = parse_send_body(body)
    assert len(requests) == 1000


def test_body_batch_names_the_first_bad_item():
    items = [
        {"receiver_id": "a", "content": 1},
        {"receiver_id": "b", "content": 2},
        {"receiver_id": "c", "ReceiverID": "x", "content": 3},
        {"receiver_id": "d"},
    ]
    with pytest.raises(InvalidRequest) as raised:
        parse_send_body(json.dumps(items).encode())
    assert raised.value.detail == "message [2]: unknown field 'ReceiverID' (did you mean 'receiver_id'?)"


def test_body_batch_keeps_the_item_error_code():
    with pytest.raises(InvalidRequest) as raised:
        parse_send_body(b'[{"receiver_id": "ok", "content": 1}, {"receiver_id": "no way", "content": 1}]')
    assert raised.value.code == "invalid_id"
    assert raised.value.detail.startswith("message [1]: ")


@pytest.mark.parametrize("body, detail", [
    (b"", "invalid JSON"),
    (b"{", "invalid JSON"),
    (b"{'receiver_id': 'a'}", "invalid JSON"),
    (b'{"receiver_id": "a", "content": "\xff"}', "the body is not UTF-8"),
    (b"[" * 100000, "invalid JSON"),
])
def test_body_that_is_not_json(body, detail):
    with pytest.raises(InvalidRequest) as raised:
        parse_send_body(body)
    assert raised.value.detail.startswith(detail)
    assert raised.value.code == "invalid_request"


def test_body_that_is_not_an_object_or_array():
    with pytest.raises(InvalidRequest, match="a message must be a JSON object"):
        parse_send_body(b'"hello"')


# parse_client_frame (section 4, frames from the client)

def test_send_frame():
    frame = parse_client_frame(b'{"type": "send", "ref": "r1", "receiver_id": "bob", "content": {"a": 1}}', "alice")
    assert frame.type == "send"
    assert frame.ref == "r1"
    assert frame.send.receiver_ids == ("bob",)
    assert frame.send.content == {"a": 1}
    assert frame.send.sender_id == "alice"


def test_send_frame_ref_is_optional():
    frame = parse_client_frame(b'{"type": "send", "broadcast": true, "content": 1}', "alice")
    assert frame.ref is None and frame.send.broadcast


def test_send_frame_cannot_forge_sender():
    with pytest.raises(InvalidRequest) as raised:
        parse_client_frame(b'{"type": "send", "ref": 7, "receiver_id": "bob", "content": 1, "sender_id": "admin"}', "alice")
    assert raised.value.code == "invalid_frame"
    assert raised.value.ref == 7
    assert "unknown field 'sender_id'" in raised.value.detail


def test_refresh_frame():
    frame = parse_client_frame(b'{"type": "refresh", "ref": "r9", "token": "abc"}', "alice")
    assert frame.type == "refresh" and frame.token == "abc" and frame.ref == "r9"


@pytest.mark.parametrize("data, ref, detail", [
    (b"not json", None, "invalid JSON"),
    (b"\xff", None, "the body is not UTF-8"),
    (b'["type", "send"]', None, "a frame must be a JSON object"),
    (b'"send"', None, "a frame must be a JSON object"),
    (b"null", None, "a frame must be a JSON object"),
    (b'{"type": "subscribe", "ref": "r1"}', "r1", "unknown frame type 'subscribe'"),
    (b'{"ref": "r2"}', "r2", "unknown frame type None"),
    (b'{"type": "send", "ref": "r3", "content": 1}', "r3", "exactly one of"),
    (b'{"type": "send", "ref": "r4", "receiver_id": "a", "broadcast": true, "content": 1}', "r4", "exactly one of"),
    (b'{"type": "send", "ref": "r5", "receiver_id": "a"}', "r5", "'content' is required"),
    (b'{"type": "send", "ref": {"n": 1}, "receiver_id": "a b", "content": 1}', {"n": 1}, "'receiver_id' must be"),
    (b'{"type": "send", "ref": "r6", "ReceiverID": "a", "content": 1}', "r6",
     "unknown field 'ReceiverID' (did you mean 'receiver_id'?)"),
    (b'{"type": "refresh", "ref": "r7"}', "r7", "'refresh' needs a 'token' string"),
    (b'{"type": "refresh", "ref": "r8", "token": ""}', "r8", "'refresh' needs a 'token' string"),
    (b'{"type": "refresh", "ref": "r9", "token": "t", "extra": 1}', "r9", "unknown field 'extra'"),
])
def test_bad_frames_are_invalid_frame_with_ref(data, ref, detail):
    with pytest.raises(InvalidRequest) as raised:
        parse_client_frame(data, "alice")
    assert raised.value.code == "invalid_frame"
    assert raised.value.ref == ref
    assert detail in raised.value.detail


# Frame encoders (section 4, frames from the server)

def test_message_frame_is_json_with_the_contract_fields():
    frame = wire.message_frame(42, "alice", "billing", wire.dumps({"any": "JSON", "é": [1]}), "2026-11-25T23:00:00.123Z")
    assert json.loads(frame) == {
        "type": "message", "id": 42, "sender_id": "billing", "receiver_id": "alice",
        "content": {"any": "JSON", "é": [1]}, "timestamp": "2026-11-25T23:00:00.123Z",
    }


def test_message_frame_holds_every_client_id_character_and_time_stamp_as_json_would():
    every = "ABZaz09_.:@-"
    for receiver, sender in ((every, every), ("x" * 128, None), ("a", "b")):
        stamp = wire.utc_timestamp(1764547200.5)
        frame = wire.message_frame(7, receiver, sender, b"[1]", stamp)
        assert wire.is_client_id(receiver)
        assert frame == wire.dumps({"type": "message", "id": 7, "sender_id": sender, "receiver_id": receiver,
                                    "timestamp": stamp, "content": [1]})


@pytest.mark.parametrize("content", [None, "", 0, [], {}, "}{\"", [1, [2, [3]]]])
def test_message_frame_embeds_any_content(content):
    frame = wire.message_frame(None, None, None, wire.dumps(content), "t")
    decoded = json.loads(frame)
    assert decoded["content"] == content
    assert decoded["id"] is None and decoded["receiver_id"] is None and decoded["sender_id"] is None


def test_welcome_frame():
    frame = wire.welcome_frame("alice", "k3v9q2", 41, 3, False)
    assert json.loads(frame) == {
        "type": "welcome", "client_id": "alice", "epoch": "k3v9q2", "last_id": 41, "replayed": 3, "lost": False,
    }


def test_ack_frame_with_and_without_report():
    report = {"message_id": "0f8e", "sent": ["alice"], "queued": ["bob"], "dropped": []}
    assert json.loads(wire.ack_frame("r1", report)) == {"type": "ack", "ref": "r1", **report}
    assert json.loads(wire.ack_frame(None)) == {"type": "ack", "ref": None}


def test_error_frame():
    assert json.loads(wire.error_frame("r1", "invalid_frame", "bad")) == {
        "type": "error", "ref": "r1", "error": "invalid_frame", "detail": "bad",
    }


def test_dumps_is_compact_utf8():
    assert wire.dumps({"a": "é", "b": [1, 2]}) == '{"a":"é","b":[1,2]}'.encode()


@pytest.mark.parametrize("seconds, text", [
    (0, "1970-01-01T00:00:00.000Z"),
    (1795647600.123456, "2026-11-25T23:00:00.123Z"),
    (1795647600.9999, "2026-11-25T23:00:00.999Z"),
])
def test_utc_timestamp(seconds, text):
    assert wire.utc_timestamp(seconds) == text


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999", b"[1, NaN]"])
def test_non_json_numbers_are_refused(literal):
    """Python's json accepts these, but they are not JSON: a client could not parse the frame."""
    with pytest.raises(InvalidRequest) as raised:
        parse_send_body(b'{"receiver_id": "a", "content": ' + literal + b"}")
    assert raised.value.detail.startswith("invalid JSON")
    with pytest.raises(InvalidRequest) as raised:
        parse_client_frame(b'{"type": "send", "ref": 1, "receiver_id": "a", "content": ' + literal + b"}", "b")
    assert raised.value.code == "invalid_frame"


def test_large_but_finite_numbers_are_kept():
    (request,), _ = parse_send_body(b'{"receiver_id": "a", "content": [1e300, -2.5e-300, 123456789012345678901234567890]}')
    assert request.content == [1e300, -2.5e-300, 123456789012345678901234567890]


@pytest.mark.parametrize("number", [2 ** 64, -(2 ** 63) - 1, 10 ** 19, 99999999999999999999, 2 ** 64 - 1, 10 ** 18])
def test_integers_past_64_bits_stay_exact_from_19_digits_on(number):
    """orjson would make floats of those past 64 bits: 20 digits or more go to the exact parser."""
    body = b'[{"receiver_id": "a", "content": {"n": %d, "t": 1733000000000000}}]' % number
    (request,), _ = parse_send_body(body)
    assert request.content["n"] == number and type(request.content["n"]) is int


def nested(depth: int) -> bytes:
    return b'{"receiver_id": "a", "content": ' + b"[" * depth + b"]" * depth + b"}"


def test_deep_nesting_is_refused_with_a_clear_error():
    with pytest.raises(InvalidRequest) as raised:
        parse_send_body(nested(wire.MAX_DEPTH))
    assert raised.value.detail == f"invalid JSON: nested deeper than {wire.MAX_DEPTH} levels"
    (request,), _ = parse_send_body(nested(wire.MAX_DEPTH - 1))  # the message object is one level
    assert request.content is not None


def test_the_shortest_text_nested_too_deep_is_refused_and_one_level_less_is_not():
    too_deep = b"[" * (wire.MAX_DEPTH + 1) + b"]" * (wire.MAX_DEPTH + 1)  # no shorter text is that deep
    with pytest.raises(InvalidRequest, match="nested deeper"):
        wire.loads(too_deep)
    assert wire.loads(too_deep[1:-1]) is not None


def test_the_depth_bound_of_orjson_is_asked_of_the_installed_release():
    """loads skips its depth check for a body orjson encoded again only when orjson refuses to encode deeper than ours."""
    import orjson

    assert wire.ORJSON_BOUNDS_DEPTH == wire.orjson_refuses_depth(wire.MAX_DEPTH + 1)
    assert not wire.orjson_refuses_depth(200)  # what every release encodes
    with pytest.raises(orjson.JSONEncodeError):
        orjson.dumps(orjson.loads(b"[" * (wire.MAX_DEPTH + 1) + b"]" * (wire.MAX_DEPTH + 1)))


def test_too_deep_is_refused_when_orjson_would_encode_it(monkeypatch):
    monkeypatch.setattr(wire, "ORJSON_BOUNDS_DEPTH", False)
    monkeypatch.setattr(wire, "_encoded_again", lambda value: b"")  # as if any depth were encoded
    with pytest.raises(InvalidRequest, match="nested deeper"):
        wire.loads(b"[" * (wire.MAX_DEPTH + 1) + b"]" * (wire.MAX_DEPTH + 1))
    assert wire.loads(b'{"a": [1]}') == {"a": [1]}


@pytest.mark.parametrize("depth", [100, 253, 254, 255, wire.MAX_DEPTH - 1])
def test_a_key_named_twice_is_refused_however_deep(depth):
    body = b'{"receiver_id": "a", "content": ' + b"[" * depth + b'{"k": 1, "k": 2}' + b"]" * depth + b"}"
    with pytest.raises(InvalidRequest, match="appears twice"):
        parse_send_body(body)


def test_many_brackets_side_by_side_are_not_deep():
    body = json.dumps([{"receiver_id": "a", "content": [[n] for n in range(300)]} for _ in range(3)]).encode()
    requests, _ = parse_send_body(body)
    assert len(requests) == 3


def test_brackets_inside_strings_are_not_nesting():
    body = json.dumps({"receiver_id": "a", "content": "[" * 2000}).encode()
    (request,), _ = parse_send_body(body)
    assert request.content == "[" * 2000
    with pytest.raises(InvalidRequest, match="a message must be a JSON object"):
        parse_send_body(json.dumps("{" * 600).encode())


def test_json_that_is_not_utf8_is_refused_by_name():
    """json.loads would guess UTF-16; relayd speaks UTF-8 only."""
    for body in ('{"receiver_id":"a","content":1}'.encode("utf-16"), b'{"content":"\xff"}'):
        with pytest.raises(InvalidRequest, match="not UTF-8"):
            parse_send_body(body)


def test_a_lone_surrogate_is_refused_but_an_escaped_pair_is_text():
    with pytest.raises(InvalidRequest, match="lone UTF-16 surrogate"):
        parse_send_body(b'{"receiver_id": "a", "content": "\\ud800"}')
    with pytest.raises(InvalidRequest, match="lone UTF-16 surrogate"):
        parse_client_frame(b'{"type": "send", "receiver_id": "a", "content": {"k": "x\\uDFFF"}}', "me")
    (request,), _ = parse_send_body(b'{"receiver_id": "a", "content": "\\ud83d\\ude00"}')
    assert request.content == "\U0001F600"


def test_client_ids_are_remembered_valid_within_a_bound(monkeypatch):
    monkeypatch.setattr(wire, "KNOWN_IDS", 3)
    monkeypatch.setattr(wire, "_known_ids", set())
    for n in range(10):
        assert wire.is_client_id(f"id-{n}") and len(wire._known_ids) <= 3
    assert "id-9" in wire._known_ids and wire.is_client_id("id-9")
    for bad in ("bad id", "", "x" * 129, ["id-9"], b"id-9"):
        assert not wire.is_client_id(bad)
    assert all(wire.CLIENT_ID.fullmatch(known) for known in wire._known_ids)
