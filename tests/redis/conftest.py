"""
Fixtures for the Redis broker tests.

``shared_redis`` is the Redis on 127.0.0.1:6379 (``make test`` starts it),
used with a key prefix of the test's own that is deleted afterwards.
``private_redis`` is a ``redis-server`` the test starts on a free port (with
an append-only file, so a restart keeps the data) and may kill and restart.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid

import pytest

SHARED_PORT = 6379
CLEANUP = "local n = 0 for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) n = n + 1 end return n"


def redis_cli(port: int, *args: str) -> str:
    """Run ``redis-cli`` against 127.0.0.1:``port``; its output."""
    result = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True, text=True, timeout=10,
    )
    return result.stdout.strip()


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateRedis:
    """A redis-server of the test's own, which it may kill and start again."""

    def __init__(self, directory, *options: str):
        self.directory = directory
        self.options = options or ("--appendonly", "yes", "--appendfsync", "always")
        self.port = free_port()
        self.log_path = directory / f"redis-{self.port}.log"
        self.process = None

    @property
    def url(self) -> str:
        """The ``--broker`` URL for it."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        """Start (or start again, with the same data) and wait until it answers."""
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--save", "", *self.options, "--daemonize", "no", "--logfile", str(self.log_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while redis_cli(self.port, "ping") != "PONG":
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.05)
        return self

    def log(self) -> str:
        """What redis-server has logged."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: Redis goes away at once, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def shared_redis():
    """``(url, prefix)`` on the shared Redis; the prefix's keys are deleted afterwards."""
    if shutil.which("redis-cli") is None or redis_cli(SHARED_PORT, "ping") != "PONG":
        pytest.skip("no Redis on 127.0.0.1:6379 (make test starts one)")
    prefix = f"relayd-test-{uuid.uuid4().hex[:12]}:"
    yield f"redis://127.0.0.1:{SHARED_PORT}/0?prefix={prefix}", prefix
    redis_cli(SHARED_PORT, "EVAL", CLEANUP, "0", prefix + "*")


@pytest.fixture
def private_redis(tmp_path):
    """A PrivateRedis, started; killed when the test ends."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(tmp_path).start()
    yield server
    server.kill()


@pytest.fixture
def small_buffer_redis(tmp_path):
    """A PrivateRedis (no persistence) that cuts a subscriber past 64 KiB of unsent pub/sub output."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(tmp_path, "--appendonly", "no", "--client-output-buffer-limit", "pubsub 64kb 32kb 1").start()
    yield server
    server.kill()
