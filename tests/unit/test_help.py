"""
``twistd relay --help`` groups the options (listening, security, limits,
history, broker, logging) and names each one's ``RELAY_*`` variable beside
it; in the foreground no pid file is written unless one is asked for.
"""

from __future__ import annotations

import pytest

from relayd.options import GROUPS, Options, env_name, no_foreground_pidfile


def help_text() -> str:
    return Options(environ={}).getUsage(width=100)


def option_names() -> list[str]:
    return [row[0] for row in Options.optParameters] + ["listen", "no-sse"]


def test_the_groups_come_in_order_and_hold_every_option():
    lines = help_text().splitlines()
    headings = [line for line in lines if line.endswith(":") and not line.startswith(" ")]
    assert headings == ["listening:", "security:", "limits:", "history:", "broker:", "logging:"]
    grouped = [name for members in GROUPS.values() for name in members]
    assert sorted(set(option_names()) - set(grouped)) == [], "an option without a group lands under 'other'"


@pytest.mark.parametrize("name", option_names())
def test_each_option_has_its_variable_beside_it(name):
    lines = [line for line in help_text().splitlines() if line.strip().startswith(f"--{name}")]
    assert len(lines) == 1 and env_name(name) in lines[0], lines


def test_an_option_missing_from_the_groups_is_still_listed(monkeypatch):
    monkeypatch.setitem(GROUPS, "limits", [name for name in GROUPS["limits"] if name != "send-burst"])
    text = help_text()
    assert "\nother:\n  --send-burst=" in text and "RELAY_SEND_BURST" in text


@pytest.mark.parametrize("parent, argv, pidfile", [
    ({"nodaemon": True, "pidfile": "twistd.pid"}, [], ""),
    ({"nodaemon": True, "pidfile": "twistd.pid"}, ["-n", "--pidfile=/run/relayd.pid", "relay"], "twistd.pid"),
    ({"nodaemon": True, "pidfile": "x.pid"}, ["-n", "--pidfile", "x.pid", "relay"], "x.pid"),
    ({"nodaemon": True, "pidfile": "x.pid"}, ["-n", "--pid=x.pid", "relay"], "x.pid"),
    ({"nodaemon": False, "pidfile": "twistd.pid"}, ["relay"], "twistd.pid"),
])
def test_no_pid_file_in_the_foreground_unless_asked(parent, argv, pidfile):
    no_foreground_pidfile(parent, argv)
    assert parent["pidfile"] == pidfile


def test_twist_has_no_pid_file_to_change():
    parent = {"fileLogObserverFactory": None}
    no_foreground_pidfile(parent, [])
    assert parent == {"fileLogObserverFactory": None}
