"""
A node's pacing on Redis (relayd.brokers.redis.pacing) measures its own
subscription: the lag from the moment the PUBLISH script ran on Redis's
clock to the moment the node handles the record. A call that Redis ran late
because Redis itself stalled makes nobody behind (CONTRACT.md section 14:
the node refuses load it cannot deliver, not load Redis was slow to take).
"""

from __future__ import annotations

import signal

import pytest
import pytest_twisted
from twisted.internet import defer

from relayd.brokers.redis.broker import RedisBroker, parse_url
from relayd.core.ports import SendRequest
from tests.brokers.test_contract import Node, _pause, connect, eventually, send
from tests.redis.conftest import redis_cli

pytestmark = [pytest.mark.integration, pytest.mark.redis]

STALL = 0.5  # ten times the lag limit, under every timeout of the broker's


@pytest.mark.parametrize("request_", [SendRequest(content="x", receiver_ids=("alice",), received=1.0),
                                      SendRequest(content="all", broadcast=True, received=1.0)], ids=["message", "broadcast"])
@pytest_twisted.ensureDeferred
async def test_a_call_redis_ran_late_because_it_was_stopped_does_not_make_the_node_behind(private_redis, request_):
    from twisted.internet import reactor

    broker, node = RedisBroker(parse_url(private_redis.url), reactor, 100, 600), Node()
    await broker.start(node)
    try:
        await eventually(lambda: broker.ready)
        await connect(broker, node, "alice")
        private_redis.process.send_signal(signal.SIGSTOP)
        try:
            sent = defer.maybeDeferred(broker.publish, request_, "2026-12-01T00:00:00.000Z", "m1")
            await _pause(STALL)
        finally:
            private_redis.process.send_signal(signal.SIGCONT)
        assert (await sent).sent == request_.receiver_ids
        await eventually(lambda: len(node.delivered) == 1)
        assert broker.pacing.lag < STALL / 2
        assert not broker.pacing.behind
        assert redis_cli(private_redis.port, "HGETALL", "relayd:over") == ""
        assert (await send(broker, "alice")).sent == ("alice",)
    finally:
        await broker.stop()
