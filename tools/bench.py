#!/usr/bin/env python3
"""
Benchmark one ``twistd relay`` process on loopback and print figures.

    python tools/bench.py [--steps 1000,2000,5000] [--receivers 100]
                          [--messages 5000] [--broadcasts 20] [--no-pin]

It starts its own relay (``tcp:0``, in-memory broker, open mode, pings off)
and measures, from outside, with lightweight raw-socket WebSocket clients
on asyncio:

* connections held and memory per connection: RSS of the relay process
  (``/proc/<pid>/status`` VmRSS) after a warm-up, then after holding N
  connections for each N in ``--steps``; (RSS delta) / N;
* handshakes/s: how fast the N connections of each step were opened
  (at most 200 handshakes in flight; every handshake waits for its welcome);
* POST -> delivery: ``--messages`` messages POSTed to ``--receivers``
  connected ids, one message per request over keep-alive connections from
  4 sender threads, then the same in batches of 100; messages/s (from the
  first POST to the last frame received) and latency percentiles (POST
  started -> frame read by the client; both ends read CLOCK_MONOTONIC);
* broadcast: ``--broadcasts`` broadcasts to every held connection;
  deliveries/s = connections x broadcasts / time until the last one arrived.

With each figure it prints the relay's own CPU time per operation
(``/proc/<pid>/stat`` utime + stime): on a shared, loaded machine the
wall-clock rates swing with the neighbours, the CPU cost per operation much
less, and its inverse is the rate one saturated core would reach.

By default the relay is pinned to CPU 0 and this client to CPU 1 (so the
client does not steal the server's core); the client is the heavier side
for handshakes, so treat those as a lower bound. It prints figures and
asserts nothing: timing goals live here, not in the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import json
import os
import statistics
import struct
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.relayproc import RelayProcess  # noqa: E402

IN_FLIGHT = 200
WAIT = 120.0


def rss_kb(pid: int) -> int:
    """Resident memory of ``pid`` in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class RawClient:
    """A minimal WebSocket client: handshake, then read server frames (text only)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, client_id: str) -> "RawClient":
        """Open ``/ws?id=client_id`` and read the welcome."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /ws?id={client_id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
        client = cls(reader, writer)
        welcome = json.loads(await client.frame())
        assert welcome["type"] == "welcome"
        return client

    async def frame(self) -> bytes:
        """The next text frame's payload."""
        while True:
            b0, b1 = await self.reader.readexactly(2)
            length = b1 & 0x7F
            if length == 126:
                length = struct.unpack("!H", await self.reader.readexactly(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", await self.reader.readexactly(8))[0]
            payload = await self.reader.readexactly(length)
            if b0 & 0x0F == 1:
                return payload
            if b0 & 0x0F == 8:
                raise ConnectionError("closed by the server")

    def close(self) -> None:
        """Drop the connection."""
        self.writer.close()


async def open_many(port: int, prefix: str, count: int) -> tuple[list[RawClient], float]:
    """Open ``count`` connections (at most IN_FLIGHT handshakes at once); return them and the seconds taken."""
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(n: int) -> RawClient:
        async with gate:
            return await RawClient.connect(port, f"{prefix}-{n}")

    started = time.monotonic()
    clients = await asyncio.wait_for(asyncio.gather(*(one(n) for n in range(count))), WAIT)
    return clients, time.monotonic() - started


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used, in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settle(pid: int) -> int:
    """RSS once it stops moving (the relay finished its work), in KiB."""
    last = rss_kb(pid)
    for _ in range(20):
        time.sleep(0.25)
        now = rss_kb(pid)
        if now == last:
            return now
        last = now
    return last


async def connections_and_memory(relay: RelayProcess, steps: list[int]) -> list[RawClient]:
    """Hold 1,000..N connections; print handshakes/s and memory per connection; return the clients."""
    pid = relay.process.pid
    warm, _ = await open_many(relay.port, "warm", 500)
    for client in warm:
        client.close()
    await asyncio.sleep(1.0)
    base = settle(pid)
    print(f"relay RSS after a 500-connection warm-up, all closed: {base / 1024:.1f} MiB")
    print(f"{'held':>6} {'handshakes/s':>13} {'relay CPU ms/handshake':>23} {'RSS MiB':>8} {'KiB/conn':>9}")
    clients: list[RawClient] = []
    for target in steps:
        cpu = cpu_seconds(pid)
        more, seconds = await open_many(relay.port, f"hold{target}", target - len(clients))
        cpu = cpu_seconds(pid) - cpu
        clients.extend(more)
        await asyncio.sleep(0.5)
        rss = settle(pid)
        print(f"{len(clients):>6} {len(more) / seconds:>13.0f} {cpu * 1000 / len(more):>23.2f} "
              f"{rss / 1024:>8.1f} {(rss - base) / len(clients):>9.1f}")
    return clients


class Sender:
    """POSTs over one keep-alive HTTP connection."""

    def __init__(self, port: int):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def post(self, body: object) -> object:
        """POST /send-message; the parsed reply."""
        self.connection.request("POST", "/send-message", json.dumps(body), {"Content-Type": "application/json"})
        response = self.connection.getresponse()
        reply = json.loads(response.read())
        if response.status != 200:
            raise RuntimeError(f"{response.status} {reply}")
        return reply


def send_messages(port: int, receivers: int, count: int, batch: int, threads: int = 4) -> None:
    """POST ``count`` messages round-robin to ``recv-<n>``, ``batch`` per request, from ``threads`` threads."""

    def run(worker: int) -> None:
        sender = Sender(port)
        for start in range(worker * batch, count, threads * batch):
            items = [
                {"receiver_id": f"recv-{n % receivers}", "content": {"t": time.monotonic()}}
                for n in range(start, min(start + batch, count))
            ]
            sender.post(items if batch > 1 else items[0])

    pool = [threading.Thread(target=run, args=(w,)) for w in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()


async def delivery(relay: RelayProcess, receivers: list[RawClient], count: int, batch: int) -> None:
    """POST ``count`` messages (``batch`` per request); print messages/s and latency percentiles."""
    latencies: list[float] = []

    async def drain(client: RawClient, expected: int) -> None:
        for _ in range(expected):
            frame = json.loads(await client.frame())
            latencies.append(time.monotonic() - frame["content"]["t"])

    per = [count // len(receivers) + (1 if n < count % len(receivers) else 0) for n in range(len(receivers))]
    readers = [asyncio.create_task(drain(client, expected)) for client, expected in zip(receivers, per)]
    started, cpu = time.monotonic(), cpu_seconds(relay.process.pid)
    sending = asyncio.to_thread(send_messages, relay.port, len(receivers), count, batch)
    await asyncio.wait_for(asyncio.gather(sending, *readers), WAIT)
    seconds, cpu = time.monotonic() - started, cpu_seconds(relay.process.pid) - cpu
    q = statistics.quantiles(latencies, n=100)
    label = "1 per POST" if batch == 1 else f"{batch} per POST"
    print(
        f"POST->delivery ({label}): {count} messages to {len(receivers)} ids in {seconds:.2f}s = "
        f"{count / seconds:.0f} msg/s; latency p50 {q[49] * 1000:.1f} ms, p90 {q[89] * 1000:.1f} ms, "
        f"p99 {q[98] * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms; "
        f"relay CPU {cpu * 1e6 / count:.0f} us/message (= {count / cpu:.0f} msg per CPU-second)"
    )


async def broadcast(relay: RelayProcess, clients: list[RawClient], count: int) -> None:
    """POST ``count`` broadcasts; print deliveries/s."""

    async def drain(client: RawClient) -> None:
        for _ in range(count):
            await client.frame()

    readers = [asyncio.create_task(drain(client)) for client in clients]
    started, cpu = time.monotonic(), cpu_seconds(relay.process.pid)

    def send() -> None:
        sender = Sender(relay.port)
        for n in range(count):
            sender.post({"broadcast": True, "content": {"n": n}})

    await asyncio.wait_for(asyncio.gather(asyncio.to_thread(send), *readers), WAIT)
    seconds, cpu = time.monotonic() - started, cpu_seconds(relay.process.pid) - cpu
    total = len(clients) * count
    print(f"broadcast: {count} x {len(clients)} connections = {total} deliveries in {seconds:.2f}s = "
          f"{total / seconds:.0f} deliveries/s; relay CPU {cpu * 1e6 / total:.1f} us/delivery "
          f"(= {total / cpu:.0f} deliveries per CPU-second)")


async def main(args) -> None:
    """Run every measurement against one relay."""
    relay = RelayProcess(("--ping-interval", "0", "--max-message-size", "1048576", "--history-size", "0",
                          "--max-connections", str(max(args.steps) + args.receivers + 100)),
                         log_dir="/tmp", name="bench").start()
    try:
        if args.pin:
            os.sched_setaffinity(relay.process.pid, {0})
            os.sched_setaffinity(0, {1})
        held = await connections_and_memory(relay, args.steps)
        receivers, _ = await open_many(relay.port, "recv", args.receivers)
        await delivery(relay, receivers, args.messages, 1)
        await delivery(relay, receivers, args.messages, 100)
        await broadcast(relay, held + receivers, args.broadcasts)
        for client in held + receivers:
            client.close()
    finally:
        relay.stop()
        print(f"(relay log: {relay.log_path})")


def parse(argv=None):
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default="1000,2000,5000",
                        type=lambda text: sorted(int(n) for n in text.split(",")),
                        help="connection counts to hold and measure (default 1000,2000,5000)")
    parser.add_argument("--receivers", type=int, default=100, help="ids that receive POSTed messages")
    parser.add_argument("--messages", type=int, default=5000, help="messages per POST->delivery run")
    parser.add_argument("--broadcasts", type=int, default=20, help="broadcasts to every held connection")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin server and client to CPUs")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
