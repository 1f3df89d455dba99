"""
The two connections a node keeps to Redis (commands, and the subscription),
as txredisapi protocols built for Twisted's ``ClientService`` (which keeps
them up), parsing replies with relayd's own RESP reader.
"""

from __future__ import annotations

from collections.abc import Callable

import txredisapi
from twisted.internet import protocol
from twisted.logger import Logger

from relayd.brokers.redis.resp import FastReplies

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
    """The command connection (pipelined, in order)."""


class SubscriberProtocol(FastReplies, txredisapi.SubscriberProtocol):
    """The subscribed connection: hands each published record to the broker."""

    on_record: Callable[[bytes], None] = staticmethod(lambda record: None)

    def messageReceived(self, pattern, channel, message):
        """One record on the node's channel or the broadcast channel."""
        self.on_record(message)
