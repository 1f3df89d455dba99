"""
sd_notify: the Notifier alone (a real datagram socket), the service's hooks
in memory (MemoryReactorClock), and a real ``twistd relay`` process telling
a fake service manager READY=1, WATCHDOG=1 and STOPPING=1.
"""

from __future__ import annotations

import json
import os
import secrets
import socket

import pytest
from twisted.internet.testing import MemoryReactorClock
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from relayd.daemon.sdnotify import Notifier
from relayd.daemon.service import RelayService
from relayd.options import Config
from relayd.site import build


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


def test_notifier_without_socket_is_a_no_op():
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.notify("READY=1") is False
    assert notifier.watchdog_interval is None


def test_notifier_survives_a_missing_socket(tmp_path):
    """A manager that went away is logged, never raised into the relay."""
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.ready("up") is False


@pytest.mark.parametrize(
    "environ, interval",
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(environ, interval):
    assert Notifier(dict(environ, NOTIFY_SOCKET="/run/notify")).watchdog_interval == interval


def test_no_watchdog_without_a_notify_socket():
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval is None


class RecordingNotifier(Notifier):
    """A Notifier that records instead of sending."""

    def __init__(self, environ):
        super().__init__(environ)
        self.sent: list[tuple[str, ...]] = []

    def notify(self, *states: str) -> bool:
        self.sent.append(states)
        return True


def test_service_notifies_ready_watchdog_and_stopping_in_memory():
    reactor = MemoryReactorClock()
    config = Config(listen=["tcp:0:interface=127.0.0.1"], monitor_interval=0)
    notifier = RecordingNotifier({"NOTIFY_SOCKET": "/run/notify", "WATCHDOG_USEC": "4000000"})
    service = RelayService(build(config, reactor), reactor, notifier)
    service.startService()
    assert any(s[0] == "READY=1" and s[1].startswith("STATUS=listening on ") for s in notifier.sent)
    notifier.sent.clear()
    reactor.advance(2.0)
    reactor.advance(2.0)
    assert notifier.sent.count(("WATCHDOG=1",)) == 2
    service.stopService()
    assert notifier.sent[-1][0] == "STOPPING=1"


def test_service_without_watchdog_has_no_watchdog_timer():
    reactor = MemoryReactorClock()
    config = Config(listen=["tcp:0:interface=127.0.0.1"], monitor_interval=0)
    notifier = RecordingNotifier({})
    service = RelayService(build(config, reactor), reactor, notifier)
    service.startService()
    notifier.sent.clear()
    reactor.advance(60)
    assert notifier.sent == []
    service.stopService()


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
