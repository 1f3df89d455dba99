"""
Per-id sequences and kept messages (relayd.core.history) with a ``task.Clock``:
numbering, the size, TTL and memory bounds, and what a connecting client is
owed (CONTRACT.md section 4, "Resume" and the ``lost`` flag).
"""

from __future__ import annotations

import gc
import itertools
import random
import weakref

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from relayd.core.history import STREAM_COST, MemoryHistory, footprint, new_epoch
from relayd.wire import Message


def make_history(clock=None, **kwargs):
    epochs = (f"e{n}" for n in itertools.count(1))
    return MemoryHistory(clock or Clock(), make_epoch=lambda: next(epochs), **kwargs)


def put(history, client_id, size=10):
    """Append one message of ``size`` bytes for ``client_id``; return it."""
    return history.append(client_id, lambda client, epoch, seq: Message(seq, epoch, client, b"x" * size))


def ids(messages):
    return [m.id for m in messages]


def messages_bytes(history):
    """What the kept messages are charged (each stream costs STREAM_COST more)."""
    return history.bytes_kept - STREAM_COST * len(history)


def cost(size):
    """What a kept message with a frame of ``size`` bytes is charged."""
    return footprint(Message(1, "e", "x", b"x" * size))


def test_new_epoch_is_url_safe_and_random():
    epochs = {new_epoch() for _ in range(50)}
    assert len(epochs) == 50
    assert all(len(e) == 8 and e.replace("-", "").replace("_", "").isalnum() for e in epochs)


# Numbering

def test_ids_count_from_one_per_client():
    history = make_history()
    assert [put(history, "alice").id for _ in range(3)] == [1, 2, 3]
    assert [put(history, "bob").id for _ in range(2)] == [1, 2]
    assert put(history, "alice").id == 4


def test_each_client_has_its_own_epoch():
    history = make_history()
    a, b = put(history, "alice"), put(history, "bob")
    assert a.epoch != b.epoch
    assert put(history, "alice").epoch == a.epoch


def test_make_receives_epoch_and_id():
    history = make_history()
    seen = []
    history.append("alice", lambda client, epoch, seq: seen.append((epoch, seq)) or Message(seq, epoch, client, b""))
    assert seen == [("e1", 1)]


def test_ids_go_on_when_nothing_is_kept():
    history = make_history(size=0)
    assert [put(history, "alice").id for _ in range(3)] == [1, 2, 3]
    assert messages_bytes(history) == 0
    replay = history.replay("alice", 0, "e1")
    assert replay.messages == () and replay.last_id == 3 and replay.lost is True


# Size bound

def test_size_bound_keeps_the_newest():
    history = make_history(size=3)
    for _ in range(5):
        put(history, "alice", size=10)
    assert ids(history.replay("alice", None, None).messages) == [3, 4, 5]
    assert messages_bytes(history) == 3 * cost(10)


def test_size_bound_is_per_client():
    history = make_history(size=2)
    for _ in range(3):
        put(history, "alice")
    put(history, "bob")
    assert ids(history.replay("alice", None, None).messages) == [2, 3]
    assert ids(history.replay("bob", None, None).messages) == [1]


def test_dropped_messages_are_freed():
    """A message pushed out by the size bound is not held in memory any more."""
    history = make_history(size=1)
    first = put(history, "alice", size=1000)
    ref = weakref.ref(first)
    del first
    put(history, "alice", size=1000)
    gc.collect()
    assert ref() is None


# TTL

def test_messages_expire_after_ttl():
    clock = Clock()
    history = make_history(clock, ttl=60)
    put(history, "alice")
    clock.advance(30)
    put(history, "alice")
    clock.advance(29.9)
    assert ids(history.replay("alice", None, None).messages) == [1, 2]
    clock.advance(0.1)
    assert ids(history.replay("alice", None, None).messages) == [2]
    clock.advance(30)
    assert history.replay("alice", None, None).messages == ()
    assert messages_bytes(history) == 0


def test_expiry_keeps_the_sequence():
    clock = Clock()
    history = make_history(clock, ttl=60)
    put(history, "alice")
    clock.advance(61)
    message = put(history, "alice")
    assert (message.epoch, message.id) == ("e1", 2)


# Global memory bound

def test_memory_bound_evicts_the_oldest_of_any_client():
    history = make_history(memory=3 * STREAM_COST + 2 * cost(40) + cost(40) // 2)
    for client_id in ("alice", "bob", "carol"):  # the streams first: their cost stays the same below
        history.stream(client_id)
    put(history, "alice", 40)   # alice 1
    put(history, "bob", 40)     # bob 1
    put(history, "alice", 40)   # alice 2: 120 > 100, evicts alice 1
    assert ids(history.replay("alice", None, None).messages) == [2]
    assert ids(history.replay("bob", None, None).messages) == [1]
    put(history, "carol", 40)   # evicts bob 1
    assert history.replay("bob", None, None).messages == ()
    assert ids(history.replay("alice", None, None).messages) == [2]
    assert messages_bytes(history) == 2 * cost(40)


def test_memory_bound_resume_across_eviction_is_lost():
    history = make_history(memory=3 * STREAM_COST + 2 * cost(40) + cost(40) // 2)
    for client_id in ("alice", "bob", "carol"):  # the streams first: their cost stays the same below
        history.stream(client_id)
    put(history, "alice", 40)
    put(history, "bob", 40)
    put(history, "alice", 40)
    replay = history.replay("alice", 0, "e1")
    assert ids(replay.messages) == [2] and replay.lost is True


def test_memory_bound_after_size_drops():
    """Accounting stays right when size-bound drops and evictions mix."""
    history = make_history(size=2, memory=3 * STREAM_COST + 4 * cost(10) + cost(10) // 2)
    for _ in range(4):
        put(history, "alice", 10)
    assert messages_bytes(history) == 2 * cost(10)
    for _ in range(4):
        put(history, "bob", 10)
    assert messages_bytes(history) == 4 * cost(10)
    put(history, "carol", 10)  # over the bound: evicts alice 3 (the oldest kept)
    assert ids(history.replay("alice", None, None).messages) == [4]
    assert messages_bytes(history) == 4 * cost(10)


# replay(): resume with last_id (section 4 "Resume")

@pytest.fixture
def five():
    """alice has ids 1..5 kept, in epoch e1."""
    history = make_history()
    for _ in range(5):
        put(history, "alice")
    return history


def test_resume_sends_everything_after_last_id(five):
    replay = five.replay("alice", 2, "e1")
    assert (replay.epoch, replay.last_id, ids(replay.messages), replay.lost) == ("e1", 5, [3, 4, 5], False)


def test_resume_without_epoch_reads_last_id_in_the_current_epoch(five):
    replay = five.replay("alice", 2, None)
    assert ids(replay.messages) == [3, 4, 5] and replay.lost is False


def test_resume_up_to_date(five):
    replay = five.replay("alice", 5, "e1")
    assert replay.messages == () and replay.lost is False


def test_resume_from_zero(five):
    replay = five.replay("alice", 0, "e1")
    assert ids(replay.messages) == [1, 2, 3, 4, 5] and replay.lost is False


def test_resume_with_a_wrong_epoch_is_lost_and_gets_everything(five):
    replay = five.replay("alice", 2, "old-epoch")
    assert ids(replay.messages) == [1, 2, 3, 4, 5] and replay.lost is True
    assert replay.epoch == "e1"


def test_resume_above_every_assigned_id_is_lost(five):
    replay = five.replay("alice", 6, "e1")
    assert ids(replay.messages) == [1, 2, 3, 4, 5] and replay.lost is True
    replay = five.replay("alice", 9, None)
    assert ids(replay.messages) == [1, 2, 3, 4, 5] and replay.lost is True


def test_resume_across_a_gap_is_lost():
    history = make_history(size=2)
    for _ in range(5):
        put(history, "alice")
    replay = history.replay("alice", 2, "e1")
    assert ids(replay.messages) == [4, 5] and replay.lost is True
    replay = history.replay("alice", 3, "e1")
    assert ids(replay.messages) == [4, 5] and replay.lost is False


def test_resume_when_everything_after_last_id_expired_is_lost():
    clock = Clock()
    history = make_history(clock, ttl=10)
    for _ in range(3):
        put(history, "alice")
    clock.advance(10)
    replay = history.replay("alice", 1, "e1")
    assert replay.messages == () and replay.lost is True
    assert history.replay("alice", 3, "e1").lost is False


def test_resume_of_an_unknown_client():
    history = make_history()
    replay = history.replay("new", 0, None)
    assert (replay.last_id, replay.messages, replay.lost) == (0, (), False)
    replay = history.replay("new2", 3, None)
    assert replay.lost is True


def test_resume_with_nothing_kept_and_an_old_epoch_is_lost():
    history = make_history(size=0)
    put(history, "alice")
    assert history.replay("alice", 1, "e1").lost is False
    assert history.replay("alice", 1, "zz").lost is True


# replay(): plain connect, no last_id

def test_plain_connect_gets_only_messages_never_written(five):
    five.mark_delivered("alice", "e1", 3)
    replay = five.replay("alice", None, None)
    assert ids(replay.messages) == [4, 5] and replay.lost is False


def test_plain_connect_is_never_lost():
    history = make_history(size=1)
    for _ in range(3):
        put(history, "alice")
    replay = history.replay("alice", None, None)
    assert ids(replay.messages) == [3] and replay.lost is False


def test_plain_connect_ignores_the_epoch_argument(five):
    replay = five.replay("alice", None, "whatever")
    assert ids(replay.messages) == [1, 2, 3, 4, 5] and replay.lost is False


def test_resume_ignores_what_was_delivered(five):
    five.mark_delivered("alice", "e1", 5)
    assert ids(five.replay("alice", 3, "e1").messages) == [4, 5]
    assert five.replay("alice", None, None).messages == ()


def test_mark_delivered_only_moves_forward_and_only_in_its_epoch(five):
    five.mark_delivered("alice", "e1", 4)
    five.mark_delivered("alice", "e1", 2)
    five.mark_delivered("alice", "other", 5)
    five.mark_delivered("nobody", "e1", 5)
    assert ids(five.replay("alice", None, None).messages) == [5]


# sweep()

def test_sweep_forgets_idle_empty_streams_and_a_new_epoch_starts():
    clock = Clock()
    history = make_history(clock, ttl=10)
    put(history, "alice")
    clock.advance(10)
    history.expire()
    assert history.sweep() == 1
    assert len(history) == 0
    message = put(history, "alice")
    assert (message.epoch, message.id) == ("e2", 1)


def test_a_client_resuming_after_its_stream_was_forgotten_is_lost():
    clock = Clock()
    history = make_history(clock, ttl=10)
    put(history, "alice")
    clock.advance(11)
    history.sweep()
    replay = history.replay("alice", 1, "e1")
    assert replay.epoch == "e2" and replay.last_id == 0 and replay.lost is True


def test_sweep_keeps_streams_with_messages():
    clock = Clock()
    history = make_history(clock, ttl=10)
    put(history, "alice")
    clock.advance(5)
    put(history, "bob")
    clock.advance(5)  # alice's message expired, bob's has 5 s left
    assert history.sweep() == 1
    assert len(history) == 1
    assert put(history, "bob").epoch == "e2"


def test_sweep_keeps_streams_held_by_a_connection():
    clock = Clock()
    history = make_history(clock, ttl=10)
    history.hold("alice")
    clock.advance(100)
    assert history.sweep() == 0
    history.release("alice")
    clock.advance(9)
    assert history.sweep() == 0
    clock.advance(1)
    assert history.sweep() == 1


def test_sweep_keeps_recently_touched_streams():
    clock = Clock()
    history = make_history(clock, ttl=10)
    history.replay("alice", None, None)
    clock.advance(9)
    history.replay("alice", None, None)
    clock.advance(9)
    assert history.sweep() == 0
    clock.advance(1)
    assert history.sweep() == 1


def test_release_without_hold_is_harmless():
    history = make_history()
    history.release("nobody")
    history.hold("alice")
    history.release("alice")
    history.release("alice")
    assert history.stream("alice").holders == 0


def test_past_the_memory_bound_idle_streams_are_forgotten_oldest_first():
    clock = Clock()
    history = make_history(clock, size=0, memory=10 * STREAM_COST)
    for n in range(30):
        put(history, f"c{n}")
        clock.advance(1)
    assert history.bytes_kept <= 10 * STREAM_COST and "c29" in history.streams() and "c0" not in history.streams()
    resumed = history.replay("c0", 1, "e1")
    assert resumed.lost is True and resumed.epoch != "e1"


def test_a_held_stream_is_never_forgotten_for_memory():
    history = make_history(size=0, memory=3 * STREAM_COST)
    history.hold("alice")
    for n in range(10):
        put(history, f"c{n}")
    assert "alice" in history.streams()


def test_the_time_order_holds_one_item_per_stream_that_keeps_messages():
    """Whatever the size bound drops, in turn or out of it, the time order does not grow with the messages sent."""
    history = make_history(size=3)
    turns = random.Random(7)
    for n in range(3000):
        put(history, f"c{n % 10}" if n < 1500 else f"c{turns.randrange(10)}")
        assert len(history._order) == sum(1 for stream in history.streams().values() if stream.kept)
    assert messages_bytes(history) == 30 * cost(10)


def test_full_streams_in_turn_keep_their_newest_and_expire_whole():
    clock = Clock()
    history = make_history(clock, size=2, ttl=60.0)
    for n in range(40):
        put(history, f"c{n % 4}")
    assert [ids(history.replay(f"c{k}", None, None).messages) for k in range(4)] == [[9, 10]] * 4
    assert len(history._order) == 4
    put(history, "c2")  # out of turn: c2's oldest goes at once, the oldest of all (c0's) stays
    assert ids(history.replay("c2", None, None).messages) == [10, 11] and messages_bytes(history) == 8 * cost(10)
    clock.advance(61)
    history.expire()
    assert messages_bytes(history) == 0 and not history._order


def test_messages_dropped_by_the_size_bound_are_not_held_until_their_ttl():
    clock = Clock()
    history = make_history(clock, size=1, ttl=600.0)
    put(history, "quiet")  # kept, and first in time order: what comes after waits behind it
    for n in range(5000):
        put(history, "a" if n % 2 else "b")
    assert len(history._order) == 3  # one item per stream: what the size bound dropped left no trace
    assert ids(history.replay("a", None, None).messages) == [2500]
    assert ids(history.replay("b", None, None).messages) == [2500]
    clock.advance(601)
    history.expire()
    assert messages_bytes(history) == 0
    assert history.replay("a", None, None).messages == ()
    assert history.replay("quiet", None, None).messages == ()


# The bounds against a plain model: every kept message in one list

STEPS = st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.integers(1, 60), st.sampled_from([0, 0, 1, 7, 30])),
                 max_size=80)


@settings(max_examples=150, deadline=None)
@given(STEPS, st.integers(1, 4))
def test_size_ttl_and_memory_bounds_keep_what_a_plain_list_of_every_message_keeps(steps, size):
    """
    Appends of any sizes to ids in any order, the clock moving on between
    them: the history keeps what a list of every kept message would, with
    each id's oldest dropped past ``size``, what is ``ttl`` old dropped, and
    the oldest of all (first to expire, first sent) evicted past the memory bound.
    """
    clock = Clock()
    memory = 4 * STREAM_COST + 5 * cost(30)
    history = make_history(clock, size=size, ttl=40.0, memory=memory)
    for client_id in "abcd":  # the streams first: their cost stays the same below
        history.stream(client_id)
    model: list[tuple[float, str, int, int]] = []  # (expires, client id, message id, frame size), in arrival order
    last = dict.fromkeys("abcd", 0)
    for client_id, frame, pause in steps:
        clock.advance(pause)
        model = [m for m in model if m[0] > clock.seconds()]
        last[client_id] += 1
        model.append((clock.seconds() + 40.0, client_id, last[client_id], frame))
        mine = [m for m in model if m[1] == client_id]
        if len(mine) > size:
            model.remove(mine[0])
        while 4 * STREAM_COST + sum(cost(m[3]) for m in model) > memory:
            model.remove(min(model, key=lambda m: m[0]))  # min: the first of the earliest expiry, by arrival
        put(history, client_id, frame)
        kept = {c: ids(history.replay(c, 0, None).messages) for c in "abcd"}
        assert kept == {c: [m[2] for m in model if m[1] == c] for c in "abcd"}
        assert messages_bytes(history) == sum(cost(m[3]) for m in model)
        assert len(history._order) <= 4
