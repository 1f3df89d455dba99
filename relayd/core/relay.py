"""
The relay core: admits connections, opens them with a welcome and a replay,
and sends messages through the broker. It knows nothing of HTTP, WebSocket
or SSE; transports hand it a :class:`~relayd.core.session.Connection`.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Protocol

from twisted.internet import defer
from twisted.python.failure import Failure

from relayd.core.history import Replay, Reply
from relayd.core.ports import DROPPED, QUEUED, SENT, Broker, BrokerUnavailable, Clock
from relayd.core.registry import Refused, Registry
from relayd.core.session import CLOSE_REPLACED, Connection, Session
from relayd.wire import Message, SendRequest, utc_timestamp

Report = dict[str, str | tuple[str, ...]]
"""
A delivery report: ``message_id`` and the receiver ids ``sent``, ``queued``
and ``dropped`` (tuples: the reply's own, encoded as JSON arrays).
"""


class Metrics(Protocol):
    """What the core tells the metrics it is given."""

    def message_outcome(self, outcome: str, count: int = 1) -> None:
        """Count messages by outcome."""

    def delivered(self, seconds: float) -> None:
        """Observe a POST-to-write delay."""


def message_ids() -> Iterator[str]:
    """
    Message ids: 32 hex digits, a random prefix drawn once per process and a
    counter (as unique across nodes and restarts as uuid4, without its
    ``os.urandom`` and object per message).
    """
    prefix = os.urandom(8).hex()
    # The counter's last three hex digits from a table, the rest formatted once per 4,096 ids:
    # a concatenation per id instead of a formatting step with a width (a tenth of its cost).
    tails = [f"{n:03x}" for n in range(4096)]
    return (head + tail for head in (f"{prefix}{high:013x}" for high in itertools.count()) for tail in tails)


class NullMetrics:
    """Metrics that record nothing (the core's default)."""

    def message_outcome(self, outcome: str, count: int = 1) -> None:
        """Count messages by outcome."""

    def delivered(self, seconds: float) -> None:
        """Observe a POST-to-write delay."""


def _as_report(reply: Reply) -> Report:
    """A broker's :class:`Reply` as the delivery report a client gets."""
    return {"message_id": reply.message_id, SENT: reply.sent, QUEUED: reply.queued, DROPPED: reply.dropped}


def _unreachable(failure: Failure) -> Failure:
    """A broker failure as the refusal a client gets (503); any other failure as it is."""
    if failure.check(BrokerUnavailable):
        raise Refused(503, "broker_unavailable", "the broker is unreachable; retry later")
    return failure


class Relay:
    """The transport-free heart of relayd: one per node."""

    def __init__(self, broker: Broker, registry: Registry, clock: Clock, metrics: Metrics | None = None) -> None:
        self.broker = broker
        self.registry = registry
        self.clock = clock
        self.metrics: Metrics = metrics or NullMetrics()
        self._message_ids = message_ids()
        self._stamped = (-1.0, "")

    def start(self) -> defer.Deferred[None]:
        """Start the broker, serving this relay."""
        return self.broker.start(self)

    def admit(self, client_id: str, transport: str) -> defer.Deferred[Session]:
        """
        Reserve a place for a new connection of ``client_id``.

        Fires with a :class:`Session` (to be :meth:`prepare`-d, then opened
        with :meth:`open` once the transport is up, or :meth:`close`-d if it
        never comes up); fails with :class:`Refused` (409, 503) when it may
        not connect. Under the ``replace`` policy the older connections of
        that id are closed with 4000 here.
        """
        try:
            self.registry.check(client_id)
        except Refused:
            return defer.fail()
        session = Session(client_id, transport, self._written)
        claimed = self.broker.claim(client_id, session.key, self.registry.policy, self.registry.max_per_id)
        return claimed.addCallbacks(self._claimed, _unreachable, callbackArgs=(session,))

    def _claimed(self, admitted: bool, session: Session) -> Session:
        client_id = session.client_id
        if not admitted:
            self.broker.release(client_id, session.key)
            raise Refused(409, "duplicate", f"'{client_id}' is already connected to another node")
        try:
            replaced = self.registry.add(session)
        except Refused:
            self.broker.release(client_id, session.key)
            raise
        # Only now, with the new connection admitted everywhere, do older ones give way.
        for old in replaced:
            self.broker.release(old.client_id, old.key)  # the registry already dropped it
            old.close(CLOSE_REPLACED, "replaced by a newer connection")
        return session

    def prepare(self, session: Session, last_id: int | None, epoch: str | None) -> defer.Deferred[Session]:
        """
        Read what ``session`` is owed (its :class:`~relayd.core.history.Replay`)
        before its transport is up, so that a broker failure is a 503
        refusal rather than a connection closed right after its upgrade.
        Messages that arrive from now on are held by the session.
        """
        owed: defer.Deferred[Replay]
        try:
            owed = self.broker.replay(session.client_id, last_id, epoch)
        except Exception:
            owed = defer.fail()
        return owed.addCallbacks(self._prepared, self._not_prepared, callbackArgs=(session,), errbackArgs=(session,))

    @staticmethod
    def _prepared(replay: Replay, session: Session) -> Session:
        session.prepared(replay)
        return session

    def _not_prepared(self, failure: Failure, session: Session) -> Failure:
        self.close(session)
        return _unreachable(failure)

    def open(self, session: Session, connection: Connection) -> None:
        """Send the welcome and the prepared replay to ``connection``; then it is live."""
        session.start(connection)

    def close(self, session: Session) -> None:
        """Forget ``session``: its connection has ended (or never came up)."""
        session.end()
        if self.registry.remove(session):
            self.broker.release(session.client_id, session.key)

    def gap(self, client_id: str) -> None:
        """
        This node's connections of ``client_id`` cannot get their next
        message in order (it is no longer kept): close them with 4010, so
        that they resume and learn ``lost``.
        """
        for session in self.registry.sessions(client_id):
            session.gap()

    def send(self, request: SendRequest, received: float | None = None) -> defer.Deferred[Report]:
        """
        Send one validated message; fire with its delivery report.

        The report is ``{"message_id", "sent", "queued", "dropped"}`` with
        receiver ids in the request's order. ``received`` is when the request
        arrived (for the delivery-time histogram; by default the request's
        own ``received``, else now).
        """
        try:
            outcome = self.send_now(request, received)
        except Exception:
            return defer.fail()
        return defer.succeed(outcome) if isinstance(outcome, dict) else outcome

    def send_now(self, request: SendRequest, received: float | None = None) -> Report | defer.Deferred[Report]:
        """
        :meth:`send`, answered at once when the broker answers at once (in
        memory: no Deferred to make and fire per message); raises what the
        broker raises.
        """
        if received is None:
            received = self.clock.seconds() if request.received is None else request.received
        if request.received != received:
            request = replace(request, received=received)
        reply = self.broker.publish(request, self._timestamp(received), next(self._message_ids))
        if isinstance(reply, Reply):  # (not isinstance(reply, Deferred): an ABC, several times slower to ask)
            return self._report(reply)
        return reply.addCallback(self._report)

    def send_batch(self, requests: list[SendRequest]) -> list[Report] | defer.Deferred[list[Report]]:
        """
        Send a batch's messages one after the other, in order: their reports
        at once when the broker answers each at once (in memory), else a
        Deferred that fires with them. A failure stops the batch: the
        messages before it are sent, the ones after it are not, and it is
        raised (or the Deferred fails with it).
        """
        return self._send_from(iter(requests), [])

    def _send_from(self, pending: Iterator[SendRequest], reports: list[Report]) -> list[Report] | defer.Deferred[list[Report]]:
        # send_now for each message, inline, and the outcomes counted once at the end: a batch's hot loop.
        publish, message_ids, stamped = self.broker.publish, self._message_ids, self._stamped
        sent = queued = dropped = 0
        try:
            for request in pending:
                received = request.received
                if received is None:
                    received = self.clock.seconds()
                    request = replace(request, received=received)
                if received != stamped[0]:  # _timestamp, inline: once per message
                    stamped = self._stamped = (received, utc_timestamp(received))
                reply = publish(request, stamped[1], next(message_ids))
                if not isinstance(reply, Reply):  # a Deferred: go on once it has fired
                    return reply.addCallback(self._sent, pending, reports)
                # (a tuple's truth before its len: the usual reply has one list filled, the others empty)
                if reply.sent:
                    sent += len(reply.sent)
                if reply.queued:
                    queued += len(reply.queued)
                if reply.dropped:
                    dropped += len(reply.dropped)
                reports.append(_as_report(reply))
        finally:
            self._count(sent, queued, dropped)
        return reports

    def _sent(self, reply: Reply, pending: Iterator[SendRequest], reports: list[Report]) -> list[Report] | defer.Deferred[list[Report]]:
        reports.append(self._report(reply))
        return self._send_from(pending, reports)

    def _count(self, sent: int, queued: int, dropped: int) -> None:
        metrics = self.metrics
        if sent:
            metrics.message_outcome(SENT, sent)
        if queued:
            metrics.message_outcome(QUEUED, queued)
        if dropped:
            metrics.message_outcome(DROPPED, dropped)

    def _timestamp(self, received: float) -> str:
        """
        The ``timestamp`` of a message whose send arrived at ``received``:
        formatted once for all the messages of a batch (they share it).
        """
        if received != self._stamped[0]:
            self._stamped = (received, utc_timestamp(received))
        return self._stamped[1]

    def _report(self, reply: Reply) -> Report:
        self._count(len(reply.sent), len(reply.queued), len(reply.dropped))
        return _as_report(reply)

    def deliver_local(self, message: Message) -> int:
        """Offer ``message`` to this node's sessions of its receiver (all, for a broadcast)."""
        sessions: Sequence[Session]
        if message.receiver_id is None:
            sessions = self.registry.all_sessions()
        else:
            sessions = self.registry.sessions(message.receiver_id)
        taken = 0
        for session in sessions:
            if session.offer(message):
                taken += 1
        return taken

    def caught_up(self, client_id: str, epoch: str, last_id: int) -> None:
        """
        The broker delivered ``client_id``'s messages up to ``last_id`` after
        an interruption: a session still behind it missed messages that are
        no longer kept, and is closed with 4010 (its resume says ``lost``).
        """
        for session in self.registry.sessions(client_id):
            if session.behind(epoch, last_id):
                session.gap(f"messages up to {last_id} could not all be delivered")
                self.close(session)

    def kick_local(self, client_id: str, keep: int | None) -> None:
        """Close this node's sessions of ``client_id`` but ``keep`` with 4000."""
        for session in self.registry.sessions(client_id):
            if session.key != keep:
                session.close(CLOSE_REPLACED, "replaced by a newer connection")
                self.close(session)

    def _written(self, session: Session, message: Message) -> None:
        if message.id is not None and message.epoch is not None and not message.marked:
            self.broker.mark_delivered(session.client_id, message.epoch, message.id)
        if not message.timed:
            message.timed = True
            if message.received is not None:
                self.metrics.delivered(self.clock.seconds() - message.received)
