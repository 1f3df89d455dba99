"""
systemd's readiness protocol (``sd_notify``) in a few lines of stdlib.

Under ``Type=notify`` systemd hands the service ``$NOTIFY_SOCKET``, a UNIX
datagram socket (a leading ``@`` names one in the abstract namespace).
relayd sends ``READY=1`` once it is listening, ``STOPPING=1`` when it begins
its graceful stop, and, when the unit sets ``WatchdogSec=`` (systemd then
sets ``$WATCHDOG_USEC``), ``WATCHDOG=1`` at half that period. Without
``$NOTIFY_SOCKET`` every call is a no-op, so the same code runs under any
supervisor.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from twisted.logger import Logger

log = Logger(namespace="relayd.sdnotify")


def _address(value: str) -> str | bytes:
    """The socket address for a ``$NOTIFY_SOCKET`` value."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode("utf-8")
    return value


class Notifier:
    """Sends state changes to the service manager named by the environment."""

    def __init__(self, environ: Mapping[str, str] | None = None):
        environ = os.environ if environ is None else environ
        self.socket_name = environ.get("NOTIFY_SOCKET") or None
        self.watchdog_interval = _watchdog_interval(environ) if self.socket_name else None

    @property
    def enabled(self) -> bool:
        """True when a service manager listens for notifications."""
        return self.socket_name is not None

    def notify(self, *states: str) -> bool:
        """
        Send ``states`` (``"READY=1"``, ``"STATUS=…"``) as one datagram.

        Returns True when it was sent; a failure is logged, never raised: the
        relay keeps serving whatever happens to its supervisor.
        """
        if self.socket_name is None:
            return False
        payload = "\n".join(states).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(payload, _address(self.socket_name))
        except OSError as error:
            log.warn("cannot notify {socket}: {error}", socket=self.socket_name, error=error)
            return False
        return True

    def ready(self, status: str) -> bool:
        """Tell the manager start-up is done."""
        return self.notify("READY=1", f"STATUS={status}")

    def stopping(self) -> bool:
        """Tell the manager the graceful stop has begun."""
        return self.notify("STOPPING=1", "STATUS=stopping: closing connections with 1001")

    def watchdog(self) -> bool:
        """Tell the manager the reactor is still turning."""
        return self.notify("WATCHDOG=1")


def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """
    Seconds between ``WATCHDOG=1`` pings: half of ``$WATCHDOG_USEC``, or None
    when there is no watchdog for this process (``$WATCHDOG_PID`` names
    another one).
    """
    raw = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(raw)
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None
