"""
A kept list on Redis is trimmed back to ``history-size`` once it holds a
tenth more (TRIM in relayd.brokers.redis.scripts), not on every message;
what a connecting client is owed is the newest ``history-size`` all along.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from tests.brokers.test_contract import send, started_redis
from tests.redis.conftest import SHARED_PORT, redis_cli

pytestmark = pytest.mark.integration


@pytest_twisted.ensureDeferred
async def test_a_full_list_is_trimmed_once_a_tenth_over_and_a_replay_gives_the_newest(shared_redis, tmp_path):
    prefix = shared_redis[1]
    broker, _ = await started_redis(tmp_path, prefix, size=20)
    try:
        def length():
            return int(redis_cli(SHARED_PORT, "LLEN", f"{prefix}h:erin"))

        for _ in range(21):
            await send(broker, "erin")
        assert length() == 21  # over by less than a tenth: not trimmed yet
        assert [m.id for m in (await broker.replay("erin", None, None)).messages] == list(range(2, 22))
        await send(broker, "erin")
        assert length() == 20
        assert [m.id for m in (await broker.replay("erin", 0, None)).messages] == list(range(3, 23))
        assert (await broker.replay("erin", 1, None)).lost is True  # 2 is gone: the client must reload
    finally:
        await broker.stop()
