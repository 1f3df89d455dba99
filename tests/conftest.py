"""Shared fixtures: the reactor, and real relay processes on loopback."""

from __future__ import annotations

import pytest

from tests.relayproc import RelayProcess


@pytest.fixture
def reactor():
    """The reactor pytest-twisted runs (only for tests that need real I/O)."""
    from twisted.internet import reactor as global_reactor

    return global_reactor


@pytest.fixture
def start_relay(tmp_path):
    """
    Start ``twistd relay`` processes: ``start_relay("--history-size", "5")``.

    Every process is stopped (SIGTERM) when the test ends.
    """
    started = []

    def start(*args, env=None, name="relay", listen="tcp:0:interface=127.0.0.1"):
        relay = RelayProcess(args, env=env, log_dir=tmp_path, name=name, listen=listen).start()
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.stop()


@pytest.fixture(scope="module")
def shared_relay(tmp_path_factory):
    """One relay process shared by a module's tests (default options)."""
    relay = RelayProcess((), log_dir=tmp_path_factory.mktemp("relay")).start()
    yield relay
    relay.stop()
