"""A node's claims and floors (relayd.brokers.redis.claims), without I/O."""

from __future__ import annotations

from relayd.brokers.redis.claims import Claims


def test_claims_count_per_id_and_are_forgotten_with_their_floor():
    claims = Claims()
    assert claims.add("alice", 1) == 1 and claims.add("alice", 2) == 2
    assert claims.settle("alice", 1, True, 5) and claims.settle("alice", 2, True, 6)
    claims.replayed("alice", "e1", 7)
    assert claims.floored() == ["alice"] and claims.floor("alice", "e1") == 7
    assert claims.forget("alice", 1) == 1 and "alice" in claims
    assert claims.forget("alice", 2) == 0 and "alice" not in claims and claims.floored() == []


def test_the_floor_is_the_lowest_replay_in_its_epoch_and_zero_in_another():
    claims = Claims()
    claims.add("bob", 1)
    claims.replayed("bob", "e1", 9)
    claims.replayed("bob", "e1", 12)
    assert claims.floor("bob", "e1") == 9 and claims.floor("bob", "e2") == 0
    claims.replayed("bob", "e2", 3)
    assert claims.floor("bob", "e2") == 3
    claims.replayed("carol", "e1", 4)  # no claim: no floor
    assert "carol" not in claims.floored()


def test_a_refused_claim_is_forgotten():
    claims = Claims()
    claims.add("dave", 1)
    assert claims.settle("dave", 1, False, 0) is False and "dave" not in claims


def test_a_takeover_keeps_a_newer_claim_or_one_still_waiting_which_must_then_beat_it():
    claims = Claims()
    claims.add("erin", 1)
    claims.settle("erin", 1, True, 3)
    claims.add("erin", 2)
    claims.settle("erin", 2, True, 8)
    assert claims.survivor("erin", 5) == 2
    claims.add("erin", 3)  # waiting for its answer
    assert claims.survivor("erin", 9) == 3
    assert claims.settle("erin", 3, True, 7) is False  # overtaken by takeover 9
    assert claims.survivor("fay", 1) is None
