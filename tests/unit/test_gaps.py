"""
A live connection never skips an id (CONTRACT.md section 14): a session
offered a message past the next id closes with 4010, and so does one still
behind after a broker's catch-up (relayd.core.registry, relayd.core.relay).
"""

from __future__ import annotations

from relayd.core.session import CLOSE_GAP
from relayd.wire import Message, SendRequest
from tests.unit.helpers import FakeConnection, result_of
from tests.unit.test_core import World


def message(world, client_id, message_id, epoch=None):
    epoch = epoch or world.history.stream(client_id).epoch
    return Message(message_id, epoch, client_id, b'{"type":"message","id":%d}' % message_id)


def test_the_next_id_is_delivered_and_one_past_it_closes_with_4010():
    world = World()
    for _ in range(2):
        result_of(world.relay.send(SendRequest(content=1, receiver_ids=("alice",))))
    session, connection = world.connect("alice")
    assert connection.ids == [1, 2]
    assert world.relay.deliver_local(message(world, "alice", 3)) == 1
    assert world.relay.deliver_local(message(world, "alice", 5)) == 0
    assert connection.ids == [1, 2, 3] and connection.closed[0] == CLOSE_GAP
    assert "message 4" in connection.closed[1]


def test_the_first_live_id_must_follow_the_last_assigned_at_the_replay():
    """Not only the last id written: a plain connect replays nothing already delivered."""
    world = World()
    result_of(world.relay.send(SendRequest(content=1, receiver_ids=("alice",))))
    first, _ = world.connect("alice")
    world.disconnect(first)
    session, connection = world.connect("alice")
    assert connection.ids == [] and connection.welcome["last_id"] == 1
    world.relay.deliver_local(message(world, "alice", 3))
    assert connection.closed[0] == CLOSE_GAP


def test_a_resume_with_a_gap_in_what_is_kept_is_lost_not_closed():
    world = World(size=2)
    for _ in range(4):
        result_of(world.relay.send(SendRequest(content=1, receiver_ids=("alice",))))
    session, connection = world.connect("alice", last_id=1, epoch="e1")
    assert connection.welcome["lost"] is True and connection.ids == [3, 4] and connection.closed is None


def test_a_held_message_past_the_next_id_closes_the_session_once_open():
    world = World()
    session = world.admit("alice")
    result_of(world.relay.prepare(session, None, None))
    world.relay.deliver_local(message(world, "alice", 2))  # id 1 never arrives
    connection = FakeConnection()
    world.relay.open(session, connection)
    assert connection.ids == [] and connection.closed[0] == CLOSE_GAP


def test_caught_up_closes_only_the_sessions_still_behind():
    world = World(policy="fanout")
    result_of(world.relay.send(SendRequest(content=1, receiver_ids=("alice",))))
    early, early_connection = world.connect("alice")
    epoch = world.history.stream("alice").epoch
    late, late_connection = world.connect("alice", last_id=0)
    world.relay.deliver_local(message(world, "alice", 2))
    other, other_connection = world.connect("bob")
    world.relay.caught_up("alice", epoch, 2)
    assert early_connection.closed is None and late_connection.closed is None
    world.relay.caught_up("alice", epoch, 3)
    assert early_connection.closed[0] == late_connection.closed[0] == CLOSE_GAP
    assert world.registry.sessions("alice") == ()
    world.relay.caught_up("bob", world.history.stream("bob").epoch, 0)
    assert other_connection.closed is None


def test_caught_up_in_another_epoch_leaves_the_session_to_the_epoch_check():
    world = World()
    session, connection = world.connect("alice")
    world.relay.caught_up("alice", "some-other-epoch", 7)
    assert connection.closed is None
