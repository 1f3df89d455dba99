"""
The reactor's poll step without Twisted's per-event logging context.

Twisted's epoll reactor hands every ready descriptor to its handler through
``log.callWithLogger``: a legacy logging context (the ``system`` prefix of
old-style ``log.msg`` lines) set up and torn down around each event, four
Python calls deep, some 3 % of the CPU at 2,000 POSTs/s. relayd logs with
``twisted.logger``, which never reads that context; :func:`lean_poll`
replaces the step on the reactor instance the composition root runs, with
the same dispatch (the reactor's own ``_doReadOrWrite``, which already
turns a handler's exception into a lost connection) and the same last
guard: an error escaping it is logged and the loop goes on.

It also takes the end of a turn from the reactor's own loop: given
``turn_end``, the step runs it before it polls (after the turn's events and
the timed calls that were due), so that what the turn gathered to write
leaves before the reactor sleeps, without a ``callLater(0)`` a turn to get
there (a DelayedCall made, sorted in and run: 2.2 µs against 0.2 µs, at
2,000 POSTs/s about one per POST).

And it asks how long it may sleep without the two builtin calls Twisted's
``ReactorBase.timeout`` clamps the delay with (``max(0, min(longest,
delay))``: in 3.11 each parses its arguments as keywords, about 900
instructions, and a turn asks once or twice): the same bounds, compared.
"""

from __future__ import annotations

import errno
import types
from collections.abc import Callable
from functools import partial

from twisted.internet.epollreactor import EPollReactor
from twisted.logger import Logger

log = Logger(namespace="relayd")


def lean_poll(reactor: object, turn_end: Callable[[], bool] | None = None) -> bool:
    """
    Make ``reactor`` (an epoll reactor) poll without the per-event context,
    running ``turn_end`` (which says whether it did anything) before each
    poll; whether it was one.
    """
    if not isinstance(reactor, EPollReactor):
        return False
    step = types.MethodType(_do_poll if turn_end is None else partial(_end_then_poll, turn_end=turn_end), reactor)
    reactor.doIteration = reactor.doPoll = step  # type: ignore[method-assign]
    reactor.timeout = types.MethodType(_timeout, reactor)  # type: ignore[method-assign]
    return True


LONGEST_SLEEP = 2147483
"""Seconds epoll_wait can be asked to sleep (its timeout is a C int of milliseconds), as Twisted bounds it."""


def _timeout(self: EPollReactor) -> float | None:
    """ReactorBase.timeout: how long the reactor may sleep before its next timed call (None: no timed call)."""
    self._insertNewDelayedCalls()
    pending = self._pendingTimedCalls
    if not pending:
        return None
    delay = pending[0].time - self.seconds()
    if delay < 0:
        return 0
    return delay if delay < LONGEST_SLEEP else LONGEST_SLEEP


def _end_then_poll(self: EPollReactor, timeout: float | None, turn_end: Callable[[], bool]) -> None:
    """``turn_end``, then the poll, no longer than until a call ``turn_end`` may have scheduled."""
    if turn_end():
        due = self.timeout()
        if due is not None and (timeout is None or due < timeout):
            timeout = due
    _do_poll(self, timeout)


def _do_poll(self: EPollReactor, timeout: float | None) -> None:
    """EPollReactor.doPoll, calling ``_doReadOrWrite`` directly."""
    try:
        events = self._poller.poll(-1 if timeout is None else timeout, len(self._selectables))
    except OSError as error:
        if error.errno == errno.EINTR:
            return
        raise
    selectables, dispatch = self._selectables, self._doReadOrWrite
    for fd, event in events:
        selectable = selectables.get(fd)
        if selectable is not None:
            try:
                dispatch(selectable, fd, event)
            except Exception:  # noqa: BLE001 - what callWithLogger does: log it, serve the others
                log.failure("error handling {selectable}", selectable=selectable)
