"""relayd.transports.sockets: writes and closes beneath a Twisted TCP transport (a socket pair, a fake reactor)."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest
from twisted.internet import tcp
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport

from relayd.transports import sockets


class Recorder(Protocol):
    """Records how its connection was lost."""

    def __init__(self):
        self.reasons = []

    def connectionLost(self, reason):
        self.reasons.append(reason)


@pytest.fixture
def pair():
    """A Twisted TCP server transport over one end of a socket pair, the other end for the test to read."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.settimeout(5)
    reactor = MemoryReactor()
    protocol = Recorder()
    transport = tcp.Server(ours, protocol, ("127.0.0.1", 1), SimpleNamespace(_realPortNumber=0), 1, reactor)
    protocol.makeConnection(transport)
    yield SimpleNamespace(transport=transport, protocol=protocol, peer=theirs, reactor=reactor)
    theirs.close()


def test_close_ends_a_connection_with_nothing_left_to_write_at_once(pair):
    sockets.write(pair.transport, b"bye")
    assert sockets.close(pair.transport) is True
    assert [reason.type for reason in pair.protocol.reasons] == [ConnectionDone]
    assert pair.reactor.readers == set() and pair.reactor.writers == set()
    assert pair.peer.recv(16) == b"bye"
    assert pair.peer.recv(16) == b""  # then an orderly end of stream


def test_close_leaves_a_connection_with_bytes_still_buffered_to_lose_connection(pair):
    pair.transport.write(b"still buffered")  # Twisted holds it for the next turn
    assert sockets.close(pair.transport) is False
    assert pair.protocol.reasons == []


def test_close_leaves_any_other_transport_alone():
    transport = StringTransport()
    assert sockets.close(transport) is False
    assert transport.connected and not transport.disconnecting
