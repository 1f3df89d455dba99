"""
The Redis broker's logic in memory, through its public methods: the test
plays both Redis connections (``command_ready``, ``subscriber_ready``,
``connection_lost``, the subscription's ``on_record``) on a task.Clock.

What the Lua scripts do is checked against a real Redis in test_cluster.py
and tests/brokers; here: outage behaviour (fail fast, bounded waits), the
replay/lost rules, takeovers, catching up, pacing and the records a node
receives.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from twisted.internet import defer, task

from relayd.brokers.redis import scripts
from relayd.brokers.redis.broker import COMMAND_TIMEOUT, PROBE_TIMEOUT, RedisBroker, parse_url
from relayd.brokers.redis.resp import Encoded, Reader
from relayd.core.history import Reply
from relayd.core.ports import BrokerUnavailable, Overloaded
from relayd.wire import SendRequest


class FakeTransport:
    """Records whether the connection was aborted."""

    aborted = False

    def abortConnection(self):
        self.aborted = True


def as_read(args):
    """A call's arguments as Redis reads them: an :class:`Encoded` part as its bulk strings."""
    read = []
    for arg in args:
        if isinstance(arg, Encoded):
            reader = Reader()
            reader.feed(b"*%d\r\n" % arg.count + arg.data)
            read += reader.gets()
        else:
            read.append(arg)
    return read


class FakeCommand:
    """The command connection: the test answers each script call."""

    def __init__(self):
        self.transport = FakeTransport()
        self.calls = []
        self.published = []

        self.held = None
        self.writes = []

    def eval(self, script, keys, args):
        d = defer.Deferred()
        self.calls.append((script, keys, as_read(args), d))
        if self.held is not None:
            self.held.append(script)
        else:
            self.writes.append([script])
        return d

    @contextmanager
    def together(self):
        """Like CommandProtocol.together: the scripts called inside go in one write."""
        self.held = []
        yield
        self.writes.append(self.held)
        self.held = None

    def publish(self, channel, message):
        self.published.append((channel, message))
        return defer.succeed(1)

    def answer(self, script, reply):
        """Answer the oldest unanswered call of ``script``; its keys and args."""
        call = next(c for c in self.calls if c[0] == script and not c[3].called)
        call[3].callback(reply)
        return call[1], call[2]

    def last(self):
        return self.calls[-1]


class FakeSubscriber:
    """The subscription: the test pushes records with ``on_record``."""

    def __init__(self):
        self.transport = FakeTransport()
        self.channels = None

    def subscribe(self, channels):
        self.channels = channels
        return defer.succeed(None)


class FakeNode:
    """The relay core, as far as the broker sees it."""

    def __init__(self):
        self.delivered = []
        self.kicked = []
        self.caught = []

    def deliver_local(self, message):
        self.delivered.append(message)
        return 1

    def caught_up(self, client_id, epoch, last_id):
        self.caught.append((client_id, epoch, last_id))

    def kick_local(self, client_id, keep):
        self.kicked.append((client_id, keep))


@dataclass
class World:
    broker: RedisBroker
    node: FakeNode
    clock: task.Clock
    command: FakeCommand = None
    subscriber: FakeSubscriber = None

    def connect(self, fetched=None):
        """Both connections come up; answer the recovery (REGISTER, then FETCH with ``fetched``)."""
        self.command, self.subscriber = FakeCommand(), FakeSubscriber()
        self.broker.command_ready(self.command)
        self.broker.subscriber_ready(self.subscriber)
        self.command.answer(scripts.REGISTER, 1)
        if fetched is not None:
            self.command.answer(scripts.FETCH, fetched)

    def records(self, *records):
        for record in records:
            self.subscriber.on_record(record)


@pytest.fixture
def clock():
    return task.Clock()


@pytest.fixture
def world(clock):
    broker = RedisBroker(parse_url("redis://127.0.0.1/0?prefix=t:"), clock, 100, 600, connect=lambda broker: [])
    node = FakeNode()
    broker.start(node)
    world = World(broker, node, clock)
    world.connect()
    assert broker.ready
    return world


def failure_of(d):
    failures = []
    d.addErrback(failures.append)
    assert failures, "the Deferred has not failed"
    return failures[0]


def record(epoch, message_id, receiver, received=12.5, published=None):
    published = received if published is None else published
    return b'm %s %d %s %d %d {"type":"message","id":%d}' % (
        epoch.encode(), message_id, receiver.encode(), received * 1e6, published * 1e6, message_id)


def test_everything_fails_at_once_while_redis_is_unreachable(world):
    world.broker.connection_lost(world.command)
    calls = len(world.command.calls)
    request = SendRequest(content="x", receiver_ids=("alice",))
    for d in (world.broker.publish(request, "t", "m1"), world.broker.claim("alice", 1, "replace", 8),
              world.broker.replay("alice", None, None), world.broker.probe()):
        assert failure_of(d).check(BrokerUnavailable)
    assert len(world.command.calls) == calls and "alice" not in world.broker.claims
    assert world.subscriber.transport.aborted  # the other connection is dropped too, to recover afresh


def test_a_command_redis_never_answers_fails_after_the_timeout_and_drops_the_connection(world, clock):
    d = world.broker.publish(SendRequest(content="x", receiver_ids=("alice",)), "t", "m1")
    clock.advance(0)  # the turn's messages go out
    assert not d.called
    clock.advance(COMMAND_TIMEOUT)
    assert failure_of(d).check(BrokerUnavailable)
    assert world.command.transport.aborted


def test_probe_must_come_back_through_the_subscription(world, clock):
    d = world.broker.probe()
    channel, probe = world.command.published[0]
    assert channel == "t:n:" + world.broker.node_name and probe.startswith(b"p ")
    assert world.subscriber.channels == [channel, "t:all"]
    assert not d.called
    world.records(probe)
    assert d.called and d.result is None
    late = world.broker.probe()
    clock.advance(PROBE_TIMEOUT)
    assert failure_of(late).check(defer.TimeoutError)


def test_publish_reports_per_receiver(world, clock):
    d = world.broker.publish(SendRequest(content={"a": 1}, receiver_ids=("alice", "bob")), "t", "m1")
    clock.advance(0)
    script, keys, args, reply = world.command.last()
    assert script == scripts.PUBLISH
    assert keys == ["t:nodes", "t:over"]  # the receivers' keys are made by the script from the prefix
    assert args[0] == "t:" and args[4] == b"2" and args[10] == b"alice" and args[12] == b"bob"
    reply.callback([b"sq"])
    assert d.result == Reply("m1", sent=("alice",), queued=("bob",))
    d = world.broker.publish(SendRequest(content=1, receiver_ids=("bob",), sender_id="shop", idempotency_key="k 1"),
                             "t", "m2")
    clock.advance(0)
    script, keys, args, reply = world.command.last()
    assert keys == ["t:nodes", "t:over", "t:i:shop k 1"] and args[4 + 5] == b"1"
    reply.callback([b"m0 d bob"])  # the first reply for that key
    assert d.result == Reply("m0", dropped=("bob",))


def test_the_messages_of_one_turn_go_in_one_call_in_order_each_with_its_reply(world, clock):
    first = world.broker.publish(SendRequest(content=1, receiver_ids=("alice", "bob")), "t", "m1")
    second = world.broker.publish(SendRequest(content=2, receiver_ids=("carol",), idempotency_key="k"), "t", "m2")
    third = world.broker.publish(SendRequest(content=3, receiver_ids=("alice",)), "t", "m3")
    calls = len(world.command.calls)
    clock.advance(0)
    assert len(world.command.calls) == calls + 1
    script, keys, args, reply = world.command.last()
    assert keys[2:] == ["t:i: k"]  # only the second has a key
    counts = args[4], args[4 + 6 + 4], args[4 + 6 + 4 + 6 + 2]
    messages = args[8], args[4 + 6 + 4 + 4], args[4 + 6 + 4 + 6 + 2 + 4]
    keyed = args[9], args[4 + 6 + 4 + 5], args[4 + 6 + 4 + 6 + 2 + 5]
    receivers = args[10], args[12], args[4 + 6 + 4 + 6], args[4 + 6 + 4 + 6 + 2 + 6]
    assert counts == (b"2", b"1", b"1") and messages == (b"m1", b"m2", b"m3") and keyed == (b"0", b"1", b"0")
    assert receivers == (b"alice", b"bob", b"carol", b"alice")
    reply.callback([b"sd", b"overloaded", b"q"])
    assert first.result == Reply("m1", sent=("alice",), dropped=("bob",))
    assert failure_of(second).check(Overloaded)
    assert third.result == Reply("m3", queued=("alice",))


def test_a_turns_messages_and_delivered_marks_go_to_redis_in_one_write(world, clock):
    world.broker.mark_delivered("alice", "E1", 4)
    world.broker.publish(SendRequest(content=1, receiver_ids=("bob",)), "t", "m1")
    clock.advance(0)
    assert world.command.writes[-1] == [scripts.PUBLISH, scripts.MARK]
    writes = len(world.command.writes)
    clock.advance(0)
    assert len(world.command.writes) == writes


def test_a_failed_batch_fails_each_of_its_messages(world, clock):
    sent = [world.broker.publish(SendRequest(content=n, receiver_ids=("alice",)), "t", f"m{n}") for n in range(3)]
    clock.advance(0)
    world.command.last()[3].errback(ConnectionError("gone"))
    assert all(failure_of(d).check(BrokerUnavailable) for d in sent)


def test_another_command_sends_the_turns_messages_first(world):
    world.broker.publish(SendRequest(content=1, receiver_ids=("alice",)), "t", "m1")
    world.broker.claim("bob", 1, "replace", 8)
    assert [call[0] for call in world.command.calls[-2:]] == [scripts.PUBLISH, scripts.CLAIM]


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
def test_replay_follows_the_in_memory_rules(world, last_id, epoch, owed, lost):
    now = 1_000_000
    d = world.broker.replay("alice", last_id, epoch)
    world.command.answer(scripts.REPLAY, [b"E1", b"5", b"3", now, entry(now - 1, 2), entry(now + 5, 3),
                                          entry(now + 5, 4), entry(now + 5, 5)])
    replay = d.result
    assert (replay.epoch, replay.last_id, replay.lost) == ("E1", 5, lost)
    assert [m.id for m in replay.messages] == owed
    assert all(m.epoch == "E1" and m.receiver_id == "alice" for m in replay.messages)


def test_a_takeover_closes_older_claims_and_keeps_newer_ones(world):
    d = world.broker.claim("alice", 7, "replace", 8)
    world.command.answer(scripts.CLAIM, [1, 3])
    assert d.result is True
    world.records(b"k alice 2")
    assert world.node.kicked == [("alice", 7)]
    world.records(b"k alice 4")
    assert world.node.kicked[-1] == ("alice", None)


def test_a_takeover_that_overtakes_a_pending_claim_refuses_it(world):
    d = world.broker.claim("alice", 7, "replace", 8)
    world.records(b"k alice 5")
    assert world.node.kicked == [("alice", 7)]
    world.command.answer(scripts.CLAIM, [1, 4])
    assert d.result is False and "alice" not in world.broker.claims


def test_records_are_delivered_in_order_and_broadcasts_too(world):
    world.records(record("E1", 7, "alice"), b'b 13000000 13100000 {"type":"message","id":null}')
    first, second = world.node.delivered
    assert (first.id, first.epoch, first.receiver_id, first.frame) == (7, "E1", "alice", b'{"type":"message","id":7}')
    assert first.received == 12.5
    assert (second.id, second.receiver_id, second.received) == (None, None, 13.0)


def test_one_published_message_may_carry_several_records_in_order(world):
    world.records(record("E1", 7, "alice") + b"\n" + record("E1", 8, "bob") + b"\n" + record("E1", 8, "alice"))
    assert [(m.receiver_id, m.id) for m in world.node.delivered] == [("alice", 7), ("bob", 8), ("alice", 8)]


def test_after_an_outage_what_is_kept_above_the_floor_is_delivered_then_each_id_is_checked(world):
    claimed = world.broker.claim("alice", 1, "replace", 8)
    world.command.answer(scripts.CLAIM, [1, 1])
    replayed = world.broker.replay("alice", None, None)
    world.command.answer(scripts.REPLAY, [b"E1", b"2", b"2", 1_000_000])  # floor: id 2
    assert claimed.result is True and replayed.result.last_id == 2
    world.broker.connection_lost(world.subscriber)
    world.connect()
    world.records(record("E1", 6, "alice"))  # while catching up: held back
    assert world.node.delivered == []
    keys, _ = world.command.answer(scripts.FETCH, [1_000_000, [b"E1", b"5", [entry(2_000_000, n) for n in (4, 5)]]])
    assert keys == ["t:s:alice", "t:h:alice"] and world.broker.ready
    assert [m.id for m in world.node.delivered] == [4, 5, 6]  # 3 is gone: the session sees the jump (4010)
    assert world.node.caught == [("alice", "E1", 5)]


def test_connection_loss_fails_waiting_probes_and_makes_the_node_unavailable(world):
    probe = world.broker.probe()
    world.broker.connection_lost(world.command)
    assert failure_of(probe).check(BrokerUnavailable)
    assert not world.broker.ready
    assert failure_of(world.broker.publish(SendRequest(content=1, receiver_ids=("a",)), "t", "m1")).check(BrokerUnavailable)


def test_a_node_whose_records_arrive_late_refuses_new_messages_and_says_so(world, clock):
    clock.advance(100)
    world.records(record("e1", 1, "alice", published=clock.seconds() - 1.0))
    keys, args = world.command.answer(scripts.BEHIND, 1)
    assert keys == ["t:over"] and args[0] == world.broker.node_name
    assert failure_of(world.broker.publish(SendRequest(content=1, receiver_ids=("bob",)), "t", "m1")).check(Overloaded)
    clock.advance(1)  # nothing more is waiting
    d = world.broker.publish(SendRequest(content=1, receiver_ids=("bob",)), "t", "m2")
    clock.advance(0)
    world.command.last()[3].callback([b"overloaded"])  # another node holding bob is behind
    assert failure_of(d).check(Overloaded)
