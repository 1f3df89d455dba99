"""
The delivered watermark on Redis (AHEAD in relayd.brokers.redis.scripts):
a message routed to a live holder with nothing before it owed counts as
delivered as it is published, with no mark from the node afterwards; the
node lowers it again when no connection of its took the message, and so
does the script when no holder's subscriber got it. Either way a plain
connect (without ``last_id``) gets every message no connection took, and
none that one did.

These tests' Node never calls ``mark_delivered``: what they see is the
broker's own counting.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from tests.brokers.test_contract import connect, eventually, send, started_redis
from tests.redis.conftest import SHARED_PORT, redis_cli

pytestmark = pytest.mark.integration


def delivered(prefix: str, client_id: str) -> str:
    return redis_cli(SHARED_PORT, "HGET", f"{prefix}s:{client_id}", "delivered")


@pytest_twisted.ensureDeferred
async def test_what_a_live_connection_took_counts_as_delivered_without_a_mark(shared_redis, tmp_path):
    broker, node = await started_redis(tmp_path, shared_redis[1])
    try:
        await connect(broker, node, "alice")
        for n in range(3):
            assert (await send(broker, "alice", content=n)).sent == ("alice",)
        await eventually(lambda: node.to("alice") == [1, 2, 3])
        assert all(m.marked for m in node.delivered)
        assert delivered(shared_redis[1], "alice") == "3"
        assert (await broker.replay("alice", None, None)).messages == ()
    finally:
        await broker.stop()


@pytest_twisted.ensureDeferred
async def test_a_message_no_connection_on_its_node_took_is_owed_to_a_plain_connect(shared_redis, tmp_path):
    broker, node = await started_redis(tmp_path, shared_redis[1])
    try:
        assert await broker.claim("bea", 1, "replace", 8) is True  # registered, but nothing here takes it
        assert (await send(broker, "bea")).sent == ("bea",)
        await eventually(lambda: delivered(shared_redis[1], "bea") == "0")
        assert [m.id for m in (await broker.replay("bea", None, None)).messages] == [1]
    finally:
        await broker.stop()


@pytest_twisted.ensureDeferred
async def test_nothing_counts_as_delivered_past_a_message_still_owed(shared_redis, tmp_path):
    broker, node = await started_redis(tmp_path, shared_redis[1])
    try:
        assert (await send(broker, "cleo")).queued == ("cleo",)  # 1 is owed: cleo has no connection
        await connect(broker, node, "cleo")
        assert (await send(broker, "cleo")).sent == ("cleo",)
        await eventually(lambda: node.to("cleo") == [2])
        assert not node.delivered[0].marked and delivered(shared_redis[1], "cleo") == "0"
        assert [m.id for m in (await broker.replay("cleo", None, None)).messages] == [1, 2]
    finally:
        await broker.stop()


@pytest_twisted.ensureDeferred
async def test_a_holder_whose_node_does_not_hear_the_record_leaves_the_message_owed(shared_redis, tmp_path):
    prefix = shared_redis[1]
    broker, node = await started_redis(tmp_path, prefix)
    try:
        seconds, micros = redis_cli(SHARED_PORT, "TIME").split()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        redis_cli(SHARED_PORT, "ZADD", f"{prefix}nodes", str(now_ms), "ghost")  # alive, but subscribed to nothing
        redis_cli(SHARED_PORT, "HSET", f"{prefix}p:dina", "ghost", "1")
        assert (await send(broker, "dina")).queued == ("dina",)
        assert delivered(prefix, "dina") == "0"
        assert [m.id for m in (await broker.replay("dina", None, None)).messages] == [1]
    finally:
        await broker.stop()
