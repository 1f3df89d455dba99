"""
The Redis broker's logic in memory: a fake Redis connection and a task.Clock.

What the Lua scripts do is checked against a real Redis in test_cluster.py;
here: outage behaviour (fail fast, bounded waits), the replay/lost rules,
takeovers and the records a node receives.
"""

from __future__ import annotations

import pytest
from twisted.internet import defer, task

from relayd.brokers.redis.broker import (
    COMMAND_TIMEOUT,
    PROBE_TIMEOUT,
    RedisBroker,
    parse_url,
)
from relayd.core.history import Reply
from relayd.core.ports import BrokerUnavailable
from relayd.wire import SendRequest


class FakeTransport:
    """Records whether the connection was aborted."""

    aborted = False

    def abortConnection(self):
        self.aborted = True


class FakeRedis:
    """A command connection whose replies the test gives."""

    def __init__(self):
        self.transport = FakeTransport()
        self.calls = []
        self.published = []

    def eval(self, script, keys, args):
        d = defer.Deferred()
        self.calls.append((script, keys, args, d))
        return d

    def publish(self, channel, message):
        self.published.append((channel, message))
        return defer.succeed(1)


class FakeNode:
    """The relay core, as far as the broker sees it."""

    def __init__(self):
        self.delivered = []
        self.kicked = []

    def deliver_local(self, message):
        self.delivered.append(message)
        return 1

    def kick_local(self, client_id, keep):
        self.kicked.append((client_id, keep))


@pytest.fixture
def clock():
    return task.Clock()


@pytest.fixture
def broker(clock):
    broker = RedisBroker(parse_url("redis://127.0.0.1/0?prefix=t:"), clock, history_size=100, history_ttl=600)
    broker._node = FakeNode()
    broker._command = FakeRedis()
    broker.node_name = "n1"
    broker.ready = True
    return broker


def failure_of(d):
    failures = []
    d.addErrback(failures.append)
    assert failures, "the Deferred has not failed"
    return failures[0]


def test_everything_fails_at_once_while_redis_is_unreachable(broker):
    broker.ready = False
    request = SendRequest(content="x", receiver_ids=("alice",))
    for d in (broker.publish(request, "t", "m1"), broker.claim("alice", 1, "replace", 8),
              broker.replay("alice", None, None), broker.probe()):
        assert failure_of(d).check(BrokerUnavailable)
    assert broker._command.calls == [] and "alice" not in broker._claims


def test_a_command_redis_never_answers_fails_after_the_timeout_and_drops_the_connection(broker, clock):
    d = broker.publish(SendRequest(content="x", receiver_ids=("alice",)), "t", "m1")
    assert not d.called
    clock.advance(COMMAND_TIMEOUT)
    assert failure_of(d).check(BrokerUnavailable)
    assert broker._command.transport.aborted


def test_probe_must_come_back_through_the_subscription(broker, clock):
    d = broker.probe()
    channel, record = broker._command.published[0]
    assert channel == "t:n:n1" and record.startswith(b"p ")
    assert not d.called
    broker._on_record(record)
    assert d.called and d.result is None
    late = broker.probe()
    clock.advance(PROBE_TIMEOUT)
    assert failure_of(late).check(defer.TimeoutError)


def test_publish_reports_per_receiver(broker):
    d = broker.publish(SendRequest(content={"a": 1}, receiver_ids=("alice", "bob")), "t", "m1")
    script, keys, args, reply = broker._command.calls[0]
    assert keys == ["t:nodes", "t:nodes", "t:s:alice", "t:h:alice", "t:p:alice", "t:s:bob", "t:h:bob", "t:p:bob"]
    reply.callback(b"m1 sq alice bob")
    assert d.result == Reply("m1", sent=("alice",), queued=("bob",))
    d = broker.publish(SendRequest(content=1, receiver_ids=("bob",)), "t", "m2")
    broker._command.calls[-1][3].callback(b"m2 d bob")
    assert d.result == Reply("m2", dropped=("bob",))


def entry(expires, message_id):
    return b"%d %d {\"id\":%d}" % (expires, message_id, message_id)


@pytest.mark.parametrize(
    "last_id, epoch, owed, lost",
    [
        (None, None, [4, 5], False),  # not yet written to any connection (delivered = 3)
        (3, "E1", [4, 5], False),
        (5, "E1", [], False),
        (1, "E1", [3, 4, 5], True),  # 2 expired
        (9, "E1", [3, 4, 5], True),  # beyond the last id of this epoch
        (4, "E0", [3, 4, 5], True),  # an earlier epoch
        (4, None, [5], False),
    ],
)
def test_replay_follows_the_in_memory_rules(broker, last_id, epoch, owed, lost):
    now = 1_000_000
    d = broker.replay("alice", last_id, epoch)
    broker._command.calls[0][3].callback(
        [b"E1", b"5", b"3", now, entry(now - 1, 2), entry(now + 5, 3), entry(now + 5, 4), entry(now + 5, 5)]
    )
    replay = d.result
    assert (replay.epoch, replay.last_id, replay.lost) == ("E1", 5, lost)
    assert [m.id for m in replay.messages] == owed
    assert all(m.epoch == "E1" and m.receiver_id == "alice" for m in replay.messages)


def test_a_takeover_closes_older_claims_and_keeps_newer_ones(broker):
    d = broker.claim("alice", 7, "replace", 8)
    broker._command.calls[0][3].callback([1, 3])
    assert d.result is True
    broker._on_record(b"k alice 2")
    assert broker._node.kicked == [("alice", 7)]
    broker._on_record(b"k alice 4")
    assert broker._node.kicked[-1] == ("alice", None)


def test_a_takeover_that_overtakes_a_pending_claim_refuses_it(broker):
    d = broker.claim("alice", 7, "replace", 8)
    broker._on_record(b"k alice 5")
    assert broker._node.kicked == [("alice", 7)]
    broker._command.calls[0][3].callback([1, 4])
    assert d.result is False and "alice" not in broker._claims


def test_records_are_delivered_and_held_back_while_catching_up(broker):
    record = b'm E1 7 alice 12.5 {"type":"message","id":7}'
    broker._buffer = []
    broker._on_record(record)
    assert broker._node.delivered == []
    broker._buffer = None
    broker._on_record(record)
    broker._on_record(b'b 13.0 {"type":"message","id":null}')
    first, second = broker._node.delivered
    assert (first.id, first.epoch, first.receiver_id, first.frame) == (7, "E1", "alice", b'{"type":"message","id":7}')
    assert first.received == 12.5
    assert (second.id, second.receiver_id) == (None, None)


def test_connection_loss_fails_waiting_probes_and_makes_the_node_unavailable(broker):
    broker._subscriber = FakeRedis()
    probe = broker.probe()
    broker._lost(broker._command)
    assert failure_of(probe).check(BrokerUnavailable)
    assert not broker.ready and broker._command is None and broker._subscriber is None
    assert failure_of(broker.publish(SendRequest(content=1, receiver_ids=("a",)), "t", "m1")).check(BrokerUnavailable)
