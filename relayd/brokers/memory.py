"""
:class:`MemoryBroker`: sequence numbers, history and routing in this process
(the default broker; a Redis broker implements the same
:class:`~relayd.core.ports.Broker` interface so that several nodes share them).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer

from relayd.core.history import MemoryHistory
from relayd.core.ports import DROPPED, QUEUED, SENT, Node, make_message
from relayd.wire import SendRequest


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
            message = self.history.append(receiver, lambda epoch, seq, receiver=receiver: build(receiver, epoch, seq))
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

