"""
A RESP2 reply parser that does linear work per byte received, for the
subscription and the command connection.

txredisapi's own parser splits its whole buffer once per line it reads, so
a 64 KiB read holding a few hundred published records costs time
quadratic in its size; under a burst the subscriber then falls behind
Redis and the backlog grows until Redis cuts it. :class:`Reader` has the
interface of ``hiredis.Reader`` (``feed``, ``gets``) and :class:`FastReplies`
plugs it under a txredisapi protocol. (hiredis itself was measured: about 3%
more deliveries per second than this reader, not worth a dependency.)
"""

from __future__ import annotations

import enum
from typing import TypeAlias

import txredisapi

from relayd import sockets

RESPReply: TypeAlias = "bytes | int | list[RESPReply] | None | Exception"
"""One reply as the reader returns it (an error reply is an exception instance)."""


class _Incomplete(enum.Enum):
    INCOMPLETE = enum.auto()


_INCOMPLETE = _Incomplete.INCOMPLETE


class Reader:
    """Parses replies from the bytes fed to it; ``gets()`` returns one reply, or False if none is complete."""

    def __init__(self, reply_error: type[Exception] = txredisapi.ResponseError) -> None:
        self._buffer = b""
        self._pos = 0
        self._reply_error = reply_error

    def feed(self, data: bytes) -> None:
        """Append bytes received."""
        if self._pos:
            self._buffer = self._buffer[self._pos:] + data
            self._pos = 0
        else:
            self._buffer += data

    def gets(self) -> RESPReply | bool:
        """The next complete reply (bytes, int, list, None or an error instance), or False."""
        reply, pos = self._parse(self._pos)
        if reply is _INCOMPLETE:
            return False
        self._pos = pos
        return reply

    def _parse(self, pos: int) -> tuple[RESPReply | _Incomplete, int]:
        buffer = self._buffer
        end = buffer.find(b"\r\n", pos)
        if end < 0:
            return _INCOMPLETE, pos
        kind = buffer[pos:pos + 1]
        if kind == b"$":
            length = int(buffer[pos + 1:end])
            if length < 0:
                return None, end + 2
            stop = end + 2 + length
            if len(buffer) < stop + 2:
                return _INCOMPLETE, pos
            return buffer[end + 2:stop], stop + 2
        if kind == b"*":
            count = int(buffer[pos + 1:end])
            if count < 0:
                return None, end + 2
            items: list[RESPReply] = []
            at = end + 2
            for _ in range(count):
                item, at = self._parse(at)
                if item is _INCOMPLETE:
                    return _INCOMPLETE, pos
                items.append(item)
            return items, at
        if kind == b":":
            return int(buffer[pos + 1:end]), end + 2
        if kind == b"+":
            return buffer[pos + 1:end], end + 2
        if kind == b"-":
            return self._reply_error(buffer[pos + 1:end].decode("utf-8", "replace")), end + 2
        raise txredisapi.InvalidData(f"unexpected RESP type {kind!r}")


BULK = b"$%d\r\n%b\r\n"
"""One bulk string in RESP, to format with its length and its bytes."""


class Encoded:
    """
    ``count`` arguments of a command already in RESP, sent as they are: a
    message's part of a script call, encoded in one step when it is
    published instead of argument by argument when the call is sent.
    """

    __slots__ = ("count", "data")

    def __init__(self, count: int, data: bytes) -> None:
        self.count = count
        self.data = data

    @classmethod
    def of(cls, items: list[bytes]) -> Encoded:
        """``items`` as bulk strings."""
        return cls(len(items), b"".join([BULK % (len(item), item) for item in items]))


def encode(args: tuple[object, ...]) -> bytes:
    """One command (bytes, str, int, float or :class:`Encoded` arguments) in RESP."""
    parts = [b""]
    count = len(args)
    for arg in args:
        if type(arg) is bytes:
            data = arg
        elif type(arg) is str:
            data = arg.encode()
        elif type(arg) is int:
            data = b"%d" % arg
        elif type(arg) is Encoded:
            parts.append(arg.data)
            count += arg.count - 1
            continue
        else:
            data = _bulk(arg)
        parts.append(BULK % (len(data), data))
    parts[0] = b"*%d\r\n" % count
    return b"".join(parts)


def _bulk(arg: object) -> bytes:
    if isinstance(arg, str):
        return arg.encode()
    if isinstance(arg, float):
        return format(arg, "f").encode()
    if isinstance(arg, (bytes, bytearray)):
        return bytes(arg)
    return str(arg).encode()


class FastReplies:
    """A mixin for a txredisapi protocol (charset None, no number conversion) that parses with :class:`Reader`."""

    def connectionMade(self) -> object:
        """Start each connection with an empty reader."""
        self._reader = Reader()
        sockets.own_state(self.transport)  # type: ignore[attr-defined]  # txredisapi's protocol, after this mixin
        return super().connectionMade()  # type: ignore[misc]  # txredisapi's protocol, after this mixin

    def dataReceived(self, data: bytes, unpause: bool = False) -> None:
        """Hand every complete reply to txredisapi's ``replyReceived``."""
        if data:
            self._reader.feed(data)
        reply = self._reader.gets()
        while reply is not False:
            self.replyReceived(reply)  # type: ignore[attr-defined]  # txredisapi's protocol, after this mixin
            reply = self._reader.gets()
