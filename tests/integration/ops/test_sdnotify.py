"""
sd_notify for real: the Notifier on a real datagram socket, and a real
``twistd relay`` process telling a fake service manager READY=1, WATCHDOG=1
and STOPPING=1 (the hooks in memory: tests/unit/test_sdnotify.py).
"""

from __future__ import annotations

import json
import secrets
import socket

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from relayd.daemon.sdnotify import Notifier


@pytest.fixture
def manager(tmp_path):
    """A UNIX datagram socket standing in for systemd's notify socket."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    yield str(path), sock
    sock.close()


def states(sock) -> dict[str, str]:
    """One notification as a dict of its ``KEY=value`` lines."""
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n"))


def until(sock, key: str) -> dict[str, str]:
    """Read notifications until one sets ``key``; return it."""
    for _ in range(50):
        received = states(sock)
        if key in received:
            return received
    raise AssertionError(f"no {key} notification")


def test_notifier_sends_one_datagram(manager):
    path, sock = manager
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("listening on 127.0.0.1:1")
    assert states(sock) == {"READY": "1", "STATUS": "listening on 127.0.0.1:1"}
    assert notifier.stopping()
    assert states(sock)["STOPPING"] == "1"
    assert notifier.watchdog()
    assert states(sock) == {"WATCHDOG": "1"}


def test_notifier_abstract_namespace():
    name = f"relayd-test-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(10)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready("up")
        assert states(sock)["READY"] == "1"




def test_notifier_survives_a_missing_socket(tmp_path):
    """A manager that went away is logged, never raised into the relay."""
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.ready("up") is False












@pytest.mark.integration
def test_real_relay_tells_the_manager(manager, start_relay):
    path, sock = manager
    relay = start_relay(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    ready = until(sock, "READY")
    assert ready["STATUS"] == f"listening on 127.0.0.1:{relay.port}"
    assert until(sock, "WATCHDOG") == {"WATCHDOG": "1"}
    with connect(f"{relay.ws}/ws?id=sd-alice") as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "welcome"
        assert relay.stop() in (0, -15)  # twistd ends by re-raising SIGTERM
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd.code == 1001
    assert until(sock, "STOPPING")["STOPPING"] == "1"
    assert "Traceback" not in relay.log()
