"""Small helpers shared by the unit tests."""

from __future__ import annotations

import json

from twisted.internet import defer
from twisted.python.failure import Failure

from relayd.core.session import Delivery


def result_of(d: defer.Deferred):
    """The result of a Deferred that has already fired successfully."""
    results = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def failure_of(d: defer.Deferred) -> Failure:
    """The Failure of a Deferred that has already failed."""
    results = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    assert isinstance(results[0], Failure), f"expected a failure, got {results[0]!r}"
    return results[0]


class FakeConnection:
    """
    The one fake Connection (relayd.core.session): records what the core
    writes to it and answers each message with ``delivery``.
    """

    def __init__(self, delivery: Delivery = Delivery.WRITTEN):
        self.delivery = delivery
        self.frames: list[dict] = []
        self.replayed: list[int] = []
        self.closed: tuple[int, str] | None = None

    def send_welcome(self, frame: bytes) -> None:
        assert not self.frames, "the welcome must be the first frame"
        self.frames.append(json.loads(frame))

    def send_message(self, message, replay=False) -> Delivery:
        assert self.frames and self.frames[0]["type"] == "welcome", "a message before the welcome"
        if self.delivery is Delivery.REFUSED or self.closed:
            return Delivery.REFUSED
        self.frames.append(json.loads(message.frame))
        if replay:
            self.replayed.append(message.id)
        return self.delivery

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    @property
    def welcome(self) -> dict:
        return self.frames[0]

    @property
    def messages(self) -> list[dict]:
        return [f for f in self.frames if f["type"] == "message"]

    @property
    def ids(self) -> list[int]:
        return [f["id"] for f in self.messages]

    @property
    def contents(self) -> list:
        return [f["content"] for f in self.messages]
