"""``--log-format json`` in memory: where twistd's JSON observer writes (its log file, or stdout in the foreground).

The real process: tests/integration/ops/test_json_logs.py.
"""

from __future__ import annotations

import json

import pytest

from relayd.daemon import logs
from relayd.daemon.logs import twistd_json_observer, twistd_observer, use_json_under_twistd


@pytest.fixture(autouse=True)
def _forget_twistds_observer(monkeypatch):
    """Each observer made here is remembered as twistd's (for its access lines): not past the test."""
    monkeypatch.setattr(logs, "_twistd_observer", [None])


def test_json_goes_to_twistds_logfile(tmp_path):
    """Daemonized (or with --logfile), the JSON lines go to twistd's log file."""
    path = tmp_path / "relay.log"
    name = use_json_under_twistd({"logfile": str(path), "nodaemon": False})
    assert name == "relayd.daemon.logs.twistd_json_observer"
    observer = twistd_json_observer()
    assert twistd_observer() is observer
    observer({"log_format": "hello {who}", "who": "ops", "log_time": 0.0, "log_namespace": "t"})
    observer._outFile.close()
    record = json.loads(path.read_text())
    assert record["message"] == "hello ops" and record["who"] == "ops" and record["logger"] == "t"
    assert record["time"].startswith("1970-01-01T00:00:00")


def test_json_in_the_foreground_goes_to_stdout(capsys):
    use_json_under_twistd({"logfile": None, "nodaemon": True})
    twistd_json_observer()({"log_format": "hi", "log_time": 0.0})
    assert json.loads(capsys.readouterr().out)["message"] == "hi"
