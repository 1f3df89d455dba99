"""
``twistd relay`` options: every option has a ``RELAY_<UPPER_SNAKE>``
environment variable; the command line wins. A repeatable option given on
the command line replaces its variable's comma-separated list.
"""

from __future__ import annotations

import os
import sys
import textwrap
from dataclasses import dataclass, field

from twisted.python import usage

from relayd import __version__
from relayd.core.origins import OriginPolicy
from relayd.core.registry import POLICIES

DEFAULT_LISTEN = "tcp:8080:interface=127.0.0.1"


@dataclass
class Config:
    """Everything the relay is configured with, validated."""

    listen: list[str] = field(default_factory=lambda: [DEFAULT_LISTEN])
    secret: bytes | None = None
    allowed_origins: list[str] = field(default_factory=lambda: ["*"])
    ping_interval: float = 25.0
    ping_timeout: float = 10.0
    max_message_size: int = 65536
    max_connections: int = 10000
    duplicates: str = "replace"
    max_per_id: int = 8
    send_buffer: int = 1048576
    history_size: int = 100
    history_ttl: float = 600.0
    history_memory: int = 268435456
    broker: str | None = None
    store: str | None = None
    monitor_interval: float = 60.0
    sse: bool = True
    trust_proxy: int = 0
    log_format: str = "text"
    send_rate: float = 20.0
    send_burst: int = 40
    request_timeout: float = 10.0


def _number(kind, minimum):
    def parse(text):
        value = kind(text)
        if not value >= minimum:  # also refuses nan
            raise ValueError(f"must be at least {minimum}")
        return value

    parse.coerceDoc = f"({kind.__name__} >= {minimum})"
    return parse


def _choice(*choices):
    def parse(text):
        if text not in choices:
            raise ValueError(f"must be one of: {', '.join(choices)}")
        return text

    parse.coerceDoc = f"({'|'.join(choices)})"
    return parse


_NUMBERS = [
    # name, short, default (None: from the environment, else Config's), help, coerce
    ["ping-interval", None, None, "server ping interval in seconds; 0 disables [default: 25]", _number(float, 0)],
    ["ping-timeout", None, None, "drop a connection that has not answered a ping within this many seconds [default: 10]", _number(float, 0.1)],
    ["max-message-size", None, None, "largest client frame and POST body, in bytes [default: 65536]", _number(int, 64)],
    ["max-connections", None, None, "beyond it new /ws and /events requests get 503 [default: 10000]", _number(int, 1)],
    ["duplicates", None, None, "a second connection with a connected id: replace, fanout or reject [default: replace]", _choice(*POLICIES)],
    ["max-per-id", None, None, "connections per id under --duplicates fanout [default: 8]", _number(int, 1)],
    ["send-buffer", None, None, "unsent bytes a connection may hold before it is closed as a slow consumer (4008) [default: 1048576]", _number(int, 1024)],
    ["history-size", None, None, "messages kept per client id for offline delivery and resume; 0 keeps none [default: 100]", _number(int, 0)],
    ["history-ttl", None, None, "seconds a kept message stays [default: 600]", _number(float, 1)],
    ["history-memory", None, None, "total bytes of in-memory history; the oldest are evicted past it [default: 268435456]", _number(int, 0)],
    ["broker", None, None, "redis://host:port/db (also rediss://, unix://) to share ids, routing and history between nodes [default: in-process]", str],
    ["store", None, None, "SQLite file keeping epochs, sequences and kept messages across restarts (in-process broker only) [default: none, memory]", str],
    ["monitor-interval", None, None, "seconds between connection-count log lines; 0 disables [default: 60]", _number(float, 0)],
    ["trust-proxy", None, None, "trust the last N X-Forwarded-For hops for the client address [default: 0]", _number(int, 0)],
    ["log-format", None, None, "text, or json: one JSON object per line [default: text]", _choice("text", "json")],
    ["secret-file", None, None, "file holding the HS256 key for tokens (or set RELAY_SECRET) [default: none, open mode]", str],
    ["allowed-origins", None, None, "comma-separated browser origins allowed on /ws and /events [default: *]", str],
    ["send-rate", None, None, "send frames per second a WebSocket client may send; past it an error frame rate_limited [default: 20]", _number(float, 0.1)],
    ["send-burst", None, None, "send frames a client may send at once; after this many refused in a row it is closed with 1008 [default: 40]", _number(int, 1)],
    ["request-timeout", None, None, "seconds a client may take to send a request's line and headers; then it is closed [default: 10]", _number(float, 0.1)],
]


# How ``--help`` groups the options (an option missing here is listed under "other").
GROUPS = {
    "listening": ["listen", "no-sse", "request-timeout"],
    "security": ["secret-file", "allowed-origins", "trust-proxy"],
    "limits": [
        "max-connections", "max-message-size", "duplicates", "max-per-id", "send-buffer",
        "send-rate", "send-burst", "ping-interval", "ping-timeout",
    ],
    "history": ["history-size", "history-ttl", "history-memory", "store"],
    "broker": ["broker"],
    "logging": ["log-format", "monitor-interval"],
}
# Variables that are not the name of an option.
EXTRA_VARIABLES = {"secret-file": "RELAY_SECRET_FILE, or RELAY_SECRET holding the key itself"}


def read_secret(path: str | None, environ) -> bytes | None:
    """
    The token secret: the file at ``path`` (or ``$RELAY_SECRET_FILE``),
    stripped of surrounding whitespace, else ``$RELAY_SECRET``; None when
    neither is set. Raises ValueError for an unreadable or empty file.
    """
    path = path or environ.get("RELAY_SECRET_FILE") or None
    if path is not None:
        try:
            with open(path, "rb") as handle:
                secret = handle.read().strip()
        except OSError as error:
            raise ValueError(f"--secret-file {path}: {error.strerror}") from None
        if not secret:
            raise ValueError(f"--secret-file {path} is empty")
        return secret
    secret = environ.get("RELAY_SECRET", "").strip()
    return secret.encode("utf-8") if secret else None


def env_name(option: str) -> str:
    """``RELAY_<UPPER_SNAKE>`` for an option name."""
    return "RELAY_" + option.replace("-", "_").upper()


def _split(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def no_foreground_pidfile(parent, argv: list[str]) -> None:
    """
    In the foreground (``twistd -n relay``) write no pid file unless the
    command line names one: a supervisor (systemd, a container, a terminal)
    already knows the process, and twistd's default ``twistd.pid`` in the
    working directory would stop a second relay started there. A daemonized
    ``twistd relay`` keeps twistd's ``--pidfile`` (default ``twistd.pid``).
    """
    if parent is None or "pidfile" not in parent or not parent.get("nodaemon"):
        return
    given = any(len(arg.split("=")[0]) > 3 and "--pidfile".startswith(arg.split("=")[0]) for arg in argv)
    if not given:
        parent["pidfile"] = ""


class Options(usage.Options):
    """The options of ``twistd relay``; every one also reads ``RELAY_<NAME>``."""

    synopsis = "[options]"
    longdesc = (
        "relayd: a real-time push relay. Backends POST /send-message; clients receive "
        "on /ws (WebSocket) or /events (Server-Sent Events), in order, with resume. "
        "Every option can also be set with a RELAY_<NAME> environment variable "
        "(RELAY_LISTEN, RELAY_SECRET_FILE, ...); RELAY_SECRET holds the key itself."
    )
    optParameters = _NUMBERS
    optFlags = [["no-sse", None, "turn off the legacy /events transport"]]

    def __init__(self, environ=None):
        super().__init__()
        self.environ = os.environ if environ is None else environ
        self["listen"] = []

    def opt_version(self):
        """Print relayd's version and exit."""
        sys.stdout.write(f"relayd {__version__}\n")
        sys.exit(0)

    def getSynopsis(self):
        """``relayd [options]`` under the ``relayd`` command, twistd's synopsis under twistd."""
        if os.path.basename(sys.argv[0]) == "relayd":
            return "Usage: relayd [options]   (the same as: twistd -n relay [options])"
        return super().getSynopsis()

    def getUsage(self, width=None):
        """Every option, grouped (listening, security, ...), each with its ``RELAY_*`` variable."""
        width = width or int(os.environ.get("COLUMNS", "80"))
        names = [name.rstrip("=") for name in self.longOpt if name.rstrip("=") not in ("help", "version")]
        grouped = {group: [name for name in members if name in names] for group, members in GROUPS.items()}
        grouped["other"] = [name for name in names if not any(name in members for members in GROUPS.values())]
        lines = []
        for group, members in grouped.items():
            if members:
                lines.append(f"{group}:")
                lines.extend(line for name in members for line in self._option_help(name, width))
        lines.append("  --help, --version      this help; relayd's version")
        longdesc = "\n".join(textwrap.wrap(self.longdesc, width))
        return "\n".join(lines) + "\n\n" + longdesc + "\n"

    def _option_help(self, name: str, width: int) -> list[str]:
        flag = f"--{name}" if name in self.synonyms and f"{name}=" not in self.longOpt else f"--{name}="
        head = f"  {flag:<22} {EXTRA_VARIABLES.get(name, env_name(name))}"
        doc = self.docs.get(name) or ""
        coerce = getattr(self._dispatch.get(name), "coerce", None)
        if getattr(coerce, "coerceDoc", None):
            doc = f"{doc} {coerce.coerceDoc}"
        return [head, *textwrap.wrap(doc, width, initial_indent=" " * 8, subsequent_indent=" " * 8)]

    def opt_listen(self, endpoint):
        """Twisted server endpoint string; repeatable [default: tcp:8080:interface=127.0.0.1]"""
        self["listen"].append(endpoint)

    def postOptions(self):
        """Fill what the command line left out from the environment; validate."""
        self.config = self._build()
        no_foreground_pidfile(getattr(self, "parent", None), sys.argv[1:])

    def _value(self, name):
        if self[name] is not None:
            return self[name]
        raw = self.environ.get(env_name(name))
        if raw is None or raw == "":
            return None
        coerce = next(row[4] for row in _NUMBERS if row[0] == name)
        try:
            return coerce(raw)
        except ValueError as error:
            raise usage.UsageError(f"{env_name(name)}={raw!r}: {error}") from None

    def _build(self) -> Config:
        config = Config()
        listen = self["listen"] or _split(self.environ.get("RELAY_LISTEN", ""))
        if listen:
            config.listen = listen
        for name, *_ in _NUMBERS:
            value = self._value(name)
            if value is not None and name not in ("secret-file", "allowed-origins"):
                setattr(config, name.replace("-", "_"), value)
        origins = self._value("allowed-origins")
        if origins is not None:
            config.allowed_origins = _split(origins)
            try:
                OriginPolicy(config.allowed_origins)
            except ValueError as error:
                raise usage.UsageError(f"--allowed-origins: {error} (write scheme://host[:port] or scheme://*.domain)") from None
        if config.store is not None and config.broker is not None:
            raise usage.UsageError("--store keeps the in-process broker's state; with --broker, Redis keeps it: give one of them")
        config.secret = self._secret()
        config.sse = not (self["no-sse"] or self.environ.get("RELAY_NO_SSE", "").lower() in ("1", "true", "yes", "on"))
        return config

    def _secret(self) -> bytes | None:
        try:
            return read_secret(self._value("secret-file"), self.environ)
        except ValueError as error:
            raise usage.UsageError(str(error)) from None
