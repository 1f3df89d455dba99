"""
Log output: ``--log-format json`` writes every log event as one JSON object
per line (time, level, namespace, the formatted text, and the event's own
structured fields).
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime

from twisted.logger import FileLogObserver, formatEvent
from twisted.python.logfile import LogFile


def _field(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def event_as_json(event: dict) -> str:
    """One log event as a JSON line."""
    record = {
        "time": datetime.fromtimestamp(event.get("log_time", 0), tz=UTC).isoformat(timespec="milliseconds"),
        "level": getattr(event.get("log_level"), "name", "info"),
        "namespace": event.get("log_namespace", ""),
        "text": formatEvent(event),
    }
    for key, value in event.items():
        if key.startswith(("log_", "_")) or key in record or key in ("message", "format", "isError", "system", "time", "why"):
            continue
        record[key] = _field(value)
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return json.dumps(record, ensure_ascii=False) + "\n"


def json_observer(stream=None) -> FileLogObserver:
    """A log observer writing JSON lines to ``stream`` (standard output by default)."""
    return FileLogObserver(stream or sys.stdout, event_as_json)


_twistd_log_file: list = [None]


def use_json_under_twistd(twistd_options) -> str:
    """
    Make twistd write JSON lines where it would have written text: remember
    its ``--logfile``/``--nodaemon`` choice and return the dotted name of
    :func:`twistd_json_observer` for its ``--logger`` option (twistd imports
    that name after the plugin's options are parsed, so it must be a string).
    """
    path = twistd_options.get("logfile")
    if path == "-" or (not path and twistd_options.get("nodaemon")):
        _twistd_log_file[0] = None
    else:
        _twistd_log_file[0] = path or "twistd.log"
    return f"{__name__}.twistd_json_observer"


def twistd_json_observer() -> FileLogObserver:
    """
    twistd's ``--logger`` under ``--log-format json``: JSON lines to standard
    output in the foreground, else to the (rotatable) ``--logfile``.
    """
    path = _twistd_log_file[0]
    if path is None:
        return json_observer(sys.stdout)
    return json_observer(LogFile.fromFullPath(path))
