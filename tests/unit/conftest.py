"""Fixtures for the in-memory unit tests."""

from __future__ import annotations

import gc

import pytest
from twisted.logger import formatEvent, globalLogPublisher

from tests.unit.sim import SimRelay, relay_clock


@pytest.fixture
def clock():
    """A fake clock, also standing in for Autobahn's timer loop during the test."""
    with relay_clock() as fake:
        yield fake


@pytest.fixture
def make_relay(clock):
    """``make_relay(history_size=0, ...)``: a SimRelay with those Config fields."""

    def make(**options):
        return SimRelay(clock, **options)

    return make


@pytest.fixture
def sim(make_relay):
    """A relay with the default options."""
    return make_relay()


@pytest.fixture
def logged_failures():
    """Failures logged (with their tracebacks) while the test runs."""
    failures = []

    def observe(event):
        if "log_failure" in event:
            failures.append(event["log_failure"])

    globalLogPublisher.addObserver(observe)
    yield failures
    globalLogPublisher.removeObserver(observe)


@pytest.fixture
def log_lines():
    """Every log line (formatted) emitted while the test runs."""
    lines = []

    def observe(event):
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


@pytest.fixture(autouse=True)
def _unfreeze_the_collector():
    """A test that starts the service freezes what exists (``gc.freeze``); give it back to the collector after."""
    yield
    gc.unfreeze()
