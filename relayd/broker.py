"""
The broker: sequence numbers, history and routing, behind one small interface.

The relay core never numbers, keeps or routes a message itself; it asks its
broker. :class:`MemoryBroker` does it all in this process (the default).
A Redis broker implements the same interface so that several relayd nodes
share ids, history and routing.

Every operation that may need the network returns a Deferred; the memory
broker's fire at once.

The broker calls back into the node it serves (:class:`Node`) to hand over
messages for the node's own connections and to close connections that lost
their id to another node.
"""

from __future__ import annotations

from typing import Callable, Protocol

from twisted.internet import defer

from relayd.history import MemoryHistory, Replay
from relayd.wire import Message, SendRequest, message_frame

SENT, QUEUED, DROPPED = "sent", "queued", "dropped"


class BrokerUnavailable(Exception):
    """The broker cannot be reached; the request may be retried."""


class Node(Protocol):
    """What a broker needs from the node it serves (the relay core)."""

    def deliver_local(self, message: Message) -> int:
        """Hand ``message`` to this node's connections of its receiver (or to all, for a broadcast); return how many took it."""

    def kick_local(self, client_id: str, keep: int | None) -> None:
        """Close this node's sessions of ``client_id`` except the one keyed ``keep`` (with 4000)."""


class Broker(Protocol):
    """The interface every broker implements."""

    name: str

    def start(self, node: Node) -> defer.Deferred:
        """Begin serving ``node``."""

    def stop(self) -> defer.Deferred:
        """Stop; release every claim held by this node."""

    def publish(self, request: SendRequest, timestamp: str) -> defer.Deferred:
        """
        Number, keep and route one message.

        For each receiver, atomically: assign the id's next sequence number,
        append the message to its history, and route it to wherever that id
        is connected. Fires with ``{receiver_id: outcome}`` (sent, queued or
        dropped); a broadcast is routed to every node and fires with ``{}``.
        """

    def replay(self, client_id: str, last_id: int | None, epoch: str | None) -> defer.Deferred:
        """Fire with the :class:`Replay` a client connecting as ``client_id`` is owed."""

    def mark_delivered(self, client_id: str, epoch: str, message_id: int) -> None:
        """Record that ``message_id`` was written to some connection of ``client_id``."""

    def claim(self, client_id: str, key: int, policy: str, max_per_id: int) -> defer.Deferred:
        """
        Register a connection of ``client_id`` (``key`` is unique on this node).

        Fires with True when admitted, False when the duplicate policy refuses
        it cluster-wide. Under ``replace`` it announces a takeover: every other
        connection of that id, on any node, is closed with 4000.
        """

    def release(self, client_id: str, key: int) -> None:
        """Undo a claim when its connection ends."""

    def probe(self) -> defer.Deferred:
        """Fire when the broker works end to end; fail with BrokerUnavailable otherwise."""


def make_message(request: SendRequest, content_json: bytes, timestamp: str) -> Callable[[str | None, str | None, int | None], Message]:
    """A function that builds the Message of ``request`` for one receiver."""

    def build(receiver_id: str | None, epoch: str | None, message_id: int | None) -> Message:
        frame = message_frame(message_id, receiver_id, request.sender_id, content_json, timestamp)
        return Message(message_id, epoch, receiver_id, frame, request.received)

    return build


class MemoryBroker:
    """Everything in this process: one node, history in memory."""

    name = "memory"

    def __init__(self, history: MemoryHistory, encode: Callable[[object], bytes]):
        self.history = history
        self._encode = encode
        self._node: Node | None = None

    def start(self, node: Node) -> defer.Deferred:
        """Serve ``node``."""
        self._node = node
        return defer.succeed(None)

    def stop(self) -> defer.Deferred:
        """Nothing to release."""
        return defer.succeed(None)

    def publish(self, request: SendRequest, timestamp: str) -> defer.Deferred:
        """Number, keep and hand the message to this node's connections."""
        build = make_message(request, self._encode(request.content), timestamp)
        if request.broadcast:
            self._node.deliver_local(build(None, None, None))
            return defer.succeed({})
        outcomes = {}
        for receiver in request.receiver_ids:
            message = self.history.append(receiver, lambda epoch, seq: build(receiver, epoch, seq))
            if self._node.deliver_local(message):
                outcomes[receiver] = SENT
            else:
                outcomes[receiver] = QUEUED if self.history.size > 0 else DROPPED
        return defer.succeed(outcomes)

    def replay(self, client_id: str, last_id: int | None, epoch: str | None) -> defer.Deferred:
        """What ``client_id`` is owed (see MemoryHistory.replay)."""
        return defer.succeed(self.history.replay(client_id, last_id, epoch))

    def mark_delivered(self, client_id: str, epoch: str, message_id: int) -> None:
        """Raise the id's delivered watermark."""
        self.history.mark_delivered(client_id, epoch, message_id)

    def claim(self, client_id: str, key: int, policy: str, max_per_id: int) -> defer.Deferred:
        """One node: the registry already applied the policy; keep the id's stream while connected."""
        self.history.hold(client_id)
        return defer.succeed(True)

    def release(self, client_id: str, key: int) -> None:
        """Let the id's stream be forgotten once idle."""
        self.history.release(client_id)

    def probe(self) -> defer.Deferred:
        """Memory is always there."""
        return defer.succeed(None)


__all__ = ["Broker", "BrokerUnavailable", "MemoryBroker", "Node", "Replay", "SENT", "QUEUED", "DROPPED"]
