"""
Access lines: one per HTTP request and one per WebSocket/SSE connection at
open and at close. Tokens never appear: query strings are redacted.
"""

from __future__ import annotations

import time
from typing import Protocol

from twisted.logger import Logger, LogLevel

from relayd.core.auth import redact
from relayd.web.http import client_address, path_label

_METHODS = {name.encode("ascii"): name for name in ("GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH")}
_NO_FIELDS: dict = {}


class LineSink(Protocol):
    """Where access lines can go instead of the log publisher (relayd.daemon.logs.LineObserver)."""

    writes_fields: bool
    """Whether its lines carry the event's fields (JSON lines do; text lines are the text alone)."""

    def info_line(self, namespace: str, when: float, text: str, fields: dict) -> None:
        """Write one info line of ``namespace``, as the event ``{"log_text": text, **fields}`` would be."""


class AccessLog:
    """
    Writes access lines as structured log events and counts requests.

    Once :meth:`write_to` has given it the observer twistd logs to, the line
    of each HTTP request goes straight to that observer, formatted as the
    event would have been, instead of through twisted.logger's publisher:
    a fifth of the CPU of a POST at 2,000 POSTs/s was its access line.
    """

    def __init__(self, metrics, trust_proxy: int = 0):
        self._metrics = metrics
        self.trust_proxy = trust_proxy
        # One Logger for the instance (a class-level Logger builds a new one on every access).
        self.log = Logger(namespace=f"{__name__}.{type(self).__name__}", source=self)
        self._sink: LineSink | None = None

    def write_to(self, sink: LineSink) -> None:
        """From now on write request lines straight to ``sink`` (other observers of the log publisher no longer see them)."""
        self._sink = sink

    def peer(self, request) -> str:
        """The client address of ``request`` (behind trusted proxies, see --trust-proxy)."""
        return client_address(request, self.trust_proxy)

    def request(self, request) -> None:
        """One finished HTTP request (its text formatted here, once: see relayd.daemon.logs)."""
        code = request.code
        seconds = time.monotonic() - request.began
        self._metrics.http_request(path_label(request), code, seconds)
        peer = request.channel.peer_host if self.trust_proxy <= 0 else self.peer(request)
        method = _METHODS.get(request.method) or request.method.decode("ascii", "replace")
        path = redact(request.uri)
        size = request.sentLength
        duration_ms = seconds * 1000
        log = self.log
        text = f'{peer} "{method} {path}" {code} {size} {duration_ms:.1f}ms'
        sink = self._sink
        if sink is None or sink.writes_fields:
            fields = {"peer": peer, "method": method, "path": path, "status": code, "size": size,
                      "duration_ms": duration_ms}
        else:
            fields = _NO_FIELDS  # text lines are the text alone
        if sink is not None:
            sink.info_line(log.namespace, time.time(), text, fields)
            return
        # What log.info would emit, without its per-event check of the level (a scan of LogLevel's constants).
        log.observer({
            "log_logger": log, "log_level": LogLevel.info, "log_namespace": log.namespace, "log_source": self,
            "log_format": "{log_text}", "log_text": text, "log_time": time.time(), **fields,
        })

    def refused(self, peer, code: int, size: int) -> None:
        """A request the HTTP channel answered itself (malformed, head too large or too slow)."""
        self._metrics.http_request("other", code)
        self.log.info('{peer} "- -" {status} {size} 0.0ms', peer=getattr(peer, "host", None) or str(peer), status=code, size=size)

    def opened(self, transport: str, client_id: str, peer: str, path: str) -> None:
        """A WebSocket or SSE connection opened."""
        self._metrics.http_request(f"/{'ws' if transport == 'ws' else 'events'}", 101 if transport == "ws" else 200)
        self.log.info(
            "{log_text}", log_text=f"{transport} open {client_id} from {peer} {path}",
            transport=transport, client_id=client_id, peer=peer, path=path,
        )

    def closed(self, transport: str, client_id: str, peer: str, code: int | None, duration: float) -> None:
        """A WebSocket or SSE connection closed, with its close code and duration."""
        self.log.info(
            "{log_text}", log_text=f"{transport} close {client_id} from {peer} code={code} duration={duration * 1000:.1f}ms",
            transport=transport, client_id=client_id, peer=peer, close_code=code, duration_ms=duration * 1000,
        )
