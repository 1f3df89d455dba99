"""
relayd.daemon.polling: the epoll reactor's poll step without the per-event
logging context, on a reactor of the test's own (never the global one).
"""

from __future__ import annotations

import socket

import pytest
from twisted.internet import abstract, error
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from relayd.daemon.polling import lean_poll


class Readable(abstract.FileDescriptor):
    """One end of a socket pair that counts its read events."""

    def __init__(self, sock: socket.socket, reactor, fail: bool = False):
        super().__init__(reactor)
        self.sock = sock
        self.fail = fail
        self.reads = 0
        self.lost = None

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self):
        self.reads += 1
        if self.fail:
            raise ValueError("the handler broke")

    def connectionLost(self, reason):
        self.lost = reason
        super().connectionLost(reason)


@pytest.fixture
def reactor():
    made = EPollReactor()
    yield made
    made.removeAll()
    made._poller.close()


def readable(reactor, fail: bool = False, kind: type[Readable] = Readable) -> Readable:
    ours, theirs = socket.socketpair()
    theirs.send(b"x")  # stays readable: nothing reads it
    reader = kind(ours, reactor, fail)
    reactor.addReader(reader)
    reader.peer = theirs
    return reader


def test_only_an_epoll_reactor_is_changed():
    clock = Clock()
    assert lean_poll(clock) is False
    assert not hasattr(clock, "doIteration")


def test_ready_descriptors_are_dispatched_each_iteration(reactor):
    assert lean_poll(reactor) is True
    first, second = readable(reactor), readable(reactor)
    reactor.doIteration(0)
    reactor.doIteration(0)
    assert (first.reads, second.reads) == (2, 2)


def test_a_handler_error_loses_its_connection_and_not_the_others(reactor):
    lean_poll(reactor)
    broken, fine = readable(reactor, fail=True), readable(reactor)
    reactor.doIteration(0)
    reactor.doIteration(0)
    assert broken.reads == 1 and broken.lost is not None and broken.lost.check(ValueError)
    assert fine.reads == 2


def logged(events) -> list:
    return [e["log_failure"] for e in events if "log_failure" in e]


@pytest.fixture
def events():
    seen: list = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


def test_an_error_escaping_the_dispatch_is_logged_and_the_loop_goes_on(reactor, monkeypatch, events):
    lean_poll(reactor)
    broken, fine = readable(reactor, fail=True), readable(reactor)
    disconnected = []

    def disconnect(selectable, why, is_read):
        disconnected.append(selectable)
        raise RuntimeError("beneath the handler")

    monkeypatch.setattr(reactor, "_disconnectSelectable", disconnect)
    reactor.doIteration(0)
    assert disconnected == [broken] and (broken.reads, fine.reads) == (1, 1)
    failures = logged(events)
    assert [f.type for f in failures] == [ValueError, RuntimeError]  # the handler's, then the one that escaped


class Closing(Readable):
    """A descriptor whose read finds the connection closed by its peer."""

    def doRead(self):
        self.reads += 1
        return error.ConnectionDone()


def test_a_read_that_finds_the_connection_closed_loses_it_cleanly(reactor):
    lean_poll(reactor)
    closing = readable(reactor, kind=Closing)
    reactor.doIteration(0)
    assert closing.reads == 1 and closing.lost.check(error.ConnectionDone)
    assert closing not in reactor.getReaders()


class Writable(Readable):
    """A descriptor waiting to write, which counts its write events."""

    writes = 0

    def doWrite(self):
        self.writes += 1


def test_an_event_other_than_a_plain_read_goes_through_twisteds_own_dispatch(reactor):
    lean_poll(reactor)
    both = readable(reactor, kind=Writable)
    reactor.addWriter(both)  # readable and writable: one event with both bits
    reactor.doIteration(0)
    assert (both.reads, both.writes) == (1, 1)


def test_the_main_loop_logs_an_error_of_a_turn_and_goes_on_until_stopped(reactor, monkeypatch, events):
    lean_poll(reactor)
    monkeypatch.setattr(reactor, "_poller", RecordingPoller())  # nothing ready, never a sleep
    turns = []

    def run_until_current():
        turns.append(len(turns))
        if len(turns) == 2:
            raise RuntimeError("a timed call broke")
        if len(turns) == 4:
            reactor._started = False

    monkeypatch.setattr(reactor, "runUntilCurrent", run_until_current)
    reactor._started = reactor.running = True
    reactor.mainLoop()
    assert len(turns) == 4 and reactor._poller.timeouts == [-1, -1, -1]  # no timed call: no limit
    assert [f.type for f in logged(events)] == [RuntimeError]
    assert any(e.get("log_format") == "Main loop terminated." for e in events)


class RecordingPoller:
    """An epoll stand-in that records the timeout of each poll and reports nothing ready."""

    def __init__(self):
        self.timeouts = []

    def poll(self, timeout, most):
        self.timeouts.append(timeout)
        return []


def test_turn_end_runs_before_each_poll_and_its_calls_shorten_the_wait(reactor):
    ended = []

    def turn_end():
        ended.append(len(poller.timeouts))
        if len(ended) == 2:  # its writes scheduled a call: the poll must not sleep past it
            reactor.callLater(0, lambda: None)
            return True
        return False

    assert lean_poll(reactor, turn_end) is True
    real, reactor._poller = reactor._poller, RecordingPoller()
    poller = reactor._poller
    try:
        reactor.doIteration(30)
        reactor.doIteration(30)
        reactor.doIteration(None)
    finally:
        reactor._poller = real
    assert ended == [0, 1, 2]  # each before its poll
    # 30 s as asked; at most until the call it scheduled; as asked again (-1: no limit) when it did nothing.
    assert poller.timeouts[0] == 30 and 0 <= poller.timeouts[1] <= 0.01 and poller.timeouts[2] == -1


def test_the_sleep_is_bounded_as_twisted_bounds_it(reactor):
    """The lean ``timeout`` answers what ``ReactorBase.timeout`` does: None, the epoll bound, the delay, 0 when late."""
    twisted_timeout = reactor.timeout  # the reactor's own, before lean_poll replaces it
    lean_poll(reactor)
    assert reactor.timeout() is None and twisted_timeout() is None
    calls = [reactor.callLater(10**9, lambda: None)]  # each call below is due before the one before it
    assert reactor.timeout() == twisted_timeout() == 2147483
    calls.append(reactor.callLater(5, lambda: None))
    assert reactor.timeout() == pytest.approx(twisted_timeout(), abs=0.01) and 4 < reactor.timeout() <= 5
    calls.append(reactor.callLater(0, lambda: None))
    calls[-1].time -= 1  # due a second ago
    assert reactor.timeout() == twisted_timeout() == 0
    for call in calls:
        call.cancel()
