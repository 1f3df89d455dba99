"""
The live connections of this node, keyed by client id, and their delivery state.

A :class:`Session` stands between the relay core and one transport
connection (WebSocket or SSE). It guarantees the per-connection promises of
the protocol whatever the broker does: messages reach the connection in
strictly increasing id order, never twice, and nothing is written before the
welcome (messages that arrive while the session is opening are held and
written right after the replay).

The :class:`Registry` holds every session, admitted or open, and applies the
duplicate policy. It has no I/O and no clock.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from relayd.wire import Message

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_REPLACED = 4000
CLOSE_TOKEN_EXPIRED = 4001
CLOSE_SLOW_CONSUMER = 4008
CLOSE_EPOCH_CHANGED = 4009

POLICIES = ("replace", "fanout", "reject")

HELD = "held"
"""What ``Connection.send_message`` returns for a message it accepted but holds back (true, but not written)."""


class Connection(Protocol):
    """What a transport adapter offers the relay core."""

    def send_welcome(self, frame: bytes) -> None:
        """Write the welcome frame."""

    def send_message(self, message: Message, replay: bool = False) -> bool | str:
        """
        Write a message frame: True when written, :data:`HELD` when accepted
        but held back (the connection calls :meth:`Session.written` once it
        is written), False when the connection cannot take it.

        ``replay`` marks a kept message sent after the welcome: it does not
        count against the connection's ``--send-buffer``.
        """

    def close(self, code: int, reason: str) -> None:
        """Close the connection with a WebSocket close code (SSE: end the stream)."""


_keys = itertools.count(1)


class Session:
    """One connection's place in the registry and its delivery state."""

    def __init__(self, client_id: str, transport: str):
        self.client_id = client_id
        self.transport = transport
        self.key = next(_keys)
        self.connection: Connection | None = None
        self.replay = None  # what it is owed, read by Relay.prepare before the transport is up
        self.epoch: str | None = None
        self.last_sent = 0
        self.open = False
        self.closed = False
        self.ended: tuple[int, str] | None = None
        self.on_written: Callable[[Session, Message], None] = lambda session, message: None
        self._held: list[Message] = []

    def offer(self, message: Message) -> bool:
        """
        Deliver ``message`` to this connection.

        While the session is opening the message is held; afterwards it is
        written unless it was already written or the connection is closed.
        Returns True when the message was written or held.
        """
        if self.closed:
            return False
        if not self.open:
            self._held.append(message)
            return True
        return self._write(message)

    def start(self, connection: Connection, epoch: str, welcome: bytes, replay: tuple[Message, ...]) -> None:
        """Write the welcome, the replay and what arrived meanwhile; then go live."""
        self.connection = connection
        self.epoch = epoch
        connection.send_welcome(welcome)
        self.open = True
        held, self._held = self._held, []
        for message in replay:
            self._write(message, replay=True)
        for message in held:
            if not self.closed:
                self._write(message)

    def close(self, code: int, reason: str) -> None:
        """
        Close the connection (if it is open) and stop delivering to it.

        ``ended`` keeps the code and reason for a connection that is not
        open yet: :meth:`Relay.open <relayd.core.relay.Relay.open>` closes it with them.
        """
        if self.closed:
            return
        self.closed = True
        self.ended = (code, reason)
        self._held = []
        if self.connection is not None:
            self.connection.close(code, reason)

    def _write(self, message: Message, replay: bool = False) -> bool:
        if message.id is not None:
            if message.epoch != self.epoch:
                self.close(CLOSE_EPOCH_CHANGED, "epoch changed: reconnect with last_id and epoch")
                return False
            if message.id <= self.last_sent:
                return False
            self.last_sent = message.id
        accepted = self.connection.send_message(message, replay)
        if not accepted:
            return False
        if accepted is not HELD:
            self.on_written(self, message)
        return True

    def written(self, message: Message) -> None:
        """A message the connection held back has now been written."""
        if not self.closed:
            self.on_written(self, message)


class Refused(Exception):
    """A connection refused before the upgrade, with its HTTP status."""

    def __init__(self, status: int, error: str, detail: str):
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail


class Registry:
    """Every session of this node, by client id, under one duplicate policy."""

    def __init__(self, policy: str = "replace", max_per_id: int = 8, max_connections: int = 10000):
        if policy not in POLICIES:
            raise ValueError(f"duplicate policy must be one of {', '.join(POLICIES)}")
        self.policy = policy
        self.max_per_id = max_per_id
        self.max_connections = max_connections
        self._by_id: dict[str, list[Session]] = {}
        self.counts: Counter = Counter()

    def __len__(self) -> int:
        """The number of sessions (connections, open or opening)."""
        return sum(self.counts.values())

    @property
    def clients(self) -> int:
        """The number of distinct client ids with a session."""
        return len(self._by_id)

    def sessions(self, client_id: str) -> list[Session]:
        """The sessions of ``client_id`` (a copy)."""
        return list(self._by_id.get(client_id, ()))

    def all_sessions(self) -> list[Session]:
        """Every session (a copy)."""
        return [s for sessions in self._by_id.values() for s in sessions]

    def check(self, client_id: str) -> None:
        """Raise Refused if a new connection for ``client_id`` may not be admitted."""
        existing = self._by_id.get(client_id, ())
        takes_a_place = not (self.policy == "replace" and existing)
        if takes_a_place and len(self) >= self.max_connections:
            raise Refused(503, "too_many_connections", "the relay is at its connection limit; retry later")
        if self.policy == "reject" and existing:
            raise Refused(409, "duplicate", f"'{client_id}' is already connected")
        if self.policy == "fanout" and len(existing) >= self.max_per_id:
            raise Refused(409, "duplicate", f"'{client_id}' already has {len(existing)} connections, the most allowed")

    def add(self, session: Session) -> list[Session]:
        """
        Admit ``session``; return the older sessions it replaces.

        The caller closes the replaced sessions (with 4000).
        """
        self.check(session.client_id)
        replaced = self.sessions(session.client_id) if self.policy == "replace" else []
        for old in replaced:
            self.remove(old)
        self._by_id.setdefault(session.client_id, []).append(session)
        self.counts[session.transport] += 1
        return replaced

    def remove(self, session: Session) -> bool:
        """Forget ``session``; False if it was not here."""
        sessions = self._by_id.get(session.client_id)
        if not sessions or session not in sessions:
            return False
        sessions.remove(session)
        if not sessions:
            del self._by_id[session.client_id]
        self.counts[session.transport] -= 1
        return True
