"""
Property tests of the core's delivery promises (CONTRACT.md section 4):
whatever the order of connects, disconnects and sends, nothing reaches a
connection twice, ids only go up, and a client that resumes with the last
id it saw ends up with every message exactly once (or is told ``lost``).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_core import World

OPS = st.lists(st.sampled_from(["connect", "disconnect", "send", "send", "send"]), max_size=30)
FAST = settings(max_examples=40, deadline=None)


@FAST
@given(OPS)
def test_plain_connects_get_every_message_exactly_once(ops):
    """Under ``replace``, with plain connects, each message is written to exactly one connection."""
    world = World(policy="replace")
    sent = 0
    live = None
    connections = []
    for op in ops:
        if op == "connect":
            live, conn = world.connect("alice")
            connections.append(conn)
        elif op == "disconnect" and live is not None:
            world.disconnect(live)
            live = None
        elif op == "send":
            world.send(sent, to="alice")
            sent += 1
    connections.append(world.connect("alice")[1])
    written = [i for conn in connections for i in conn.ids]
    assert sorted(written) == list(range(1, sent + 1))
    for conn in connections:
        assert conn.ids == sorted(set(conn.ids))


@FAST
@given(OPS, st.integers(min_value=1, max_value=8))
def test_a_resuming_client_sees_everything_once_or_is_told_lost(ops, size):
    """A client that always resumes from the last id it saw never sees an id twice; gaps are flagged."""
    world = World(policy="replace", size=size)
    sent = 0
    seen: list[int] = []
    epoch = None
    live = None
    lost_any = False

    def connect():
        nonlocal live, epoch, lost_any
        last = seen[-1] if seen else 0
        live, conn = world.connect("alice", last_id=last, epoch=epoch)
        welcome = conn.welcome
        expected = list(range(max(last, sent - size) + 1, sent + 1))
        assert welcome["lost"] == (last < sent - size)
        assert welcome["replayed"] == len(expected) and welcome["last_id"] == sent
        lost_any = lost_any or welcome["lost"]
        epoch = welcome["epoch"]
        return conn

    conn = None
    for op in ops:
        if op == "connect":
            if conn is not None:
                seen.extend(conn.ids)
            conn = connect()
        elif op == "disconnect" and live is not None:
            world.disconnect(live)
            live = None
        elif op == "send":
            world.send(sent, to="alice")
            sent += 1
    if conn is not None:
        seen.extend(conn.ids)
    seen.extend(connect().ids)
    assert seen == sorted(set(seen))
    if not lost_any:
        assert seen == list(range(1, sent + 1))


@FAST
@given(st.lists(st.sampled_from(["connect", "disconnect", "send"]), max_size=30), st.integers(1, 3))
def test_fanout_connections_each_get_increasing_ids(ops, max_per_id):
    world = World(policy="fanout", max_per_id=max_per_id)
    sessions = []
    sent = 0
    for op in ops:
        if op == "connect" and len(sessions) < max_per_id:
            sessions.append(world.connect("alice"))
        elif op == "disconnect" and sessions:
            world.disconnect(sessions.pop(0)[0])
        elif op == "send":
            report = world.send(sent, to="alice")
            sent += 1
            assert report["sent" if sessions else "queued"] == ("alice",)
            for _, conn in sessions:
                assert conn.ids[-1] == sent
    for _, conn in sessions:
        assert conn.ids == sorted(set(conn.ids))
