"""
The soak scenario (issue 11): minutes of connection churn with traffic, the relay's RSS and open files sampled.

``--soak-clients`` ids churn for ``--soak-seconds``: each connects (resuming
with the ``last_id`` and ``epoch`` it saw), stays a random 0.2–3 s, then
closes cleanly or, one time in ``--soak-cut`` (a fraction), is cut with a TCP
reset. Meanwhile messages are POSTed to random ids at ``--soak-rate``/s, so
many arrive for ids that are offline and are replayed on the next connect.
Every ``--soak-interval`` seconds one line prints the relay's RSS, open
files and connected ids. At the end every id connects once more to collect
what it is still owed, then the relay must be back near the open files it
started with, and every acknowledged message must have reached its id once:
lost, duplicated and silently skipped ids are counted.
"""

from __future__ import annotations

import asyncio
import json
import random
import time

from relayd.bench import load
from relayd.bench.procs import open_files, rss_kb, settled_rss_kb
from relayd.bench.report import Row
from relayd.bench.scenarios import Bench, close_posters, wait_clients


class Ledger:
    """What each id has seen: its epoch, the highest message id, and the defects found."""

    def __init__(self):
        self.state: dict[str, dict] = {}
        self.delivered = 0
        self.duplicates = 0
        self.gaps = 0
        self.lost_resumes = 0

    def query(self, client_id: str) -> str:
        """The resume query for ``client_id`` (empty before its first welcome)."""
        seen = self.state.get(client_id)
        if not seen or seen.get("epoch") is None:
            return ""
        return f"&last_id={seen['last'] or 0}&epoch={seen['epoch']}"

    def on_text(self, client: load.WsClient, payload: bytes) -> None:
        """Check one frame from the relay against what this id has seen."""
        frame = json.loads(payload)
        seen = self.state.setdefault(client.client_id, {"epoch": None, "last": 0})
        if frame.get("type") == "welcome":
            if seen["epoch"] != frame.get("epoch"):
                seen["epoch"], seen["last"] = frame.get("epoch"), 0
            if frame.get("lost"):
                self.lost_resumes += 1
                seen["last"] = None
            client.mark_open()
            return
        if frame.get("type") != "message" or frame.get("id") is None:
            return
        number, last = frame["id"], seen["last"]
        if last is not None and number <= last:
            self.duplicates += 1
            return
        if last is not None and number > last + 1:
            self.gaps += number - last - 1
        seen["last"] = number
        self.delivered += 1


async def soak(bench: Bench) -> None:
    """Churn with traffic against relayd; a series of RSS and open files; rows for what must hold."""
    options = bench.options
    server = bench.start("relayd", "--max-connections", str(options.soak_clients * 2 + 200))
    ledger = Ledger()
    sink = load.Sink()
    counts = {"connections": 0, "cut": 0, "failed": 0}
    ids = [f"soak-{n}" for n in range(options.soak_clients)]
    try:
        started = time.monotonic()
        base_files, base_rss = open_files(server.pid), await asyncio.to_thread(settled_rss_kb, server.pid)
        series = [_sample(server, 0.0, 0, 0, counts)]
        bench.say(f"soak: relayd: {base_files} open files, RSS {base_rss / 1024:.1f} MiB before the churn")
        deadline = started + options.soak_seconds
        offered = load.OpenLoop(options.soak_rate, lambda n, stamp: load.post_bytes(
            load.message(random.choice(ids).encode(), stamp)))
        pool = await load.posters(server.port, 8, offered.on_reply, 10)
        churn = [asyncio.create_task(_churner(server.port, client_id, ledger, sink, counts, deadline, options))
                 for client_id in ids]
        traffic = asyncio.create_task(offered.run(pool, options.soak_seconds))
        while time.monotonic() < deadline:
            await asyncio.sleep(min(options.soak_interval, max(deadline - time.monotonic(), 0.01)))
            connected = (await asyncio.to_thread(server.health))["clients"]
            series.append(_sample(server, time.monotonic() - started, connected, offered.acked, counts))
            _print(bench, series[-1], ledger)
        await asyncio.wait_for(traffic, 10)
        await asyncio.wait(churn, timeout=10)
        close_posters(bench, "soak", pool)
        await _collect(server.port, ids, ledger, sink, options.open_timeout)
        await wait_clients(server, 0, 1)
        await asyncio.sleep(1.0)
        final = _sample(server, time.monotonic() - started, 0, offered.acked, counts)
        final["rss_kb"] = await asyncio.to_thread(settled_rss_kb, server.pid)
        series.append(final)
        _print(bench, final, ledger)
    finally:
        bench.fleet.stop(server)
    _report(bench, series, ledger, offered, counts, base_files, base_rss)


async def _churner(port: int, client_id: str, ledger: Ledger, sink: load.Sink, counts: dict, deadline: float,
                   options) -> None:
    chance = random.Random(client_id)
    while time.monotonic() < deadline:
        try:
            client = await load.connect(port, client_id, sink, True, 10, ledger.query(client_id), ledger.on_text)
        except (TimeoutError, OSError, ConnectionError):
            counts["failed"] += 1
            await asyncio.sleep(0.2)
            continue
        counts["connections"] += 1
        await asyncio.sleep(min(chance.uniform(0.2, 3.0), max(deadline - time.monotonic(), 0)))
        if chance.random() < options.soak_cut:
            counts["cut"] += 1
            client.abort()
        else:
            client.close()
            await asyncio.wait([client.lost], timeout=5)
        await asyncio.sleep(chance.uniform(0.0, 0.5))


async def _collect(port: int, ids: list[str], ledger: Ledger, sink: load.Sink, timeout: float) -> None:
    """Connect every id once more (resuming), take what it is owed, close."""
    clients = []
    for start in range(0, len(ids), 200):
        made = await asyncio.gather(*(load.connect(port, client_id, sink, True, timeout, ledger.query(client_id),
                                                   ledger.on_text) for client_id in ids[start:start + 200]),
                                    return_exceptions=True)
        clients += [c for c in made if isinstance(c, load.WsClient)]
    await asyncio.sleep(1.0)
    await load.close_all(clients)


def _sample(server, seconds: float, connected: int, acked: int, counts: dict) -> dict:
    return {"t": round(seconds, 1), "rss_kb": rss_kb(server.pid), "open_files": open_files(server.pid),
            "connections": connected, "acked": acked, "opened": counts["connections"], "cut": counts["cut"]}


def _print(bench: Bench, sample: dict, ledger: Ledger) -> None:
    bench.say(f"soak: t={sample['t']:6.1f}s RSS {sample['rss_kb'] / 1024:7.1f} MiB, {sample['open_files']:5d} open "
              f"files, {sample['connections']:4d} ids connected, {sample['opened']:6d} connections so far "
              f"({sample['cut']} cut), {sample['acked']:6d} acked, {ledger.delivered:6d} delivered")


def _report(bench: Bench, series: list[dict], ledger: Ledger, offered: load.OpenLoop, counts: dict,
            base_files: int, base_rss: int) -> None:
    final = series[-1]
    lost = offered.acked - ledger.delivered
    bench.results["soak"] = {"series": series, "acked": offered.acked, "delivered": ledger.delivered,
                             "lost": lost, "duplicates": ledger.duplicates, "gaps": ledger.gaps,
                             "lost_resumes": ledger.lost_resumes, "refused": offered.refused, **counts,
                             "base_open_files": base_files, "base_rss_kb": base_rss,
                             "peak_rss_kb": max(s["rss_kb"] for s in series)}
    connections = counts["connections"]
    bench.rows.append(Row("soak_open_files", f"soak: open files after {connections:,} connections "
                                             f"({counts['cut']:,} cut) vs before", "",
                          final["open_files"], base_files, baseline_name="before", target=("<=", 1.1)))
    bench.rows.append(Row("soak_rss", "soak: RSS after the churn vs before", "MiB", round(final["rss_kb"] / 1024, 1),
                          round(base_rss / 1024, 1), baseline_name="before"))
    bench.rows.append(Row("soak_defects", f"soak: acknowledged messages lost, duplicated or skipped "
                                          f"(of {offered.acked:,})", "", max(lost, 0) + ledger.duplicates + ledger.gaps,
                          target=("<=", 0, "abs")))
