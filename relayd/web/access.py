"""
Access lines: one per HTTP request and one per WebSocket/SSE connection at
open and at close. Tokens never appear: query strings are redacted.
"""

from __future__ import annotations

import time

from twisted.logger import Logger

from relayd.core.auth import redact
from relayd.web.http import client_address, path_label


class AccessLog:
    """Writes access lines as structured log events and counts requests."""

    log = Logger(namespace="relayd.access")

    def __init__(self, metrics, trust_proxy: int = 0):
        self._metrics = metrics
        self.trust_proxy = trust_proxy

    def peer(self, request) -> str:
        """The client address of ``request`` (behind trusted proxies, see --trust-proxy)."""
        return client_address(request, self.trust_proxy)

    def request(self, request) -> None:
        """One finished HTTP request."""
        seconds = time.monotonic() - getattr(request, "began", time.monotonic())
        self._metrics.http_request(path_label(request), request.code, seconds)
        self.log.info(
            '{peer} "{method} {path}" {status} {size} {duration_ms:.1f}ms',
            peer=self.peer(request),
            method=request.method.decode("ascii", "replace"),
            path=redact(request.uri),
            status=request.code,
            size=request.sentLength,
            duration_ms=seconds * 1000,
        )

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
