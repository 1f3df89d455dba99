"""What the relay says at start about its own safety."""

from __future__ import annotations

import pytest

from relayd.daemon.service import is_loopback
from relayd.options import DEFAULT_LISTEN, Config


@pytest.mark.parametrize("description, loopback", [
    ("tcp:8080:interface=127.0.0.1", True),
    ("tcp6:8080:interface=\\:\\:1", True),
    ("unix:/run/relayd/relayd.sock", True),
    ("ssl:8443:interface=127.0.0.1:privateKey=k.pem:certKey=c.pem", True),
    ("tcp:8080", False),
    ("tcp:8080:interface=0.0.0.0", False),
    ("ssl:8443:privateKey=k.pem:certKey=c.pem", False),
])
def test_is_loopback(description, loopback):
    assert is_loopback(description) is loopback


def test_default_listen_is_loopback():
    assert Config().listen == [DEFAULT_LISTEN] and is_loopback(DEFAULT_LISTEN)


