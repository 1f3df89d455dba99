"""
The Redis broker sends the messages published in one reactor turn in one
script call: on a real Redis, each message of such a call is numbered, kept,
delivered and answered as if it had a call of its own.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.brokers.test_contract import connect, eventually, send, started_redis

pytestmark = pytest.mark.integration


@pytest_twisted.ensureDeferred
async def test_one_turns_messages_are_numbered_delivered_and_answered_each_in_order(shared_redis, tmp_path):
    broker, node = await started_redis(tmp_path, shared_redis[1])
    try:
        await connect(broker, node, "alice")
        sent = [send(broker, "alice", "bob", content=n) if n % 2 else send(broker, "alice", content=n) for n in range(9)]
        assert broker._outbox  # all waiting for one call
        replies = await defer.gatherResults(sent)
        assert [reply.sent for reply in replies] == [("alice",)] * 9
        assert [reply.queued for reply in replies] == [("bob",) if n % 2 else () for n in range(9)]
        await eventually(lambda: len(node.to("alice")) == 9)
        assert node.to("alice") == list(range(1, 10))
        assert [m.frame for m in node.delivered][0].startswith(b'{"type":"message","id":1,')
        replay = await broker.replay("bob", None, None)
        assert [m.id for m in replay.messages] == [1, 2, 3, 4]
    finally:
        await broker.stop()


@pytest_twisted.ensureDeferred
async def test_an_idempotency_key_used_twice_in_one_call_sends_once_and_answers_the_first_reply(shared_redis, tmp_path):
    broker, node = await started_redis(tmp_path, shared_redis[1])
    try:
        await connect(broker, node, "alice")
        first = send(broker, "alice", key="k1", sender="shop")
        between = send(broker, "alice")
        again = send(broker, "alice", key="k1", sender="shop")
        first, between, again = await defer.gatherResults([first, between, again])
        assert again == first and first.sent == ("alice",) and between.message_id != first.message_id
        await eventually(lambda: len(node.to("alice")) == 2)
        later = await send(broker, "alice", key="k1", sender="shop")
        assert later == first and node.to("alice") == [1, 2]
    finally:
        await broker.stop()
