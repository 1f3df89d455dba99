"""
The two connections a node keeps to Redis (commands, and the subscription),
as txredisapi protocols built for Twisted's ``ClientService`` (which keeps
them up), parsing replies with relayd's own RESP reader.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import txredisapi
from twisted.internet import defer, protocol
from twisted.logger import Logger

from relayd import sockets
from relayd.brokers.redis.resp import FastReplies, encode

log = Logger(namespace="relayd.redis")


def no_delay(proto) -> None:
    """Small commands and replies must not wait for Nagle's algorithm."""
    set_no_delay = getattr(proto.transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        set_no_delay(True)


class ConnectionFactory(protocol.Factory):
    """Builds one txredisapi protocol for a connection kept up by ClientService."""

    isLazy = False
    noisy = False

    def __init__(self, make, reactor, on_ready, on_lost):
        self.make = make
        self.reactor = reactor
        self.on_ready = on_ready
        self.on_lost = on_lost

    def buildProtocol(self, addr):
        """A protocol that reports when it is usable (after AUTH/SELECT) and when it is lost."""
        proto = self.make()
        proto.factory = self
        proto.callLater = self.reactor.callLater
        proto.whenConnected().addCallback(self.on_ready)
        proto.whenDisconnected().addCallback(self.on_lost)
        return proto

    def stopTrying(self):
        """txredisapi calls this when AUTH or SELECT fails; ClientService retries with backoff."""

    def connectionError(self, why):
        """AUTH or SELECT failed: say so (the connection is dropped and retried)."""
        log.error("redis refused the connection: {why}", why=why)


class CommandProtocol(FastReplies, txredisapi.BaseRedisProtocol):
    """
    The command connection (pipelined, in order). Each command is encoded
    by :func:`~relayd.brokers.redis.resp.encode` and gets one Deferred,
    fired by its reply in the order sent (txredisapi's own path made three
    Deferreds per command and hashed the script on every ``eval``).
    """

    def connectionMade(self) -> object:
        """Nothing waits for a reply yet; no script is known to Redis on this connection."""
        self._waiting: deque[defer.Deferred] = deque()
        self._known: set[str] = set()
        self._held: list[bytes] | None = None
        return super().connectionMade()

    def execute_command(self, *args, **kwargs) -> defer.Deferred:
        """Send one command; a Deferred for its reply (an error reply fails it)."""
        if not self.connected:
            raise txredisapi.ConnectionError("Not connected")
        if self._held is not None:
            self._held.append(encode(args))
        else:
            sockets.write(self.transport, encode(args))
        d = defer.Deferred()
        self._waiting.append(d)
        return d

    @contextmanager
    def together(self) -> Iterator[None]:
        """The commands sent inside this block go to Redis in one write, when it ends."""
        self._held = held = []
        try:
            yield
        finally:
            self._held = None
            if held:
                sockets.write(self.transport, b"".join(held))

    def replyReceived(self, reply) -> None:
        """The reply to the oldest command waiting."""
        d = self._waiting.popleft()
        if isinstance(reply, Exception):
            d.errback(reply)
        else:
            d.callback(reply)

    def connectionLost(self, why) -> None:
        """Every command still waiting fails."""
        super().connectionLost(why)
        waiting, self._waiting = self._waiting, deque()
        for d in waiting:
            d.errback(txredisapi.ConnectionError("Lost connection"))

    def eval(self, script: str, keys: Sequence = (), args: Sequence = ()) -> defer.Deferred:
        """
        Run ``script``: ``EVAL`` until Redis has answered one on this
        connection, ``EVALSHA`` after (``EVAL`` again if Redis forgot it).
        """
        sha = script_sha(script)
        if sha not in self._known:
            d = self.execute_command(b"EVAL", script, len(keys), *keys, *args)
            d.addCallback(self._learned, sha)
            return d
        d = self.execute_command(b"EVALSHA", sha, len(keys), *keys, *args)
        d.addErrback(self._forgotten, sha, script, keys, args)
        return d

    def _learned(self, reply, sha: str):
        self._known.add(sha)
        return reply

    def _forgotten(self, failure, sha: str, script: str, keys: Sequence, args: Sequence):
        failure.trap(txredisapi.ResponseError)
        if not str(failure.value).startswith("NOSCRIPT"):
            return failure
        self._known.discard(sha)
        return self.eval(script, keys, args)


_SHAS: dict[str, str] = {}


def script_sha(script: str) -> str:
    """The SHA1 Redis knows ``script`` by (computed once per script)."""
    sha = _SHAS.get(script)
    if sha is None:
        sha = _SHAS[script] = hashlib.sha1(script.encode()).hexdigest()
    return sha


class SubscriberProtocol(FastReplies, txredisapi.SubscriberProtocol):
    """The subscribed connection: hands each published record to the broker."""

    on_record: Callable[[bytes], None] = staticmethod(lambda record: None)

    def messageReceived(self, pattern, channel, message):
        """One record on the node's channel or the broadcast channel."""
        self.on_record(message)
