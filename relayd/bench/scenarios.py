"""
The scenarios of the side-by-side benchmark (issue 8), each against relayd and the aiohttp relay.

Each scenario starts its own servers (pinned to the server CPU), alternates
the two servers measurement by measurement, appends :class:`Row` s and
keeps its raw figures in ``bench.results``. Every measurement also notes
the load generator's own CPU share: past 90 % of its core the figure may be
the generator's, not the server's, and a warning says so.
"""

from __future__ import annotations

import asyncio
import time

from relayd.bench import load
from relayd.bench.procs import Fleet, Server, cpu_busy_seconds, settled_rss_kb
from relayd.bench.report import Row, latency_summary, median, skipped

SATURATED = 0.90
CROWDED = 0.15
SERVERS = ("relayd", "aiohttp")


class Bench:
    """What every scenario shares: options, the fleet, progress, rows, raw results, warnings."""

    def __init__(self, options, fleet: Fleet):
        self.options = options
        self.fleet = fleet
        self.started = time.monotonic()
        self.rows: list[Row] = []
        self.results: dict = {}
        self.warnings: list[str] = []
        self.crowded: list[tuple[str, float]] = []
        self.quiet_budget = options.quiet_budget
        self._turn = 0

    def say(self, text: str) -> None:
        """One progress line."""
        print(f"[{time.monotonic() - self.started:6.1f}s] {text}", flush=True)

    def warn(self, text: str) -> None:
        """A warning: printed now, repeated under the table and kept in the JSON."""
        self.warnings.append(text)
        self.say(f"WARNING: {text}")

    async def quiet(self, servers: list[Server]) -> None:
        """Wait (at most ``--quiet-wait`` s, ``--quiet-budget`` s in all) until other processes leave the server CPU.

        The machine is shared: a measurement started while a neighbour runs
        on the server's core measures the neighbour.
        """
        cpu = self.fleet.server_cpu
        if cpu is None or self.quiet_budget <= 0 or self.options.quiet_wait <= 0:
            return
        began = time.monotonic()
        deadline = began + min(self.options.quiet_wait, self.quiet_budget)
        while True:
            busy, own, at = cpu_busy_seconds(cpu), sum(s.cpu_seconds() for s in servers), time.monotonic()
            await asyncio.sleep(0.3)
            spent = time.monotonic() - at
            others = (cpu_busy_seconds(cpu) - busy - (sum(s.cpu_seconds() for s in servers) - own)) / spent
            if others < CROWDED or time.monotonic() > deadline:
                break
        waited = time.monotonic() - began
        self.quiet_budget -= waited
        if waited > 1.0:
            self.say(f"waited {waited:.1f}s for the server CPU to be quiet (others at {others:.0%})")

    def order(self) -> tuple[str, ...]:
        """relayd first, then aiohttp first next time: neither always runs on a warmer machine."""
        self._turn += 1
        return SERVERS if self._turn % 2 else SERVERS[::-1]

    def start(self, kind: str, *args: str, ping: float | None = None, name: str | None = None) -> Server:
        """Start relayd (with ``args``) or the aiohttp relay, pinging every ``ping`` seconds."""
        if kind == "aiohttp":
            return self.fleet.aiohttp(heartbeat=25.0 if ping is None else ping, name=name or kind)
        extra = () if ping is None else ("--ping-interval", str(ping))
        return self.fleet.relayd("--monitor-interval", "0", *args, *extra, name=name or kind)


class Window:
    """Wall time, the generator's CPU share, each server's, and what others took of the server CPU, over one measurement.

    The machine is shared: when other processes use more than 15 % of the
    server CPU during a window, a warning says so (that figure is slowed by
    a neighbour, not by the server).
    """

    def __init__(self, bench: Bench, label: str, servers: list[Server]):
        self.bench = bench
        self.label = label
        self.servers = servers
        self.cpu_id = bench.fleet.server_cpu

    def __enter__(self) -> Window:
        self.wall = time.monotonic()
        self.own = time.process_time()
        self.cpu = [server.cpu_seconds() for server in self.servers]
        self.busy = cpu_busy_seconds(self.cpu_id) if self.cpu_id is not None else 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = max(time.monotonic() - self.wall, 1e-6)
        self.load_share = (time.process_time() - self.own) / self.seconds
        self.server_share = [(server.cpu_seconds() - cpu) / self.seconds for server, cpu in zip(self.servers, self.cpu, strict=True)]
        self.others_share = 0.0
        if self.cpu_id is not None:
            busy = (cpu_busy_seconds(self.cpu_id) - self.busy) / self.seconds
            self.others_share = max(0.0, busy - sum(self.server_share))
        if exc[0] is not None:
            return
        if self.load_share > SATURATED:
            self.bench.warn(f"{self.label}: the load generator used {self.load_share:.0%} of its core; "
                            "the figure may be a lower bound")
        if self.others_share > CROWDED:
            self.bench.crowded.append((self.label, round(self.others_share, 3)))
            self.bench.say(f"note: other processes took {self.others_share:.0%} of the server CPU during {self.label}")

    def figures(self) -> dict:
        """The window as JSON-ready figures."""
        return {"seconds": round(self.seconds, 3), "load_cpu": round(self.load_share, 3),
                "server_cpu": [round(share, 3) for share in self.server_share],
                "others_on_server_cpu": round(self.others_share, 3)}

    def cpu_us_per(self, operations: float) -> float | None:
        """Server CPU microseconds per operation over the window (robust to a crowded core)."""
        return round(sum(self.server_share) * self.seconds * 1e6 / operations, 1) if operations else None


async def wait_clients(server: Server, count: int, timeout: float) -> int:
    """Poll ``/health-check`` until ``count`` ids are connected (bounded); the last count seen."""
    deadline = time.monotonic() + timeout
    seen = -1
    while time.monotonic() < deadline:
        try:
            seen = (await asyncio.to_thread(server.health))["clients"]
        except OSError:
            seen = -1
        if seen >= count:
            return seen
        await asyncio.sleep(0.1)
    return seen


async def drain(count, expected: int, timeout: float, quiet: float = 1.0) -> None:
    """Wait until ``count()`` reaches ``expected``, or nothing more arrived for ``quiet`` s, or ``timeout`` s passed."""
    deadline = time.monotonic() + timeout
    last, since = count(), time.monotonic()
    while count() < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        if count() != last:
            last, since = count(), time.monotonic()
        elif time.monotonic() - since > quiet:
            return


def close_posters(bench: Bench, label: str, pool: list[load.Poster]) -> int:
    """Close the POST connections; warn when the server had closed some of them during the load (they were lost)."""
    lost = load.close_posters(pool)
    if lost:
        bench.warn(f"{label}: the server closed {lost} of {len(pool)} POST connections during the load "
                   "(they sent nothing more; the others carried on)")
    return lost


def cpu_ratio(out: dict, key: str) -> float | None:
    """aiohttp's median server CPU per operation over relayd's: the ratio a saturated core of each would reach."""
    costs = {kind: median([r[key] for r in out[kind]]) for kind in ("relayd", "aiohttp")}
    return costs["aiohttp"] / costs["relayd"] if costs["relayd"] and costs["aiohttp"] else None


def welcome(kind: str) -> bool:
    """Whether the server's first frame is a welcome (relayd's is; the aiohttp relay sends none)."""
    return kind != "aiohttp"


# --- memory and idle CPU -----------------------------------------------------------------------------------------


async def memory(bench: Bench) -> None:
    """User memory per idle connection at each step: RSS growth over the connections added after a warm start.

    A few connections are opened first and kept (so that lazy imports and
    first-use caches are paid before the baseline), and none are closed
    before the steps (so that no freed memory is reused by the first step).
    """
    steps = bench.options.steps
    out = {}
    for kind in bench.order():
        server = bench.start(kind, "--max-connections", str(max(steps) + 200))
        try:
            out[kind] = await _memory_steps(bench, kind, server, steps)
        finally:
            bench.fleet.stop(server)
    bench.results["memory"] = out
    for n, step in enumerate(steps):
        relayd, aiohttp = (out[k][n] for k in SERVERS)
        note = "" if relayd["held"] == step else f"relayd held {relayd['held']}"
        bench.rows.append(Row(f"memory_{step}", f"user memory per idle connection, {step:,} held", "KiB",
                              relayd["kib_per_connection"], aiohttp["kib_per_connection"], target=("<=", 0.6),
                              note=note))


async def _memory_steps(bench: Bench, kind: str, server: Server, steps: list[int]) -> list[dict]:
    """Hold a few warm connections, then more up to each step; (RSS − RSS when warm) / (connections added)."""
    sink = load.Sink()
    timeout = bench.options.open_timeout
    held, _ = await load.open_many(server.port, "warm", max(1, min(100, steps[0] // 2)), sink, welcome(kind), timeout)
    warm = len(held)
    points = []
    try:
        await asyncio.sleep(0.5)
        base = await asyncio.to_thread(settled_rss_kb, server.pid)
        bench.say(f"memory: {kind}: RSS with {warm} connections held {base / 1024:.1f} MiB")
        for step in steps:
            began, wanted = time.monotonic(), step - len(held)
            more, errors = await load.open_many(server.port, f"idle{step}", wanted, sink, welcome(kind), timeout)
            held.extend(more)
            opened = time.monotonic() - began
            if errors:
                bench.warn(f"memory: {kind}: {len(errors)} of {wanted} connections failed (first: {errors[0]})")
            await asyncio.sleep(0.5)
            rss = await asyncio.to_thread(settled_rss_kb, server.pid)
            per = (rss - base) / max(len(held) - warm, 1)
            points.append({"step": step, "held": len(held), "warm": warm, "rss_kb": rss, "base_kb": base,
                           "kib_per_connection": round(per, 2), "open_rate": round(len(more) / max(opened, 1e-6))})
            bench.say(f"memory: {kind}: {len(held):,} held, RSS {rss / 1024:.1f} MiB, {per:.1f} KiB per connection")
    finally:
        await load.close_all(held)
    return points


async def idle(bench: Bench) -> None:
    """Server CPU while N idle connections answer pings every ``--ping-interval`` seconds."""
    count, ping, seconds = bench.options.idle_connections, bench.options.ping_interval, bench.options.idle_seconds
    out = {}
    for kind in bench.order():
        server = bench.start(kind, "--max-connections", str(count + 200), ping=ping)
        sink = load.Sink()
        clients, errors = await load.open_many(server.port, "idle", count, sink, welcome(kind),
                                               bench.options.open_timeout)
        try:
            if errors:
                bench.warn(f"idle: {kind}: {len(errors)} connections failed (first: {errors[0]})")
            await asyncio.sleep(ping + 0.5)
            await bench.quiet([server])
            pings = sink.pings
            with Window(bench, f"idle {kind}", [server]) as window:
                await asyncio.sleep(seconds)
            held = await wait_clients(server, 0, 5)
            if held < len(clients):
                bench.warn(f"idle: {kind} dropped {len(clients) - held:,} of {len(clients):,} connections while "
                           "they answered its pings (a pong arrived later than it waits for)")
            out[kind] = {"held": len(clients), "still_connected": held, "ping_interval": ping,
                         "pings_per_s": round((sink.pings - pings) / window.seconds, 1),
                         "cpu_percent": round(window.server_share[0] * 100, 2), **window.figures()}
            bench.say(f"idle: {kind}: {len(clients):,} connections pinged every {ping:g}s: "
                      f"CPU {window.server_share[0]:.1%}, {out[kind]['pings_per_s']:,.0f} pings/s answered")
        finally:
            await load.close_all(clients)
            bench.fleet.stop(server)
    bench.results["idle"] = out
    per_ping = {kind: out[kind]["cpu_percent"] / out[kind]["pings_per_s"] if out[kind]["pings_per_s"] else None
                for kind in SERVERS}
    bench.rows.append(Row("idle_cpu", f"CPU with {count:,} idle connections pinging every {ping:g}s", "%",
                          out["relayd"]["cpu_percent"], out["aiohttp"]["cpu_percent"], target=("<=", 1.0),
                          note=_idle_note(out),
                          cpu_ratio=per_ping["relayd"] / per_ping["aiohttp"]
                          if per_ping["relayd"] and per_ping["aiohttp"] else None))


def _idle_note(out: dict) -> str:
    parts = [f"{kind} {out[kind]['pings_per_s']:,.0f} pings/s" + (
        f", {out[kind]['held'] - out[kind]['still_connected']:,} dropped"
        if out[kind]["still_connected"] < out[kind]["held"] else "") for kind in SERVERS]
    return "; ".join(parts)


# --- handshakes ----------------------------------------------------------------------------------------------------


async def handshakes(bench: Bench) -> None:
    """WebSocket open+close cycles per second, ``--in-flight`` at once."""
    options = bench.options
    servers = {kind: bench.start(kind, "--max-connections", str(options.in_flight * 4 + 100)) for kind in SERVERS}
    out = {kind: [] for kind in SERVERS}
    try:
        for _ in range(options.rounds):
            for kind in bench.order():
                await bench.quiet([servers[kind]])
                with Window(bench, f"handshakes {kind}", [servers[kind]]) as window:
                    done, failed = await load.handshake_cycles(servers[kind].port, options.seconds,
                                                               options.in_flight, welcome(kind))
                rate = done / window.seconds
                out[kind].append({"cycles": done, "failed": failed, "per_s": round(rate, 1),
                                  "cpu_us_per_handshake": window.cpu_us_per(done), **window.figures()})
                bench.say(f"handshakes: {kind}: {rate:,.0f}/s open+close ({options.in_flight} in flight, "
                          f"{failed} failed), server CPU {window.server_share[0]:.0%}, "
                          f"{window.cpu_us_per(done) or 0:.0f} µs each")
    finally:
        for server in servers.values():
            bench.fleet.stop(server)
    bench.results["handshakes"] = out
    rates = {kind: median([r["per_s"] for r in out[kind]]) for kind in SERVERS}
    bench.rows.append(Row("handshakes", f"WebSocket handshakes/s (open+close, {options.in_flight} in flight)", "/s",
                          rates["relayd"], rates["aiohttp"], target=(">=", 0.8),
                          cpu_ratio=cpu_ratio(out, "cpu_us_per_handshake")))


# --- POST → delivery: max, fixed rates, batches ----------------------------------------------------------------------


class Receivers:
    """``count`` connected receivers ``r-N`` on each of some servers, sharing one sink per server."""

    def __init__(self, prefix: str = "r"):
        self.prefix = prefix
        self.sinks: dict[str, load.Sink] = {}
        self.clients: dict[str, list[load.WsClient]] = {}
        self.ids: dict[str, list[bytes]] = {}

    async def connect(self, bench: Bench, kind: str, servers: list[Server], count: int, welcomes: bool) -> None:
        """Spread ``count`` receivers over ``servers`` (receiver n on server n mod len), 200 handshakes at a time.

        A receiver that fails to connect is tried once more; the ones that
        still fail are left out (with a warning), and no message is sent
        to them.
        """
        sink = self.sinks[kind] = load.Sink()
        clients: list[load.WsClient] = []
        for index, server in enumerate(servers):
            names = [f"{self.prefix}-{n}" for n in range(count) if n % len(servers) == index]
            made, failed = await self._open(bench, server, names, sink, welcomes)
            if failed:
                retried, failed = await self._open(bench, server, failed, sink, welcomes)
                made += retried
            if failed:
                bench.warn(f"{kind}: {len(failed)} of {len(names)} receivers could not connect to {server.name}")
            clients += made
            await wait_clients(server, len(made), 10)
        self.clients[kind] = clients
        self.ids[kind] = load.shuffled([client.client_id for client in clients])

    @staticmethod
    async def _open(bench: Bench, server: Server, names: list[str], sink: load.Sink, welcomes: bool):
        gate = asyncio.Semaphore(200)

        async def one(name: str):
            async with gate:
                return await load.connect(server.port, name, sink, welcomes, 30)

        results = await asyncio.wait_for(asyncio.gather(*(one(name) for name in names), return_exceptions=True),
                                         bench.options.open_timeout)
        made = [r for r in results if isinstance(r, load.WsClient)]
        return made, [name for name, r in zip(names, results, strict=True) if not isinstance(r, load.WsClient)]

    async def close(self, bench: Bench) -> None:
        """Say whether a server closed receivers on its own (a slow consumer's 4008, say), then close every receiver."""
        for kind, sink in self.sinks.items():
            if sink.close_codes:
                bench.warn(f"{kind} closed receivers during the load: close codes {sink.close_codes}")
        for clients in self.clients.values():
            await load.close_all(clients)


async def saturate(bench: Bench, label: str, servers: list[Server], sink: load.Sink, ids: list[bytes],
                   per_post: int = 1, behind: list[Server] = (), seconds: float | None = None) -> dict:
    """Closed-loop senders (``--senders`` split over ``servers``) for ``seconds`` (``--seconds``); rates and latencies.

    ``behind`` are servers the load does not reach directly (Redis): their
    CPU is measured with the relays'.
    """
    watched = [*servers, *behind]
    options = bench.options
    window_seconds = options.seconds if seconds is None else seconds
    count = len(ids)

    def make(n: int) -> bytes:
        stamp = load.now_us()
        if per_post == 1:
            return load.post_bytes(load.message(ids[n % count], stamp))
        first = (n * per_post) % count
        return load.post_bytes(load.batch([ids[(first + k) % count] for k in range(per_post)], stamp))

    loop = load.ClosedLoop(make)
    # Quiet first: posters opened before a long wait would meet the relay's request timeout (408, closed).
    await bench.quiet(watched)
    pool = []
    for index, server in enumerate(servers):
        share = options.senders // len(servers) + (1 if index < options.senders % len(servers) else 0)
        pool += await load.posters(server.port, max(share, 1), loop.on_reply, 10)
    frames_before = sink.frames
    try:
        loop.start(pool)
        await asyncio.sleep(options.warmup)
        sink.record(load.now_us())
        frames, acked = sink.frames, loop.acked
        with Window(bench, label, watched) as window:
            await asyncio.sleep(window_seconds)
            delivered, acks = sink.frames - frames, loop.acked - acked
        loop.stop()
        await asyncio.sleep(0.05)
        await drain(lambda: sink.frames, frames_before + loop.acked * per_post, 2 * window_seconds + 2)
    finally:
        loop.stop()
        posters_lost = close_posters(bench, label, pool)
    sink.recording = False
    lost = frames_before + loop.acked * per_post - sink.frames
    return {"acked_per_s": round(acks * per_post / window.seconds, 1), "posters_lost": posters_lost,
            "cpu_us_per_delivery": window.cpu_us_per(delivered),
            "delivered_per_s": round(delivered / window.seconds, 1),
            "posts_per_s": round(acks / window.seconds, 1), "refused": loop.refused,
            "undelivered_after_drain": max(lost, 0), **latency_summary(sink.latencies), **window.figures()}


async def fixed_rate(bench: Bench, label: str, server: Server, sink: load.Sink, ids: list[bytes], rate: float) -> dict:
    """POSTs offered at ``rate``/s for ``--seconds``; CPU and POST→frame latency."""
    count = len(ids)
    offered = load.OpenLoop(rate, lambda n, stamp: load.post_bytes(load.message(ids[n % count], stamp)))
    await bench.quiet([server])  # before the posters: see saturate
    pool = await load.posters(server.port, bench.options.pool, offered.on_reply, 10)
    try:
        sink.record(load.now_us())
        with Window(bench, label, [server]) as window:
            await offered.run(pool, bench.options.seconds)
        await drain(lambda: len(sink.latencies), int(rate * bench.options.seconds), 2 * bench.options.seconds + 2)
    finally:
        posters_lost = close_posters(bench, label, pool)
    sink.recording = False
    return {"rate": rate, "achieved_per_s": round(offered.acked / window.seconds, 1), "late": offered.late,
            "posters_lost": posters_lost,
            "refused": offered.refused, "undelivered": offered.sent - len(sink.latencies),
            "cpu_percent": round(window.server_share[0] * 100, 2), **latency_summary(sink.latencies),
            **window.figures()}


async def posts(bench: Bench, wanted: set[str]) -> None:
    """POST→delivery at max (one message per POST), at fixed offered rates, and in batches (relayd only)."""
    options = bench.options
    limit = str(options.receivers + 200)
    servers = {kind: bench.start(kind, "--max-connections", limit) for kind in SERVERS}
    receivers = Receivers()
    try:
        for kind in SERVERS:
            await receivers.connect(bench, kind, [servers[kind]], options.receivers, welcome(kind))
        bench.say(f"post: {options.receivers:,} receivers connected to each server")
        await _post_max(bench, servers, receivers)
        if "rates" in wanted:
            await _rates(bench, servers, receivers)
        if "batch" in wanted:
            await _batch(bench, servers, receivers)
    finally:
        await receivers.close(bench)
        for server in servers.values():
            bench.fleet.stop(server)


async def _post_max(bench: Bench, servers: dict, receivers: Receivers) -> None:
    out = {kind: [] for kind in SERVERS}
    warm_up = bench.results["post_max_warm_up"] = {}
    for kind in SERVERS:  # not counted: a server's first saturating window is not its steady state (aiohttp's is 20 % slower)
        warm_up[kind] = await saturate(bench, f"post max warm-up {kind}", [servers[kind]], receivers.sinks[kind],
                                       receivers.ids[kind], seconds=bench.options.seconds / 2)
    bench.say("post max: each server warmed up by a saturating window of its own (not counted)")
    for _ in range(bench.options.rounds):
        for kind in bench.order():
            figures = await saturate(bench, f"post max {kind}", [servers[kind]], receivers.sinks[kind],
                                     receivers.ids[kind])
            out[kind].append(figures)
            bench.say(f"post max: {kind}: {figures['delivered_per_s']:,.0f} deliveries/s "
                      f"({bench.options.senders} closed-loop senders), server CPU {figures['server_cpu'][0]:.0%}, "
                      f"{figures['cpu_us_per_delivery'] or 0:.0f} µs each, p99 {figures['p99'] or 0:.1f} ms")
    bench.results["post_max"] = out
    rates = {kind: median([r["delivered_per_s"] for r in out[kind]]) for kind in SERVERS}
    bench.results["post_max_median"] = rates
    bench.rows.append(Row("post_max", f"POST→delivery max, one message per POST ({bench.options.senders} senders, "
                                      f"{bench.options.receivers:,} receivers)", "/s",
                          rates["relayd"], rates["aiohttp"], target=(">=", 1.5),
                          cpu_ratio=cpu_ratio(out, "cpu_us_per_delivery")))


def target_rate(rates: list[float]) -> float:
    """The offered rate the targets are judged at: 2,000/s when measured, else the middle one."""
    return 2000 if 2000 in rates else rates[len(rates) // 2]


def _merged(rounds: list[dict], medians: tuple[str, ...], sums: tuple[str, ...]) -> dict:
    """Rounds of one measurement: the medians of ``medians``, the worst max, the sums of ``sums``, and the rounds."""
    merged: dict = {"rounds": rounds}
    for key in medians:
        merged[key] = median([r[key] for r in rounds])
    maxima = [r["max"] for r in rounds if r["max"] is not None]
    merged["max"] = max(maxima) if maxima else None
    for key in sums:
        merged[key] = sum(r[key] for r in rounds)
    return merged


def merge_rounds(rounds: list[dict]) -> dict:
    """One offered rate's rounds for one server: median CPU and quantiles, the worst max, summed counts, and the rounds."""
    merged = _merged(rounds, ("cpu_percent", "achieved_per_s", "p50", "p99", "p999"),
                     ("samples", "late", "undelivered", "refused", "posters_lost"))
    merged["rate"] = rounds[0]["rate"]
    return merged


async def _rates(bench: Bench, servers: dict, receivers: Receivers) -> None:
    """Each offered rate in ``--rounds`` alternating rounds per server: one 5-second window is too noisy here."""
    out = {kind: [] for kind in SERVERS}
    for rate in bench.options.rates:
        rounds = {kind: [] for kind in SERVERS}
        for _ in range(bench.options.rounds):
            for kind in bench.order():
                figures = await fixed_rate(bench, f"rate {rate:g}/s {kind}", servers[kind], receivers.sinks[kind],
                                           receivers.ids[kind], rate)
                rounds[kind].append(figures)
                bench.say(f"rate {rate:,.0f}/s: {kind}: CPU {figures['cpu_percent']:.0f}%, "
                          f"p50 {figures['p50'] or 0:.2f} ms, p99 {figures['p99'] or 0:.2f} ms, "
                          f"p999 {figures['p999'] or 0:.2f} ms, max {figures['max'] or 0:.1f} ms "
                          f"({figures['late']} late, {figures['undelivered']} undelivered)")
        for kind in SERVERS:
            out[kind].append(merge_rounds(rounds[kind]))
    bench.results["rates"] = out
    judged = target_rate(bench.options.rates)
    for n, rate in enumerate(bench.options.rates):
        relayd, aiohttp = out["relayd"][n], out["aiohttp"][n]
        at = judged == rate
        label = f"at {rate:,.0f} POSTs/s"
        bench.rows.append(Row(f"rate_{rate:g}_cpu", f"server CPU {label}", "%", relayd["cpu_percent"],
                              aiohttp["cpu_percent"], target=("<=", 0.7) if at else None))
        for quantile in ("p50", "p99", "p999", "max"):
            target = None
            if at and quantile == "p99":
                target = ("<=", 1.0)
            elif at and quantile == "max":
                target = ("<=", 50.0, "abs")
            bench.rows.append(Row(f"rate_{rate:g}_{quantile}", f"{quantile} POST→frame {label}", "ms",
                                  relayd[quantile], aiohttp[quantile], target=target))


async def _batch(bench: Bench, servers: dict, receivers: Receivers) -> None:
    """
    relayd's batches, each window beside a window of aiohttp at its one-per-POST
    maximum, in alternating order: the ratio is taken from windows seconds
    apart, not against the POST max measured a minute or two before (this
    machine's speed drifts by more than the margins judged).
    """
    size = bench.options.batch_size
    out, beside = [], []
    for _ in range(bench.options.rounds):
        for kind in bench.order():
            if kind == "aiohttp":
                single = await saturate(bench, "batch: aiohttp one per POST", [servers["aiohttp"]],
                                        receivers.sinks["aiohttp"], receivers.ids["aiohttp"])
                beside.append(single)
                bench.say(f"batch: aiohttp: {single['delivered_per_s']:,.0f} deliveries/s one per POST (beside)")
                continue
            figures = await saturate(bench, "batch relayd", [servers["relayd"]], receivers.sinks["relayd"],
                                     receivers.ids["relayd"], per_post=size)
            out.append(figures)
            bench.say(f"batch: relayd: {figures['delivered_per_s']:,.0f} deliveries/s in POSTs of {size}, "
                      f"server CPU {figures['server_cpu'][0]:.0%}, {figures['cpu_us_per_delivery'] or 0:.0f} µs each")
    bench.results["batch"] = out
    bench.results["batch_aiohttp_beside"] = beside
    bench.rows.append(Row("batch", f"batch POSTs of {size}: deliveries/s vs aiohttp's one per POST", "/s",
                          median([r["delivered_per_s"] for r in out]), median([r["delivered_per_s"] for r in beside]),
                          target=(">=", 7.0), note="aiohttp has no batches; its windows alternate with these",
                          cpu_ratio=cpu_ratio({"relayd": out, "aiohttp": beside}, "cpu_us_per_delivery")))



# --- broadcast -----------------------------------------------------------------------------------------------------


async def broadcasts(bench: Bench) -> None:
    """Broadcast deliveries/s to ``--broadcast-receivers`` connections, ``--broadcast-senders`` closed loops."""
    options = bench.options
    servers = {kind: bench.start(kind, "--max-connections", str(options.broadcast_receivers + 200))
               for kind in SERVERS}
    receivers = Receivers("b")
    out = {kind: [] for kind in SERVERS}
    try:
        for kind in SERVERS:
            await receivers.connect(bench, kind, [servers[kind]], options.broadcast_receivers, welcome(kind))
        for _ in range(options.rounds):
            for kind in bench.order():
                figures = await _broadcast_round(bench, kind, servers[kind], receivers.sinks[kind])
                out[kind].append(figures)
                bench.say(f"broadcast: {kind}: {figures['deliveries_per_s']:,.0f} deliveries/s to "
                          f"{options.broadcast_receivers:,} receivers, server CPU {figures['server_cpu'][0]:.0%}, "
                          f"{figures['cpu_us_per_delivery'] or 0:.1f} µs each")
    finally:
        await receivers.close(bench)
        for server in servers.values():
            bench.fleet.stop(server)
    bench.results["broadcast"] = out
    rates = {kind: median([r["deliveries_per_s"] for r in out[kind]]) for kind in SERVERS}
    bench.rows.append(Row("broadcast", f"broadcast deliveries/s ({options.broadcast_receivers:,} receivers)", "/s",
                          rates["relayd"], rates["aiohttp"], target=(">=", 1.2),
                          cpu_ratio=cpu_ratio(out, "cpu_us_per_delivery")))


async def _broadcast_round(bench: Bench, kind: str, server: Server, sink: load.Sink) -> dict:
    options = bench.options
    loop = load.ClosedLoop(lambda n: load.post_bytes(load.broadcast(load.now_us())))
    await bench.quiet([server])  # before the posters: see saturate
    pool = await load.posters(server.port, options.broadcast_senders, loop.on_reply, 10)
    try:
        loop.start(pool)
        await asyncio.sleep(options.warmup)
        frames = sink.frames
        with Window(bench, f"broadcast {kind}", [server]) as window:
            await asyncio.sleep(options.seconds)
            delivered = sink.frames - frames
        loop.stop()
        await drain(lambda: sink.frames, sink.frames + 1, 0.5)
    finally:
        loop.stop()
        posters_lost = close_posters(bench, f"broadcast {kind}", pool)
    return {"deliveries_per_s": round(delivered / window.seconds, 1), "broadcasts": loop.acked,
            "posters_lost": posters_lost,
            "cpu_us_per_delivery": window.cpu_us_per(delivered), **window.figures()}


# --- backends: the SQLite store and Redis ---------------------------------------------------------------------------


async def backends(bench: Bench, wanted: set[str]) -> None:
    """
    Saturating POST load on relayd in memory mode, with ``--store``, and on
    Redis with one and two nodes, in ``--rounds`` alternating rounds (memory
    mode first, then last, ...): the machine's speed moves within minutes
    here, and a ratio of two single windows taken minutes apart measured it
    as much as the broker. The rows compare the rounds' medians.
    """
    kinds = ["memory"]
    if "store" in wanted:
        if bench.fleet.relay_supports("--store"):
            kinds.append("store")
        else:
            why = "this relayd has no --store option (twistd relay --help)"
            bench.say(f"store: {why}")
            bench.rows.append(skipped("store_throughput", "--store PATH (SQLite): throughput vs memory mode", "/s",
                                      why))
    if "redis" in wanted:
        import shutil

        if shutil.which("redis-server") is None:
            why = "redis-server is not installed"
            for nodes in (1, 2):
                bench.rows.append(skipped(f"redis{nodes}_keep_pace", f"Redis, {nodes} node(s): deliveries vs acks",
                                          "/s", why))
        else:
            kinds += ["redis1", "redis2"]
    runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for round_ in range(max(bench.options.rounds, 1)):
        for kind in kinds if round_ % 2 == 0 else kinds[::-1]:
            runs[kind].append(await _backend(bench, kind, round_))
    out = {kind: merge_backend_rounds(rounds) for kind, rounds in runs.items()}
    memory_mode = out["memory"]
    if "store" in out:
        _compare_rows(bench, "store", "--store PATH (SQLite)", out["store"], memory_mode)
    for nodes in (1, 2):
        if f"redis{nodes}" in out:
            _redis_rows(bench, f"redis{nodes}", f"Redis, {nodes} node{'s' if nodes > 1 else ''}",
                        out[f"redis{nodes}"], memory_mode)
    bench.results["backends"] = out


async def _backend(bench: Bench, kind: str, round_: int) -> dict:
    """One saturating window of ``kind`` (memory, store, redis1, redis2) on servers of its own."""
    if kind == "memory":
        return await _backend_run(bench, kind, [()])
    if kind == "store":
        path = bench.fleet.directory / f"store-{round_}.sqlite"
        return await _backend_run(bench, kind, [("--store", str(path))])
    nodes = int(kind[len("redis"):])
    redis = bench.fleet.redis()
    try:
        url = f"redis://127.0.0.1:{redis.port}/0"
        figures = await _backend_run(bench, kind, [("--broker", url)] * nodes, behind=[redis])
        figures["redis_scripts"] = script_cost(redis.port)
        bench.say(f"{kind}: Redis's own time per script call {figures['redis_scripts']['us_per_call'] or 0:.1f} µs "
                  f"over {figures['redis_scripts']['calls']:,} calls")
        return figures
    finally:
        bench.fleet.stop(redis)


def merge_backend_rounds(rounds: list[dict]) -> dict:
    """
    One backend's saturating rounds: median rates, CPU per delivery and
    quantiles, the worst max, summed counts (what was refused, lost or left
    undelivered shows whichever round it was in), keeping pace as the worst
    round kept it (its deliveries and acks, under ``pace``), and the rounds.
    """
    merged = _merged(rounds, ("acked_per_s", "delivered_per_s", "posts_per_s", "cpu_us_per_delivery", "p50", "p99", "p999"),
                     ("samples", "refused", "undelivered_after_drain", "posters_lost"))
    paced = [r for r in rounds if r["keep_pace"] is not None]
    worst = min(paced, key=lambda r: r["keep_pace"]) if paced else rounds[0]
    merged["pace"] = {key: worst[key] for key in ("delivered_per_s", "acked_per_s", "keep_pace")}
    return merged


def script_cost(port: int) -> dict:
    """Redis's own time per script call (``INFO commandstats``: EVAL, EVALSHA, FCALL), and the calls counted."""
    import subprocess

    try:
        stats = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), "INFO", "commandstats"],
                               capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        stats = ""
    calls = usec = 0.0
    for line in stats.splitlines():
        if line.startswith(("cmdstat_evalsha:", "cmdstat_eval:", "cmdstat_fcall:")):
            fields = dict(item.split("=", 1) for item in line.split(":", 1)[1].split(","))
            calls += float(fields["calls"])
            usec += float(fields["usec"])
    return {"calls": int(calls), "us_per_call": round(usec / calls, 1) if calls else None}


async def _backend_run(bench: Bench, label: str, node_args: list[tuple], behind: list[Server] = ()) -> dict:
    options = bench.options
    limit = ("--max-connections", str(options.receivers + 200))
    nodes = [bench.start("relayd", *args, *limit, name=f"{label}{n}") for n, args in enumerate(node_args)]
    receivers = Receivers(f"{label}r")
    try:
        for node in nodes:
            await wait_health(node, 15)
        await receivers.connect(bench, label, nodes, options.receivers, True)
        figures = await saturate(bench, f"{label} saturating", nodes, receivers.sinks[label], receivers.ids[label],
                                 behind=behind)
    finally:
        await receivers.close(bench)
        for node in nodes:
            bench.fleet.stop(node)
    keep_pace = figures["delivered_per_s"] / figures["acked_per_s"] if figures["acked_per_s"] else None
    figures["keep_pace"] = None if keep_pace is None else round(keep_pace, 3)
    bench.say(f"{label}: {len(nodes)} node(s): acks {figures['acked_per_s']:,.0f}/s, deliveries "
              f"{figures['delivered_per_s']:,.0f}/s, p99 {figures['p99'] or 0:.1f} ms, "
              f"{figures['refused']} refused, {figures['undelivered_after_drain']} undelivered after the drain")
    return figures


async def wait_health(server: Server, timeout: float) -> None:
    """Wait (bounded) until ``/health-check`` answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            await asyncio.to_thread(server.health)
            return
        except OSError:
            await asyncio.sleep(0.2)


def _compare_rows(bench: Bench, key: str, label: str, figures: dict, memory_mode: dict) -> None:
    bench.rows.append(Row(f"{key}_throughput", f"{label}: deliveries/s vs memory mode", "/s",
                          figures["delivered_per_s"], memory_mode["delivered_per_s"], baseline_name="memory",
                          cpu_ratio=_cost_ratio(memory_mode, figures)))
    bench.rows.append(Row(f"{key}_p99", f"{label}: p99 POST→frame at saturation vs memory mode", "ms",
                          figures["p99"], memory_mode["p99"], baseline_name="memory"))


def _redis_rows(bench: Bench, key: str, label: str, figures: dict, memory_mode: dict) -> None:
    pace = figures["pace"]  # the worst round's
    bench.rows.append(Row(f"{key}_keep_pace", f"{label}: deliveries/s vs POST acks/s at saturation", "/s",
                          pace["delivered_per_s"], pace["acked_per_s"], baseline_name="acks",
                          target=(">=", 0.95)))
    bench.rows.append(Row(f"{key}_p99", f"{label}: p99 POST→frame at saturation vs memory mode", "ms",
                          figures["p99"], memory_mode["p99"], baseline_name="memory", target=("<=", 3.0)))
    bench.rows.append(Row(f"{key}_throughput", f"{label}: deliveries/s vs memory mode", "/s",
                          figures["delivered_per_s"], memory_mode["delivered_per_s"], baseline_name="memory",
                          target=(">=", 0.5), cpu_ratio=_cost_ratio(memory_mode, figures)))


def _cost_ratio(baseline: dict, figures: dict) -> float | None:
    cost, base = figures.get("cpu_us_per_delivery"), baseline.get("cpu_us_per_delivery")
    return base / cost if cost and base else None
