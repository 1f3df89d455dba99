"""Waiting, on an injected clock, for a condition (used by the graceful stop)."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer, task

POLL = 0.05


@defer.inlineCallbacks
def wait_until(clock, done: Callable[[], bool], timeout: float, poll: float = POLL):
    """Fire with True once ``done()`` is true, or with False after ``timeout`` seconds."""
    deadline = clock.seconds() + timeout
    while not done():
        if clock.seconds() >= deadline:
            return False
        yield task.deferLater(clock, poll, lambda: None)
    return True
