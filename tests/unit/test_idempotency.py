"""
``idempotency_key`` (CONTRACT.md section 7) on the in-process broker, and
JSON bodies that name a key twice (section 14): in memory, on a fake clock.
"""

from __future__ import annotations

import pytest

from relayd.wire import InvalidRequest, loads, parse_send, parse_send_body

# Validation

@pytest.mark.parametrize("key", ["k", "a" * 128, "retry 1: ~!@#$%^&*()", " "])
def test_a_printable_ascii_key_of_1_to_128_characters_is_taken(key):
    assert parse_send({"receiver_id": "a", "content": 1, "idempotency_key": key}).idempotency_key == key


@pytest.mark.parametrize("key", ["", "a" * 129, "caf\u00e9", "tab\there", "new\nline", 7, None.__class__])
def test_any_other_key_is_refused(key):
    if key is None.__class__:
        key = ["list"]
    with pytest.raises(InvalidRequest, match="idempotency_key"):
        parse_send({"receiver_id": "a", "content": 1, "idempotency_key": key})


def test_a_null_key_is_no_key():
    assert parse_send({"receiver_id": "a", "content": 1, "idempotency_key": None}).idempotency_key is None


def test_a_send_frame_may_carry_a_key():
    from relayd.wire import parse_client_frame

    frame = parse_client_frame(b'{"type":"send","receiver_id":"b","content":1,"idempotency_key":"k1"}', "alice")
    assert frame.send.idempotency_key == "k1" and frame.send.sender_id == "alice"


# Duplicated keys

@pytest.mark.parametrize("body", [
    b'{"receiver_id":"a","content":1,"receiver_id":"b"}',
    b'{"receiver_id":"a","content":{"x":1,"x":2}}',
    b'[{"receiver_id":"a","content":1},{"receiver_id":"a","content":[{"k":1,"k":1}]}]',
    b'{"receiver_id":"a","content":{"x":"1:2","x":3}}',  # the dropped value held a ':'
    b'{"receiver_id":"a","content":{"x":1,"x":"\\u003a"}}',  # an escaped ':' makes up for the lost key's
])
def test_an_object_with_a_duplicated_key_is_refused(body):
    with pytest.raises(InvalidRequest, match="appears twice"):
        parse_send_body(body)


def test_same_key_in_different_objects_is_fine():
    assert loads(b'{"a":{"k":1},"b":{"k":2}}') == {"a": {"k": 1}, "b": {"k": 2}}


def test_http_answers_400_for_a_duplicated_key(sim):
    response = sim.post(b'{"receiver_id":"a","content":1,"content":2}')
    assert response.status == 400
    assert response.json()["error"] == "invalid_request" and "'content' appears twice" in response.json()["detail"]


# The memory broker

def test_a_retry_with_the_same_key_gets_the_first_reply_and_sends_nothing(sim):
    bob = sim.ws("id=bob")
    sim.flush()
    first = sim.post({"receiver_ids": ["bob", "carol"], "content": 1, "sender_id": "billing", "idempotency_key": "k1"})
    again = sim.post({"receiver_ids": ["bob", "carol"], "content": 1, "sender_id": "billing", "idempotency_key": "k1"})
    sim.flush()
    assert first.status == again.status == 200
    assert again.json() == first.json() == {"message_id": first.json()["message_id"], "sent": ["bob"],
                                             "queued": ["carol"], "dropped": []}
    assert [f["content"] for f in bob.client.frames[1:]] == [1]
    assert sim.relay.broker.history.stream("carol").last_id == 1


def test_the_key_belongs_to_its_sender(sim):
    replies = [sim.post({"receiver_id": "bob", "content": n, "idempotency_key": "k", **sender}).json()
               for n, sender in enumerate([{"sender_id": "a"}, {"sender_id": "b"}, {}, {"sender_id": "a"}, {}])]
    ids = [reply["message_id"] for reply in replies]
    assert ids[3] == ids[0] and ids[4] == ids[2] and len(set(ids)) == 3
    assert sim.relay.broker.history.stream("bob").last_id == 3


def test_a_key_is_remembered_for_the_history_ttl(make_relay, clock):
    sim = make_relay(history_ttl=60)
    first = sim.post({"receiver_id": "bob", "content": 1, "idempotency_key": "k"}).json()
    clock.advance(59)
    assert sim.post({"receiver_id": "bob", "content": 1, "idempotency_key": "k"}).json() == first
    clock.advance(1)
    later = sim.post({"receiver_id": "bob", "content": 1, "idempotency_key": "k"}).json()
    assert later["message_id"] != first["message_id"]


def test_a_batch_retried_sends_only_the_messages_not_sent_yet(sim):
    sim.post([{"receiver_id": "bob", "content": 1, "idempotency_key": "m1"}])
    replies = sim.post([{"receiver_id": "bob", "content": n, "idempotency_key": f"m{n}"} for n in (1, 2)]).json()
    assert [reply["queued"] for reply in replies] == [["bob"], ["bob"]]
    assert [m.id for m in sim.relay.broker.history.replay("bob", None, None).messages] == [1, 2]


def test_a_broadcast_with_a_key_is_sent_once(sim):
    bob = sim.ws("id=bob")
    sim.flush()
    first = sim.post({"broadcast": True, "content": "all", "idempotency_key": "b1"}).json()
    assert sim.post({"broadcast": True, "content": "all", "idempotency_key": "b1"}).json() == first
    sim.flush()
    assert [f["content"] for f in bob.client.frames[1:]] == ["all"]


def test_a_websocket_send_frame_with_a_key_is_sent_once(sim):
    alice, bob = sim.ws("id=alice"), sim.ws("id=bob")
    sim.flush()
    for ref in ("r1", "r2"):
        alice.client.send_json({"type": "send", "ref": ref, "receiver_id": "bob", "content": "x",
                                "idempotency_key": "once"})
        sim.flush()
    acks = [f for f in alice.client.frames if f["type"] == "ack"]
    assert [a["ref"] for a in acks] == ["r1", "r2"] and acks[0]["message_id"] == acks[1]["message_id"]
    assert [f["content"] for f in bob.client.frames[1:]] == ["x"]


def test_remembered_replies_count_against_the_history_memory(make_relay):
    sim = make_relay(history_size=0, history_memory=10_000)
    for n in range(100):
        sim.post({"receiver_id": "bob", "content": n, "idempotency_key": f"k{n}"})
    history = sim.relay.broker.history
    assert 0 < history.bytes_kept <= 10_000
    assert history.recall(None, "k99") is not None and history.recall(None, "k0") is None
