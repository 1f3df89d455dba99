"""
One connection's place between the relay core and its transport.

A :class:`Session` guarantees the per-connection promises of the protocol
whatever the broker does: messages reach the connection in strictly
increasing id order, never twice, and nothing is written before the
welcome (messages that arrive while the session is opening are held and
written right after the replay). Its life has four states::

    ADMITTED --prepared(replay)--> PREPARED --start(connection)--> OPEN
        \\______________________________\\______________________________\\--> CLOSED

A transport offers the core a :class:`Connection`; what it answers to a
message is a :class:`Delivery`.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable
from typing import Protocol

from relayd.core.history import Replay
from relayd.wire import Message, welcome_frame

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
CLOSE_REPLACED = 4000
CLOSE_TOKEN_EXPIRED = 4001
CLOSE_SLOW_CONSUMER = 4008
CLOSE_EPOCH_CHANGED = 4009
CLOSE_GAP = 4010


class Delivery(enum.Enum):
    """What a connection did with a message it was given."""

    WRITTEN = "written"
    """Handed to the transport."""
    HELD = "held"
    """Accepted but held back; the connection calls :meth:`Session.written` once it is handed over."""
    REFUSED = "refused"
    """Not taken: the connection is closing."""


class Connection(Protocol):
    """What a transport offers the relay core."""

    def send_welcome(self, frame: bytes) -> None:
        """Write the welcome frame."""

    def send_message(self, message: Message, replay: bool = False) -> Delivery:
        """
        Write a message frame. ``replay`` marks a kept message sent after the
        welcome: it does not count against the connection's ``--send-buffer``.
        """

    def close(self, code: int, reason: str) -> None:
        """Close the connection with a WebSocket close code (SSE: end the stream)."""


class State(enum.Enum):
    """Where a session is in its life."""

    ADMITTED = "admitted"
    PREPARED = "prepared"
    OPEN = "open"
    CLOSED = "closed"


# The members as module names, for the per-message paths: in Python 3.11 reading
# a member off its class (``State.OPEN``) goes through ``EnumType.__getattr__``'s
# slow attribute path, about 850 instructions each; a global is a few.
WRITTEN, HELD, REFUSED = Delivery.WRITTEN, Delivery.HELD, Delivery.REFUSED
ADMITTED, PREPARED, OPEN, CLOSED = State.ADMITTED, State.PREPARED, State.OPEN, State.CLOSED

Written = Callable[["Session", Message], None]

_keys = itertools.count(1)


class Session:
    """
    One connection's delivery state. ``on_written(session, message)`` runs
    for each message once it is handed to the transport.
    """

    __slots__ = ("client_id", "transport", "key", "state", "epoch", "last_sent", "floor", "ended",
                 "_on_written", "_connection", "_replay", "_held")

    def __init__(self, client_id: str, transport: str, on_written: Written):
        self.client_id = client_id
        self.transport = transport
        self.key = next(_keys)
        self.state = ADMITTED
        self.epoch: str | None = None
        self.last_sent = 0
        self.floor = 0  # the highest id assigned when the replay was read: the next live one must follow it
        self.ended: tuple[int, str] | None = None
        self._on_written = on_written
        self._connection: Connection | None = None
        self._replay: Replay | None = None
        self._held: list[Message] = []

    @property
    def closed(self) -> bool:
        """True once the session is over."""
        return self.state is CLOSED

    def prepared(self, replay: Replay) -> None:
        """Keep what the session is owed (a :class:`~relayd.core.history.Replay`) until it starts."""
        if self.state is ADMITTED:
            self._replay = replay
            self.state = PREPARED

    def offer(self, message: Message) -> bool:
        """
        Deliver ``message`` to this connection.

        Before the session is open the message is held; afterwards it is
        written unless it was already written or the connection is closing.
        Returns True when the message was written or held.
        """
        state = self.state
        if state is OPEN:
            return self._write(message)
        if state is CLOSED:
            return False
        self._held.append(message)
        return True

    def start(self, connection: Connection) -> None:
        """
        Write the welcome, the prepared replay and what arrived meanwhile;
        then go live. A session closed while it was opening (replaced, say)
        closes ``connection`` with the code it was closed with.
        """
        replay, self._replay = self._replay, None
        if self.state is not PREPARED or replay is None:
            if self.ended is not None:
                connection.close(*self.ended)
            return
        self._connection = connection
        self.epoch = replay.epoch
        self.floor = replay.last_id
        connection.send_welcome(
            welcome_frame(self.client_id, replay.epoch, replay.last_id, len(replay.messages), replay.lost))
        self.state = OPEN
        held, self._held = self._held, []
        for message in replay.messages:
            self._write(message, replay=True)
        for message in held:
            if self.state is OPEN:
                self._write(message)

    def close(self, code: int, reason: str) -> None:
        """
        Close the connection (if it is open) and stop delivering to it.

        ``ended`` keeps the code and reason for a connection that is not up
        yet: :meth:`start` closes it with them.
        """
        if self.state is CLOSED:
            return
        self._end()
        self.ended = (code, reason)
        if self._connection is not None:
            self._connection.close(code, reason)

    def gap(self, reason: str = "a message could not be delivered in order") -> None:
        """The next message cannot be delivered in order: close with 4010 so the client resumes."""
        self.close(CLOSE_GAP, f"{reason}: reconnect with last_id and epoch")

    def behind(self, epoch: str, last_id: int) -> bool:
        """True when this open session, in ``epoch``, has not been given every id up to ``last_id``."""
        return self.state is OPEN and self.epoch == epoch and max(self.last_sent, self.floor) < last_id

    def end(self) -> None:
        """The connection is gone (or never came up): stop delivering."""
        if self.state is not CLOSED:
            self._end()

    def written(self, message: Message) -> None:
        """A message the connection held back has now been handed to the transport."""
        if self.state is OPEN:
            self._on_written(self, message)

    def _end(self) -> None:
        self.state = CLOSED
        self._held = []
        self._replay = None

    def _write(self, message: Message, replay: bool = False) -> bool:
        if message.id is not None:
            if message.epoch != self.epoch:
                self.close(CLOSE_EPOCH_CHANGED, "epoch changed: reconnect with last_id and epoch")
                return False
            if message.id <= self.last_sent:
                return False
            expected = (self.last_sent if self.last_sent > self.floor else self.floor) + 1  # (max, without its call)
            if not replay and message.id > expected:  # a live connection never skips an id
                self.gap(f"message {expected} could not be delivered in order")
                return False
            self.last_sent = message.id
        assert self._connection is not None, "written to before it started"
        delivery = self._connection.send_message(message, replay)
        if delivery is WRITTEN:
            self._on_written(self, message)
            return True
        return delivery is HELD
