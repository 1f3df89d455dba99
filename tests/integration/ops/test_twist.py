"""``twist relay`` (contract section 1): same options, same log lines as ``twistd -n relay``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.relayproc import ROOT

pytestmark = pytest.mark.integration

LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")


def run_twist(*args) -> str:
    """Start ``twist relay`` with its output on a pipe (not a terminal); its output once it listened and stopped."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command = [sys.executable, "-c", "from twisted.application.twist._twist import Twist; Twist.main()",
               "relay", "--listen", "tcp:0:interface=127.0.0.1", *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    output = b""
    deadline = time.monotonic() + 15
    try:
        while time.monotonic() < deadline and not LISTENING.search(output.decode(errors="replace")):
            output += os.read(process.stdout.fileno(), 65536)
    finally:
        process.send_signal(signal.SIGTERM)
        output += process.communicate(timeout=15)[0]
    return output.decode(errors="replace")


def test_twist_relay_logs_text_by_default_even_on_a_pipe():
    output = run_twist()
    assert LISTENING.search(output), output
    assert "[relayd#info] listening on 127.0.0.1:" in output


def test_twist_relay_log_format_json_gives_json_lines():
    lines = [line for line in run_twist("--log-format", "json").splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    assert any(LISTENING.search(record.get("message", "")) for record in records), lines
