"""
The SQLite store under the in-process broker (``--store PATH``).

The history stays in memory (relayd.history.MemoryHistory) and is the
truth while the node runs; the store is its journal on disk, so that a
stopped or killed node starts again with every id's epoch, sequence,
delivered mark, kept messages and remembered idempotent replies.

Changes are committed in *groups*: everything the history reports in one
reactor turn (and, while a commit is under way, everything reported until
it ends) is one SQLite transaction, written by one thread of the store's
own, in order. The in-process broker delivers and acknowledges a message
only once the group that holds it is committed (:meth:`Store.committed`),
so a crash never takes back an id a client has seen or a message that got
a 200.

What a crash can lose (SIGKILL, or the process dying any way): only the
last group, which holds nothing acknowledged and no message written to a
connection — messages whose POST had not been answered yet, and delivered
marks of the last few milliseconds (a client connecting *without*
``last_id`` may then receive again the messages written in those
milliseconds; one resuming with ``last_id`` never does). The file is in
WAL mode with ``synchronous=NORMAL``: a commit is not flushed to the disk
itself until the next checkpoint, so an operating-system crash or a power
cut can also lose the groups committed since then.

Tables::

    streams  (client_id PK, epoch, last_id, delivered, touched)
    messages (client_id, id, epoch, kept_at, frame)   -- insertion order is rowid order
    replies  (sender_id, key, expires, reply)          -- reply as JSON
"""

from __future__ import annotations

import json
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger

from relayd.core.history import MemoryHistory, Reply, addressed
from relayd.core.ports import BrokerUnavailable
from relayd.wire import Message

SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    client_id TEXT PRIMARY KEY, epoch TEXT NOT NULL, last_id INTEGER NOT NULL,
    delivered INTEGER NOT NULL, touched REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    client_id TEXT NOT NULL, id INTEGER NOT NULL, epoch TEXT NOT NULL,
    kept_at REAL NOT NULL, frame BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_id ON messages (client_id, id);
CREATE TABLE IF NOT EXISTS replies (
    sender_id TEXT NOT NULL, key TEXT NOT NULL, expires REAL NOT NULL, reply TEXT NOT NULL,
    PRIMARY KEY (sender_id, key)
);
"""

SLOW_COMMIT = 0.1
PRUNE_INTERVAL = 60.0

log = Logger(namespace="relayd.store")


Row = tuple[object, ...]
"""The values of one SQL statement's parameters."""
Done = Callable[[float, Exception | None], None]
"""Called after a commit with the seconds it took and the error, or None."""


class Timer(Protocol):
    """A call scheduled with ``callLater``."""

    def active(self) -> bool:
        """True until it is called or cancelled."""

    def cancel(self) -> None:
        """Do not call it."""


class Reactor(Protocol):
    """What the store needs of its reactor (a ``task.Clock`` serves with an :class:`InlineWriter`)."""

    def seconds(self) -> float:
        """Seconds since the epoch."""

    def callLater(self, delay: float, callable: Callable[..., object], *args: object, **kw: object) -> Timer:
        """Call ``callable`` in ``delay`` seconds."""

    def callFromThread(self, f: Callable[..., Any], *args: object, **kwargs: object) -> None:
        """Call ``f`` in the reactor thread."""


class Writer(Protocol):
    """Commits the store's groups (:class:`InlineWriter`, :class:`ThreadWriter`)."""

    def submit(self, group: Group, done: Done) -> None:
        """Commit ``group``; then ``done(seconds it took, error or None)``."""

    def close(self) -> defer.Deferred[None]:
        """Finish what is submitted and close the file."""


class StoreError(ValueError):
    """The store file cannot be opened or read (the message names it)."""


@dataclass
class Group:
    """One transaction's worth of changes, copied out of the history in the reactor thread."""

    streams: list[Row] = field(default_factory=list)
    forgotten: list[Row] = field(default_factory=list)
    kept: list[Row] = field(default_factory=list)
    dropped: list[Row] = field(default_factory=list)
    replies: list[Row] = field(default_factory=list)
    prune_before: float | None = None

    def apply(self, db: sqlite3.Connection) -> None:
        """Write this group in one transaction (deletions first: a new epoch may reuse an id)."""
        db.execute("BEGIN")
        try:
            db.executemany("DELETE FROM messages WHERE client_id = ? AND id = ? AND epoch = ?", self.dropped)
            db.executemany("DELETE FROM messages WHERE client_id = ?", self.forgotten)
            db.executemany("DELETE FROM streams WHERE client_id = ?", self.forgotten)
            db.executemany("INSERT OR REPLACE INTO messages (client_id, id, epoch, kept_at, frame)"
                           " VALUES (?, ?, ?, ?, ?)", self.kept)
            db.executemany("INSERT OR REPLACE INTO streams VALUES (?, ?, ?, ?, ?)", self.streams)
            db.executemany("INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?)", self.replies)
            if self.prune_before is not None:
                db.execute("DELETE FROM replies WHERE expires <= ?", (self.prune_before,))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


def connect(path: str) -> sqlite3.Connection:
    """Open (or create) the store file in WAL mode; StoreError if it cannot be used."""
    try:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.executescript(SCHEMA)
    except sqlite3.Error as error:
        raise StoreError(f"--store {path}: {error}") from None
    return db


class InlineWriter:
    """Commits each group at once, in the caller's thread (for tests on a fake clock)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def submit(self, group: Group, done: Done) -> None:
        """Commit ``group``; then ``done(seconds it took, error or None)``."""
        started = time.perf_counter()
        try:
            group.apply(self.db)
        except sqlite3.Error as error:
            done(time.perf_counter() - started, error)
            return
        done(time.perf_counter() - started, None)

    def close(self) -> defer.Deferred[None]:
        """Close the file."""
        self.db.close()
        return defer.succeed(None)


class ThreadWriter:
    """Commits groups in a thread of its own, one at a time, in order; reports back in the reactor thread."""

    def __init__(self, db: sqlite3.Connection, reactor: Reactor) -> None:
        self.db = db
        self.reactor = reactor
        self._queue: queue.SimpleQueue[tuple[Group | None, Done]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="relayd-store", daemon=True)
        self._thread.start()

    def submit(self, group: Group, done: Done) -> None:
        """Queue ``group``; ``done(seconds, error or None)`` is called in the reactor thread."""
        self._queue.put((group, done))

    def close(self) -> defer.Deferred[None]:
        """Finish what is queued, close the file (checkpointing the WAL) and end the thread."""
        closed: defer.Deferred[None] = defer.Deferred()
        self._queue.put((None, lambda *_: closed.callback(None)))
        return closed

    def _run(self) -> None:
        while True:
            group, done = self._queue.get()
            started = time.perf_counter()
            error: Exception | None = None
            try:
                if group is None:
                    self.db.close()
                else:
                    group.apply(self.db)
            except sqlite3.Error as failure:
                error = failure
            self.reactor.callFromThread(done, time.perf_counter() - started, error)
            if group is None:
                return


@dataclass
class CommitStats:
    """How long commits took (the store's cost, for logs and the benchmark)."""

    groups: int = 0
    seconds: float = 0.0
    slowest: float = 0.0

    def add(self, seconds: float) -> None:
        """Count one commit of ``seconds``."""
        self.groups += 1
        self.seconds += seconds
        self.slowest = max(self.slowest, seconds)


class Store:
    """
    The journal of a MemoryHistory in an SQLite file (relayd.history.Journal).

    :meth:`load` fills the history from the file and makes the store its
    journal; from then on every change is committed in groups.
    """

    def __init__(self, path: str, clock: Reactor, writer_factory: Callable[[sqlite3.Connection], Writer] | None = None) -> None:
        self.path = path
        self.clock = clock
        self._db = connect(path)
        self._writer_factory = writer_factory or (lambda db: ThreadWriter(db, clock))
        self._writer: Writer | None = None
        self._history: MemoryHistory | None = None
        self._changed: set[str] = set()
        self._kept: dict[tuple[str, int, str], Row] = {}
        self._dropped: list[Row] = []
        self._replies: list[Row] = []
        self._waiting: list[defer.Deferred[None]] = []
        self._in_flight: list[defer.Deferred[None]] | None = None
        self._flush_call: Timer | None = None
        self._last_prune = clock.seconds()
        self.stats = CommitStats()

    # Loading

    def load(self, history: MemoryHistory) -> None:
        """Fill ``history`` from the file (the bounds in force now apply) and journal its changes from now on."""
        self._history = history
        history.journal = self
        now = self.clock.seconds()
        try:
            streams = self._db.execute("SELECT client_id, epoch, last_id, delivered, touched FROM streams").fetchall()
            for client_id, epoch, last_id, delivered, touched in streams:
                history.restore_stream(client_id, epoch, last_id, delivered, touched)
            rows = self._db.execute("SELECT client_id, id, epoch, kept_at, frame FROM messages ORDER BY rowid")
            kept = 0
            for client_id, message_id, epoch, kept_at, frame in rows:
                history.restore_message(Message(message_id, epoch, client_id, bytes(frame)), kept_at + history.ttl)
                kept += 1
            replies = self._db.execute("SELECT sender_id, key, expires, reply FROM replies WHERE expires > ?", (now,))
            for sender_id, key, expires, reply in replies.fetchall():
                history.remember(sender_id or None, key, _reply(reply), expires)
        except sqlite3.Error as error:
            raise StoreError(f"--store {self.path}: {error}") from None
        self._replies.clear()  # read from the file: no need to write them again
        self._writer = self._writer_factory(self._db)
        self._schedule()  # what the bounds in force left out is deleted
        log.info("store {path}: {streams} ids, {kept} kept messages loaded", path=self.path, streams=len(streams),
                 kept=kept)

    # The journal

    def stream_changed(self, client_id: str) -> None:
        """Save ``client_id``'s stream (or its absence) with the next group."""
        self._changed.add(client_id)
        self._schedule()

    def kept(self, client_id: str, message: Message, expires: float) -> None:
        """Save ``message`` with the next group."""
        assert self._history is not None, "journaling starts with load()"
        _, epoch, message_id = addressed(message)
        kept_at = expires - self._history.ttl  # loaded again with the --history-ttl then in force
        self._kept[(client_id, message_id, epoch)] = (client_id, message_id, epoch, kept_at, message.frame)
        self._schedule()

    def dropped(self, client_id: str, message_id: int, epoch: str) -> None:
        """Delete the kept message with the next group (or never write it, if it is not written yet)."""
        if self._kept.pop((client_id, message_id, epoch), None) is None:
            self._dropped.append((client_id, message_id, epoch))
            self._schedule()

    def remembered(self, sender_id: str | None, key: str, reply: Reply, expires: float) -> None:
        """Save the reply with the next group."""
        self._replies.append((sender_id or "", key, expires, _reply_json(reply)))
        self._schedule()

    # Groups

    def committed(self) -> defer.Deferred[None]:
        """Fire once everything journaled so far is committed (at once if nothing is pending)."""
        d: defer.Deferred[None] = defer.Deferred()
        if self._pending():
            self._waiting.append(d)
            self._schedule()
        elif self._in_flight is not None:
            self._in_flight.append(d)
        else:
            d.callback(None)
        return d

    @defer.inlineCallbacks
    def close(self) -> Generator[defer.Deferred[None], None, None]:
        """Commit what is pending, then close the file."""
        yield self.committed()
        if self._writer is not None:
            yield self._writer.close()
            self._writer = None
        else:
            self._db.close()
        if self.stats.groups:
            log.info("store {path}: {groups} groups committed, {mean:.3f} ms each on average, the slowest {slowest:.1f} ms",
                     path=self.path, groups=self.stats.groups, mean=1000 * self.stats.seconds / self.stats.groups,
                     slowest=1000 * self.stats.slowest)

    def _pending(self) -> bool:
        return bool(self._changed or self._kept or self._dropped or self._replies)

    def _schedule(self) -> None:
        if self._flush_call is None and self._in_flight is None and self._writer is not None:
            self._flush_call = self.clock.callLater(0, self._flush)

    def _flush(self) -> None:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        if self._in_flight is not None or not self._pending():
            return
        group = self._group()
        self._in_flight, self._waiting = self._waiting, []
        assert self._writer is not None, "groups are written once loaded"
        self._writer.submit(group, self._done)

    def _group(self) -> Group:
        group = Group(kept=list(self._kept.values()), dropped=self._dropped, replies=self._replies)
        assert self._history is not None, "groups are made once loaded"
        streams = self._history.streams()
        for client_id in self._changed:
            stream = streams.get(client_id)
            if stream is None:
                group.forgotten.append((client_id,))
            else:
                group.streams.append((client_id, stream.epoch, stream.last_id, stream.delivered, stream.touched))
        now = self.clock.seconds()
        if now - self._last_prune >= PRUNE_INTERVAL:
            group.prune_before, self._last_prune = now, now
        self._changed, self._kept, self._dropped, self._replies = set(), {}, [], []
        return group

    def _done(self, seconds: float, error: Exception | None) -> None:
        self.stats.add(seconds)
        if seconds > SLOW_COMMIT:
            log.warn("store {path}: a commit took {ms:.0f} ms", path=self.path, ms=1000 * seconds)
        waiting, self._in_flight = self._in_flight or [], None
        if error is not None:
            log.error("store {path}: a commit failed: {error}", path=self.path, error=error)
        for d in waiting:
            if error is None:
                d.callback(None)
            else:
                d.errback(_unavailable(error))
        if self._pending():
            self._flush()


def _unavailable(error: Exception) -> BrokerUnavailable:
    return BrokerUnavailable(f"the store could not commit: {error}")


def _reply_json(reply: Reply) -> str:
    return json.dumps([reply.message_id, reply.sent, reply.queued, reply.dropped])


def _reply(text: str) -> Reply:
    message_id, sent, queued, dropped = json.loads(text)
    return Reply(message_id, tuple(sent), tuple(queued), tuple(dropped))
