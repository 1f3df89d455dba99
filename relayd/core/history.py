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

The history also remembers, for ``ttl`` seconds, the reply given to each
message sent with an ``idempotency_key``, so that a retry gets the first
reply and sends nothing (:meth:`MemoryHistory.remember`, :meth:`MemoryHistory.recall`).

Every change is reported to a :class:`Journal`; the SQLite store
(relayd.brokers.store) is one, so that a restart loses nothing.
"""

from __future__ import annotations

import heapq
import math
import secrets
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from relayd.wire import Message

if TYPE_CHECKING:
    from relayd.core.ports import Clock

MESSAGE_OVERHEAD = 250
"""
Bytes a kept message costs beyond its frame: its entry's head and object
and its deque slot. Measured with tracemalloc: about 140 bytes whatever
the frame's size; the rest is margin for the allocator
(tests/unit/test_history_memory.py).
"""

STREAM_COST = 1500
"""Bytes one id's Stream costs: about 900 with its dict entry and deque (tracemalloc), 1,500 counting the fragmentation of many ids coming and going (RSS)."""

EVICT_TO = 0.9
"""Past the memory bound with only streams left to free, idle streams are forgotten down to this share of it."""

REPLY_OVERHEAD = 520
"""Bytes a remembered reply costs beyond its key and receiver ids (measured: 593 with one receiver and a 23-byte key)."""


def footprint(message: Message) -> int:
    """The memory ``message`` is charged while it is kept (see MESSAGE_OVERHEAD)."""
    return MESSAGE_OVERHEAD + len(message.frame)


_HEAD = struct.Struct("=qqdd")
"""
A kept entry's head: the message's id, its place in the history's arrival
order (a count over every id), when it expires, when its send arrived
(NaN: unknown).
"""
_ID = struct.Struct("=q")
_AGE = struct.Struct("=qd")
"""The arrival count and expiry in an entry's head, after its id."""
_pack_head, _HEAD_SIZE, _NAN = _HEAD.pack, _HEAD.size, math.nan  # (read once per kept message)


def _entry_id(entry: bytes) -> int:
    return _ID.unpack_from(entry)[0]  # type: ignore[no-any-return]


def _entry_cost(entry: bytes) -> int:
    return MESSAGE_OVERHEAD + len(entry) - _HEAD_SIZE


_Oldest = tuple[float, int, str]
"""An item of the history's time order: expiry and arrival count of a stream's oldest kept message, and its id."""


def new_epoch() -> str:
    """A fresh random epoch name (8 characters, URL- and header-safe)."""
    return secrets.token_urlsafe(6)


@dataclass(slots=True)
class Reply:
    """
    The outcome of one message: its id and its receivers by outcome (and the
    reply remembered for an ``idempotency_key``). Treat it as immutable: it
    is not frozen because one is made per message, and a frozen dataclass
    is several times slower to make.
    """

    message_id: str
    sent: tuple[str, ...] = ()
    queued: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()

    @property
    def cost(self) -> int:
        """Bytes this reply is charged while it is remembered."""
        return REPLY_OVERHEAD + sum(len(r) + 60 for r in self.sent + self.queued + self.dropped)


@dataclass(eq=False)
class _Remembered:
    sender_id: str | None
    key: str
    reply: Reply
    expires: float
    cost: int = 0
    gone: bool = False


class Journal(Protocol):
    """What a durable store is told of every change to the history."""

    def stream_changed(self, client_id: str) -> None:
        """``client_id``'s epoch, last id, delivered mark or touch time changed, or it was forgotten."""

    def kept(self, client_id: str, message: Message, expires: float) -> None:
        """``message`` is now kept until ``expires``."""

    def dropped(self, client_id: str, message_id: int, epoch: str) -> None:
        """The kept message ``message_id`` of ``client_id`` in ``epoch`` is gone (size, TTL or memory)."""

    def remembered(self, sender_id: str | None, key: str, reply: Reply, expires: float) -> None:
        """A reply is remembered until ``expires``."""


@dataclass(eq=False, slots=True)
class Stream:
    """
    The sequence state of one client id, and its kept messages, oldest
    first: each one bytes object, its id, arrival count, expiry and arrival
    time packed before its frame (their epoch is the stream's).

    Bytes are not containers, so the cyclic collector does not track them:
    a full history (100,000 messages with 1,000 ids at the defaults) costs
    its full passes a glance at each, where an object per message made
    each of them walk it all (a stall of 60 to 150 ms every two seconds
    under load), and untracked tuples still cost 30 ms a pass.
    """

    epoch: str
    last_id: int = 0
    delivered: int = 0
    holders: int = 0
    touched: float = 0.0
    kept: deque[bytes] = field(default_factory=deque)


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


def sequence(message: Message) -> int:
    """The id of a message to one receiver (only a broadcast has none, and it is never kept)."""
    assert message.id is not None, "a broadcast has no id"
    return message.id


def addressed(message: Message) -> tuple[str, str, int]:
    """The receiver, epoch and id of a message to one receiver."""
    assert message.receiver_id is not None and message.epoch is not None, "a broadcast has no receiver"
    return message.receiver_id, message.epoch, sequence(message)


def owed(current: str, last: int, delivered: int, kept: list[Message], last_id: int | None, epoch: str | None) -> Replay:
    """
    The replay rule of the protocol, for any store.

    ``current``/``last``/``delivered`` are the id's epoch, highest assigned id
    and delivered watermark, ``kept`` its kept messages in order; ``last_id``
    and ``epoch`` are what the client asked to resume from.
    """
    if last_id is None:
        return Replay(current, last, tuple(m for m in kept if sequence(m) > delivered), False)
    if (epoch is not None and epoch != current) or last_id > last:
        return Replay(current, last, tuple(kept), True)
    after = tuple(m for m in kept if sequence(m) > last_id)
    first = sequence(after[0]) if after else last + 1
    return Replay(current, last, after, first != last_id + 1)


class MemoryHistory:
    """Streams for every client id, kept in this process."""

    def __init__(
        self,
        clock: Clock,
        size: int = 100,
        ttl: float = 600.0,
        memory: int = 256 * 1024 * 1024,
        make_epoch: Callable[[], str] = new_epoch,
        journal: Journal | None = None,
    ):
        self._clock = clock
        self.size = size
        self.ttl = ttl
        self.memory = memory
        self._make_epoch = make_epoch
        self.journal = journal  # None: in memory only (nothing to tell; no call per change)
        self._streams: dict[str, Stream] = {}
        # The time order: a heap with one item per stream that keeps messages, keyed by its
        # oldest message's expiry and arrival count when the item was made. The size bound
        # drops a stream's oldest without touching it, so an item may be stale: its key is
        # then earlier than the stream's oldest, and it is made anew when it comes to the top
        # (_oldest). Each message costs the order nothing; each stream, one item.
        self._order: list[_Oldest] = []
        self._arrivals = 0
        # No kept message expires before this: the first item's expiry, or earlier, so expire() looks again.
        self._horizon = math.inf
        self._replies: dict[tuple[str | None, str], _Remembered] = {}
        self._reply_order: deque[_Remembered] = deque()
        self.bytes_kept = 0

    def stream(self, client_id: str, now: float | None = None) -> Stream:
        """The stream of ``client_id``, created with a new epoch if needed, touched ``now``."""
        stream = self._streams.get(client_id)
        if stream is None:
            stream = self._streams[client_id] = Stream(epoch=self._make_epoch())
            self.bytes_kept += STREAM_COST
        stream.touched = self._clock.seconds() if now is None else now
        if self.journal is not None:
            self.journal.stream_changed(client_id)
        return stream

    def streams(self) -> dict[str, Stream]:
        """Every stream, by client id (read only: for a store to save)."""
        return self._streams

    def append(self, client_id: str, make: Callable[[str, str, int], Message]) -> Message:
        """
        Assign ``client_id``'s next id and keep the message ``make(client_id, epoch, id)``.

        Returns the message; it is kept only when ``size`` > 0.
        """
        now = self._clock.seconds()
        if now >= self._horizon or self._reply_order:
            self.expire()
        stream = self._streams.get(client_id)
        if stream is None or self.journal is not None:
            stream = self.stream(client_id, now)
        else:  # what stream() does for a known id without a journal, inline: once per message
            stream.touched = now
        stream.last_id += 1
        message = make(client_id, stream.epoch, stream.last_id)
        if self.size > 0:
            expires = now + self.ttl
            if self.journal is not None:
                self.journal.kept(client_id, message, expires)
            self._keep(stream, client_id, message, expires)
        else:
            self._evict_for_memory()
        return message

    def _keep(self, stream: Stream, client_id: str, message: Message, expires: float) -> None:
        # Once per message: the entry packed and the memory check inline, the steady state's drop without
        # _drop_oldest's call, one update of bytes_kept (a kept message is numbered: append and
        # restore_message give it its id). The time order is touched only when the stream was empty.
        kept, frame, received = stream.kept, message.frame, message.received
        arrival = self._arrivals = self._arrivals + 1
        if not kept:
            heapq.heappush(self._order, (expires, arrival, client_id))
            if expires < self._horizon:
                self._horizon = expires
        kept.append(_pack_head(message.id, arrival, expires, _NAN if received is None else received) + frame)
        added = MESSAGE_OVERHEAD + len(frame)
        count = len(kept)
        if count > self.size:
            if count == self.size + 1 and self.journal is None:
                # The steady state of full streams: the oldest goes (its item in the time order goes stale).
                # (With a journal, which must be told of the drop, _drop_oldest does it.)
                added -= _entry_cost(kept.popleft())
            else:
                while len(kept) > self.size:
                    self._drop_oldest(client_id, stream)
        self.bytes_kept += added
        if self.bytes_kept > self.memory:
            self._evict_for_memory()

    def keeps(self, message: Message) -> bool:
        """
        True while ``message`` is kept for its receiver: a message can be
        evicted the moment it is appended (``--history-memory``), and then
        it is not ``queued`` but ``dropped``.
        """
        stream = self._streams.get(message.receiver_id) if message.receiver_id is not None else None
        if stream is None or not stream.kept or stream.epoch != message.epoch or message.id is None:
            return False
        # Ids are kept in order and leave oldest first; a message just appended is kept unless it already left.
        return _entry_id(stream.kept[0]) <= message.id <= _entry_id(stream.kept[-1])

    def restore_stream(self, client_id: str, epoch: str, last_id: int, delivered: int, touched: float) -> None:
        """Load one stream's state from a store (before any other use)."""
        self._streams[client_id] = Stream(epoch=epoch, last_id=last_id, delivered=delivered, touched=touched)
        self.bytes_kept += STREAM_COST

    def restore_message(self, message: Message, expires: float) -> None:
        """
        Load one kept message from a store, oldest first, after its stream:
        the size, TTL and memory bounds in force now apply (what they leave
        out is reported to the journal as dropped).
        """
        client_id, epoch, message_id = addressed(message)
        stream = self._streams.get(client_id)
        if stream is None or stream.epoch != epoch or self.size == 0 or expires <= self._clock.seconds():
            if self.journal is not None:
                self.journal.dropped(client_id, message_id, epoch)
            return
        self._keep(stream, client_id, message, expires)

    def remember(self, sender_id: str | None, key: str, reply: Reply, expires: float | None = None,
                 replace: bool = False) -> None:
        """
        Remember the reply to a message sent with ``key`` by ``sender_id``,
        for ``ttl`` seconds; ``replace`` puts the final reply in place of a
        provisional one (kept with the same expiry).
        """
        entry = self._replies.get((sender_id, key))
        if entry is not None:
            if replace and not entry.gone:
                cost = reply.cost + len(key)
                self.bytes_kept += cost - entry.cost
                entry.reply, entry.cost = reply, cost
                if self.journal is not None:
                    self.journal.remembered(sender_id, key, reply, entry.expires)
            return
        if expires is None:
            expires = self._clock.seconds() + self.ttl
        if expires <= self._clock.seconds():
            return
        entry = _Remembered(sender_id, key, reply, expires, reply.cost + len(key))
        self._replies[(sender_id, key)] = entry
        self._reply_order.append(entry)
        self.bytes_kept += entry.cost
        if self.journal is not None:
            self.journal.remembered(sender_id, key, reply, expires)
        self._evict_for_memory()

    def recall(self, sender_id: str | None, key: str) -> Reply | None:
        """The reply remembered for ``key`` from ``sender_id``, if it has not expired."""
        self.expire()
        entry = self._replies.get((sender_id, key))
        return None if entry is None else entry.reply

    def replay(self, client_id: str, last_id: int | None, epoch: str | None) -> Replay:
        """
        What a client connecting as ``client_id`` is owed.

        With ``last_id`` (and optionally the ``epoch`` it was seen in): every
        kept message after it, and whether anything it has not seen is gone.
        Without it: every kept message not yet written to any connection.
        """
        self.expire()
        stream = self.stream(client_id)
        return owed(stream.epoch, stream.last_id, stream.delivered, self._messages(client_id, stream), last_id, epoch)

    @staticmethod
    def _messages(client_id: str, stream: Stream) -> list[Message]:
        """
        ``stream``'s kept messages; those already written to a connection
        without ``received``, so that their delivery time is not observed twice.
        """
        epoch, delivered, head = stream.epoch, stream.delivered, _HEAD.size
        messages = []
        for entry in stream.kept:
            message_id, _, _, received = _HEAD.unpack_from(entry)
            known = message_id > delivered and not math.isnan(received)
            messages.append(Message(message_id, epoch, client_id, entry[head:], received=received if known else None))
        return messages

    def mark_delivered(self, client_id: str, epoch: str, message_id: int) -> None:
        """Record that ``message_id`` was written to a connection of ``client_id``."""
        stream = self._streams.get(client_id)
        if stream is not None and stream.epoch == epoch and message_id > stream.delivered:
            stream.delivered = message_id
            if self.journal is not None:
                self.journal.stream_changed(client_id)

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
        """Drop expired messages and replies."""
        now = self._clock.seconds()
        if now >= self._horizon:
            while (oldest := self._oldest()) is not None and oldest[0] <= now:
                self._drop_first()
            self._horizon = self._order[0][0] if self._order else math.inf
        while self._reply_order and (self._reply_order[0].gone or self._reply_order[0].expires <= now):
            self._forget_reply(self._reply_order.popleft())

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
            self._forget(client_id)
        return len(idle)

    def _forget(self, client_id: str) -> None:
        del self._streams[client_id]
        self.bytes_kept -= STREAM_COST
        if self.journal is not None:
            self.journal.stream_changed(client_id)

    def _forget_idle_streams(self) -> None:
        """
        Over the memory bound with no message left to evict: forget the idle
        streams touched longest ago (their ids start a new epoch when seen
        again, so a resume across it says ``lost``).
        """
        idle = sorted((stream.touched, client_id) for client_id, stream in self._streams.items()
                      if not stream.kept and not stream.holders)
        for _, client_id in idle:
            if self.bytes_kept <= self.memory * EVICT_TO:
                break
            self._forget(client_id)

    def __len__(self) -> int:
        return len(self._streams)

    def _evict_for_memory(self) -> None:
        while self.bytes_kept > self.memory:
            oldest = self._oldest()
            if oldest is not None and (not self._reply_order or oldest[0] <= self._reply_order[0].expires):
                self._drop_first()
            elif self._reply_order:
                self._forget_reply(self._reply_order.popleft())
            else:
                break
        self._horizon = self._order[0][0] if self._order else math.inf
        if self.bytes_kept > self.memory:
            self._forget_idle_streams()

    def _forget_reply(self, entry: _Remembered) -> None:
        if not entry.gone:
            entry.gone = True
            self.bytes_kept -= entry.cost
            del self._replies[(entry.sender_id, entry.key)]

    def _oldest(self) -> _Oldest | None:
        """
        The first item of the time order, made anew until it stands for its
        stream's oldest kept message: then that message is the oldest of all
        (every other item's key is at most its stream's oldest's). None when
        nothing is kept.
        """
        order = self._order
        while order:
            first = order[0]
            stream = self._streams.get(first[2])
            if stream is None or not stream.kept:  # (a stream is forgotten only when empty: defensive)
                heapq.heappop(order)
                continue
            arrival, expires = _AGE.unpack_from(stream.kept[0], _ID.size)
            if arrival == first[1]:
                return first
            heapq.heapreplace(order, (expires, arrival, first[2]))
        return None

    def _drop_first(self) -> None:
        """Drop the oldest kept message of all (``_oldest`` found it first in the time order)."""
        client_id = self._order[0][2]
        stream = self._streams[client_id]
        self._drop_oldest(client_id, stream)
        if stream.kept:
            arrival, expires = _AGE.unpack_from(stream.kept[0], _ID.size)
            heapq.heapreplace(self._order, (expires, arrival, client_id))
        else:
            heapq.heappop(self._order)

    def _drop_oldest(self, client_id: str, stream: Stream) -> None:
        """Let the oldest kept message of ``stream`` go."""
        entry = stream.kept.popleft()
        self.bytes_kept -= _entry_cost(entry)
        if self.journal is not None:
            self.journal.dropped(client_id, _entry_id(entry), stream.epoch)
