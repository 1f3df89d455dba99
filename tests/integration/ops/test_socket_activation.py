"""
``--listen systemd:domain=INET:index=0``: a socket passed the way systemd
passes it (fd 3, ``LISTEN_FDS=1``, ``LISTEN_PID`` = the relay's pid) is
served; without one relayd exits with a one-line error, not a traceback.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from websockets.sync.client import connect

from tests.relayproc import ROOT, RelayProcess

pytestmark = pytest.mark.integration

TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"

# What systemd does between fork and exec: the socket becomes fd 3,
# LISTEN_PID names the process that exec() turns into the relay, and
# LISTEN_FDNAMES names each socket (Twisted ignores the sockets without it).
LAUNCHER = """
import os, sys
fd = int(sys.argv[1])
os.dup2(fd, 3)
os.close(fd)
env = dict(os.environ, LISTEN_FDS="1", LISTEN_FDNAMES="relayd.socket", LISTEN_PID=str(os.getpid()))
os.execvpe(sys.executable, [sys.executable, "-c", sys.argv[2], *sys.argv[3:]], env)
"""


def test_socket_activation_serves_the_inherited_socket(tmp_path):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    relay = RelayProcess(log_dir=tmp_path, name="activated")
    log = open(relay.log_path, "wb")
    command = [
        sys.executable, "-c", LAUNCHER, str(listener.fileno()), TWISTD,
        "-n", "--pidfile=", "relay", "--listen", "systemd:domain=INET:index=0",
    ]
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=relay.env, cwd=ROOT, pass_fds=[listener.fileno()]
    )
    listener.close()  # the relay holds the only copy now, as under systemd
    try:
        deadline = time.monotonic() + 15
        while f"listening on 127.0.0.1:{port} (systemd:" not in relay.log():
            assert process.poll() is None, relay.log()
            assert time.monotonic() < deadline, relay.log()
            time.sleep(0.05)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health-check", timeout=10) as response:
            assert json.load(response)["status"] == "ok"
        with connect(f"ws://127.0.0.1:{port}/ws?id=activated") as ws:
            assert json.loads(ws.recv(timeout=10))["client_id"] == "activated"
    finally:
        process.terminate()
        assert process.wait(15) in (0, -15)
        log.close()
    assert "Traceback" not in relay.log()


def test_systemd_endpoint_without_a_socket_is_a_one_line_error(tmp_path):
    relay = RelayProcess(log_dir=tmp_path, listen="systemd:domain=INET:index=0")
    with pytest.raises(RuntimeError, match="exited with 1"):
        relay.start()
    output = relay.log()
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert "systemd passed no socket" in lines[0] and "LISTEN_FDS" in lines[0]


def test_port_in_use_is_a_one_line_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        relay = RelayProcess(log_dir=tmp_path, listen=f"tcp:{port}:interface=127.0.0.1")
        with pytest.raises(RuntimeError, match="exited with 1"):
            relay.start()
    output = relay.log()
    assert "Traceback" not in output
    assert f"relayd: cannot listen on 'tcp:{port}:interface=127.0.0.1'" in output
    assert "Address already in use" in output
