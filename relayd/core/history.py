"""
Per-id sequence numbers and kept messages, in memory, with an injected clock.

Each client id has a *stream*: its epoch (a random name for the current
sequence), the last id assigned in it, the highest id written to some
connection (``delivered``), and the messages kept for offline delivery and
resume. Messages are kept up to ``size`` per id, for ``ttl`` seconds, and up
to ``memory`` bytes over all ids, the oldest evicted first.

A stream with nothing kept, no connection and no activity for ``ttl``
seconds is forgotten; when that id is seen again it starts a new epoch, so
an ``(epoch, id)`` pair is never reused.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from relayd.wire import Message


def new_epoch() -> str:
    """A fresh random epoch name (8 characters, URL- and header-safe)."""
    return secrets.token_urlsafe(6)


@dataclass(eq=False)
class _Kept:
    client_id: str
    message: Message | None
    expires: float
    gone: bool = False


@dataclass(eq=False)
class Stream:
    """The sequence state of one client id."""

    epoch: str
    last_id: int = 0
    delivered: int = 0
    holders: int = 0
    touched: float = 0.0
    kept: deque = field(default_factory=deque)


@dataclass(frozen=True)
class Replay:
    """
    What a connecting client is owed.

    ``messages`` are the kept messages to send after the welcome, in order;
    ``lost`` is true when the client asked to resume and something it has not
    seen can no longer be sent.
    """

    epoch: str
    last_id: int
    messages: tuple[Message, ...]
    lost: bool


def owed(current: str, last: int, delivered: int, kept: list[Message], last_id: int | None, epoch: str | None) -> Replay:
    """
    The replay rule of the protocol, for any store.

    ``current``/``last``/``delivered`` are the id's epoch, highest assigned id
    and delivered watermark, ``kept`` its kept messages in order; ``last_id``
    and ``epoch`` are what the client asked to resume from.
    """
    if last_id is None:
        return Replay(current, last, tuple(m for m in kept if m.id > delivered), False)
    if (epoch is not None and epoch != current) or last_id > last:
        return Replay(current, last, tuple(kept), True)
    after = tuple(m for m in kept if m.id > last_id)
    first = after[0].id if after else last + 1
    return Replay(current, last, after, first != last_id + 1)


class MemoryHistory:
    """Streams for every client id, kept in this process."""

    def __init__(
        self,
        clock,
        size: int = 100,
        ttl: float = 600.0,
        memory: int = 256 * 1024 * 1024,
        make_epoch: Callable[[], str] = new_epoch,
    ):
        self._clock = clock
        self.size = size
        self.ttl = ttl
        self.memory = memory
        self._make_epoch = make_epoch
        self._streams: dict[str, Stream] = {}
        self._order: deque[_Kept] = deque()
        self.bytes_kept = 0

    def stream(self, client_id: str) -> Stream:
        """The stream of ``client_id``, created with a new epoch if needed."""
        stream = self._streams.get(client_id)
        if stream is None:
            stream = self._streams[client_id] = Stream(epoch=self._make_epoch())
        stream.touched = self._clock.seconds()
        return stream

    def append(self, client_id: str, make: Callable[[str, int], Message]) -> Message:
        """
        Assign ``client_id``'s next id and keep the message ``make(epoch, id)``.

        Returns the message; it is kept only when ``size`` > 0.
        """
        self.expire()
        stream = self.stream(client_id)
        stream.last_id += 1
        message = make(stream.epoch, stream.last_id)
        if self.size > 0:
            kept = _Kept(client_id, message, self._clock.seconds() + self.ttl)
            stream.kept.append(kept)
            self._order.append(kept)
            self.bytes_kept += message.size
            while len(stream.kept) > self.size:
                self._drop(stream.kept.popleft())
            self._evict_for_memory()
        return message

    def replay(self, client_id: str, last_id: int | None, epoch: str | None) -> Replay:
        """
        What a client connecting as ``client_id`` is owed.

        With ``last_id`` (and optionally the ``epoch`` it was seen in): every
        kept message after it, and whether anything it has not seen is gone.
        Without it: every kept message not yet written to any connection.
        """
        self.expire()
        stream = self.stream(client_id)
        kept = [entry.message for entry in stream.kept]
        return owed(stream.epoch, stream.last_id, stream.delivered, kept, last_id, epoch)

    def mark_delivered(self, client_id: str, epoch: str, message_id: int) -> None:
        """Record that ``message_id`` was written to a connection of ``client_id``."""
        stream = self._streams.get(client_id)
        if stream is not None and stream.epoch == epoch and message_id > stream.delivered:
            stream.delivered = message_id

    def hold(self, client_id: str) -> Stream:
        """Keep ``client_id``'s stream while a connection has it open."""
        stream = self.stream(client_id)
        stream.holders += 1
        return stream

    def release(self, client_id: str) -> None:
        """Undo one ``hold``."""
        stream = self._streams.get(client_id)
        if stream is not None:
            stream.holders = max(0, stream.holders - 1)
            stream.touched = self._clock.seconds()

    def expire(self) -> None:
        """Drop expired messages and forget idle, empty streams."""
        now = self._clock.seconds()
        while self._order and (self._order[0].gone or self._order[0].expires <= now):
            entry = self._order.popleft()
            if not entry.gone:
                self._remove_oldest(entry)

    def sweep(self) -> int:
        """Expire messages and forget idle streams; returns how many were forgotten."""
        self.expire()
        now = self._clock.seconds()
        idle = [
            client_id
            for client_id, stream in self._streams.items()
            if not stream.kept and not stream.holders and stream.touched + self.ttl <= now
        ]
        for client_id in idle:
            del self._streams[client_id]
        return len(idle)

    def __len__(self) -> int:
        return len(self._streams)

    def _evict_for_memory(self) -> None:
        while self.bytes_kept > self.memory and self._order:
            entry = self._order.popleft()
            if not entry.gone:
                self._remove_oldest(entry)

    def _remove_oldest(self, entry: _Kept) -> None:
        stream = self._streams[entry.client_id]
        self._drop(stream.kept.popleft())

    def _drop(self, entry: _Kept) -> None:
        # The entry may wait in _order until the TTL passes: let its message go now.
        entry.gone = True
        self.bytes_kept -= entry.message.size
        entry.message = None
