"""relayd.sockets: writes and closes beneath a Twisted TCP transport (a socket pair, a fake reactor)."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest
from twisted.internet import tcp
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport

from relayd import sockets


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


# The Flusher

class Gathering:
    """A connection that records its flushes and may give another connection something meanwhile."""

    def __init__(self, name: str, flushed: list, flusher=None, then=None):
        self.name, self.flushed, self.flusher, self.then = name, flushed, flusher, then

    def flush(self) -> None:
        self.flushed.append(self.name)
        if self.then is not None:
            self.flusher.schedule(self.then)


def test_the_flusher_writes_a_turns_connections_at_its_end_replies_first_with_those_given_more_meanwhile():
    clock, flushed = Clock(), []
    flusher = sockets.Flusher(clock)
    late = Gathering("late", flushed)
    flusher.schedule(Gathering("first", flushed, flusher, then=late))
    flusher.schedule(Gathering("second", flushed))
    flusher.schedule(Gathering("reply", flushed), first=True)
    assert flushed == [] and len(clock.getDelayedCalls()) == 1
    clock.advance(0)
    assert flushed == ["reply", "first", "second", "late"] and clock.getDelayedCalls() == []
    flusher.schedule(late)  # the next turn
    clock.advance(0)
    assert flushed[-1] == "late"


def test_a_flusher_whose_turns_the_reactor_ends_schedules_no_call_and_writes_at_turn_end():
    clock, flushed = Clock(), []
    flusher = sockets.Flusher(clock)
    flusher.end_turns_itself()
    assert flusher.turn_end() is False  # nothing gathered: nothing to do
    flusher.schedule(Gathering("frames", flushed))
    flusher.schedule(Gathering("reply", flushed), first=True)
    assert clock.getDelayedCalls() == [] and flushed == []
    assert flusher.turn_end() is True and flushed == ["reply", "frames"]
    assert flusher.turn_end() is False and flushed == ["reply", "frames"]
    flusher.schedule(Gathering("next", flushed))  # the next turn is gathered again
    assert flusher.turn_end() is True and flushed[-1] == "next"


# write, on the client side (the Redis connections)

def tcp_client(buffered: bytes = b"") -> tuple[tcp.Client, socket.socket, list]:
    """A plain TCP client transport on one end of a socket pair, recording what it is asked to buffer."""
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    transport = object.__new__(tcp.Client)
    transport.socket, transport.connected, transport.disconnecting = ours, 1, 0
    transport._tempDataBuffer, transport.dataBuffer, transport.offset = [], buffered, 0
    written: list = []
    transport.write = written.append  # type: ignore[method-assign]
    return transport, theirs, written


def test_a_client_command_goes_straight_to_the_socket_when_nothing_is_buffered():
    transport, theirs, written = tcp_client()
    sockets.write(transport, b"*1\r\n$4\r\nPING\r\n")
    assert theirs.recv(100) == b"*1\r\n$4\r\nPING\r\n" and written == []


def test_a_client_command_queues_behind_bytes_twisted_still_holds_or_on_another_transport():
    transport, theirs, written = tcp_client(buffered=b"earlier")
    sockets.write(transport, b"later")
    assert written == [b"later"]
    with pytest.raises(BlockingIOError):
        theirs.recv(100)
    other = StringTransport()
    sockets.write(other, b"later")
    assert other.value() == b"later"


def test_own_state_gives_a_tcp_connection_its_own_copies_of_what_each_read_and_write_reads(pair):
    transport = pair.transport
    assert "offset" not in vars(transport)  # Twisted's class default until the connection changes it
    sockets.own_state(transport)
    for name in ("bufferSize", "disconnecting", "_writeDisconnected", "offset", "dataBuffer"):
        assert vars(transport)[name] == getattr(type(transport), name)
    sockets.write(transport, b"still written straight to the socket")
    assert pair.peer.recv(100) == b"still written straight to the socket"
    other = StringTransport()
    sockets.own_state(other)
    assert "offset" not in vars(other)
