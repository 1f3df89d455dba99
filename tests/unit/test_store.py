"""
The SQLite store under the in-process broker (relayd.brokers.store), on a
fake clock with commits done in the test's thread: what a restart keeps,
the bounds applied on load, and that nothing is delivered or acknowledged
before its group is committed.
"""

from __future__ import annotations

import itertools
import sqlite3

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from relayd.brokers.memory import MemoryBroker
from relayd.brokers.store import InlineWriter, Store, StoreError
from relayd.core.history import STREAM_COST, MemoryHistory, footprint
from relayd.core.ports import BrokerUnavailable
from relayd.wire import SendRequest, dumps
from tests.unit.helpers import result_of


class ManualWriter:
    """Commits a group only when the test says so."""

    def __init__(self, db):
        self.inline = InlineWriter(db)
        self.queued = []

    def submit(self, group, done):
        self.queued.append((group, done))

    def commit_one(self):
        group, done = self.queued.pop(0)
        self.inline.submit(group, done)

    def close(self):
        while self.queued:
            self.commit_one()
        return self.inline.close()


class FakeNode:
    def __init__(self):
        self.delivered = []

    def deliver_local(self, message):
        self.delivered.append(message)
        return 0


class Node:
    """One run of a node on the store file: history, store, broker."""

    def __init__(self, path, clock, writer=InlineWriter, **bounds):
        epochs = (f"run{id(self)}-e{n}" for n in itertools.count(1))
        self.history = MemoryHistory(clock, make_epoch=lambda: next(epochs), **bounds)
        self.store = Store(str(path), clock, writer)
        self.store.load(self.history)
        self.broker = MemoryBroker(self.history, dumps, self.store)
        self.node = FakeNode()
        self.broker.start(self.node)
        self.clock = clock

    def send(self, receiver, content, key=None, sender=None):
        d = defer.maybeDeferred(self.broker.publish, SendRequest(content=content, receiver_ids=(receiver,),
                                                                 sender_id=sender, idempotency_key=key), "t", f"m-{content}")
        self.clock.advance(0)
        return d

    def stop(self):
        d = self.broker.stop()
        self.clock.advance(0)
        return result_of(d)


@pytest.fixture
def path(tmp_path):
    return tmp_path / "relay.sqlite3"


def replay(node, client_id, last_id=None, epoch=None):
    d = node.broker.replay(client_id, last_id, epoch)
    node.clock.advance(0)
    return result_of(d)


def test_a_restart_keeps_epochs_sequences_marks_and_kept_messages(path):
    clock = Clock()
    first = Node(path, clock)
    for n in range(3):
        result_of(first.send("alice", n))
    first.send("bob", "b")
    epoch = first.history.stream("alice").epoch
    first.broker.mark_delivered("alice", epoch, 2)
    first.stop()

    again = Node(path, clock)
    resumed = replay(again, "alice", 1, epoch)
    assert (resumed.epoch, resumed.last_id, resumed.lost) == (epoch, 3, False)
    assert [(m.id, m.frame) for m in resumed.messages] == [(2, first.node.delivered[1].frame), (3, first.node.delivered[2].frame)]
    assert [m.id for m in replay(again, "alice").messages] == [3]  # delivered mark kept
    message = result_of(again.send("alice", "next"))
    assert message.queued == ("alice",) and again.history.stream("alice").last_id == 4
    assert again.history.stream("bob").last_id == 1


def test_a_message_is_delivered_and_acknowledged_only_once_committed(path):
    clock = Clock()
    writer = {}
    node = Node(path, clock, writer=lambda db: writer.setdefault("w", ManualWriter(db)))
    d = node.send("alice", 1)
    assert not d.called and node.node.delivered == []
    node.send("alice", 2)
    writer["w"].commit_one()
    assert d.called and [m.id for m in node.node.delivered] == [1]
    writer["w"].commit_one()  # the second message went into the next group
    assert [m.id for m in node.node.delivered] == [1, 2]


def test_what_one_reactor_turn_changes_is_one_group(path):
    clock = Clock()
    node = Node(path, clock)
    pending = [node.broker.publish(SendRequest(content=n, receiver_ids=("alice",)), "t", f"m{n}") for n in range(50)]
    assert not any(d.called for d in pending)
    clock.advance(0)
    assert all(d.called for d in pending)
    assert node.store.stats.groups == 1


def test_the_bounds_in_force_at_start_apply_to_what_was_kept(path):
    clock = Clock()
    first = Node(path, clock, size=10, ttl=100)
    for n in range(6):  # alice 1..6 at t = 0, 10, ... 50
        first.send("alice", n)
        clock.advance(10)
    first.send("bob", "b")  # at t = 60
    first.stop()
    clock.advance(5)
    fp = footprint(first.node.delivered[0])

    again = Node(path, clock, size=10, ttl=100)
    assert [m.id for m in replay(again, "alice").messages] == [1, 2, 3, 4, 5, 6]
    again.stop()
    shorter = Node(path, clock, size=10, ttl=60)
    assert [m.id for m in replay(shorter, "alice").messages] == [2, 3, 4, 5, 6]  # alice 1 was kept 65 s ago
    shorter.stop()
    smaller = Node(path, clock, size=2, ttl=60, memory=2 * STREAM_COST + int(2.5 * fp))
    assert [m.id for m in replay(smaller, "alice").messages] == [6]  # size 2 keeps 5, 6; memory evicts 5
    assert [m.id for m in replay(smaller, "bob").messages] == [1]
    smaller.stop()
    rows = sqlite3.connect(path).execute("SELECT client_id, id FROM messages ORDER BY rowid").fetchall()
    assert rows == [("alice", 6), ("bob", 1)]


def test_expired_messages_are_not_loaded(path):
    clock = Clock()
    first = Node(path, clock, ttl=60)
    first.send("alice", 1)
    first.stop()
    clock.advance(61)
    again = Node(path, clock, ttl=60)
    resumed = replay(again, "alice", 0)
    assert resumed.messages == () and resumed.lost is True and resumed.last_id == 1


def test_a_forgotten_id_starts_a_new_epoch_after_a_restart_too(path):
    clock = Clock()
    first = Node(path, clock, ttl=10)
    first.send("alice", 1)
    old = first.history.stream("alice").epoch
    clock.advance(11)
    assert first.history.sweep() == 1
    first.send("alice", 2)
    new = first.history.stream("alice").epoch
    first.stop()
    again = Node(path, clock, ttl=10)
    resumed = replay(again, "alice", 1, old)
    assert new != old and resumed.epoch == new and resumed.lost is True
    assert [m.id for m in resumed.messages] == [1] and resumed.messages[0].frame == first.node.delivered[1].frame


def test_an_idempotent_reply_survives_a_restart(path):
    clock = Clock()
    first = Node(path, clock)
    reply = result_of(first.send("alice", 1, key="k1", sender="billing"))
    first.stop()
    again = Node(path, clock)
    assert result_of(again.send("alice", 1, key="k1", sender="billing")) == reply
    assert again.history.stream("alice").last_id == 1


def test_a_retry_while_the_first_is_being_committed_gets_its_reply(path):
    clock = Clock()
    writer = {}
    node = Node(path, clock, writer=lambda db: writer.setdefault("w", ManualWriter(db)))
    first, retry = node.send("alice", 1, key="k"), node.send("alice", 1, key="k")
    while writer["w"].queued:
        writer["w"].commit_one()
        clock.advance(0)
    assert result_of(first) == result_of(retry) and len(node.node.delivered) == 1


def test_a_failed_commit_is_a_broker_failure(path):
    clock = Clock()

    class Failing(InlineWriter):
        def submit(self, group, done):
            done(0.0, sqlite3.OperationalError("disk I/O error"))

    node = Node(path, clock, writer=Failing)
    failure = []
    node.send("alice", 1).addErrback(failure.append)
    assert failure and failure[0].check(BrokerUnavailable)
    assert node.node.delivered == []


def test_an_unusable_file_is_a_clear_error(tmp_path):
    (tmp_path / "dir.sqlite3").mkdir()
    with pytest.raises(StoreError, match="--store .*dir.sqlite3"):
        Store(str(tmp_path / "dir.sqlite3"), Clock())


def test_the_file_is_in_wal_mode(path):
    Node(path, Clock()).stop()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone() == ("wal",)
