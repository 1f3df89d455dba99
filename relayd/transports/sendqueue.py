"""
The frames a connection holds back while its transport's buffer is full.

Twisted calls a registered *streaming* producer's ``pauseProducing()`` while
a transport buffers more than 64 KiB, and ``resumeProducing()`` once it
drained; meanwhile frames wait here, counted, and past ``limit`` bytes the
connection is a slow consumer.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from relayd.core.session import HELD, REFUSED, WRITTEN, Delivery


class Sink(Protocol):
    """Where a :class:`SendQueue` sends what it does not hold (its connection's lifecycle)."""

    def write_now(self, frame: bytes) -> None:
        """Hand ``frame`` to the transport."""

    def overflowed(self) -> None:
        """More than the queue's limit is held: the connection is a slow consumer."""

    def held_written(self, item: object) -> None:
        """A held frame pushed with ``item`` has now been handed to the transport."""

    def stopped(self) -> None:
        """The transport is gone (``stopProducing``)."""


@implementer(IPushProducer)
class SendQueue:
    """
    Frames held back while Twisted's buffer is full, as a streaming producer.

    ``limit`` is the most bytes of live frames it may hold. Replayed frames
    are held without counting: they are kept in history anyway (the queue
    holds a reference, not a copy), and a long resume must not look like a
    slow consumer.
    """

    __slots__ = ("_sink", "_limit", "waiting", "held", "paused")

    def __init__(self, sink: Sink, limit: int):
        self._sink = sink
        self._limit = limit
        self.waiting: deque | None = None  # the frames held (made on the first: most connections never hold one)
        self.held = 0
        self.paused = False

    def push(self, frame: bytes, counted: bool = True, item: object = None) -> Delivery:
        """Write ``frame`` now, or hold it (``held_written(item)`` follows when it is written)."""
        if not self.paused and not self.waiting:
            self._sink.write_now(frame)
            return WRITTEN
        size = len(frame) if counted else 0
        if self.waiting is None:
            self.waiting = deque()
        self.waiting.append((frame, size, item))
        self.held += size
        if self.held > self._limit:
            self.clear()
            self._sink.overflowed()
            return REFUSED
        return HELD

    def clear(self) -> None:
        """Forget every held frame."""
        self.waiting = None
        self.held = 0

    def pauseProducing(self) -> None:
        """Twisted's buffer is full: hold frames from now on."""
        self.paused = True

    def resumeProducing(self) -> None:
        """Twisted's buffer drained: write what is held until it fills again."""
        self.paused = False
        frames = self.waiting
        while frames and not self.paused:
            frame, size, item = frames.popleft()
            self.held -= size
            self._sink.write_now(frame)
            if item is not None:
                self._sink.held_written(item)

    def stopProducing(self) -> None:
        """The connection is gone."""
        self.clear()
        self._sink.stopped()
