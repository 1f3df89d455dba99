"""
Log output: ``--log-format json`` writes every log event as one JSON object
per line: ``time`` (ISO 8601, UTC, milliseconds), ``level`` (``debug``,
``info``, ``warning``, ``error``, ``critical``), ``logger`` (the Twisted
namespace, ``relayd.web.access.AccessLog`` for access lines), ``message`` (the line as text
would print it), then the event's own fields, each with one meaning and one
unit wherever it appears (docs/operations.md lists them: ``status`` is an
HTTP status, ``close_code`` a WebSocket close code, ``duration_ms``
milliseconds).
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


# Twisted's level names, as the usual log tools spell them.
LEVELS = {"warn": "warning"}
# Fields of Twisted's legacy events that repeat what the record already says.
LEGACY_FIELDS = frozenset(("message", "format", "isError", "system", "time", "why", "failure"))


def event_as_json(event: dict) -> str:
    """One log event as a JSON line."""
    level = getattr(event.get("log_level"), "name", "info")
    record = {
        "time": datetime.fromtimestamp(event.get("log_time", 0), tz=UTC).isoformat(timespec="milliseconds"),
        "level": LEVELS.get(level, level),
        "logger": event.get("log_namespace", ""),
        "message": formatEvent(event),
    }
    for key, value in event.items():
        if key not in record and key not in LEGACY_FIELDS and not key.startswith(("log_", "_")):
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
