"""
Log output: text lines as twistd writes them, or with ``--log-format json``
every log event as one JSON object per line: ``time`` (ISO 8601, UTC,
milliseconds), ``level`` (``debug``, ``info``, ``warning``, ``error``,
``critical``), ``logger`` (the Twisted namespace,
``relayd.web.access.AccessLog`` for access lines), ``message`` (the line as
text would print it), then the event's own fields, each with one meaning and
one unit wherever it appears (docs/operations.md lists them: ``status`` is
an HTTP status, ``close_code`` a WebSocket close code, ``duration_ms``
milliseconds).

Both are written by a :class:`LineObserver`, cheap enough for one access
line per request: the time stamp is formatted once per second, an event
that carries its text already formatted (``log_text``, as access lines do)
is not formatted again, and once :func:`flush_per_turn` is called the lines
of one reactor turn are written together (warnings and errors at once;
everything is written when the reactor stops and at exit).
"""

from __future__ import annotations

import atexit
import json
import signal
import sys
import threading
import weakref
from datetime import UTC, datetime

from twisted.logger import ILogObserver, LogLevel, formatEvent, formatEventAsClassicLogText, formatTime
from twisted.python.logfile import LogFile
from zope.interface import implementer

_observers: weakref.WeakSet = weakref.WeakSet()
_CALM = frozenset((LogLevel.debug, LogLevel.info))  # held for the end of the turn; the rest is written at once
_buffering: list = [None, None]  # flush_per_turn's (schedule, reactor thread), for observers made later


def _stamps(format_second):
    """
    A function giving log events' time stamps, formatted once per second (a
    function, not an object with ``__call__``: 3.11 calls a function
    directly, an instance through its type's slot, a third slower).
    """
    last: list = [None, ""]  # the second, and its text

    def stamp(when: float | None) -> str:
        if when is None:
            return "-"
        second = int(when)
        if second != last[0]:
            last[:] = [second, format_second(second)]
        return last[1]  # type: ignore[no-any-return]

    return stamp


def text_formatter():
    """A function formatting an event as twistd's text line (``time [namespace#level] text``)."""
    return _text_formatters()[0]


def _text_formatters():
    """:func:`text_formatter`'s function, and one formatting an info line given as its parts (see LineObserver.info_line)."""
    stamp = _stamps(formatTime)

    def line(when: float | None, system: str, text: str) -> str:
        if "\n" in text:
            text = text.replace("\n", "\n\t")
        return f"{stamp(when)} [{system}] {text}\n"

    def format_info(namespace: str, when: float, text: str, fields: dict) -> str:
        if "\n" in text:
            text = text.replace("\n", "\n\t")
        return f"{stamp(when)} [{namespace}#info] {text}\n"  # line(), in one step: once per request

    def format_line(event: dict) -> str | None:
        text = event.get("log_text")
        if text is None or "log_failure" in event:
            return formatEventAsClassicLogText(event, formatTime=stamp)
        system = event.get("log_system")
        if system is None:
            level = event.get("log_level")
            system = f"{event.get('log_namespace', '-')}#{level.name if level else '-'}"
        return line(event.get("log_time"), system, text)

    return format_line, format_info


@implementer(ILogObserver)
class LineObserver:
    """
    Writes each event as one line (``format_line(event)``) to ``out``: at once,
    or once :func:`flush_per_turn` is in force, at the end of the reactor turn.
    """

    def __init__(self, out, format_line, format_info, writes_fields: bool = False):
        self._outFile = out
        self._format = format_line
        self._format_info = format_info
        self.writes_fields = writes_fields  # whether info_line writes its fields (JSON), or only the text
        self._pending: list[str] = []
        self._schedule, self._thread = _buffering
        _observers.add(self)

    def __call__(self, event: dict) -> None:
        """Format ``event``; write it now or with the rest of this turn's lines."""
        text = self._format(event)
        if text:
            self._add(text, event.get("log_level") not in _CALM or threading.get_ident() != self._thread)

    def info_line(self, namespace: str, when: float, text: str, fields: dict) -> None:
        """
        Write an info line of ``namespace`` at ``when``, its text already
        formatted (``fields`` are its own, for JSON), as the info event
        ``{"log_text": text, **fields}`` would be written, without making
        and publishing one: for a line per request (the access lines).
        Only on the reactor's thread.
        """
        self._add(self._format_info(namespace, when, text, fields), False)

    def _add(self, line: str, at_once: bool) -> None:
        """Write ``line`` now (``at_once``, or nothing is held) or with the others held for the end of the turn."""
        self._pending.append(line)
        if at_once or self._schedule is None:
            self.flush()
        elif len(self._pending) == 1:
            self._schedule(self)

    def flush(self) -> None:
        """Write every pending line."""
        if self._pending:
            text, self._pending = "".join(self._pending), []
            self._outFile.write(text)
            self._outFile.flush()

    def buffer(self, schedule, thread: int | None) -> None:
        """Hold lines until ``schedule(self)`` has its ``flush`` run, on ``thread`` (None: write each line at once)."""
        self.flush()
        self._schedule, self._thread = schedule, thread


def flush_per_turn(reactor, flusher) -> None:
    """
    Write log lines once per reactor turn from now on, with (after) the
    turn's replies and frames that ``flusher`` (a relayd.sockets.Flusher)
    writes at its end, and every line left when the reactor stops.
    """
    _set_buffering(flusher.schedule, threading.get_ident())
    reactor.addSystemEventTrigger("after", "shutdown", _set_buffering, None, None)


def _set_buffering(schedule, thread) -> None:
    _buffering[:] = [schedule, thread]
    for observer in list(_observers):
        observer.buffer(schedule, thread)


atexit.register(lambda: [observer.flush() for observer in list(_observers)])


def text_observer(stream=None) -> LineObserver:
    """A log observer writing twistd's text lines to ``stream`` (standard output by default)."""
    return LineObserver(stream or sys.stdout, *_text_formatters())


def _field(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _iso_second(second: int) -> str:
    return datetime.fromtimestamp(second, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")


_json_stamp = _stamps(_iso_second)


# Twisted's level names, as the usual log tools spell them.
LEVELS = {"warn": "warning"}
# Fields of Twisted's legacy events that repeat what the record already says.
LEGACY_FIELDS = frozenset(("message", "format", "isError", "system", "time", "why", "failure"))


def event_as_json(event: dict) -> str:
    """One log event as a JSON line."""
    when = event.get("log_time", 0)
    text = event.get("log_text")
    level = getattr(event.get("log_level"), "name", "info")
    record = {
        "time": f"{_json_stamp(when)}.{int(when * 1000) % 1000:03d}+00:00",
        "level": LEVELS.get(level, level),
        "logger": event.get("log_namespace", ""),
        "message": formatEvent(event) if text is None else text,
    }
    for key, value in event.items():
        if key not in record and key not in LEGACY_FIELDS and not key.startswith(("log_", "_")):
            record[key] = _field(value)
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return json.dumps(record, ensure_ascii=False) + "\n"


def info_as_json(namespace: str, when: float, text: str, fields: dict) -> str:
    """An info line given as its parts (see LineObserver.info_line) as a JSON line."""
    return event_as_json({"log_time": when, "log_level": LogLevel.info, "log_namespace": namespace, "log_text": text,
                          **fields})


def json_observer(stream=None) -> LineObserver:
    """A log observer writing JSON lines to ``stream`` (standard output by default)."""
    return LineObserver(stream or sys.stdout, event_as_json, info_as_json, writes_fields=True)


_twistd_log_file: list = [None]
_twistd_observer: list = [None]


def twistd_observer() -> LineObserver | None:
    """The LineObserver twistd writes every log event to, once it has started logging (else None)."""
    return _twistd_observer[0]


def _made_for_twistd(observer: LineObserver) -> LineObserver:
    _twistd_observer[0] = observer
    return observer


def use_json_under_twistd(twistd_options) -> str:
    """
    Make twistd write JSON lines where it would have written text: remember
    its ``--logfile``/``--nodaemon`` choice and return the dotted name of
    :func:`twistd_json_observer` for its ``--logger`` option (twistd imports
    that name after the plugin's options are parsed, so it must be a string).
    """
    _remember_log_file(twistd_options)
    return f"{__name__}.twistd_json_observer"


def use_text_under_twistd(twistd_options) -> str:
    """Like :func:`use_json_under_twistd`, for twistd's own text lines (written by a LineObserver)."""
    _remember_log_file(twistd_options)
    return f"{__name__}.twistd_text_observer"


def _remember_log_file(twistd_options) -> None:
    path = twistd_options.get("logfile")
    if path == "-" or (not path and twistd_options.get("nodaemon")):
        _twistd_log_file[0] = None
    else:
        _twistd_log_file[0] = path or "twistd.log"


def twistd_json_observer() -> LineObserver:
    """
    twistd's ``--logger`` under ``--log-format json``: JSON lines to standard
    output in the foreground, else to the (rotatable) ``--logfile``.
    """
    path = _twistd_log_file[0]
    return _made_for_twistd(json_observer(sys.stdout if path is None else LogFile.fromFullPath(path)))


def twistd_text_observer() -> LineObserver:
    """
    twistd's ``--logger`` under ``--log-format text``: what twistd writes by
    itself (standard output in the foreground, else ``--logfile``, rotated at
    1 MB and on SIGUSR1), written by a LineObserver.
    """
    path = _twistd_log_file[0]
    if path is None:
        return _made_for_twistd(text_observer(sys.stdout))
    log_file = LogFile.fromFullPath(path)
    if not signal.getsignal(signal.SIGUSR1):

        def rotate(signum, frame):
            from twisted.internet import reactor  # as twistd does: a signal handler has nothing injected

            reactor.callFromThread(log_file.rotate)

        signal.signal(signal.SIGUSR1, rotate)
    return _made_for_twistd(text_observer(log_file))
