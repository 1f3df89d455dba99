"""
Measure two relayd nodes on Redis: messages per second, and the latency Redis adds.

    python tools/bench_cluster.py [--messages 4000] [--receivers 20] [--senders 4] [--batch 50]

It starts a private ``redis-server`` on a free port (no persistence), two
``twistd relay --broker redis://…`` nodes and, for comparison, one node with
the in-memory broker, all on loopback. Then:

* latency: one client connected to node B; messages POSTed one at a time to
  node A; the time from the POST to the frame arriving at the client
  (p50/p95/p99). The same with the in-memory node (POST and client on the
  same node) gives the baseline; the difference is what Redis (and the hop
  between nodes) adds.
* throughput: ``--receivers`` clients, half on each node; ``--senders``
  threads POST to both nodes alternately (single messages, then batches of
  ``--batch``) to receivers on both nodes; messages delivered per second,
  counted at the clients.

Everything (Redis, nodes, load) shares this machine's cores, so the figures
are a floor for a deployment with a core per node.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from websockets.sync.client import connect  # noqa: E402

from tests.relayproc import RelayProcess  # noqa: E402
from tests.redis.conftest import PrivateRedis  # noqa: E402


class Poster:
    """A keep-alive HTTP connection to one node's /send-message."""

    def __init__(self, node: RelayProcess):
        self.connection = http.client.HTTPConnection("127.0.0.1", node.port, timeout=30)

    def send(self, body) -> int:
        """POST ``body``; the status."""
        self.connection.request("POST", "/send-message", json.dumps(body), {"Content-Type": "application/json"})
        response = self.connection.getresponse()
        response.read()
        return response.status


def latency(sender: RelayProcess, receiver: RelayProcess, count: int) -> list[float]:
    """Seconds from POST to frame for ``count`` messages sent one at a time."""
    poster = Poster(sender)
    samples = []
    with connect(f"{receiver.ws}/ws?id=bench-latency") as ws:
        ws.recv(timeout=10)
        for n in range(count):
            started = time.perf_counter()
            status = poster.send({"receiver_id": "bench-latency", "content": n})
            frame = ws.recv(timeout=10)
            samples.append(time.perf_counter() - started)
            assert status == 200 and json.loads(frame)["content"] == n
    return samples


def throughput(nodes: list[RelayProcess], receivers: int, senders: int, messages: int, batch: int) -> float:
    """Messages delivered per second to ``receivers`` clients spread over ``nodes``."""
    run = time.monotonic_ns()
    ids = [f"bench-{run}-{i}" for i in range(receivers)]
    got = [0] * receivers
    ready = threading.Barrier(receivers + 1)

    def receive(index):
        with connect(f"{nodes[index % len(nodes)].ws}/ws?id={ids[index]}", max_size=None) as ws:
            ws.recv(timeout=10)
            ready.wait()
            while got[index] < per_receiver[index]:
                ws.recv(timeout=30)
                got[index] += 1

    per_receiver = [messages // receivers + (1 if i < messages % receivers else 0) for i in range(receivers)]
    threads = [threading.Thread(target=receive, args=(i,)) for i in range(receivers)]
    for thread in threads:
        thread.start()
    ready.wait()

    def send(worker):
        posters = [Poster(node) for node in nodes]
        mine = list(range(worker, messages, senders))
        for start in range(0, len(mine), batch):
            chunk = mine[start:start + batch]
            body = [{"receiver_id": ids[n % receivers], "content": {"n": n}} for n in chunk]
            status = posters[start // batch % len(posters)].send(body if batch > 1 else body[0])
            assert status == 200, status

    started = time.perf_counter()
    workers = [threading.Thread(target=send, args=(w,)) for w in range(senders)]
    for worker in workers:
        worker.start()
    for thread in workers + threads:
        thread.join(120)
    elapsed = time.perf_counter() - started
    assert sum(got) == messages, (sum(got), messages)
    return messages / elapsed


def redis_cost(port: int) -> str:
    """Redis's own time per script call (INFO commandstats), and the ceiling it implies."""
    stats = subprocess.run(["redis-cli", "-p", str(port), "INFO", "commandstats"], capture_output=True, text=True).stdout
    lines = [line for line in stats.splitlines() if line.startswith(("cmdstat_evalsha:", "cmdstat_eval:"))]
    calls = usec = 0.0
    for line in lines:
        fields = dict(item.split("=") for item in line.split(":", 1)[1].split(","))
        calls += float(fields["calls"])
        usec += float(fields["usec"])
    per_call = usec / calls if calls else 0.0
    return (f"redis time per script call: {per_call:.1f} us over {calls:.0f} calls "
            f"(one Redis core: at most ~{1e6 / per_call:,.0f} calls/s)" if per_call else "no script calls recorded")


def percentiles(samples: list[float]) -> str:
    """``p50 / p95 / p99`` in milliseconds."""
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
    return f"p50 {pick(0.50):.2f} ms, p95 {pick(0.95):.2f} ms, p99 {pick(0.99):.2f} ms (mean {statistics.mean(samples) * 1000:.2f} ms)"


def main() -> None:
    """Run the measurements and print them."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=4000, help="messages per throughput run")
    parser.add_argument("--receivers", type=int, default=20, help="receiving clients")
    parser.add_argument("--senders", type=int, default=4, help="sending threads")
    parser.add_argument("--batch", type=int, default=50, help="messages per POST in the batched run")
    parser.add_argument("--samples", type=int, default=500, help="latency samples")
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("bench_cluster: redis-server is not installed")

    with tempfile.TemporaryDirectory() as directory:
        redis = PrivateRedis(Path(directory))
        redis.process = subprocess.Popen(
            ["redis-server", "--port", str(redis.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        quiet = ("--monitor-interval", "0")
        a = RelayProcess(["--broker", redis.url, *quiet], log_dir=directory, name="a").start()
        b = RelayProcess(["--broker", redis.url, *quiet], log_dir=directory, name="b").start()
        memory = RelayProcess(list(quiet), log_dir=directory, name="memory").start()
        try:
            for node in (a, b):
                deadline = time.monotonic() + 10
                while node.health()[0] != 200 and time.monotonic() < deadline:
                    time.sleep(0.1)
            print(f"bench_cluster: {os.cpu_count()} cores shared by Redis, the nodes and the load; "
                  f"{args.samples} latency samples; {args.messages} messages per throughput run")
            latency(memory, memory, 50), latency(a, b, 50)  # warm up
            base = latency(memory, memory, args.samples)
            cross = latency(a, b, args.samples)
            print(f"latency, one node, in-memory broker:        {percentiles(base)}")
            print(f"latency, POST to node A, client on node B:  {percentiles(cross)}")
            print(f"extra latency from Redis (p50 difference):  "
                  f"{(statistics.median(cross) - statistics.median(base)) * 1000:.2f} ms")
            for label, nodes in (("one node, in-memory", [memory]), ("two nodes on Redis", [a, b])):
                single = throughput(nodes, args.receivers, args.senders, args.messages // 4, 1)
                batched = throughput(nodes, args.receivers, args.senders, args.messages, args.batch)
                print(f"throughput, {label:20}: {single:7.0f} msg/s one per POST, "
                      f"{batched:7.0f} msg/s in batches of {args.batch}")
            print(redis_cost(redis.port))
        finally:
            for node in (a, b, memory):
                node.stop()
            redis.kill()


if __name__ == "__main__":
    main()
