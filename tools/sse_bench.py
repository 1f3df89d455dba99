"""
SSE delivery figures: open N ``/events`` streams against a running relay,
POST one message per stream (one batch), then broadcasts, and print how long
delivery took. Bounded: N streams, a fixed number of rounds, a timeout.

    twistd -n relay --listen tcp:8080:interface=127.0.0.1 &
    python tools/sse_bench.py --url http://127.0.0.1:8080 --streams 500 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import urllib.parse
import urllib.request


async def open_stream(host: str, port: int, client_id: str):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET /events?id={client_id} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    await read_event(reader, b"event: welcome")
    return reader, writer


async def read_event(reader, marker: bytes) -> None:
    """Read (chunked) bytes until an event line ``marker`` followed by its data line has arrived."""
    buffer = b""
    while marker not in buffer or not buffer.split(marker, 1)[1].count(b"\n\n"):
        chunk = await reader.read(65536)
        if not chunk:
            raise ConnectionError("stream ended")
        buffer += chunk


def post(url: str, body) -> float:
    request = urllib.request.Request(url + "/send-message", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()
    return started


async def round_trip(url: str, streams, body) -> float:
    waiting = [asyncio.ensure_future(read_event(reader, b"event: message")) for reader, _ in streams]
    await asyncio.sleep(0)
    started = await asyncio.get_running_loop().run_in_executor(None, post, url, body)
    await asyncio.wait_for(asyncio.gather(*waiting), timeout=60)
    return time.perf_counter() - started


async def main(args) -> None:
    parsed = urllib.parse.urlparse(args.url)
    streams = [await open_stream(parsed.hostname, parsed.port, f"bench-{n}") for n in range(args.streams)]
    print(f"{len(streams)} streams open")
    for kind in ("batch", "broadcast"):
        times = []
        for _ in range(args.rounds):
            if kind == "batch":
                body = [{"receiver_id": f"bench-{n}", "content": {"n": n}} for n in range(args.streams)]
            else:
                body = {"broadcast": True, "content": "all"}
            times.append(await round_trip(args.url, streams, body))
        per_second = args.streams / statistics.median(times)
        print(f"{kind:9}: POST -> last of {args.streams} streams: median {statistics.median(times) * 1000:.1f} ms, "
              f"max {max(times) * 1000:.1f} ms ({per_second:,.0f} deliveries/s)")
    for _, writer in streams:
        writer.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    asyncio.run(main(parser.parse_args()))
