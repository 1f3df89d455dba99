"""
The one change relayd makes to Autobahn, applied once at start-up by the
composition root (:func:`install`).

Autobahn pretty-prints every protocol option for a debug line on every new
connection, whether or not debug logging is on: about 130 us per handshake
here. :func:`install` makes that formatting lazy (the debug line reads the
same when it is really written), and keeps ``Timings.__str__``, which
shares the module's ``pformat``, returning a string.
"""

from __future__ import annotations

from pprint import pformat

from autobahn.websocket import protocol


class LazyFormat:
    """``pformat(value)``, computed only if a log line is really written."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __str__(self) -> str:
        return pformat(self.value)


def _timings_str(timings: protocol.Timings) -> str:
    return pformat(timings._timings)


def install() -> None:
    """Make Autobahn's per-connection option dump lazy (idempotent)."""
    protocol.pformat = LazyFormat
    protocol.Timings.__str__ = _timings_str
