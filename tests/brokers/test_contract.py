"""
The broker contract (relayd.core.ports.Broker): one set of behaviours run
over every broker, through its public methods only — the memory broker,
the memory broker on its SQLite store, and the Redis broker on a real
Redis (the shared one on 6379, under a key prefix of the test's own).

These run on the real reactor (the Redis broker needs the network and the
store its writer thread); every wait is bounded.
"""

from __future__ import annotations

import itertools

import pytest
import pytest_twisted
from twisted.internet import defer, task

from relayd.brokers.memory import MemoryBroker
from relayd.brokers.store import Store
from relayd.core.history import MemoryHistory, Reply
from relayd.wire import SendRequest, dumps

pytestmark = pytest.mark.integration

WAIT = 10.0
_ids = itertools.count(1)


class Node:
    """The relay core as a broker sees it: ids with a live connection take what they are handed."""

    def __init__(self):
        self.live: set[str] = set()
        self.delivered: list = []
        self.caught: list = []

    def deliver_local(self, message) -> int:
        """Take the message if its receiver (or, for a broadcast, anyone) is live here."""
        if message.receiver_id is None or message.receiver_id in self.live:
            self.delivered.append(message)
            return 1
        return 0

    def caught_up(self, client_id, epoch, last_id):
        """Record the broker's catch-up marks."""
        self.caught.append((client_id, epoch, last_id))

    def kick_local(self, client_id, keep):
        """Nothing to close here."""

    def to(self, client_id):
        """The message ids handed over for ``client_id``, in order."""
        return [m.id for m in self.delivered if m.receiver_id == client_id]


async def _pause(seconds=0.02):
    from twisted.internet import reactor

    await task.deferLater(reactor, seconds, lambda: None)


async def eventually(check, timeout=WAIT):
    """Wait (on the reactor) until ``check()`` is true."""
    waited = 0.0
    while not check():
        assert waited < timeout, f"not true within {timeout}s"
        await _pause()
        waited += 0.02


def memory_broker(reactor, tmp_path, size):
    return MemoryBroker(MemoryHistory(reactor, size=size, ttl=600), dumps)


def store_broker(reactor, tmp_path, size):
    history = MemoryHistory(reactor, size=size, ttl=600)
    store = Store(str(tmp_path / "relay.sqlite3"), reactor)
    store.load(history)
    return MemoryBroker(history, dumps, store)


def redis_broker(reactor, tmp_path, size, prefix):
    from relayd.brokers.redis.broker import RedisBroker, parse_url

    return RedisBroker(parse_url(f"redis://127.0.0.1:6379/0?prefix={prefix}"), reactor, size, 600)


async def started_redis(tmp_path, prefix, size=100):
    """A Redis broker on the shared Redis under ``prefix``, started and ready, and the Node it serves."""
    from twisted.internet import reactor

    broker, node = redis_broker(reactor, tmp_path, size, prefix), Node()
    await broker.start(node)
    await eventually(lambda: broker.ready)
    return broker, node


@pytest.fixture(params=["memory", "store", "redis"])
def make_broker(request, tmp_path):
    """``await make_broker(size=100)``: a started broker of each kind and the Node it serves; stopped afterwards."""
    from twisted.internet import reactor

    started = []

    async def make(size=100):
        node = Node()
        if request.param == "redis":
            shared = request.getfixturevalue("shared_redis")
            broker = redis_broker(reactor, tmp_path, size, shared[1])
        else:
            broker = (memory_broker if request.param == "memory" else store_broker)(reactor, tmp_path, size)
        await broker.start(node)
        started.append(broker)
        if request.param == "redis":
            for _ in range(int(WAIT / 0.05)):
                try:
                    await broker.probe()
                    break
                except Exception:
                    await _pause(0.05)
        return broker, node

    yield make
    for broker in started:
        pytest_twisted.blockon(defer.ensureDeferred(_stop(broker)))


async def _stop(broker):
    await broker.stop()


def send(broker, *receivers, content="x", key=None, sender=None):
    request = SendRequest(content=content, receiver_ids=receivers, sender_id=sender, idempotency_key=key, received=1.0)
    return defer.maybeDeferred(broker.publish, request, "2026-12-01T00:00:00.000Z", f"m{next(_ids)}")


async def connect(broker, node, client_id, last_id=None, epoch=None):
    """Claim ``client_id`` as a live connection here and read what it is owed."""
    assert await broker.claim(client_id, next(_ids), "replace", 8) is True
    node.live.add(client_id)
    return await broker.replay(client_id, last_id, epoch)


@pytest_twisted.ensureDeferred
async def test_ids_count_from_one_per_receiver_and_the_reply_says_where_each_went(make_broker):
    broker, node = await make_broker()
    await connect(broker, node, "alice")
    reply = await send(broker, "alice", "bob")
    assert isinstance(reply, Reply) and reply.sent == ("alice",) and reply.queued == ("bob",)
    await send(broker, "alice")
    await eventually(lambda: node.to("alice") == [1, 2])
    replay = await broker.replay("bob", 0, None)
    assert [m.id for m in replay.messages] == [1] and replay.last_id == 1 and replay.lost is False


@pytest_twisted.ensureDeferred
async def test_with_nothing_kept_a_message_to_nobody_is_dropped(make_broker):
    broker, node = await make_broker(size=0)
    reply = await send(broker, "nobody")
    assert reply.dropped == ("nobody",) and reply.sent == reply.queued == ()


@pytest_twisted.ensureDeferred
async def test_a_plain_connect_gets_what_was_never_delivered(make_broker):
    broker, node = await make_broker()
    for _ in range(3):
        await send(broker, "carol")
    first = await broker.replay("carol", None, None)
    assert [m.id for m in first.messages] == [1, 2, 3]
    broker.mark_delivered("carol", first.epoch, 2)  # may be written a little later (Redis batches marks)
    for _ in range(int(WAIT / 0.02)):
        again = await broker.replay("carol", None, None)
        if [m.id for m in again.messages] == [3]:
            break
        await _pause()
    assert [m.id for m in again.messages] == [3] and again.epoch == first.epoch and again.lost is False


@pytest_twisted.ensureDeferred
async def test_a_resume_gets_what_follows_and_an_old_epoch_is_lost(make_broker):
    broker, node = await make_broker()
    for _ in range(4):
        await send(broker, "dave")
    current = (await broker.replay("dave", None, None)).epoch
    resumed = await broker.replay("dave", 2, current)
    assert [m.id for m in resumed.messages] == [3, 4] and resumed.lost is False
    stale = await broker.replay("dave", 2, "another-epoch")
    assert stale.lost is True and [m.id for m in stale.messages] == [1, 2, 3, 4]
    ahead = await broker.replay("dave", 9, current)
    assert ahead.lost is True


@pytest_twisted.ensureDeferred
async def test_only_the_newest_history_size_messages_are_kept(make_broker):
    broker, node = await make_broker(size=2)
    for _ in range(5):
        await send(broker, "erin")
    replay = await broker.replay("erin", 0, None)
    assert [m.id for m in replay.messages] == [4, 5] and replay.lost is True


@pytest_twisted.ensureDeferred
async def test_a_retry_with_the_same_key_and_sender_gets_the_first_reply_and_sends_nothing(make_broker):
    broker, node = await make_broker()
    await connect(broker, node, "fay")
    first = await send(broker, "fay", key="k1", sender="billing")
    again = await send(broker, "fay", key="k1", sender="billing")
    other = await send(broker, "fay", key="k1", sender="shop")
    assert again == first and other.message_id != first.message_id
    await eventually(lambda: len(node.to("fay")) == 2)
    assert node.to("fay") == [1, 2]


@pytest_twisted.ensureDeferred
async def test_a_broadcast_reaches_the_node_and_takes_no_number(make_broker):
    broker, node = await make_broker()
    reply = await defer.maybeDeferred(broker.publish, SendRequest(content="all", broadcast=True, received=1.0), "t", "b1")
    assert reply == Reply("b1")
    await eventually(lambda: any(m.receiver_id is None for m in node.delivered))
    assert [m.id for m in node.delivered if m.receiver_id is None] == [None]


@pytest_twisted.ensureDeferred
async def test_a_broadcast_with_an_idempotency_key_is_published_once(make_broker):
    broker, node = await make_broker()
    request = SendRequest(content="all", broadcast=True, received=1.0, idempotency_key="b")
    first = await defer.maybeDeferred(broker.publish, request, "t", "b1")
    again = await defer.maybeDeferred(broker.publish, request, "t", "b2")
    assert first == again == Reply("b1")
    await eventually(lambda: any(m.receiver_id is None for m in node.delivered))
    await _pause(0.1)
    assert [m.id for m in node.delivered if m.receiver_id is None] == [None]


@pytest_twisted.ensureDeferred
async def test_a_working_broker_answers_its_probe(make_broker):
    broker, node = await make_broker()
    assert await broker.probe() is None
