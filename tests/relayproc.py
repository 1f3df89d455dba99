"""
Start real ``twistd relay`` processes on loopback for integration tests.

Each process listens on ``tcp:0`` and the test reads the port from the
``listening on`` log line, as an operator would.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on (?:127\.0\.0\.1|\[::1\]|localhost):(\d+)")


class RelayProcess:
    """One running relay: its port, its log, and how to stop it."""

    def __init__(self, args=(), env=None, log_dir=None, name="relay", listen="tcp:0:interface=127.0.0.1", preexec=None):
        self.args = list(args)
        self.env = dict(os.environ, **(env or {}))
        self.env["PYTHONPATH"] = str(ROOT) + os.pathsep + self.env.get("PYTHONPATH", "")
        self.listen = listen
        self.log_path = Path(log_dir or "/tmp") / f"{name}-{os.getpid()}-{time.monotonic_ns()}.log"
        self.process = None
        self.port = None
        self.preexec = preexec

    def start(self, timeout: float = 15.0) -> RelayProcess:
        """Start the process and wait for its ``listening on`` line."""
        command = [
            sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0]='twistd'; run()",
            "-n", "--pidfile=", "relay", "--listen", self.listen, *self.args,
        ]
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT,
                                        preexec_fn=self.preexec)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = LISTENING.search(self.log())
            if match:
                self.port = int(match.group(1))
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"relay exited with {self.process.returncode}:\n{self.log()}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"relay did not start listening:\n{self.log()}")

    def log(self) -> str:
        """Everything the process has logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def http(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        """``ws://127.0.0.1:PORT``."""
        return f"ws://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
        finally:
            self._log.close()

    def request(self, method: str, path: str, body=None, headers=None, raw: bytes | None = None):
        """An HTTP request; returns ``(status, headers, parsed JSON or text)``."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        all_headers = {"Content-Type": "application/json"} if data is not None else {}
        all_headers.update(headers or {})
        req = urllib.request.Request(self.http + path, data=data, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                return response.status, response.headers, _decode(response.read(), response.headers)
        except urllib.error.HTTPError as error:
            return error.code, error.headers, _decode(error.read(), error.headers)

    def send(self, body, headers=None):
        """``POST /send-message``; returns ``(status, reply)``."""
        status, _, reply = self.request("POST", "/send-message", body, headers)
        return status, reply

    def health(self):
        """``GET /health-check`` as ``(status, reply)``."""
        status, _, reply = self.request("GET", "/health-check")
        return status, reply


def _decode(data: bytes, headers):
    if "json" in (headers.get("Content-Type") or ""):
        return json.loads(data)
    return data.decode("utf-8", "replace")
