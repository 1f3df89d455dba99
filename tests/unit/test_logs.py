"""relayd.daemon.logs: access-line-cheap text and JSON lines, written once per reactor turn."""

from __future__ import annotations

import io
import json

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger, LogLevel

from relayd.daemon import logs
from relayd.sockets import Flusher


class Stream(io.StringIO):
    """Counts its writes."""

    writes = 0

    def write(self, text):
        self.writes += 1
        return super().write(text)


@pytest.fixture
def reactor():
    clock = MemoryReactorClock()
    yield clock
    logs._set_buffering(None, None)  # the module-wide state flush_per_turn sets


def test_lines_of_one_turn_are_one_write_and_warnings_go_at_once(reactor):
    out = Stream()
    observer = logs.text_observer(out)
    log = Logger(namespace="relayd.test", observer=observer)
    logs.flush_per_turn(reactor, Flusher(reactor))
    for n in range(3):
        log.info("line {n}", n=n)
    assert out.getvalue() == ""
    reactor.advance(0)
    assert out.writes == 1 and [line.split("] ", 1)[1] for line in out.getvalue().splitlines()] == [
        "line 0", "line 1", "line 2"]
    log.warn("at once")
    assert out.getvalue().endswith("[relayd.test#warn] at once\n") and out.writes == 2


def test_observers_made_later_buffer_too_and_nothing_is_left_at_shutdown(reactor):
    logs.flush_per_turn(reactor, Flusher(reactor))
    out = Stream()
    log = Logger(namespace="relayd.test", observer=logs.text_observer(out))
    log.info("held")
    assert out.getvalue() == ""
    for trigger, args, kwargs in reactor.triggers["after"]["shutdown"]:  # the reactor has stopped
        trigger(*args, **kwargs)
    assert out.getvalue().endswith("held\n")
    log.info("after the reactor")
    assert out.getvalue().endswith("after the reactor\n")


def test_a_preformatted_event_is_written_as_is_in_text_and_json():
    event = {"log_format": "{log_text}", "log_text": 'peer "GET /x" 200 5 0.1ms', "log_time": 1.5,
             "log_level": LogLevel.info, "log_namespace": "relayd.web.access.AccessLog", "status": 200}
    text, as_json = Stream(), Stream()
    logs.text_observer(text)(event)
    logs.json_observer(as_json)(event)
    assert text.getvalue().endswith(' [relayd.web.access.AccessLog#info] peer "GET /x" 200 5 0.1ms\n')
    record = json.loads(as_json.getvalue())
    assert record["message"] == 'peer "GET /x" 200 5 0.1ms' and record["status"] == 200
    assert record["time"] == "1970-01-01T00:00:01.500+00:00"


@pytest.mark.parametrize("make", [logs.text_observer, logs.json_observer])
def test_an_info_line_given_as_its_parts_is_written_as_its_event_would_be(make):
    fields = {"peer": "10.0.0.1", "method": "POST", "path": "/send-message", "status": 200, "size": 7, "duration_ms": 0.25}
    text = '10.0.0.1 "POST /send-message" 200 7 0.2ms\nsecond'
    namespace = "relayd.web.access.AccessLog"
    as_event, as_parts = Stream(), Stream()
    make(as_event)({"log_text": text, "log_time": 1733000000.5, "log_level": LogLevel.info, "log_namespace": namespace,
                    "log_format": "{log_text}", **fields})
    make(as_parts).info_line(namespace, 1733000000.5, text, fields)
    assert as_parts.getvalue() == as_event.getvalue()
    assert "#info] 10.0.0.1" in as_parts.getvalue() or json.loads(as_parts.getvalue())["duration_ms"] == 0.25


def test_info_lines_are_held_with_the_events_of_the_turn(reactor):
    out = Stream()
    observer = logs.text_observer(out)
    logs.flush_per_turn(reactor, Flusher(reactor))
    Logger(namespace="relayd.test", observer=observer).info("first")
    observer.info_line("relayd.test", 2.0, "second", {})
    assert out.getvalue() == ""
    reactor.advance(0)
    assert out.writes == 1 and [line.split("] ", 1)[1] for line in out.getvalue().splitlines()] == ["first", "second"]


def test_the_service_sends_access_lines_to_the_observer_twistd_logs_to(monkeypatch):
    from relayd.daemon.service import RelayService
    from relayd.options import Config
    from relayd.site import build

    out = Stream()
    observer = logs.text_observer(out)
    monkeypatch.setattr(logs, "_twistd_observer", [observer])
    reactor = MemoryReactorClock()
    parts = build(Config(listen=["tcp:0:interface=127.0.0.1"], monitor_interval=0), reactor)
    service = RelayService(parts, reactor)
    service.startService()
    try:
        assert parts.site.access._sink is observer
    finally:
        service.stopService()
