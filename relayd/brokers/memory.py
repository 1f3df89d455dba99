"""
:class:`MemoryBroker`: sequence numbers, history and routing in this process
(the default broker; a Redis broker implements the same
:class:`~relayd.core.ports.Broker` interface so that several nodes share them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.internet import defer
from twisted.python.failure import Failure

from relayd.core.history import MemoryHistory, Replay, Reply
from relayd.core.ports import DROPPED, QUEUED, Node, make_message, reply_of
from relayd.wire import Message, SendRequest


class Durable(Protocol):
    """A store under the in-process broker (relayd.brokers.store.Store)."""

    def committed(self) -> defer.Deferred[None]:
        """Fire once everything the history journaled so far is durable."""

    def close(self) -> defer.Deferred[None]:
        """Commit what is pending and close."""


class MemoryBroker:
    """
    Everything in this process: one node, history in memory.

    With a ``store`` (relayd.brokers.store) the history is also written to
    disk, and a message is delivered and acknowledged only once the group of
    changes holding it is committed, so that a crash never takes back an id
    a client has seen.
    """

    name = "memory"

    def __init__(self, history: MemoryHistory, encode: Callable[[object], bytes], store: Durable | None = None):
        self.history = history
        # Broker.mark_delivered, once per message written: the history's own, without a call in between.
        self.mark_delivered = history.mark_delivered
        self._encode = encode
        self._store = store
        self._node: Node | None = None
        self._pending: dict[tuple[str | None, str], list[defer.Deferred[Reply]]] = {}

    def start(self, node: Node) -> defer.Deferred[None]:
        """Serve ``node``."""
        self._node = node
        return defer.succeed(None)

    def stop(self) -> defer.Deferred[None]:
        """Commit and close the store, if there is one."""
        return defer.succeed(None) if self._store is None else self._store.close()

    def publish(self, request: SendRequest, timestamp: str, message_id: str) -> Reply | defer.Deferred[Reply]:
        """
        Number, keep and hand the message to this node's connections (once per
        idempotency key): the reply at once, or once the store has committed it.
        """
        key = request.idempotency_key
        if key is None:
            if self._store is None:  # the usual case, in as few calls as it takes
                receivers = request.receiver_ids
                if len(receivers) == 1 and not request.broadcast:  # one receiver: no list of messages
                    build = make_message(request, self._encode(request.content), timestamp)
                    return self._deliver_one(message_id, self.history.append(receivers[0], build))
                return self._deliver(message_id, self._number(request, timestamp))
            return self._publish_later(request, timestamp, message_id)
        waiting = self._pending.get((request.sender_id, key))
        if waiting is not None:  # the first one is still being committed: answer as it will
            waiter: defer.Deferred[Reply] = defer.Deferred()
            waiting.append(waiter)
            return waiter
        first = self.history.recall(request.sender_id, key)
        if first is not None:
            return first
        if self._store is None:  # answered at once: nothing can be waiting for it
            return self._settle(self._deliver_now(request, timestamp, message_id), request.sender_id, key)
        self._pending[(request.sender_id, key)] = []
        # Committed with the message itself, so that a retry after a crash never sends it twice.
        self.history.remember(request.sender_id, key, self._provisional(message_id, request))
        d = self._publish_later(request, timestamp, message_id)
        d.addBoth(self._settled, request.sender_id, key)
        return d

    def _provisional(self, message_id: str, request: SendRequest) -> Reply:
        """The reply of a message committed but not yet delivered: kept (or dropped) for every receiver."""
        kept = QUEUED if self.history.size > 0 else DROPPED
        return reply_of(message_id, request, dict.fromkeys(request.receiver_ids, kept))

    def _settle(self, result: Reply, sender_id: str | None, key: str) -> Reply:
        """Remember the reply to the first message sent with ``key``."""
        self.history.remember(sender_id, key, result, replace=True)
        return result

    def _settled(self, result: Reply | Failure, sender_id: str | None, key: str) -> Reply | Failure | defer.Deferred[Reply | Failure]:
        if isinstance(result, Reply):
            self._settle(result, sender_id, key)
            if self._store is not None:
                return self._store.committed().addBoth(lambda _: self._answer(sender_id, key, result))
        return self._answer(sender_id, key, result)

    def _answer(self, sender_id: str | None, key: str, result: Reply | Failure) -> Reply | Failure:
        for waiter in self._pending.pop((sender_id, key)):
            if isinstance(result, Reply):
                waiter.callback(result)
            else:
                waiter.errback(result)
        return result

    def _deliver_now(self, request: SendRequest, timestamp: str, message_id: str) -> Reply:
        """In memory only: number, keep and deliver now."""
        return self._deliver(message_id, self._number(request, timestamp))

    def _publish_later(self, request: SendRequest, timestamp: str, message_id: str) -> defer.Deferred[Reply]:
        """With a store: number and keep now, deliver once that is committed."""
        messages = self._number(request, timestamp)
        assert self._store is not None, "only a store commits later"
        return self._store.committed().addCallback(lambda _: self._deliver(message_id, messages))

    def _number(self, request: SendRequest, timestamp: str) -> list[Message]:
        """The message for each receiver, numbered and kept (one unnumbered message for a broadcast)."""
        build = make_message(request, self._encode(request.content), timestamp)
        if request.broadcast:
            return [build(None, None, None)]
        receivers, append = request.receiver_ids, self.history.append
        if len(receivers) == 1:  # (a comprehension is one more call)
            return [append(receivers[0], build)]
        return [append(receiver, build) for receiver in receivers]

    def _deliver_one(self, message_id: str, message: Message) -> Reply:
        """Deliver a message to one receiver: its reply without lists."""
        node = self._node
        assert node is not None and message.receiver_id is not None, "delivered once started, to one receiver"
        if node.deliver_local(message):
            return Reply(message_id, (message.receiver_id,))
        if self.history.keeps(message):
            return Reply(message_id, (), (message.receiver_id,))
        return Reply(message_id, (), (), (message.receiver_id,))

    def _deliver(self, message_id: str, messages: list[Message]) -> Reply:
        node = self._node
        assert node is not None, "the broker delivers only once started"
        if len(messages) == 1 and messages[0].receiver_id is not None:
            return self._deliver_one(message_id, messages[0])
        sent: list[str] = []
        queued: list[str] = []
        dropped: list[str] = []
        for message in messages:  # in the request's order of receivers
            taken = node.deliver_local(message)
            receiver = message.receiver_id
            if receiver is not None:
                (sent if taken else queued if self.history.keeps(message) else dropped).append(receiver)
        return Reply(message_id, tuple(sent), tuple(queued), tuple(dropped))

    def replay(self, client_id: str, last_id: int | None, epoch: str | None) -> defer.Deferred[Replay]:
        """What ``client_id`` is owed (see MemoryHistory.replay), once durable."""
        replay = self.history.replay(client_id, last_id, epoch)
        if self._store is None:
            return defer.succeed(replay)
        return self._store.committed().addCallback(lambda _: replay)

    def claim(self, client_id: str, key: int, policy: str, max_per_id: int) -> defer.Deferred[bool]:
        """One node: the registry already applied the policy; keep the id's stream while connected."""
        self.history.hold(client_id)
        return defer.succeed(True)

    def release(self, client_id: str, key: int) -> None:
        """Let the id's stream be forgotten once idle."""
        self.history.release(client_id)

    def probe(self) -> defer.Deferred[None]:
        """Memory is always there."""
        return defer.succeed(None)
