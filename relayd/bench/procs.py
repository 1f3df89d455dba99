"""
The processes a benchmark starts (relayd, the aiohttp relay, redis-server) and what it reads of them.

Every process is started in its own session, pinned to the server CPU, with
its open-file soft limit raised to the hard limit and ``PR_SET_PDEATHSIG``
set, so that it dies with the benchmark even when the benchmark is killed;
:class:`Fleet` stops all of them at the end of a run, whatever ends it.
"""

from __future__ import annotations

import ctypes
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
LISTENING = re.compile(r"listening on (?:127\.0\.0\.1|localhost):(\d+)")
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
PR_SET_PDEATHSIG = 1
CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def raise_open_files() -> int:
    """Raise this process's open-file soft limit to its hard limit; the limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def pinning(cpu: int | None):
    """A ``preexec_fn``: pin to ``cpu``, raise the fd limit, die with the parent."""

    def prepare() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        raise_open_files()
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass

    return prepare


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def cpu_busy_seconds(cpu: int) -> float:
    """Seconds CPU ``cpu`` has run processes (user, nice, system) or lost them to the hypervisor (steal)."""
    with open("/proc/stat") as stat:
        for line in stat:
            if line.startswith(f"cpu{cpu} "):
                user, nice, system, _, _, _, _, steal = (int(v) for v in line.split()[1:9])
                return (user + nice + system + steal) / CLOCK_TICK
    return 0.0


def rss_kb(pid: int) -> int:
    """Resident memory of ``pid`` in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def open_files(pid: int) -> int:
    """How many file descriptors ``pid`` holds."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def settled_rss_kb(pid: int, tries: int = 20, pause: float = 0.25) -> int:
    """RSS once it stops moving (the process finished its work), in KiB."""
    last = rss_kb(pid)
    for _ in range(tries):
        time.sleep(pause)
        now = rss_kb(pid)
        if now == last:
            return now
        last = now
    return last


class Server:
    """One server process: its name, port, pid, log, and how to stop it."""

    def __init__(self, name: str, command: list[str], log_dir: Path, cpu: int | None, port: int | None = None,
                 env: dict | None = None):
        self.name = name
        self.command = command
        self.log_path = log_dir / f"{name}.log"
        self.cpu = cpu
        self.port = port
        self.env = env
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        """The process id."""
        return self.process.pid

    def start(self, timeout: float = 20.0) -> Server:
        """Start, and wait until it listens (its ``listening on`` line, or its port answering)."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            cwd=ROOT, env=self.env, start_new_session=True,
                                            preexec_fn=pinning(self.cpu))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            if self._listening():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not start listening:\n{self.log()[-3000:]}")

    def _listening(self) -> bool:
        if self.port is None:
            match = LISTENING.search(self.log())
            if match:
                self.port = int(match.group(1))
            return match is not None
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def log(self) -> str:
        """What the process has written so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.process is not None and self.process.poll() is None

    def cpu_seconds(self) -> float:
        """CPU seconds used so far."""
        return cpu_seconds(self.pid)

    def rss_kb(self) -> int:
        """Resident memory in KiB."""
        return rss_kb(self.pid)

    def health(self, timeout: float = 5.0) -> dict:
        """``GET /health-check`` as parsed JSON."""
        import json

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health-check", timeout=timeout) as reply:
            return json.loads(reply.read())

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        if not self.alive():
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def kill(self) -> None:
        """SIGKILL at once."""
        if self.alive():
            self.process.kill()
            self.process.wait(5)


class Fleet:
    """Starts servers into one scratch directory and stops every one of them on :meth:`close`."""

    def __init__(self, server_cpu: int | None, keep_logs: bool = False):
        self.server_cpu = server_cpu
        self.directory = Path(tempfile.mkdtemp(prefix="relayd-bench-"))
        self.keep_logs = keep_logs
        self.servers: list[Server] = []
        self._count = 0
        self._help: str | None = None

    def _name(self, name: str) -> str:
        self._count += 1
        return f"{self._count:02d}-{name}"

    def _start(self, server: Server) -> Server:
        self.servers.append(server)
        return server.start()

    def relayd(self, *args: str, name: str = "relayd") -> Server:
        """``twistd -n --pidfile= relay --listen tcp:0:interface=127.0.0.1 ARGS``."""
        command = [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "relay",
                   "--listen", "tcp:0:interface=127.0.0.1", *args]
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        return self._start(Server(self._name(name), command, self.directory, self.server_cpu, env=env))

    def aiohttp(self, heartbeat: float = 25.0, name: str = "aiohttp") -> Server:
        """The reference relay (``relayd.bench.reference_aiohttp``)."""
        command = [sys.executable, "-m", "relayd.bench.reference_aiohttp", "--port", "0", "--heartbeat", str(heartbeat)]
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        return self._start(Server(self._name(name), command, self.directory, self.server_cpu, env=env))

    def redis(self, name: str = "redis") -> Server:
        """A private ``redis-server`` on a free port, keeping nothing on disk."""
        port = free_port()
        command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                   "--dir", str(self.directory)]
        return self._start(Server(self._name(name), command, self.directory, self.server_cpu, port=port))

    def relay_supports(self, option: str) -> bool:
        """Whether ``twistd relay --help`` lists ``option`` (e.g. ``--store``)."""
        if self._help is None:
            env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
            done = subprocess.run([sys.executable, "-c", TWISTD, "relay", "--help"], capture_output=True, text=True,
                                  cwd=ROOT, env=env, timeout=60)
            self._help = done.stdout + done.stderr
        return re.search(rf"{re.escape(option)}[=\s]", self._help) is not None

    def stop(self, server: Server) -> None:
        """Stop one server now."""
        server.stop()

    def close(self) -> None:
        """Stop every server still running; remove the scratch directory unless logs are kept."""
        for server in self.servers:
            try:
                server.stop(timeout=5)
            except Exception:  # noqa: BLE001 - keep stopping the others
                server.kill()
        if not self.keep_logs:
            for path in sorted(self.directory.rglob("*"), reverse=True):
                path.unlink() if path.is_file() else path.rmdir()
            self.directory.rmdir()
