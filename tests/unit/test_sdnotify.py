"""sd_notify in memory: the Notifier without a socket, the watchdog interval,
and the service's hooks on a MemoryReactorClock.

A real datagram socket and a real relay: tests/integration/ops/test_sdnotify.py.
"""

from __future__ import annotations

import gc
import os
import weakref

import pytest
from twisted.internet.testing import MemoryReactorClock

from relayd.daemon.sdnotify import Notifier
from relayd.daemon.service import RelayService
from relayd.options import Config
from relayd.site import build


def test_notifier_without_socket_is_a_no_op():
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.notify("READY=1") is False
    assert notifier.watchdog_interval is None


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


class _Cycle:
    """An object in a reference cycle: only the collector frees it."""

    def __init__(self):
        self.itself = self


def test_starting_freezes_what_start_up_made_and_collects_garbage_first():
    reactor = MemoryReactorClock()
    service = RelayService(build(Config(listen=["tcp:0:interface=127.0.0.1"], monitor_interval=0), reactor),
                           reactor, RecordingNotifier({}))
    garbage = weakref.ref(_Cycle())
    gc.unfreeze()
    service.startService()
    assert gc.get_freeze_count() > 1000  # modules, classes, the site
    assert garbage() is None  # collected, not frozen for ever
    service.stopService()
