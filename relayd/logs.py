"""
Log output: ``--log-format json`` writes every log event as one JSON object
per line (time, level, namespace, the formatted text, and the event's own
structured fields).
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone

from twisted.logger import FileLogObserver, formatEvent


def _field(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def event_as_json(event: dict) -> str:
    """One log event as a JSON line."""
    record = {
        "time": datetime.fromtimestamp(event.get("log_time", 0), tz=timezone.utc).isoformat(timespec="milliseconds"),
        "level": getattr(event.get("log_level"), "name", "info"),
        "namespace": event.get("log_namespace", ""),
        "text": formatEvent(event),
    }
    for key, value in event.items():
        if not key.startswith("log_") and key not in record and not key.startswith("_") and key not in ("message", "format", "isError", "system", "time", "why"):
            record[key] = _field(value)
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return json.dumps(record, ensure_ascii=False) + "\n"


def json_observer(stream=None) -> FileLogObserver:
    """A log observer writing JSON lines to ``stream`` (standard output by default)."""
    return FileLogObserver(stream or sys.stdout, event_as_json)


_twistd_options: dict = {}


def use_json_logs(twistd_options) -> str:
    """
    Arrange for twistd to log JSON lines; return the dotted name to put in
    twistd's ``logger`` option (twistd imports it by name after parsing).
    """
    _twistd_options.clear()
    _twistd_options.update(twistd_options)
    return f"{__name__}.twistd_json_observer"


def twistd_json_observer() -> FileLogObserver:
    """
    twistd's ``--logger``: JSON lines to twistd's log file, or to standard
    output when running in the foreground without one.
    """
    path = _twistd_options.get("logfile")
    if path in (None, "", "-") and (_twistd_options.get("nodaemon") or path == "-"):
        return json_observer(sys.stdout)
    return json_observer(open(path or "twistd.log", "a", encoding="utf-8"))
