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

Two more steps of each turn go the same way. The reactor's loop is
Twisted's ``mainLoop`` without the context manager it enters and leaves
around every turn (two Python calls a turn for a guard that only acts on
an error: here a ``try``, free in 3.11, with the same last word, the error
logged and the loop going on). A descriptor that is only readable (the
usual event: a request, a frame, a reply from Redis) is read at once, as
``_doReadOrWrite`` would read it, without its other checks (a hang-up, a
write, a descriptor number of -1, which an open Twisted connection never
has); every other event goes through ``_doReadOrWrite`` itself.

And it asks how long it may sleep without the two builtin calls Twisted's
``ReactorBase.timeout`` clamps the delay with (``max(0, min(longest,
delay))``: in 3.11 each parses its arguments as keywords, about 900
instructions, and a turn asks once or twice): the same bounds, compared.
"""

from __future__ import annotations

import errno
import select
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
    reactor.mainLoop = types.MethodType(_main_loop, reactor)  # type: ignore[method-assign]
    return True


def _main_loop(self: EPollReactor) -> None:
    """ReactorBase.mainLoop: run what is due, ask how long to sleep, poll; an error is logged and the loop goes on."""
    while self._started:
        try:
            while self._started:
                self.runUntilCurrent()
                timeout = self.timeout()
                self.doIteration(self.running and timeout)
        except BaseException:  # noqa: BLE001 - what Twisted's guard of the loop does: log it, go on
            log.failure("Unexpected error in main loop")
    log.info("Main loop terminated.")


LONGEST_SLEEP = 2147483
"""Seconds epoll_wait can be asked to sleep (its timeout is a C int of milliseconds), as Twisted bounds it."""


def _timeout(self: EPollReactor) -> float | None:
    """ReactorBase.timeout: how long the reactor may sleep before its next timed call (None: no timed call)."""
    if self._newTimedCalls:
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
                if event == _READABLE:
                    _read(self, selectable)
                else:
                    dispatch(selectable, fd, event)
            except Exception:  # noqa: BLE001 - what callWithLogger does: log it, serve the others
                log.failure("error handling {selectable}", selectable=selectable)


_READABLE = select.EPOLLIN


def _read(self: EPollReactor, selectable) -> None:
    """What ``_doReadOrWrite`` does with a read event: read; a connection lost, or the handler's error, disconnects it."""
    try:
        why = selectable.doRead()
    except BaseException as error:  # noqa: BLE001 - as _doReadOrWrite: the handler's error loses its connection
        log.failure("error reading from {selectable}", selectable=selectable)
        self._disconnectSelectable(selectable, error, False)
        return
    if why:
        self._disconnectSelectable(selectable, why, True)
