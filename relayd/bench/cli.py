"""
``python -m relayd.bench``: relayd against the aiohttp reference relay, side by side, in one command.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from relayd.bench import report, scenarios
from relayd.bench.procs import ROOT, Fleet, raise_open_files

SCENARIOS = ("memory", "idle", "handshakes", "post", "rates", "batch", "broadcast", "store", "redis", "soak")
DEFAULT = tuple(s for s in SCENARIOS if s != "soak")
QUICK = {"steps": [500, 2000], "idle_connections": 2000, "idle_seconds": 3.0, "seconds": 2.0, "rounds": 1,
         "receivers": 200, "rates": [500.0, 2000.0], "broadcast_receivers": 500, "soak_seconds": 30.0}


def numbers(kind):
    """An argparse type: a comma-separated list of ``kind``."""
    return lambda text: [kind(item) for item in text.split(",") if item]


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m relayd.bench", description=__doc__.strip().split("\n")[0].strip("`"),
                                epilog=f"scenarios: {', '.join(SCENARIOS)} (all but soak by default)")
    p.add_argument("--only", type=lambda t: [s.strip() for s in t.split(",") if s.strip()],
                   help="comma-separated scenarios to run")
    p.add_argument("--quick", action="store_true", help="small sizes and short windows (about two minutes)")
    p.add_argument("--json", type=Path, help="write every figure as JSON here")
    p.add_argument("--plot", type=Path, help="draw p50/p99 latency against offered load into this PNG")
    p.add_argument("--soak-plot", type=Path, help="draw the soak's RSS and open files into this PNG")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown too")
    p.add_argument("--update-doc", type=Path,
                   help="replace the machine line, table, memory and soak sections between <!-- bench:NAME --> markers")
    p.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin servers and load to CPUs")
    p.add_argument("--cpus", type=numbers(int), default=[0, 1], metavar="SERVER,LOAD",
                   help="the CPU for every server and the one for the load generator (default 0,1)")
    p.add_argument("--keep-logs", action="store_true", help="keep the servers' logs (their directory is printed)")
    p.add_argument("--time-limit", type=float, default=1500.0, help="abort the whole run after this many seconds")
    p.add_argument("--quiet-wait", type=float, default=10.0,
                   help="before each measurement, wait up to this long for other processes to leave the server CPU")
    p.add_argument("--quiet-budget", type=float, default=90.0, help="seconds of such waiting in the whole run")
    sizes = p.add_argument_group("sizes")
    sizes.add_argument("--steps", type=numbers(int), default=[1000, 10000, 19000], help="connections held for memory")
    sizes.add_argument("--idle-connections", type=int, default=10000)
    sizes.add_argument("--ping-interval", type=float, default=5.0, help="ping interval (and aiohttp heartbeat) for idle")
    sizes.add_argument("--idle-seconds", type=float, default=10.0, help="how long idle CPU is measured")
    sizes.add_argument("--seconds", type=float, default=5.0, help="measurement window of each load step")
    sizes.add_argument("--warmup", type=float, default=0.5, help="load before each saturating window starts")
    sizes.add_argument("--rounds", type=int, default=2, help="alternating rounds of handshakes, POST max, fixed rates, broadcast, store and Redis")
    sizes.add_argument("--in-flight", type=int, default=50, help="concurrent handshakes")
    sizes.add_argument("--receivers", type=int, default=1000)
    sizes.add_argument("--senders", type=int, default=32, help="closed-loop POST senders")
    sizes.add_argument("--pool", type=int, default=64, help="keep-alive connections of the fixed-rate load")
    sizes.add_argument("--rates", type=numbers(float), default=[500.0, 1000.0, 2000.0, 4000.0], help="offered POSTs/s")
    sizes.add_argument("--batch-size", type=int, default=100)
    sizes.add_argument("--broadcast-receivers", type=int, default=2000)
    sizes.add_argument("--broadcast-senders", type=int, default=4)
    sizes.add_argument("--open-timeout", type=float, default=120.0, help="bound on opening a group of connections")
    sizes.add_argument("--soak-seconds", type=float, default=180.0)
    sizes.add_argument("--soak-clients", type=int, default=200)
    sizes.add_argument("--soak-rate", type=float, default=200.0, help="POSTs/s during the soak")
    sizes.add_argument("--soak-cut", type=float, default=0.3, help="fraction of soak connections cut by a reset")
    sizes.add_argument("--soak-interval", type=float, default=5.0, help="seconds between soak samples")
    return p


def options(argv=None) -> argparse.Namespace:
    """Parsed options, with ``--quick`` sizes applied where not given explicitly."""
    p = parser()
    if p.parse_known_args(argv)[0].quick:
        p.set_defaults(**QUICK)
    args = p.parse_args(argv)
    wanted = args.only or list(DEFAULT)
    unknown = [s for s in wanted if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    args.wanted = set(wanted)
    args.steps = sorted(args.steps)
    return args


def pin(enabled: bool, cpus: list[int]) -> tuple[int | None, str]:
    """Pin this process to the load CPU; the CPU for servers and a description."""
    available = sorted(os.sched_getaffinity(0))
    if not enabled:
        return None, "not pinned (--no-pin)"
    server, load = (cpus + [None, None])[:2]
    if server not in available or load not in available or server == load:
        return None, f"not pinned: CPUs {server} and {load} are not two of the available {available}"
    os.sched_setaffinity(0, {load})
    return server, f"servers on CPU {server}, load generator on CPU {load}"


def machine() -> dict:
    """What the figures were measured on."""
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {}
    for name in ("twisted", "autobahn", "aiohttp", "uvloop", "matplotlib"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:  # noqa: BLE001 - not installed
            versions[name] = None
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=5).stdout.strip()
    except OSError:
        commit = ""
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release(),
            "versions": versions, "commit": commit, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


async def run(bench: scenarios.Bench) -> bool:
    """Every wanted scenario, in a fixed order; whether all of them ran through.

    A scenario that fails is reported and the others still run: its rows
    are missing from the table.
    """
    from relayd.bench import soak

    wanted = bench.options.wanted
    groups = [
        ("memory", {"memory"}, scenarios.memory),
        ("idle", {"idle"}, scenarios.idle),
        ("handshakes", {"handshakes"}, scenarios.handshakes),
        ("post", {"post", "rates", "batch"}, lambda b: scenarios.posts(b, wanted)),
        ("broadcast", {"broadcast"}, scenarios.broadcasts),
        ("store/redis", {"store", "redis"}, lambda b: scenarios.backends(b, wanted)),
        ("soak", {"soak"}, soak.soak),
    ]
    clean = True
    for name, names, scenario in groups:
        if not wanted & names:
            continue
        try:
            await scenario(bench)
        except Exception as error:  # noqa: BLE001 - one scenario's failure must not lose the others' figures
            clean = False
            bench.warn(f"{name} failed: {type(error).__name__}: {error}")
            traceback.print_exc()
    return clean


def _loop_runner():
    try:
        import uvloop
    except ImportError:
        return asyncio.run, "asyncio (uvloop not installed: pip install '.[bench]')"
    return uvloop.run, f"uvloop {uvloop.__version__}"


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    """Run, print the table, write what was asked for; 0, or 1 when a scenario failed or the run was cut short."""
    args = options(argv)
    server_cpu, pinning = pin(args.pin, args.cpus)
    raise_open_files()
    runner, loop_name = _loop_runner()
    fleet = Fleet(server_cpu, keep_logs=args.keep_logs)
    bench = scenarios.Bench(args, fleet)
    signal.signal(signal.SIGTERM, _interrupt)
    bench.say(f"relayd.bench: {', '.join(s for s in SCENARIOS if s in args.wanted)}; {pinning}; load on {loop_name}")
    complete = False
    try:
        complete = runner(asyncio.wait_for(run(bench), args.time_limit))
    except (KeyboardInterrupt, TimeoutError) as error:
        bench.warn(f"run cut short ({type(error).__name__}): the table has what was measured")
    finally:
        fleet.close()
        if args.keep_logs:
            print(f"server logs: {fleet.directory}")
    _output(bench, args, pinning, loop_name)
    return 0 if complete else 1


def _output(bench: scenarios.Bench, args, pinning: str, loop_name: str) -> None:
    meta = {"machine": machine(), "pinning": pinning, "load_loop": loop_name, "crowded": bench.crowded,
            "seconds": round(time.monotonic() - bench.started, 1), "scenarios": sorted(args.wanted),
            "options": {k: v for k, v in vars(args).items() if k not in ("wanted",)}}
    print()
    print(report.text_table(bench.rows))
    for warning in bench.warnings:
        print(f"warning: {warning}")
    if bench.crowded:
        worst = max(share for _, share in bench.crowded)
        print(f"warning: other processes took more than {scenarios.CROWDED:.0%} of the server CPU during "
              f"{len(bench.crowded)} measurements (up to {worst:.0%}): their wall-clock rates and latencies are "
              f"the neighbours' as much as the servers'; the by-CPU-time ratios hold better "
              f"({', '.join(label for label, _ in bench.crowded)})")
    if args.markdown:
        print()
        print(report.markdown_table(bench.rows))
    if args.json:
        report.write_json(args.json, meta, bench.rows, bench.results, bench.warnings)
        print(f"JSON written to {args.json}")
    if args.plot and "rates" in bench.results:
        print(report.plot_latency(args.plot, bench.results["rates"]))
    soak_plot = args.soak_plot or (args.plot.with_name(args.plot.stem + "-soak.png") if args.plot else None)
    if soak_plot and "soak" in bench.results:
        print(report.plot_soak(soak_plot, bench.results["soak"]["series"]))
    if args.update_doc:
        _update_doc(bench, args.update_doc, meta, pinning, loop_name)


def _update_doc(bench: scenarios.Bench, path: Path, meta: dict, pinning: str, loop_name: str) -> None:
    machine_line = (f"Measured {meta['machine']['date']} at commit `{meta['machine']['commit']}` on "
                    f"{meta['machine']['cores']} × {meta['machine']['cpu']} (Python {meta['machine']['python']}, "
                    f"Linux {meta['machine']['kernel']}); {pinning}; load generator on {loop_name}; "
                    f"the run took {meta['seconds']:.0f} s.")
    if bench.crowded:
        machine_line += (f" Other processes took more than {scenarios.CROWDED:.0%} of the server CPU during "
                         f"{len(bench.crowded)} of the measurements.")
    sections = {}
    if bench.options.wanted >= set(DEFAULT):
        sections = {"machine": machine_line, "table": report.markdown_table(bench.rows)}
    elif bench.options.wanted - {"soak"}:
        print(f"{path}: the table is left alone: only a run of every scenario ({', '.join(DEFAULT)}) replaces it")
    if "soak" in bench.results:
        sections["soak"] = f"{machine_line}\n\n{report.soak_table(bench.results['soak'])}"
    if "memory" in bench.results:
        sections["memory"] = report.memory_table(bench.results["memory"])
    done = report.update_doc(path, sections)
    print(f"{path}: replaced {', '.join(done) or 'nothing (no <!-- bench:NAME --> markers)'}")


if __name__ == "__main__":
    sys.exit(main())
