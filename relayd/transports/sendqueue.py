"""
The per-connection send queue: frames held back while Twisted's buffer is
full, bounded by ``--send-buffer`` (past it the connection is a slow consumer).
"""

from __future__ import annotations

from collections import deque

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from relayd.core.registry import HELD


@implementer(IPushProducer)
class SendQueue:
    """
    Frames a connection holds back while Twisted's buffer is full.

    ``limit`` is the most bytes of live frames it may hold; past it
    ``on_overflow`` runs. Replayed frames are held without counting: they
    are kept in history anyway (the queue holds a reference, not a copy),
    and a long resume must not look like a slow consumer. ``size`` tells how
    many bytes a frame holds (``len`` by default).
    """

    def __init__(self, write, limit: int, on_overflow, size=len, on_written=None):
        self._write = write
        self._limit = limit
        self._size = size
        self._on_overflow = on_overflow
        self._on_written = on_written
        self._frames: deque = deque()
        self.held = 0
        self.paused = False

    def push(self, frame, counted: bool = True, item=None) -> bool | str:
        """
        Write ``frame`` now (True), or hold it (:data:`~relayd.core.registry.HELD`;
        ``on_written(item)`` runs when it is written); False when the limit
        is passed.
        """
        if not self.paused and not self._frames:
            self._write(frame)
            return True
        size = self._size(frame) if counted else 0
        self._frames.append((frame, size, item))
        self.held += size
        if self.held > self._limit:
            self.clear()
            self._on_overflow()
            return False
        return HELD

    def clear(self) -> None:
        """Forget every held frame."""
        self._frames.clear()
        self.held = 0

    def pauseProducing(self) -> None:
        """Twisted's buffer is full: hold frames from now on."""
        self.paused = True

    def resumeProducing(self) -> None:
        """Twisted's buffer drained: write what is held until it fills again."""
        self.paused = False
        while self._frames and not self.paused:
            frame, size, item = self._frames.popleft()
            self.held -= size
            self._write(frame)
            if item is not None and self._on_written is not None:
                self._on_written(item)

    def stopProducing(self) -> None:
        """The connection is gone."""
        self.clear()


def prepared_size(prepared) -> int:
    """The bytes an Autobahn ``PreparedMessage`` puts on the wire."""
    return len(prepared.payloadHybi)
