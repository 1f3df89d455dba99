"""
The changes relayd makes to Autobahn, applied once at start-up by the
composition root (:func:`install`).

Autobahn formats the arguments of its debug lines whether or not debug
logging is on: it pretty-prints every protocol option on every new
connection (about 130 us per handshake here) and colours type and value
names (``hltype``/``hlval``, five times per connection). :func:`install`
makes that formatting lazy: a debug line reads the same when it is really
written, and costs nothing when it is not. ``Timings.__str__``, which
shares the module's ``pformat``, still returns a string.
"""

from __future__ import annotations

from collections.abc import Callable
from pprint import pformat

from autobahn import util
from autobahn.twisted import websocket as twisted_websocket
from autobahn.websocket import protocol


class Lazy:
    """``format(*args)``, computed only if a log line is really written."""

    __slots__ = ("format", "args")

    def __init__(self, format: Callable[..., str], *args: object):
        self.format = format
        self.args = args

    def __str__(self) -> str:
        return self.format(*self.args)

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def _lazily(format: Callable[..., str]) -> Callable[..., Lazy]:
    def lazy(*args: object) -> Lazy:
        return Lazy(format, *args)

    lazy.__name__ = format.__name__
    return lazy


def _timings_str(timings: protocol.Timings) -> str:
    return pformat(timings._timings)


def install() -> None:
    """Make Autobahn's debug-line formatting lazy (idempotent)."""
    protocol.pformat = _lazily(pformat)
    protocol.Timings.__str__ = _timings_str
    for module in (protocol, twisted_websocket):
        module.hltype = _lazily(util.hltype)
        module.hlval = _lazily(util.hlval)
