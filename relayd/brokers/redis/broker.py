"""
The Redis broker: several relayd nodes share ids, history and routing.

Redis does the work; no node talks to another directly. Each message is
numbered, kept and routed by one Lua script (relayd.brokers.redis.scripts has the key
layout), so two nodes sending to the same id never interleave its ids and
every node receives an id's messages in id order. A script publishes a
message only to the nodes that hold the id (their presence is in Redis,
refreshed by a heartbeat so that a crashed node's presence dies with it),
and its reply says how many of them received it: ``sent``/``queued``/
``dropped`` are true cluster-wide. Broadcasts go to one channel every node
listens to.

Each node keeps two connections: one for commands (pipelined, in order) and
one subscribed to the node's own channel and the broadcast channel. They are
kept up by Twisted's ``ClientService`` (relayd.brokers.redis.connection) and speak RESP through txredisapi's
protocol classes (a dependency already; we use its protocols, not its
connection pool, whose calls wait forever for a connection while Redis is
down), with relayd's own reply reader and, on the command connection, its
own command path (one Deferred per command). When either connection drops the node is *unavailable*: sends and
new connections fail at once with :class:`BrokerUnavailable` (HTTP 503),
connected clients stay connected. When both are back the node takes a new
name, subscribes, writes its presence again and catches up: every kept
message its clients missed meanwhile is delivered (sessions drop what they
already have), then live delivery resumes.
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Callable

import txredisapi
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer, task
from twisted.logger import Logger

from relayd.brokers.redis import scripts as scripts
from relayd.brokers.redis.address import RedisAddress, parse_url
from relayd.brokers.redis.claims import Claims
from relayd.brokers.redis.connection import CommandProtocol, ConnectionFactory, SubscriberProtocol, no_delay
from relayd.brokers.redis.pacing import Pacing
from relayd.brokers.redis.records import Epochs, frame_parts, message_args, outcomes, parse_reply
from relayd.core.history import Replay, owed
from relayd.core.ports import (
    BrokerUnavailable,
    Node,
    Overloaded,
    make_message,
)
from relayd.wire import Message, SendRequest, dumps

COMMAND_TIMEOUT = 2.0
PROBE_TIMEOUT = 1.5
HEARTBEAT_INTERVAL = 1.0
DEAD_AFTER = 10.0
CHUNK = 500
BATCH = 100
RETRY_DELAY = 0.5

log = Logger(namespace="relayd.redis")


class RedisBroker:
    """
    The broker interface (relayd.core.ports.Broker) on Redis.

    ``connect(broker)`` starts what keeps its two connections up and returns
    the services to stop (by default :meth:`connect_services`); whatever it
    is reports with :meth:`command_ready`, :meth:`subscriber_ready` and
    :meth:`connection_lost`.
    """

    name = "redis"

    def __init__(self, address: RedisAddress, reactor, history_size: int, history_ttl: float,
                 connect: Callable[[RedisBroker], list] | None = None):
        self.address = address
        self.reactor = reactor
        self.size = history_size
        self.ttl_ms = int(history_ttl * 1000)
        self.dead_ms = int(DEAD_AFTER * 1000)
        self.prefix = address.prefix
        self.node_name = ""
        self.ready = False
        self._node: Node | None = None
        self._command = None
        self._subscriber = None
        self._generation = 0
        self._recovering = False
        self.claims = Claims()
        self._epochs = Epochs()
        self._probes: dict[bytes, defer.Deferred] = {}
        self._buffer: list[bytes] | None = None
        self._marks: dict[str, tuple[str, int]] = {}
        self._unmarks: dict[str, tuple[str, int]] = {}
        self._mark_call = None
        self._outbox: list[tuple[list, list, defer.Deferred]] = []
        self._outbox_call = None
        self._beats = itertools.count(1)
        self._refresh_every = max(1, int(history_ttl / 3 / HEARTBEAT_INTERVAL))
        self._heartbeat = task.LoopingCall(self._beat)
        self._heartbeat.clock = reactor
        self._services: list[ClientService] = []
        self.pacing = Pacing(reactor)
        self._connect = connect or RedisBroker.connect_services

    # Keys

    def _key(self, kind: str, client_id: str) -> str:
        return f"{self.prefix}{kind}:{client_id}"

    @property
    def _nodes(self) -> str:
        return self.prefix + "nodes"

    @property
    def _channel_prefix(self) -> str:
        return self.prefix + "n:"

    @property
    def _over(self) -> str:
        return self.prefix + "over"

    @property
    def _broadcast(self) -> str:
        return self.prefix + "all"

    # Lifecycle

    def start(self, node: Node) -> defer.Deferred:
        """Connect (and keep reconnecting); serve ``node``."""
        self._node = node
        log.info("broker: redis at {address}", address=self.address.describe())
        self._services = self._connect(self)
        self._heartbeat.start(HEARTBEAT_INTERVAL, now=False)
        return defer.succeed(None)

    def connect_services(self) -> list[ClientService]:
        """
        The default connector: two ``ClientService``s that keep the command
        and subscription connections up, reporting to :meth:`command_ready`,
        :meth:`subscriber_ready` and :meth:`connection_lost`.
        """
        policy = backoffPolicy(initialDelay=0.1, maxDelay=2.0, factor=1.5)
        command = ConnectionFactory(self._make_command, self.reactor, self.command_ready, self.connection_lost)
        subscriber = ConnectionFactory(self._make_subscriber, self.reactor, self.subscriber_ready, self.connection_lost)
        services = []
        for factory in (command, subscriber):
            service = ClientService(self.address.endpoint(self.reactor), factory, retryPolicy=policy, clock=self.reactor)
            service.startService()
            services.append(service)
        first = services[0].whenConnected(failAfterFailures=1)
        first.addErrback(lambda failure: log.warn(
            "redis at {address} is unreachable ({error}); retrying, answering 503 meanwhile",
            address=self.address.describe(), error=failure.getErrorMessage(),
        ))
        return services

    @defer.inlineCallbacks
    def stop(self):
        """Leave the cluster (presence and heartbeat), then disconnect."""
        if self._heartbeat.running:
            self._heartbeat.stop()
        if self._mark_call is not None and self._mark_call.active():
            self._mark_call.cancel()
            self._flush_marks()
        if self.ready:
            self.ready = False
            keys = [self._nodes] + [self._key("p", client_id) for client_id in self.claims.ids()]
            try:
                yield self._eval(self._command, scripts.LEAVE, keys, [self.node_name])
            except Exception:
                log.warn("could not leave the cluster cleanly; this node's presence expires in {dead}s", dead=DEAD_AFTER)
        yield defer.gatherResults([defer.maybeDeferred(service.stopService) for service in self._services])

    def _make_command(self):
        return CommandProtocol(
            charset=None, convertNumbers=False, dbid=self.address.db,
            password=self.address.password, username=self.address.username,
        )

    def _make_subscriber(self):
        return SubscriberProtocol(
            charset=None, convertNumbers=False, dbid=self.address.db,
            password=self.address.password, username=self.address.username,
        )

    def command_ready(self, proto) -> None:
        """The command connection is up (after AUTH and SELECT)."""
        no_delay(proto)
        self._command = proto
        self._maybe_recover()

    def subscriber_ready(self, proto) -> None:
        """The subscription connection is up: its records (``proto.on_record``) come to this broker."""
        no_delay(proto)
        proto.on_record = self._on_records
        self._subscriber = proto
        self._maybe_recover()

    def connection_lost(self, proto) -> None:
        """Either connection dropped: unavailable until both are back and recovered."""
        if proto is not self._command and proto is not self._subscriber:
            return
        if self.ready:
            log.warn("redis connection lost: sends and new connections get 503 until it is back")
        self.ready = False
        self._generation += 1
        self._buffer = None
        for other in (self._command, self._subscriber):
            if other is not None and other is not proto and other.transport is not None:
                other.transport.abortConnection()
        self._command = self._subscriber = None
        probes, self._probes = self._probes, {}
        for d in probes.values():
            d.errback(BrokerUnavailable("redis connection lost"))

    def _maybe_recover(self):
        if self._command is not None and self._subscriber is not None and not (self._recovering or self.ready):
            self._recovering = True
            d = self._recover(self._generation)
            d.addErrback(lambda failure: log.warn("redis recovery failed ({error}); retrying", error=failure.getErrorMessage()))
            d.addBoth(self._recovered)

    def _recovered(self, _):
        self._recovering = False
        if not self.ready and self._command is not None and self._subscriber is not None:
            self.reactor.callLater(RETRY_DELAY, self._maybe_recover)

    def _bounce(self):
        """Drop both connections so that ClientService reconnects and the node recovers afresh."""
        for proto in (self._command, self._subscriber):
            if proto is not None and proto.transport is not None:
                proto.transport.abortConnection()

    @defer.inlineCallbacks
    def _recover(self, generation: int):
        """Take a new node name, subscribe, register presence, catch up, go live."""
        self.node_name = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._buffer = []
        yield self._timed(self._subscriber.subscribe([self._channel_prefix + self.node_name, self._broadcast]))
        yield self._register(self._command)
        caught, lasts = yield self._fetch(self._command, self.claims.floored())
        if generation != self._generation:
            return
        buffered, self._buffer = self._buffer, None
        self.ready = True
        log.info("redis connected as node {node}; {ids} connected ids registered", node=self.node_name, ids=len(self.claims))
        for message in caught:
            self._node.deliver_local(message)
        for client_id, epoch, last in lasts:
            self._node.caught_up(client_id, epoch, last)
        for record in buffered:
            self._on_record(record)

    # Commands

    def _timed(self, d: defer.Deferred) -> defer.Deferred:
        d.addTimeout(COMMAND_TIMEOUT, self.reactor)
        return d

    def _eval(self, proto, script: str, keys: list, args: list) -> defer.Deferred:
        """Run ``script`` on ``proto``; connection trouble becomes BrokerUnavailable."""
        if proto is None:
            return defer.fail(BrokerUnavailable("redis is unreachable"))
        if self._outbox and script is not scripts.PUBLISH:
            self._send_outbox()
        d = defer.maybeDeferred(proto.eval, script, keys, args)
        self._timed(d)
        d.addErrback(self._unavailable, proto)
        return d

    def _call(self, script: str, keys: list, args: list) -> defer.Deferred:
        if not self.ready:
            return defer.fail(BrokerUnavailable("redis is unreachable"))
        return self._eval(self._command, script, keys, args)

    def _unavailable(self, failure, proto):
        if failure.check(defer.TimeoutError, defer.CancelledError):
            log.warn("redis did not answer within {timeout}s; reconnecting", timeout=COMMAND_TIMEOUT)
            if proto.transport is not None:
                proto.transport.abortConnection()
            raise BrokerUnavailable("redis did not answer in time")
        if failure.check(txredisapi.ConnectionError, ConnectionError):
            raise BrokerUnavailable(str(failure.value))
        return failure

    @defer.inlineCallbacks
    def _register(self, proto):
        """Mark this node alive and write its presence for every id it holds."""
        ids = self.claims.ids()
        for start in range(0, max(len(ids), 1), CHUNK):
            chunk = ids[start:start + CHUNK]
            keys = [self._nodes]
            for client_id in chunk:
                keys += [self._key("s", client_id), self._key("p", client_id)]
            counts = [self.claims.count(client_id) for client_id in chunk]
            yield self._eval(proto, scripts.REGISTER, keys, [self.node_name, self.ttl_ms, *counts])

    @defer.inlineCallbacks
    def _fetch(self, proto, client_ids: list[str]):
        """
        The kept messages above each id's floor, to deliver after an outage,
        and each id's ``(client_id, epoch, last id)``: a connection that has
        not reached it once they are delivered missed messages no longer kept.
        """
        messages, lasts = [], []
        for start in range(0, len(client_ids), CHUNK):
            chunk = client_ids[start:start + CHUNK]
            keys = [key for client_id in chunk for key in (self._key("s", client_id), self._key("h", client_id))]
            reply = yield self._eval(proto, scripts.FETCH, keys, [self.size])
            now = int(reply[0])
            for client_id, found in zip(chunk, reply[1:], strict=False):
                if not found:
                    continue
                epoch, last = found[0].decode(), int(found[1])
                floor = self.claims.floor(client_id, epoch)
                messages += [m for m in self._entries(client_id, epoch, found[2], now) if m.id > floor]
                lasts.append((client_id, epoch, last))
        return messages, lasts

    def _entries(self, client_id: str, epoch: str, entries: list[bytes], now: int) -> list[Message]:
        messages = []
        for entry in entries:
            expires, message_id, frame = entry.split(b" ", 2)
            if int(expires) > now:
                messages.append(Message(int(message_id), epoch, client_id, frame))
        return messages

    def _beat(self):
        if not self.ready:
            return None
        d = self._call(scripts.HEARTBEAT, [self._nodes], [self.node_name, self.dead_ms])
        d.addCallback(self._after_beat)
        d.addErrback(lambda failure: failure.trap(BrokerUnavailable))
        return None

    def _after_beat(self, taken_for_dead):
        if int(taken_for_dead):
            log.warn("this node was taken for dead (no heartbeat for {dead}s); registering again", dead=DEAD_AFTER)
            self.ready = False
            self._bounce()
        elif next(self._beats) % self._refresh_every == 0 and len(self.claims):
            self._register(self._command).addErrback(lambda failure: failure.trap(BrokerUnavailable))

    # Records from the subscription

    def _on_records(self, records: bytes) -> None:
        """
        One message on the subscription: records joined by newlines (one
        PUBLISH per node per script call). They arrived together: the
        pacing observes the last message's lag.
        """
        published = None
        for record in records.split(b"\n"):
            stamp = self._on_record(record)
            if stamp is not None:
                published = stamp
        if published is not None and self.pacing.observe(int(published) * 1e-6) and self.ready:
            d = self._call(scripts.BEHIND, [self._over], [self.node_name, int(1000 * 2 * self.pacing.limit)])
            d.addErrback(lambda failure: failure.trap(BrokerUnavailable))

    def _on_record(self, record: bytes) -> bytes | None:
        """Handle one record; a delivered message's publish stamp (µs), for the pacing."""
        kind = record[:1]
        if kind == b"p":
            probe = self._probes.pop(record[2:], None)
            if probe is not None:
                probe.callback(None)
            return None
        if kind == b"k":
            _, client_id, seq = record.split(b" ", 2)
            self._on_kick(client_id.decode(), int(seq))
            return None
        if self._buffer is not None:
            self._buffer.append(record)
            return None
        if self._node is None:
            return None
        if kind == b"w" or kind == b"m":
            _, epoch, message_id, receiver, received, published, frame = record.split(b" ", 6)
            message = Message(int(message_id), epoch.decode(), receiver.decode(), frame)
            message.marked = kind == b"w"
        elif kind == b"b":
            _, received, published, frame = record.split(b" ", 3)
            message = Message(None, None, None, frame)
        else:
            log.warn("unknown record on the node channel: {kind!r}", kind=kind)
            return None
        message.received = int(received) * 1e-6
        if not self._node.deliver_local(message) and message.marked:
            self._unmark(message)
        return published

    def _on_kick(self, client_id: str, seq: int) -> None:
        """Another node took ``client_id`` over (replace) with takeover number ``seq``."""
        if client_id not in self.claims or self._node is None:
            return
        self._node.kick_local(client_id, self.claims.survivor(client_id, seq))

    # The broker interface

    def publish(self, request: SendRequest, timestamp: str, message_id: str) -> defer.Deferred:
        """
        Number, keep and route one message. The messages published in one
        reactor turn go to Redis together, in order, in one script call.
        """
        if self.pacing.behind:
            return defer.fail(Overloaded(f"this node's deliveries are {self.pacing.lag:.3f}s behind"))
        content_json = dumps(request.content)
        # When the POST arrived (for the delivery-time histogram), in whole microseconds: formatted in about a
        # third of the time of a float's shortest repr. When it is published (for the pacing) is stamped by the
        # script on Redis's clock.
        arrived = request.received
        received = b"%d" % ((self.reactor.seconds() if arrived is None else arrived) * 1e6)
        idempotency = None if request.idempotency_key is None else self._idempotency_key(request)
        if request.broadcast:
            frame = make_message(request, content_json, timestamp)(None, None, None).frame
            keys = [] if idempotency is None else [idempotency]
            d = self._call(scripts.BROADCAST, keys, [self._broadcast, received, frame, message_id, self.ttl_ms])
            d.addCallback(parse_reply)
            return d
        if not self.ready:
            return defer.fail(BrokerUnavailable("redis is unreachable"))
        mid, tail = frame_parts(request.sender_id, content_json, timestamp)
        receivers = request.receiver_ids
        args = message_args(receivers, received, mid, tail, message_id, idempotency is not None, self._epochs)
        d = defer.Deferred()
        self._outbox.append((idempotency, args, d, message_id, receivers))
        if self._outbox_call is None:
            self._outbox_call = self.reactor.callLater(0, self._end_turn)
        return d

    def _end_turn(self) -> None:
        """What this reactor turn left for Redis (its publishes, then the delivered marks), in one write."""
        if self._command is None:
            self._send_outbox()
            self._flush_marks()
            return
        with self._command.together():
            if self._outbox:
                self._send_outbox()
            if self._marks or self._unmarks:
                self._flush_marks()

    def _send_outbox(self) -> None:
        """The messages published this reactor turn: one script call (per BATCH), in order."""
        if self._outbox_call is not None and self._outbox_call.active():
            self._outbox_call.cancel()
        self._outbox_call = None
        outbox, self._outbox = self._outbox, []
        for start in range(0, len(outbox), BATCH):
            part = outbox[start:start + BATCH]
            keys = [self._nodes, self._over]
            args = [self.prefix, self.size, self.ttl_ms, self.dead_ms]
            for idempotency, encoded, _, _, _ in part:
                if idempotency is not None:
                    keys.append(idempotency)
                args.append(encoded)
            d = self._call(scripts.PUBLISH, keys, args)
            d.addCallbacks(self._published, self._not_published, callbackArgs=(part,), errbackArgs=(part,))

    @staticmethod
    def _published(replies: list[bytes], part: list) -> None:
        for (idempotency, _, d, message_id, receivers), reply in zip(part, replies, strict=True):
            if reply == b"overloaded":
                d.errback(Overloaded("a node holding a receiver is behind with its deliveries"))
            elif idempotency is None:
                d.callback(outcomes(message_id, receivers, reply))
            else:
                d.callback(parse_reply(reply))

    @staticmethod
    def _not_published(failure, part: list) -> None:
        for _, _, d, _, _ in part:
            d.errback(failure)

    def _idempotency_key(self, request: SendRequest) -> str:
        return f"{self.prefix}i:{request.sender_id or ''} {request.idempotency_key}"

    def replay(self, client_id: str, last_id: int | None, epoch: str | None) -> defer.Deferred:
        """What ``client_id`` is owed on connecting (same rules as MemoryHistory.replay)."""
        keys = [self._key("s", client_id), self._key("h", client_id)]
        d = self._call(scripts.REPLAY, keys, [self._epochs.take(), self.ttl_ms, self.size])
        d.addCallback(self._replay, client_id, last_id, epoch)
        return d

    def _replay(self, reply, client_id: str, last_id: int | None, epoch: str | None) -> Replay:
        current, last, delivered, now = reply[0].decode(), int(reply[1]), int(reply[2]), int(reply[3])
        kept = self._entries(client_id, current, reply[4:], now)
        self.claims.replayed(client_id, current, last)
        return owed(current, last, delivered, kept, last_id, epoch)

    def mark_delivered(self, client_id: str, epoch: str, message_id: int) -> None:
        """Raise ``client_id``'s delivered watermark (batched: one script call per reactor turn)."""
        previous = self._marks.get(client_id)
        if previous is None or previous[0] != epoch or previous[1] < message_id:
            self._marks[client_id] = (epoch, message_id)
        self._marks_this_turn()

    def _marks_this_turn(self) -> None:
        """Have the watermarks changed this turn written at its end (one call for the turn)."""
        if self._mark_call is None or not self._mark_call.active():
            self._mark_call = self.reactor.callLater(0, self._end_turn)

    def _unmark(self, message: Message) -> None:
        """
        No connection here took ``message``, which PUBLISH counted as
        delivered (record ``w``): lower the watermark below it again, so a
        connection without ``last_id`` gets it (batched like the marks).
        """
        client_id, epoch, message_id = message.receiver_id, message.epoch, message.id
        previous = self._unmarks.get(client_id)
        if previous is None or previous[0] != epoch or previous[1] > message_id:
            self._unmarks[client_id] = (epoch, message_id)
        self._marks_this_turn()

    def _flush_marks(self):
        """The watermarks raised (MARK) and lowered (UNMARK) this turn, in that order."""
        if self._mark_call is not None and self._mark_call.active():
            self._mark_call.cancel()
        self._mark_call = None
        for script, marks in ((scripts.MARK, self._marks), (scripts.UNMARK, self._unmarks)):
            items = list(marks.items())
            marks.clear()
            for start in range(0, len(items), CHUNK):
                chunk = items[start:start + CHUNK]
                keys = [self._key("s", client_id) for client_id, _ in chunk]
                args = [value for _, (epoch, message_id) in chunk for value in (epoch, message_id)]
                d = self._call(script, keys, args)
                d.addErrback(lambda failure: failure.trap(BrokerUnavailable))

    def claim(self, client_id: str, key: int, policy: str, max_per_id: int) -> defer.Deferred:
        """Register a connection cluster-wide under the duplicate policy."""
        count = self.claims.add(client_id, key)
        keys = [self._key("s", client_id), self._key("h", client_id), self._key("p", client_id), self._nodes]
        args = [self.node_name, policy, max_per_id, count, self.dead_ms, self._epochs.take(), self.ttl_ms,
                self._channel_prefix, client_id]
        d = self._call(scripts.CLAIM, keys, args)
        d.addCallbacks(self._claimed, self._claim_failed, callbackArgs=(client_id, key), errbackArgs=(client_id, key))
        return d

    def _claimed(self, reply, client_id: str, key: int) -> bool:
        return self.claims.settle(client_id, key, bool(int(reply[0])), int(reply[1]))

    def _claim_failed(self, failure, client_id: str, key: int):
        self.claims.forget(client_id, key)
        return failure

    def release(self, client_id: str, key: int) -> None:
        """A connection of ``client_id`` ended: write this node's new count."""
        count = self.claims.forget(client_id, key)
        if not self.ready:
            return
        d = self._call(scripts.RELEASE, [self._key("s", client_id), self._key("p", client_id)],
                       [self.node_name, count, self.ttl_ms])
        d.addErrback(lambda failure: failure.trap(BrokerUnavailable))

    def probe(self) -> defer.Deferred:
        """Publish a probe to this node's own channel and wait for it to come back."""
        if not self.ready:
            return defer.fail(BrokerUnavailable("redis is unreachable"))
        nonce = secrets.token_hex(8).encode()
        arrived = self._probes[nonce] = defer.Deferred()
        sent = defer.maybeDeferred(self._command.publish, self._channel_prefix + self.node_name, b"p " + nonce)
        sent.addErrback(lambda failure: self._probes.pop(nonce, None) and arrived.errback(failure))
        arrived.addTimeout(PROBE_TIMEOUT, self.reactor)
        arrived.addBoth(lambda result: (self._probes.pop(nonce, None), result)[1])
        return arrived


__all__ = ["RedisAddress", "RedisBroker", "parse_url"]
