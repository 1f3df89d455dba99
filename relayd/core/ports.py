"""
The ports of the core: what the relay needs from a broker (:class:`Broker`)
and what a broker needs from the node it serves (:class:`Node`).

The relay core never numbers, keeps or routes a message itself; it asks its
broker. Every operation that may need the network returns a Deferred; the
memory broker's fire at once. The broker calls back into the node it serves
to hand over messages for the node's own connections and to close
connections that lost their id to another node.
"""


from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.internet import defer

from relayd.core.history import Replay, Reply
from relayd.wire import Message, SendRequest, message_frame

SENT, QUEUED, DROPPED = "sent", "queued", "dropped"


class Clock(Protocol):
    """The time source the core is given (a reactor, or ``task.Clock`` in tests)."""

    def seconds(self) -> float:
        """Seconds since the epoch, as a float."""
        ...


class BrokerUnavailable(Exception):
    """The broker cannot be reached; the request may be retried."""


class Overloaded(BrokerUnavailable):
    """This node cannot deliver as fast as it is asked to send: retry later (HTTP 503 ``overloaded``)."""


class Node(Protocol):
    """What a broker needs from the node it serves (the relay core)."""

    def deliver_local(self, message: Message) -> int:
        """Hand ``message`` to this node's connections of its receiver (or to all, for a broadcast); return how many took it."""

    def caught_up(self, client_id: str, epoch: str, last_id: int) -> None:
        """After an interruption, every message of ``client_id`` up to ``last_id`` that is kept was handed over: close the sessions still behind (4010)."""

    def kick_local(self, client_id: str, keep: int | None) -> None:
        """Close this node's sessions of ``client_id`` except the one keyed ``keep`` (with 4000)."""


class Broker(Protocol):
    """The interface every broker implements."""

    name: str

    def start(self, node: Node) -> defer.Deferred[None]:
        """Begin serving ``node``."""

    def stop(self) -> defer.Deferred[None]:
        """Stop; release every claim held by this node."""

    def publish(self, request: SendRequest, timestamp: str, message_id: str) -> Reply | defer.Deferred[Reply]:
        """
        Number, keep and route one message: the :class:`~relayd.core.history.Reply`
        at once when the broker has it at once (in memory), else a Deferred
        firing with it (a store's commit, Redis).

        For each receiver, atomically: assign the id's next sequence number,
        append the message to its history, and route it to wherever that id
        is connected. Fires with the :class:`~relayd.core.history.Reply` naming
        ``message_id`` and each receiver's outcome (sent, queued or dropped);
        a broadcast is routed to every node and has no receivers.

        A request with an ``idempotency_key`` already sent by the same sender
        within ``--history-ttl`` is not sent again: it fires with the first
        one's reply. Fails with :class:`BrokerUnavailable` (or its kind
        :class:`Overloaded`) when nothing was sent.
        """

    def replay(self, client_id: str, last_id: int | None, epoch: str | None) -> defer.Deferred[Replay]:
        """Fire with the :class:`Replay` a client connecting as ``client_id`` is owed."""

    def mark_delivered(self, client_id: str, epoch: str, message_id: int) -> None:
        """
        Record that ``message_id`` was written to some connection of
        ``client_id`` (not called for a message the broker handed over
        ``marked``: it counted that one as delivered itself).
        """

    def claim(self, client_id: str, key: int, policy: str, max_per_id: int) -> defer.Deferred[bool]:
        """
        Register a connection of ``client_id`` (``key`` is unique on this node).

        Fires with True when admitted, False when the duplicate policy refuses
        it cluster-wide. Under ``replace`` it announces a takeover: every other
        connection of that id, on any node, is closed with 4000.
        """

    def release(self, client_id: str, key: int) -> None:
        """Undo a claim when its connection ends."""

    def probe(self) -> defer.Deferred[None]:
        """Fire when the broker works end to end; fail with BrokerUnavailable otherwise."""


def make_message(request: SendRequest, content_json: bytes, timestamp: str) -> Callable[[str | None, str | None, int | None], Message]:
    """A function that builds the Message of ``request`` for one receiver."""

    def build(receiver_id: str | None, epoch: str | None, message_id: int | None) -> Message:
        frame = message_frame(message_id, receiver_id, request.sender_id, content_json, timestamp)
        return Message(message_id, epoch, receiver_id, frame, request.received)

    return build


def reply_of(message_id: str, request: SendRequest, outcomes: dict[str, str]) -> Reply:
    """The :class:`Reply` for ``request`` given each receiver's outcome."""
    lists: dict[str, list[str]] = {SENT: [], QUEUED: [], DROPPED: []}
    for receiver in request.receiver_ids:
        lists[outcomes[receiver]].append(receiver)
    return Reply(message_id, tuple(lists[SENT]), tuple(lists[QUEUED]), tuple(lists[DROPPED]))
