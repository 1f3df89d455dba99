"""
What relayd asks of a connection's socket beneath Twisted: the one place
that looks under a Twisted transport, shared by the HTTP channel, the
WebSocket and SSE transports and the Redis connections.

* :class:`Flusher` gathers what connections are given during one reactor
  turn and writes it at the end of the turn, once per connection and all
  together: a connection given several frames or replies in a turn writes
  them with one ``send``, and the peers a turn answers are woken in one
  burst instead of one by one between requests (on loopback, waking the
  peer is most of a small ``send``'s cost).
* :func:`write` hands bytes to the socket at once when Twisted holds
  nothing for it (one ``send``), instead of buffering them for the next
  turn (which costs an epoll registration, the ``send``, and an epoll
  unregistration per write). Only a plain TCP transport of this Twisted
  (server or client side) gets the direct ``send``; any other (TLS, UNIX, a
  test's fake) is written to as usual.
* :func:`close` ends a connection whose bytes have all gone to the socket
  at once (``shutdown``, ``close``, one epoll unregistration), where
  Twisted's ``loseConnection`` would swap its epoll registration from
  reading to writing and wait a turn to find nothing left to write.
* :func:`rewire` gives a connection to another protocol (the WebSocket
  upgrade, the end of an event stream).
* :class:`Progress` tells whether a connection's reader has taken any of the
  bytes waiting for it (Linux ``TCP_INFO`` and ``SIOCOUTQ``).
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import main, tcp
from twisted.internet.interfaces import IDelayedCall
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure

_TCP_INFO_BYTES_ACKED = 120  # offset of tcpi_bytes_acked (u64) in Linux's struct tcp_info
_TCP_INFO_SIZE = 128
_OUTQ = struct.Struct("i")
_ACKED = struct.Struct("Q")


_DIRECT = (tcp.Server, tcp.Client)


# What Twisted reads of a TCP connection on each read (doRead) and write() below on each write: class
# defaults of Twisted's FileDescriptor until the connection first changes them.
_READ_EACH_TIME = ("bufferSize", "disconnecting", "_writeDisconnected", "offset", "dataBuffer")


def own_state(transport: Any) -> None:
    """
    Give a plain TCP ``transport`` its own copy of each class default read
    on every read and write: Python 3.11 specialises reading an instance's
    attribute, not a class attribute read through the instance. The values,
    and what Twisted does with them, are unchanged.
    """
    if type(transport) in _DIRECT:
        for name in _READ_EACH_TIME:
            setattr(transport, name, getattr(transport, name))


def write(transport: Any, data: bytes) -> None:
    """
    Write ``data`` to ``transport``: straight to its socket when it is a
    plain TCP connection, open for writing, with nothing buffered before
    ``data``; what the socket does not take (and everything written to any
    other transport) goes through ``transport.write``, in order.
    """
    if (type(transport) in _DIRECT and transport.connected and not transport.disconnecting
            and not transport._writeDisconnected and not transport._tempDataBuffer
            and transport.offset == len(transport.dataBuffer)):
        try:
            sent = transport.socket.send(data)
        except OSError:  # would block, or the connection is failing: Twisted finds out on its next write
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def close(transport: Any) -> bool:
    """
    Close ``transport`` cleanly now if it is a plain TCP connection with
    nothing left to write (what ``loseConnection`` would do a turn later);
    False if it is not, and the caller should ``loseConnection``.
    """
    if (type(transport) is not tcp.Server or transport._tempDataBuffer or transport.producer is not None
            or transport.offset != len(transport.dataBuffer) or not transport.connected or transport.disconnecting):
        return False
    transport.connectionLost(Failure(main.CONNECTION_DONE))
    return True


def rewire(transport: Any, protocol: Any) -> None:
    """From now on ``transport`` delivers its data and its loss to ``protocol`` (TLS included)."""
    if isinstance(transport, ProtocolWrapper):  # TLS: the transport is the wrapper
        transport.wrappedProtocol = protocol
    elif isinstance(getattr(transport, "protocol", None), ProtocolWrapper):
        transport.protocol.wrappedProtocol = protocol
    else:
        transport.protocol = protocol


class Flushable(Protocol):
    """A connection that gathers its writes: :meth:`Flusher.flush` writes them."""

    def flush(self) -> None:
        """Write everything gathered."""


class Scheduler(Protocol):
    """What a :class:`Flusher` needs of the reactor (or of a ``task.Clock`` in tests)."""

    def callLater(self, delay: float, callable: Callable[[], None]) -> IDelayedCall:
        """Call ``callable`` after ``delay`` seconds (0: at the end of this turn)."""
        ...

    def seconds(self) -> float:
        """The current time."""
        ...


HOLD = 0.001
"""Seconds a connection scheduled ``first`` (an HTTP reply) may wait for the end of a long reactor turn."""


class Flusher:
    """
    Writes the connections given something during a reactor turn at its end
    (one ``callLater(0)`` for all of them, or, once :meth:`end_turns_itself`
    is in force, the reactor's own :meth:`turn_end`), each in the order it
    was first given something; a connection given more while the others
    are written (an event stream's reply, say) is written in the same pass.

    Connections scheduled ``first`` (HTTP replies) are written before the
    others, and, in a turn that has run for more than :data:`HOLD` seconds,
    at once: a reply lets its client send again, and held to the end of a
    long turn (a batch) it would leave the client idle meanwhile.
    """

    __slots__ = ("_clock", "_first", "_dirty", "_scheduled", "_by_call", "_since")

    def __init__(self, clock: Scheduler):
        self._clock = clock
        self._first: list[Flushable] = []
        self._dirty: list[Flushable] = []
        self._scheduled = False  # something waits for the end of this turn
        self._by_call = True  # a callLater(0) ends the turn (not the reactor's turn_end)
        self._since = 0.0

    def end_turns_itself(self) -> None:
        """From now on the reactor calls :meth:`turn_end` at the end of each turn (relayd.daemon.polling)."""
        self._by_call = False

    def turn_end(self) -> bool:
        """Write what this turn gathered, if anything; whether there was something."""
        if not self._scheduled:
            return False
        self.flush()
        return True

    def schedule(self, connection: Flushable, first: bool = False) -> None:
        """Flush ``connection`` at the end of this turn (call once per turn and connection)."""
        (self._first if first else self._dirty).append(connection)
        if not self._scheduled:
            self._scheduled = True
            self._since = self._clock.seconds()
            if self._by_call:
                self._clock.callLater(0, self.flush)
        elif first and (now := self._clock.seconds()) - self._since > HOLD:
            self._since = now
            connections, self._first = self._first, []
            for held in connections:
                held.flush()

    def flush(self) -> None:
        """Write what every scheduled connection gathered."""
        try:
            while self._first or self._dirty:
                if self._first:
                    connections, self._first = self._first, []
                else:
                    connections, self._dirty = self._dirty, []
                for connection in connections:
                    connection.flush()
        finally:
            self._scheduled = False


def _acked_and_waiting(handle: socket.socket) -> tuple[int, int] | None:
    """Bytes the peer has acknowledged so far, and bytes waiting in the socket; None if unknown."""
    try:
        fileno = handle.fileno()
        info = handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
        waiting = _OUTQ.unpack(fcntl.ioctl(fileno, termios.TIOCOUTQ, b"\0" * _OUTQ.size))[0]
    except (AttributeError, OSError, ValueError):
        return None
    if len(info) < _TCP_INFO_BYTES_ACKED + _ACKED.size:
        return None
    return _ACKED.unpack_from(info, _TCP_INFO_BYTES_ACKED)[0], waiting


class Progress:
    """
    Whether a reader keeps taking what is written to it, sampled now and
    then (at each keepalive tick, for SSE streams).
    """

    __slots__ = ("_transport", "_acked", "_since")

    def __init__(self, transport: Any):
        self._transport = transport
        self._acked: int | None = None
        self._since: float | None = None

    def stalled_for(self, now: float, backed_up: bool) -> float:
        """
        Seconds during which bytes waited for the reader and it took none of
        them, as far as the samples tell (0 when it is keeping up).
        ``backed_up`` is what Twisted knows: its own buffer is full.
        """
        handle = getattr(self._transport, "getHandle", None)
        sample = _acked_and_waiting(handle()) if handle is not None else None
        if sample is None:
            acked, waiting = None, backed_up
        else:
            acked, waiting = sample[0], sample[1] > 0 or backed_up
        if not waiting or (acked is not None and acked != self._acked):
            self._acked, self._since = acked, None
            return 0.0
        if self._since is None:
            self._since = now
        return now - self._since
