"""What a real relay says at start about its own safety (the loopback rule in memory: tests/unit/test_startup.py)."""

from __future__ import annotations

import pytest

from tests.security_helpers import SECRET


@pytest.mark.integration
def test_open_mode_warns_and_secured_mode_does_not(start_relay):
    open_relay = start_relay()
    assert "open mode" in open_relay.log()
    secured = start_relay(env={"RELAY_SECRET": SECRET.decode()})
    short = start_relay(env={"RELAY_SECRET": "short"})
    assert "open mode" not in secured.log() and "secret is only" not in secured.log()
    assert "secret is only 5 bytes" in short.log()
    assert open_relay.request("GET", "/ws?id=anyone")[0] == 426
    assert secured.send({"receiver_id": "a", "content": 1})[0] == 401
