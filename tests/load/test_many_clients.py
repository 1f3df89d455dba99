"""
1,000 concurrent WebSocket clients against one ``twistd relay`` process.

Each client connects, receives its own three messages in order, and leaves.
The same 1,000 ids run three rounds. The first two warm the process up:
measured, RSS grows in round one (59 -> 78 MiB) and again in round two
(-> 88 MiB) and then stays flat round after round (88.1 MiB after rounds
3, 4 and 5), which is Python's allocator settling, not a leak. The
baseline is taken after the warm-up; after round three the process must
be back near it:

* open files (``/proc/<pid>/fd``): at most 5 more than the baseline (each
  leaked connection would hold one descriptor);
* resident memory (``/proc/<pid>/status`` VmRSS): at most 4 MiB over the
  baseline. A connection costs the process 10-20 KB while open, so keeping
  every one of the 1,000 would add 10-20 MiB; 4 MiB absorbs allocator noise
  (freed memory is not always returned to the OS) but not that.

History is off (``--history-size 0``) so the kept messages, which are
supposed to stay, do not count as growth. Bounded: 1,000 clients, at most
200 handshakes in flight, every wait has a timeout; no timing assertion.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from websockets.asyncio.client import connect

from tests.integration.clients import health_clients, wait_for

pytestmark = [pytest.mark.load, pytest.mark.integration]

CLIENTS = 1000
MESSAGES = 3
IN_FLIGHT = 200
WAIT = 60.0
FD_MARGIN = 5
WARM_UP_ROUNDS = 2
RSS_MARGIN_KB = 4 * 1024


def open_files(pid: int) -> int:
    """How many descriptors the process holds."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kb(pid: int) -> int:
    """The process's resident memory, in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS line")


async def one_client(relay, client_id: str, gate: asyncio.Semaphore, connected: asyncio.Event, ready):
    """Connect, report the welcome, receive MESSAGES messages, wait for the signal to leave."""
    async with gate:
        ws = await connect(f"{relay.ws}/ws?id={client_id}", open_timeout=WAIT, ping_interval=None)
    try:
        welcome = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
        assert welcome["type"] == "welcome" and welcome["client_id"] == client_id
        ready()
        await asyncio.wait_for(connected.wait(), WAIT)
        ids, contents = [], []
        for _ in range(MESSAGES):
            message = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
            ids.append(message["id"])
            contents.append(message["content"])
        return client_id, ids, contents
    finally:
        await ws.close()


def post_round(relay, prefix: str, n: int) -> None:
    """Message ``n`` for every client, as one batch of CLIENTS messages."""
    batch = [{"receiver_id": f"{prefix}-{c}", "content": {"c": c, "n": n}} for c in range(CLIENTS)]
    status, _, replies = relay.request("POST", "/send-message", batch)
    assert status == 200, replies
    assert all(reply["sent"] == [f"{prefix}-{c}"] for c, reply in enumerate(replies)), "a client missed a message"


async def one_round(relay, prefix: str, first_id: int, peak: dict) -> None:
    """
    CLIENTS clients at once, each receiving its own MESSAGES messages in
    order (ids from ``first_id``); then all leave. ``peak`` gets the
    process's open files and RSS while everyone is connected.
    """
    gate = asyncio.Semaphore(IN_FLIGHT)
    connected = asyncio.Event()
    count = 0

    def ready():
        nonlocal count
        count += 1
        if count == CLIENTS:
            connected.set()

    tasks = [asyncio.create_task(one_client(relay, f"{prefix}-{c}", gate, connected, ready)) for c in range(CLIENTS)]
    waiter = asyncio.create_task(connected.wait())
    done, _ = await asyncio.wait([waiter, *tasks], timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
    assert waiter in done, [t.exception() for t in tasks if t.done()][:3]
    assert await asyncio.to_thread(health_clients, relay) == CLIENTS
    peak.update(fds=open_files(relay.process.pid), rss=rss_kb(relay.process.pid))
    for n in range(MESSAGES):
        await asyncio.to_thread(post_round, relay, prefix, n)
    results = await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
    for client_id, ids, contents in results:
        c = int(client_id.rsplit("-", 1)[1])
        assert ids == list(range(first_id, first_id + MESSAGES)), (client_id, ids)
        assert contents == [{"c": c, "n": n} for n in range(MESSAGES)], (client_id, contents)


def run_in_own_loop(coroutine):
    """``asyncio.run`` in a thread of its own (another library may hold this thread's loop)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def test_thousand_clients_then_back_to_baseline(start_relay):
    """1,000 clients each get their 3 messages in order; afterwards fds and RSS return near the baseline."""
    relay = start_relay("--max-message-size", "1048576", "--history-size", "0")
    pid = relay.process.pid
    started = time.monotonic()
    warm, load = {}, {}

    for n in range(WARM_UP_ROUNDS):
        run_in_own_loop(one_round(relay, "load", 1 + n * MESSAGES, warm))
        wait_for(lambda: health_clients(relay) == 0, timeout=WAIT, what="every warm-up client to leave")
    base_fds = min(open_files(pid) for _ in range(3))
    base_rss = rss_kb(pid)

    run_in_own_loop(one_round(relay, "load", 1 + WARM_UP_ROUNDS * MESSAGES, load))
    assert load["fds"] >= base_fds + CLIENTS - FD_MARGIN, "the clients were not all connected at once"
    wait_for(lambda: health_clients(relay) == 0, timeout=WAIT, what="every client to leave")
    wait_for(lambda: open_files(pid) <= base_fds + FD_MARGIN, timeout=WAIT,
             what=f"open files to come back near {base_fds} (now {open_files(pid)})")
    after_rss = rss_kb(pid)
    print(f"\nload: {CLIENTS} clients x {WARM_UP_ROUNDS + 1} rounds in {time.monotonic() - started:.1f}s; "
          f"fds {base_fds} -> {load['fds']} -> {open_files(pid)}; "
          f"RSS warm peak {warm['rss']}, {base_rss} -> {load['rss']} -> {after_rss} KiB")
    assert after_rss <= base_rss + RSS_MARGIN_KB, (base_rss, load["rss"], after_rss)
    status, reply = relay.send({"receiver_id": "load-0", "content": "after"})
    assert status == 404 and reply["dropped"] == ["load-0"], "a departed client still counts as connected"
