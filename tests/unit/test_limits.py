"""The send-rate bucket and the expiry watch, with a fake clock."""

from __future__ import annotations

from twisted.internet.task import Clock

from relayd.core.auth import ExpiryWatch
from relayd.core.ratelimit import ALLOWED, EXCEEDED, LIMITED, SendLimit, TokenBucket


def test_bucket_allows_a_burst_then_the_rate():
    clock = Clock()
    bucket = TokenBucket(rate=2, burst=3, clock=clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    clock.advance(0.5)
    assert bucket.take() and not bucket.take()
    clock.advance(100)
    assert sum(bucket.take() for _ in range(10)) == 3


def test_bucket_survives_a_clock_going_backwards():
    clock = Clock()
    clock.advance(100)
    bucket = TokenBucket(rate=1, burst=1, clock=clock)
    assert bucket.take()
    clock.rightNow = 50
    assert not bucket.take()


def test_send_limit_refuses_then_closes_a_client_that_keeps_going():
    clock = Clock()
    limit = SendLimit(rate=1, burst=2, clock=clock)
    assert [limit.check() for _ in range(5)] == [ALLOWED, ALLOWED, LIMITED, LIMITED, EXCEEDED]


def test_send_limit_forgives_a_client_that_slows_down():
    clock = Clock()
    limit = SendLimit(rate=1, burst=2, clock=clock)
    results = []
    for _ in range(20):
        results.append(limit.check())
        results.append(limit.check())
        clock.advance(1.0)
    assert EXCEEDED not in results and LIMITED in results


def test_expiry_watch_fires_due_entries_once_in_order():
    clock = Clock()
    watch = ExpiryWatch(clock)
    fired = []
    watch.watch(5, lambda: fired.append("b"))
    watch.watch(3, lambda: fired.append("a"))
    watch.watch(None, lambda: fired.append("never"))
    assert watch.sweep() == 0
    clock.advance(4)
    assert watch.sweep() == 1 and fired == ["a"]
    clock.advance(10)
    assert watch.sweep() == 1 and fired == ["a", "b"]
    assert watch.sweep() == 0 and len(watch) == 0


def test_cancelled_entries_never_fire_and_do_not_pile_up():
    clock = Clock()
    watch = ExpiryWatch(clock)
    fired = []
    keep = watch.watch(1000, lambda: fired.append("kept"))
    for n in range(10000):
        watch.cancel(watch.watch(500 + n, lambda: fired.append("cancelled")))
    assert len(watch._heap) < 200 and len(watch) == 1
    watch.cancel(None)
    clock.advance(20000)
    watch.sweep()
    assert fired == ["kept"]
    watch.cancel(keep)
    assert len(watch) == 0
