"""
The shipped configuration examples say what the code does: every option
has its variable in etc/relayd.env.example, with the code's default, and
the systemd units start relayd the way the tests prove works.
"""

from __future__ import annotations

import re

from relayd.options import Config, Options, env_name
from tests.relayproc import ROOT

EXAMPLE = ROOT / "etc" / "relayd.env.example"
ASSIGNMENT = re.compile(r"^#?(RELAY_[A-Z_]+)=(.*)$")


def example_variables() -> dict[str, str]:
    """Every ``RELAY_X=value`` line of the example, commented or not."""
    found = {}
    for line in EXAMPLE.read_text().splitlines():
        match = ASSIGNMENT.match(line.strip())
        if match:
            found.setdefault(match.group(1), match.group(2))
    return found


def test_every_option_has_its_variable_in_the_example():
    names = [row[0] for row in Options.optParameters] + ["listen", "no-sse"]
    documented = example_variables()
    missing = [env_name(name) for name in names if env_name(name) not in documented]
    assert missing == []
    assert "RELAY_SECRET" in documented


def test_the_example_values_are_the_defaults():
    environ = {
        name: value for name, value in example_variables().items() if name != "RELAY_SECRET_FILE"
    }
    options = Options(environ=environ)
    options.parseOptions([])
    assert options.config == Config()


def test_the_units_run_twistd_in_the_foreground_as_a_notify_service():
    service = (ROOT / "systemd" / "relayd.service").read_text()
    socket_unit = (ROOT / "systemd" / "relayd.socket").read_text()
    drop_in = (ROOT / "systemd" / "relayd.service.d" / "socket-activation.conf").read_text()
    assert "\nType=notify\n" in service and "\nWatchdogSec=" in service
    assert re.search(r"\nExecStart=\S+/twistd -n --pidfile= relay\n", service)
    assert "\nEnvironmentFile=-/etc/relayd/relayd.env\n" in service
    assert "\nListenStream=" in socket_unit
    assert "relay --listen systemd:domain=INET:index=0\n" in drop_in
