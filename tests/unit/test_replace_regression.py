"""
Regression: under ``--duplicates replace`` the older connection is closed
with 4000 (it used to stay open, silently unregistered), and the replaced
connection's claim on its id is released exactly once (over real WebSockets:
tests/integration/ops/test_replace_regression.py).
"""

from __future__ import annotations

from twisted.internet.task import Clock

from relayd.brokers.memory import MemoryBroker
from relayd.core.history import MemoryHistory
from relayd.core.registry import Registry
from relayd.core.relay import Relay
from relayd.wire import dumps
from tests.unit.helpers import FakeConnection


def admitted(d):
    results = []
    d.addCallback(results.append)
    assert results, "admission did not fire at once with the memory broker"
    return results[0]


def test_replace_closes_the_older_connection_with_4000():
    clock = Clock()
    history = MemoryHistory(clock)
    relay = Relay(MemoryBroker(history, dumps), Registry("replace"), clock)
    relay.start()
    older = admitted(relay.admit("alice", "ws"))
    first = FakeConnection()
    relay.prepare(older, None, None)
    relay.open(older, first)
    newer = admitted(relay.admit("alice", "ws"))
    assert first.closed is not None and first.closed[0] == 4000
    assert len(relay.registry) == 1 and history.stream("alice").holders == 1
    relay.close(older)  # the older transport's close arrives later
    assert len(relay.registry) == 1 and history.stream("alice").holders == 1
    relay.close(newer)
    assert len(relay.registry) == 0 and history.stream("alice").holders == 0


