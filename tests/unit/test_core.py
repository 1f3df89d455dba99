"""
The registry, sessions and the transport-free relay core (relayd.core)
with the in-memory broker and the fake connection.
"""

from __future__ import annotations

import itertools

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from relayd.brokers.memory import MemoryBroker
from relayd.core.history import MemoryHistory, Replay
from relayd.core.ports import BrokerUnavailable
from relayd.core.registry import Refused, Registry
from relayd.core.relay import Relay
from relayd.core.session import Delivery, Session, State
from relayd.wire import Message, SendRequest, dumps, message_frame
from tests.unit.helpers import FakeConnection, failure_of, result_of


class CountingMetrics:
    def __init__(self):
        self.outcomes = {"sent": 0, "queued": 0, "dropped": 0}
        self.delays = []

    def message_outcome(self, outcome, count=1):
        self.outcomes[outcome] += count

    def delivered(self, seconds):
        self.delays.append(seconds)


class World:
    """A relay with a memory broker, a clock and helpers to connect and send."""

    def __init__(self, policy="replace", max_per_id=8, max_connections=10000, **history):
        self.clock = Clock()
        self.clock.advance(1000)
        epochs = (f"e{n}" for n in itertools.count(1))
        self.history = MemoryHistory(self.clock, make_epoch=lambda: next(epochs), **history)
        self.broker = MemoryBroker(self.history, dumps)
        self.registry = Registry(policy, max_per_id, max_connections)
        self.metrics = CountingMetrics()
        self.relay = Relay(self.broker, self.registry, self.clock, self.metrics)
        result_of(self.relay.start())

    def admit(self, client_id, transport="ws"):
        return result_of(self.relay.admit(client_id, transport))

    def connect(self, client_id, last_id=None, epoch=None, transport="ws"):
        session = self.admit(client_id, transport)
        connection = FakeConnection()
        result_of(self.relay.prepare(session, last_id, epoch))
        self.relay.open(session, connection)
        return session, connection

    def disconnect(self, session):
        self.relay.close(session)

    def send(self, content="hi", to=None, sender=None, broadcast=False):
        if broadcast:
            request = SendRequest(content=content, broadcast=True, sender_id=sender)
        else:
            receivers = (to,) if isinstance(to, str) else tuple(to)
            request = SendRequest(content=content, receiver_ids=receivers, sender_id=sender)
        return result_of(self.relay.send(request))


@pytest.fixture
def world():
    return World()


# Duplicate policy and limits

def test_replace_closes_the_older_connection_with_4000(world):
    old_session, old = world.connect("alice")
    new_session, new = world.connect("alice")
    assert old.closed is not None and old.closed[0] == 4000
    assert new.closed is None
    assert world.registry.sessions("alice") == (new_session,)
    report = world.send("after", to="alice")
    assert report["sent"] == ("alice",)
    assert new.contents == ["after"] and old.contents == []


def test_replace_closes_a_session_that_is_still_opening(world):
    opening = world.admit("alice")
    _, new = world.connect("alice")
    assert opening.closed
    connection = FakeConnection()
    result_of(world.relay.prepare(opening, None, None))
    world.relay.open(opening, connection)
    assert connection.frames == []
    assert connection.closed is not None and connection.closed[0] == 4000
    assert new.welcome["type"] == "welcome"


def test_replaced_connection_releases_its_hold_on_the_stream(world):
    """After a replace and both connections gone, the id's idle stream can be forgotten."""
    first, _ = world.connect("alice")
    second, _ = world.connect("alice")
    world.disconnect(first)   # the transport reports the replaced one closed
    world.disconnect(second)
    assert world.history.stream("alice").holders == 0
    world.clock.advance(world.history.ttl)
    assert world.history.sweep() == 1


def test_fanout_up_to_max_per_id_then_409():
    world = World(policy="fanout", max_per_id=2)
    world.connect("alice")
    world.connect("alice")
    with pytest.raises(Refused) as raised:
        world.registry.check("alice")
    failure = failure_of(world.relay.admit("alice", "ws"))
    assert failure.check(Refused)
    assert (failure.value.status, failure.value.error) == (409, "duplicate")
    assert raised.value.status == 409
    world.connect("bob")  # other ids are not affected
    assert len(world.registry) == 3 and world.registry.clients == 2


def test_fanout_delivers_to_every_connection_once():
    world = World(policy="fanout", max_per_id=3)
    connections = [world.connect("alice")[1] for _ in range(3)]
    report = world.send("x", to="alice")
    assert report["sent"] == ("alice",)
    assert [c.contents for c in connections] == [["x"], ["x"], ["x"]]
    assert all(c.closed is None for c in connections)


def test_fanout_frees_a_place_when_one_closes():
    world = World(policy="fanout", max_per_id=1)
    session, _ = world.connect("alice")
    assert failure_of(world.relay.admit("alice", "ws")).value.status == 409
    world.disconnect(session)
    world.connect("alice")


def test_reject_refuses_the_second_connection_with_409():
    world = World(policy="reject")
    _, first = world.connect("alice")
    failure = failure_of(world.relay.admit("alice", "sse"))
    assert (failure.value.status, failure.value.error) == (409, "duplicate")
    assert "'alice' is already connected" in failure.value.detail
    assert first.closed is None
    assert world.send("still", to="alice")["sent"] == ("alice",)
    assert first.contents == ["still"]


def test_connection_limit_is_503():
    world = World(max_connections=2)
    a, _ = world.connect("a")
    world.connect("b")
    failure = failure_of(world.relay.admit("c", "ws"))
    assert (failure.value.status, failure.value.error) == (503, "too_many_connections")
    assert len(world.registry) == 2
    world.disconnect(a)
    world.connect("c")


def test_replace_keeps_the_older_connection_when_the_broker_cannot_admit_the_newer():
    world = World()
    _, older = world.connect("alice")
    world.broker.claim = lambda *args: defer.fail(BrokerUnavailable("redis is unreachable"))
    failure = failure_of(world.relay.admit("alice", "ws"))
    assert (failure.value.status, failure.value.error) == (503, "broker_unavailable")
    assert older.closed is None and len(world.registry.sessions("alice")) == 1
    assert world.send("still", to="alice")["sent"] == ("alice",)


def test_replacing_at_the_connection_limit_takes_no_new_place():
    world = World(max_connections=1)
    _, first = world.connect("a")
    _, second = world.connect("a")
    assert first.closed[0] == 4000 and second.closed is None
    assert failure_of(world.relay.admit("b", "ws")).value.status == 503


def test_opening_sessions_count_against_the_limit():
    world = World(max_connections=1)
    world.admit("a")
    assert failure_of(world.relay.admit("b", "ws")).value.status == 503


def test_registry_counts_by_transport_and_distinct_ids():
    world = World(policy="fanout")
    world.connect("a", transport="ws")
    world.connect("a", transport="sse")
    s, _ = world.connect("b", transport="ws")
    assert world.registry.counts["ws"] == 2 and world.registry.counts["sse"] == 1
    assert world.registry.clients == 2 and len(world.registry) == 3
    world.disconnect(s)
    assert world.registry.counts["ws"] == 1 and world.registry.clients == 1


def test_closing_twice_is_harmless(world):
    session, _ = world.connect("a")
    world.disconnect(session)
    world.disconnect(session)
    assert len(world.registry) == 0
    assert world.history.stream("a").holders == 0


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="replace, fanout, reject"):
        Registry("newest")


def test_broker_refusal_is_409_and_leaves_nothing_behind(world):
    world.broker.claim = lambda *args: defer.succeed(False)
    failure = failure_of(world.relay.admit("alice", "ws"))
    assert (failure.value.status, failure.value.error) == (409, "duplicate")
    assert len(world.registry) == 0


def test_kick_local_keeps_only_the_named_session():
    world = World(policy="fanout")
    keep, kept = world.connect("alice")
    _, other = world.connect("alice")
    world.relay.kick_local("alice", keep.key)
    assert other.closed[0] == 4000 and kept.closed is None
    assert world.registry.sessions("alice") == (keep,)


# Delivery: order, once, welcome first

def test_welcome_then_replay_then_live(world):
    world.send("q1", to="alice")
    world.send("q2", to="alice")
    _, conn = world.connect("alice")
    world.send("live", to="alice")
    assert conn.welcome == {
        "type": "welcome", "client_id": "alice", "epoch": "e1", "last_id": 2, "replayed": 2, "lost": False,
    }
    assert conn.ids == [1, 2, 3]
    assert conn.contents == ["q1", "q2", "live"]
    assert conn.replayed == [1, 2], "only the replay is marked so (it does not count as a slow consumer's backlog)"


def test_message_frame_fields(world):
    _, conn = world.connect("alice")
    world.send({"k": [1]}, to="alice", sender="billing")
    (frame,) = conn.messages
    assert frame["sender_id"] == "billing" and frame["receiver_id"] == "alice"
    assert frame["timestamp"] == "1970-01-01T00:16:40.000Z"
    assert frame["content"] == {"k": [1]}


def test_session_never_gets_a_message_twice(world):
    session, conn = world.connect("alice")
    world.send("a", to="alice")
    message = world.history.replay("alice", 0, None).messages[0]
    assert session.offer(message) is False
    assert world.relay.deliver_local(message) == 0
    world.send("b", to="alice")
    assert conn.ids == [1, 2]


def test_ids_strictly_increase_even_if_offered_out_of_order(world):
    session, conn = world.connect("alice")
    world.send("a", to="alice")
    world.send("b", to="alice")
    kept = world.history.replay("alice", 0, None).messages
    for message in reversed(kept):
        session.offer(message)
    world.send("c", to="alice")
    assert conn.ids == [1, 2, 3]


def test_messages_arriving_while_opening_are_held_until_after_the_replay(world):
    world.send("before", to="alice")           # id 1, queued
    session = world.admit("alice")             # admitted, not open yet
    report = world.send("meanwhile", to="alice")  # id 2, held by the session
    assert report["sent"] == ("alice",)
    conn = FakeConnection()
    result_of(world.relay.prepare(session, None, None))
    world.relay.open(session, conn)
    assert conn.frames[0]["type"] == "welcome" and conn.welcome["replayed"] == 2
    assert conn.ids == [1, 2]
    assert conn.contents == ["before", "meanwhile"]


def test_held_messages_with_a_slow_broker_replay():
    """The replay answer arrives after more messages: each is still written once, in order."""
    world = World()
    world.send("m1", to="alice")
    later = defer.Deferred()
    real_replay = world.broker.replay
    world.broker.replay = lambda *args: later
    session = world.admit("alice")
    conn = FakeConnection()
    prepared = world.relay.prepare(session, 0, None)
    snapshot = result_of(real_replay("alice", 0, None))  # what the broker saw when asked
    world.send("m2", to="alice")
    world.send("m3", to="alice")
    later.callback(snapshot)
    result_of(prepared)
    assert conn.frames == []
    world.relay.open(session, conn)
    assert conn.welcome["replayed"] == 1
    assert conn.ids == [1, 2, 3]


def test_a_closed_session_gets_nothing(world):
    session, conn = world.connect("alice")
    world.disconnect(session)
    report = world.send("x", to="alice")
    assert report["queued"] == ("alice",)
    assert conn.messages == []


def test_open_after_the_session_was_closed_writes_nothing(world):
    session = world.admit("alice")
    result_of(world.relay.prepare(session, None, None))
    world.disconnect(session)
    conn = FakeConnection()
    world.relay.open(session, conn)
    assert conn.frames == []


def test_a_message_from_another_epoch_closes_with_4009():
    session = Session("alice", "ws", lambda session, message: None)
    conn = FakeConnection()
    session.prepared(Replay("e1", 0, (), False))
    session.start(conn)
    session.offer(Message(1, "e1", "alice", dumps({"type": "message", "id": 1})))
    assert session.offer(Message(1, "e2", "alice", dumps({"type": "message", "id": 1}))) is False
    assert conn.closed[0] == 4009
    assert conn.ids == [1]


# Delivery report

def test_report_sent_queued_in_request_order(world):
    world.connect("b")
    report = world.send("x", to=["c", "b", "a"])
    assert report["sent"] == ("b",)
    assert report["queued"] == ("c", "a")
    assert report["dropped"] == ()
    assert len(report["message_id"]) == 32
    assert world.metrics.outcomes == {"sent": 1, "queued": 2, "dropped": 0}


def test_report_dropped_with_history_size_0():
    world = World(size=0)
    _, conn = world.connect("online")
    report = world.send("x", to=["offline", "online"])
    assert report["sent"] == ("online",) and report["dropped"] == ("offline",) and report["queued"] == ()
    assert conn.contents == ["x"]
    _, late = world.connect("offline")
    assert late.welcome["replayed"] == 0 and late.messages == []


def test_a_connection_that_cannot_take_the_message_is_not_sent(world):
    session, conn = world.connect("alice")
    conn.delivery = Delivery.REFUSED
    report = world.send("x", to="alice")
    assert report["queued"] == ("alice",)
    world.disconnect(session)
    _, again = world.connect("alice", last_id=0)
    assert again.contents == ["x"]


def test_message_ids_are_32_hex_digits_and_never_repeat_across_the_counters_blocks():
    from relayd.core.relay import message_ids

    ids = list(itertools.islice(message_ids(), 3 * 4096 + 5))
    assert len(set(ids)) == len(ids) and all(len(i) == 32 and int(i, 16) >= 0 and i == i.lower() for i in ids)
    assert int(ids[4096], 16) == int(ids[4095], 16) + 1  # one counter, the table's tails in order


def test_every_message_gets_its_own_message_id(world):
    first, second = world.send(to="a"), world.send(to="a")
    assert first["message_id"] != second["message_id"]


def test_delivery_time_is_observed_once_per_message():
    world = World(policy="fanout")
    world.connect("a")
    world.connect("a")
    request = SendRequest(content=1, receiver_ids=("a",))
    received = world.clock.seconds()
    world.clock.advance(0.25)
    result_of(world.relay.send(request, received))
    assert world.metrics.delays == [0.25]



class OutcomeCalls(CountingMetrics):
    def __init__(self):
        super().__init__()
        self.calls = []

    def message_outcome(self, outcome, count=1):
        self.calls.append((outcome, count))
        super().message_outcome(outcome, count)


def test_a_batch_is_sent_in_order_its_outcomes_counted_once_each():
    world = World(size=0)
    world.metrics = world.relay.metrics = OutcomeCalls()
    _, conn = world.connect("a")
    requests = [SendRequest(content=n, receiver_ids=receivers, received=world.clock.seconds())
                for n, receivers in enumerate([("a",), ("b",), ("a", "b")])]
    reports = world.relay.send_batch(requests)
    assert [(r["sent"], r["dropped"]) for r in reports] == [(("a",), ()), ((), ("b",)), (("a",), ("b",))]
    assert len({r["message_id"] for r in reports}) == 3
    assert conn.contents == [0, 2]
    assert sorted(world.metrics.calls) == [("dropped", 2), ("sent", 2)]


def test_a_batch_stops_at_a_send_that_raises_having_counted_what_went_before(world):
    _, conn = world.connect("a")
    publish, calls = world.broker.publish, []

    def second_raises(request, timestamp, message_id):
        calls.append(request.content)
        if len(calls) == 2:
            raise BrokerUnavailable("down")
        return publish(request, timestamp, message_id)

    world.broker.publish = second_raises
    with pytest.raises(BrokerUnavailable):
        world.relay.send_batch([SendRequest(content=n, receiver_ids=("a",)) for n in range(3)])
    assert calls == [0, 1] and conn.contents == [0]
    assert world.metrics.outcomes["sent"] == 1


def test_a_batch_goes_on_once_a_broker_answers_later(world):
    _, conn = world.connect("a")
    publish, waiting = world.broker.publish, []

    def answers_later(request, timestamp, message_id):
        d = defer.Deferred()
        waiting.append(lambda: d.callback(publish(request, timestamp, message_id)))
        return d

    world.broker.publish = answers_later
    d = world.relay.send_batch([SendRequest(content=n, receiver_ids=("a",)) for n in range(3)])
    assert len(waiting) == 1 and conn.contents == []  # the first waits; the others are not sent yet
    for n in range(3):
        waiting.pop(0)()
        assert conn.contents == list(range(n + 1))
    reports = result_of(d)
    assert [r["sent"] for r in reports] == [("a",)] * 3 and conn.contents == [0, 1, 2]
    assert world.metrics.outcomes["sent"] == 3

# Broadcast

def test_broadcast_reaches_every_session_and_takes_no_id():
    world = World(policy="fanout")
    conns = [world.connect(cid)[1] for cid in ("a", "b", "b")]
    opening = world.admit("c")
    report = world.send("all", broadcast=True)
    assert report["sent"] == () and report["queued"] == () and report["dropped"] == ()
    for conn in conns:
        (frame,) = conn.messages
        assert frame["id"] is None and frame["receiver_id"] is None and frame["content"] == "all"
    late = FakeConnection()
    result_of(world.relay.prepare(opening, None, None))
    world.relay.open(opening, late)
    assert late.contents == ["all"]
    world.send("numbered", to="a")
    assert conns[0].ids == [None, 1]


def test_broadcast_is_never_kept(world):
    world.send("all", broadcast=True)
    _, conn = world.connect("alice", last_id=0)
    assert conn.messages == [] and conn.welcome["last_id"] == 0


# mark_delivered and plain connects

def test_plain_connect_does_not_replay_what_was_written(world):
    session, conn = world.connect("alice")
    world.send("seen", to="alice")
    world.disconnect(session)
    world.send("missed", to="alice")
    _, again = world.connect("alice")
    assert again.welcome["replayed"] == 1
    assert again.contents == ["missed"]
    assert again.ids == [2]


def test_a_message_the_broker_counted_as_delivered_is_not_marked_again(world):
    """A broker that counts a message as delivered while routing it (Redis) hands it over ``marked``."""
    world.connect("alice")
    counted = world.history.append("alice", lambda client_id, epoch, n: message_frame_for(client_id, epoch, n))
    counted.marked = True
    world.relay.deliver_local(counted)
    assert world.history.streams()["alice"].delivered == 0  # left to the broker
    world.send("written", to="alice")
    assert world.history.streams()["alice"].delivered == 2


def message_frame_for(client_id, epoch, message_id):
    return Message(message_id, epoch, client_id, message_frame(message_id, client_id, None, b'"x"', "t"))


def test_resume_replays_even_what_was_written(world):
    session, _ = world.connect("alice")
    world.send("seen", to="alice")
    world.send("also seen", to="alice")
    world.disconnect(session)
    _, again = world.connect("alice", last_id=1, epoch="e1")
    assert again.ids == [2] and again.welcome["lost"] is False


def test_resume_with_an_old_epoch_reports_lost(world):
    world.send("x", to="alice")
    _, conn = world.connect("alice", last_id=7, epoch="gone")
    assert conn.welcome["lost"] is True and conn.welcome["epoch"] == "e1"
    assert conn.ids == [1]


def test_messages_held_by_a_backed_up_connection_are_not_delivered_until_written():
    """Cut as a slow consumer before they went out, they are replayed to a plain reconnect."""
    world = World()
    session = world.admit("alice")
    held = FakeConnection(Delivery.HELD)  # its transport is backed up
    result_of(world.relay.prepare(session, None, None))
    world.relay.open(session, held)
    world.send("one", to="alice")
    world.send("two", to="alice")
    session.written(world.history.replay("alice", 0, None).messages[0])  # "one" reached the wire
    world.disconnect(session)
    _, again = world.connect("alice")
    assert again.contents == ["two"] and again.welcome["replayed"] == 1


def test_an_open_session_keeps_no_reference_to_its_replay(world):
    """Kept messages evicted later must not stay alive through a long-lived connection."""
    world.send("queued", to="alice")
    session, conn = world.connect("alice")
    assert conn.contents == ["queued"] and session._replay is None and session.state is State.OPEN


def test_a_message_evicted_the_moment_it_is_kept_is_dropped_not_queued():
    """--history-memory too small for the message: nothing will ever deliver it, so it is not 'queued'."""
    world = World(memory=100)
    report = world.send("x" * 1000, to="zed")
    assert (report["sent"], report["queued"], report["dropped"]) == ((), (), ("zed",))
    roomy = World()
    assert roomy.send("x" * 1000, to="zed")["queued"] == ("zed",)
