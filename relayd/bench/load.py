"""
The load generator: a minimal WebSocket client and keep-alive HTTP posters on asyncio protocols.

It is built to stay cheap on its one core: requests are pre-formatted
bytes, responses are parsed only as far as the status and the end of the
body, frames are walked by their headers, and the only thing read inside a
message frame is the sender's timestamp (``"t": <µs>`` in the content),
found with one compiled regular expression. Pings are answered with pongs
(mask key zero), so servers with short ping intervals keep their
connections.

Every wait is bounded: callers pass deadlines, and nothing here loops
forever.
"""

from __future__ import annotations

import asyncio
import random
import re
import socket
import struct
import time
from collections import deque
from collections.abc import Callable

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
STAMP = re.compile(rb'"t": ?(\d+)')
CLOSE_1000 = b"\x88\x82\x00\x00\x00\x00\x03\xe8"
UPGRADE = (b"GET /ws?id=%s%s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
POST_HEAD = (b"POST /send-message HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
             b"Content-Length: %d\r\n\r\n")


def now_us() -> int:
    """The monotonic clock in microseconds (the clock every timestamp uses)."""
    return time.monotonic_ns() // 1000


def post_bytes(body: bytes) -> bytes:
    """A complete ``POST /send-message`` request carrying ``body``."""
    return POST_HEAD % len(body) + body


def message(receiver: bytes, stamp: int) -> bytes:
    """One message to ``receiver`` carrying the timestamp ``stamp`` (µs)."""
    return b'{"receiver_id":"%s","content":{"t":%d}}' % (receiver, stamp)


def batch(receivers: list[bytes], stamp: int) -> bytes:
    """A JSON array of one message per receiver, all stamped ``stamp``."""
    return b"[" + b",".join(message(receiver, stamp) for receiver in receivers) + b"]"


def broadcast(stamp: int) -> bytes:
    """A broadcast stamped ``stamp``."""
    return b'{"broadcast":true,"content":{"t":%d}}' % stamp


class Sink:
    """Counts the stamped frames that arrive and, while recording, their latencies (µs)."""

    def __init__(self):
        self.frames = 0
        self.latencies: list[int] = []
        self.recording = False
        self.since = 0
        self.pings = 0
        self.close_codes: dict[int, int] = {}

    def record(self, since: int) -> None:
        """Record the latency of every frame stamped at or after ``since`` (µs)."""
        self.latencies = []
        self.since = since
        self.recording = True

    def take(self, stamps: list[bytes], arrived: int) -> None:
        """Frames with these stamps arrived at ``arrived``."""
        self.frames += len(stamps)
        if self.recording:
            since = self.since
            for raw in stamps:
                stamp = int(raw)
                if stamp >= since:
                    self.latencies.append(arrived - stamp)


class WsClient(asyncio.Protocol):
    """One WebSocket connection to ``/ws?id=…``; stamped frames go to a :class:`Sink`."""

    def __init__(self, client_id: str, sink: Sink, welcome: bool, query: str = "",
                 on_text: Callable[[WsClient, bytes], None] | None = None):
        self.client_id = client_id
        self.sink = sink
        self.expect_welcome = welcome
        self.query = query
        self.on_text = on_text
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.upgraded = False
        self.opened: asyncio.Future = asyncio.get_running_loop().create_future()
        self.lost: asyncio.Future = asyncio.get_running_loop().create_future()
        self.status = 0

    def connection_made(self, transport) -> None:
        """Send the upgrade request."""
        self.transport = transport
        transport.write(UPGRADE % (self.client_id.encode(), self.query.encode()))

    def data_received(self, data: bytes) -> None:
        """Read the 101, then walk the frames."""
        buffer = self.buffer + data if self.buffer else data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buffer
                return
            self.status = int(buffer[9:12])
            if self.status != 101:
                self._fail(ConnectionError(f"{self.client_id}: HTTP {self.status}"))
                return
            self.upgraded = True
            buffer = buffer[end + 4:]
            if not self.expect_welcome:
                self.mark_open()
        self.buffer = self._frames(buffer)

    def _frames(self, buffer: bytes) -> bytes:
        stamps = []
        start, size = 0, len(buffer)
        while size - start >= 2:
            b0, length = buffer[start], buffer[start + 1] & 0x7F
            head = 2
            if length == 126:
                if size - start < 4:
                    break
                length, head = (buffer[start + 2] << 8) | buffer[start + 3], 4
            elif length == 127:
                if size - start < 10:
                    break
                length, head = struct.unpack_from("!Q", buffer, start + 2)[0], 10
            end = start + head + length
            if end > size:
                break
            opcode = b0 & 0x0F
            if opcode == 1:
                if self.on_text is not None:
                    self.on_text(self, buffer[start + head:end])
                elif self.expect_welcome:
                    self.expect_welcome = False
                    self.mark_open()
                else:
                    stamps.extend(STAMP.findall(buffer, start + head, end))
            elif opcode == 9:
                self.sink.pings += 1
                self.transport.write(b"\x8a" + bytes([0x80 | length]) + b"\x00\x00\x00\x00" + buffer[start + head:end])
            elif opcode == 8:
                code = struct.unpack_from("!H", buffer, start + head)[0] if length >= 2 else 1005
                self.sink.close_codes[code] = self.sink.close_codes.get(code, 0) + 1
                self.transport.close()
            start = end
        if stamps:
            self.sink.take(stamps, now_us())
        return buffer[start:] if start < size else b""

    def mark_open(self) -> None:
        """The connection is ready (its upgrade, and welcome if one is expected, have arrived)."""
        if not self.opened.done():
            self.opened.set_result(self)

    def _fail(self, error: Exception) -> None:
        if not self.opened.done():
            self.opened.set_exception(error)
        self.transport.close()

    def connection_lost(self, exc) -> None:
        """Resolve the futures of anyone waiting."""
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError(f"{self.client_id}: closed before the upgrade"))
        if not self.lost.done():
            self.lost.set_result(None)

    def close(self) -> None:
        """Send a 1000 close frame; the server ends the TCP connection."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(CLOSE_1000)

    def abort(self) -> None:
        """Cut the connection with a TCP reset (no close frame)."""
        if self.transport is None:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()


async def connect(port: int, client_id: str, sink: Sink, welcome: bool, timeout: float, query: str = "",
                  on_text=None) -> WsClient:
    """Open one WebSocket and wait for its 101 (and welcome, when the server sends one)."""
    loop = asyncio.get_running_loop()
    _, client = await asyncio.wait_for(
        loop.create_connection(lambda: WsClient(client_id, sink, welcome, query, on_text), "127.0.0.1", port), timeout)
    await asyncio.wait_for(client.opened, timeout)
    return client


async def open_many(port: int, prefix: str, count: int, sink: Sink, welcome: bool, timeout: float,
                    in_flight: int = 200) -> tuple[list[WsClient], list[str]]:
    """Open ``count`` connections ``prefix-N``, at most ``in_flight`` at once; the clients and the errors."""
    gate = asyncio.Semaphore(in_flight)
    deadline = time.monotonic() + timeout

    async def one(n: int):
        async with gate:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no time left to open")
            return await connect(port, f"{prefix}-{n}", sink, welcome, left)

    results = await asyncio.gather(*(one(n) for n in range(count)), return_exceptions=True)
    clients = [r for r in results if isinstance(r, WsClient)]
    errors = [f"{type(r).__name__}: {r}" for r in results if not isinstance(r, WsClient)]
    return clients, errors


async def close_all(clients: list[WsClient], timeout: float = 10.0) -> None:
    """Close every client and wait (bounded) until the server has dropped them."""
    for client in clients:
        client.close()
    waits = [client.lost for client in clients if not client.lost.done()]
    if waits:
        await asyncio.wait(waits, timeout=timeout)
    for client in clients:
        if client.transport is not None and not client.lost.done():
            client.transport.abort()


class Poster(asyncio.Protocol):
    """One keep-alive HTTP connection that POSTs one request at a time.

    A poster whose connection the server closed is ``lost``: it sends
    nothing more (the loops using it carry on with the others, and the
    scenario reports how many were lost).
    """

    def __init__(self, on_reply: Callable[[Poster, int], None]):
        self.on_reply = on_reply
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.busy = False
        self.lost = False
        self.statuses: dict[int, int] = {}

    def connection_made(self, transport) -> None:
        """Ready to send."""
        self.transport = transport

    def send(self, request: bytes) -> bool:
        """Write one complete request; False (nothing written) once the connection is closing or gone."""
        if self.lost or self.transport.is_closing():
            self.lost = True
            return False
        self.busy = True
        self.transport.write(request)
        return True

    def data_received(self, data: bytes) -> None:
        """Find the end of each response (Content-Length or chunked) and report its status."""
        buffer = self.buffer + data if self.buffer else data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buffer[:end].lower()
            at = head.find(b"content-length:")
            if at >= 0:
                line_end = head.find(b"\r\n", at)
                stop = end + 4 + int(head[at + 15:line_end if line_end >= 0 else end])
                if len(buffer) < stop:
                    break
            else:
                last = buffer.find(b"\r\n0\r\n\r\n", end)
                if last < 0:
                    break
                stop = last + 7
            status = int(buffer[9:12])
            buffer = buffer[stop:]
            self.busy = False
            self.statuses[status] = self.statuses.get(status, 0) + 1
            self.on_reply(self, status)
        self.buffer = buffer

    def connection_lost(self, exc) -> None:
        """A poster that lost its connection stays busy: nobody sends on it again."""
        self.busy = True
        self.lost = True


async def posters(port: int, count: int, on_reply, timeout: float) -> list[Poster]:
    """``count`` connected posters to ``port``."""
    loop = asyncio.get_running_loop()
    made = []
    for _ in range(count):
        _, poster = await asyncio.wait_for(loop.create_connection(lambda: Poster(on_reply), "127.0.0.1", port), timeout)
        made.append(poster)
    return made


def close_posters(pool: list[Poster]) -> int:
    """Close every poster's connection; how many the server had closed before (they were lost)."""
    lost = sum(poster.lost for poster in pool)
    for poster in pool:
        if poster.transport is not None:
            poster.transport.close()
    return lost


class ClosedLoop:
    """Senders that each POST again as soon as their previous POST is answered, until stopped."""

    def __init__(self, make: Callable[[int], bytes]):
        self.make = make
        self.running = False
        self.sent = 0
        self.acked = 0
        self.refused = 0

    def on_reply(self, poster: Poster, status: int) -> None:
        """Count the reply; send the next request while running."""
        if status == 200:
            self.acked += 1
        else:
            self.refused += 1
        if self.running:
            self._next(poster)

    def _next(self, poster: Poster) -> None:
        if poster.send(self.make(self.sent + 1)):
            self.sent += 1

    def start(self, pool: list[Poster]) -> None:
        """Every poster sends its first request."""
        self.running = True
        for poster in pool:
            self._next(poster)

    def stop(self) -> None:
        """Send nothing more (requests in flight still get answered)."""
        self.running = False


class OpenLoop:
    """POSTs at a fixed offered rate over a pool of keep-alive connections.

    A request is due every ``1/rate`` s; it goes out on an idle connection
    stamped with the time it is written. When every connection is busy it
    waits for one, stamped with the time it was due, so that a server stall
    shows in the latencies instead of slowing the load (no coordinated
    omission).
    """

    def __init__(self, rate: float, make: Callable[[int, int], bytes]):
        self.rate = rate
        self.make = make
        self.idle: deque[Poster] = deque()
        self.backlog: deque[int] = deque()
        self.sent = 0
        self.acked = 0
        self.refused = 0
        self.late = 0

    def on_reply(self, poster: Poster, status: int) -> None:
        """Count the reply; the connection takes a late request or goes idle."""
        if status == 200:
            self.acked += 1
        else:
            self.refused += 1
        if not self.backlog:
            self.idle.append(poster)
        elif self._send(poster, self.backlog[0]):
            self.backlog.popleft()

    def _send(self, poster: Poster, stamp: int) -> bool:
        if not poster.send(self.make(self.sent + 1, stamp)):
            return False
        self.sent += 1
        return True

    def _send_idle(self, stamp: int) -> bool:
        """Send on the first idle connection still up (the lost ones are dropped); whether one was."""
        while self.idle:
            if self._send(self.idle.popleft(), stamp):
                return True
        return False

    async def run(self, pool: list[Poster], seconds: float) -> None:
        """Offer ``rate`` requests per second for ``seconds``."""
        self.idle.extend(pool)
        started = now_us()
        due = 0
        total = int(self.rate * seconds)
        while due < total:
            current = now_us()
            target = min(total, int((current - started) * self.rate / 1e6) + 1)
            while due < target:
                due += 1
                if not self._send_idle(now_us()):
                    self.late += 1
                    self.backlog.append(started + int(due / self.rate * 1e6))
            await asyncio.sleep(0.001)  # a shorter sleep spins on a millisecond-granular loop


async def handshake_cycles(port: int, seconds: float, in_flight: int, welcome: bool) -> tuple[int, int]:
    """Open and close WebSockets for ``seconds`` with ``in_flight`` at once; (cycles done, failures)."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + seconds
    done = failed = 0
    sink = Sink()

    async def worker(index: int) -> None:
        nonlocal done, failed
        cycle = 0
        while time.monotonic() < deadline:
            cycle += 1
            name = f"hs{index}-{cycle}"
            try:
                _, client = await asyncio.wait_for(loop.create_connection(
                    lambda name=name: WsClient(name, sink, welcome), "127.0.0.1", port), 10)
                await asyncio.wait_for(client.opened, 10)
                client.close()
                await asyncio.wait_for(client.lost, 10)
                done += 1
            except (TimeoutError, OSError, ConnectionError):
                failed += 1
                await asyncio.sleep(0.01)

    await asyncio.gather(*(worker(n) for n in range(in_flight)))
    return done, failed


def shuffled(ids: list[str]) -> list[bytes]:
    """The ids as bytes, in a fixed pseudo-random order (the same in every run)."""
    out = [i.encode() for i in ids]
    random.Random(8).shuffle(out)
    return out
