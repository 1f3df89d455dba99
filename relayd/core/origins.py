"""
Which browser origins may open ``/ws`` and ``/events`` (``--allowed-origins``).

Entries are ``*`` (any), an exact origin (``https://app.example.com``,
compared without a default port) or a host wildcard
(``https://*.example.com`` matches any subdomain, not the bare domain).
A request without an ``Origin`` header is not from a browser page and is
allowed.
"""

from __future__ import annotations

from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _normalise(origin: str) -> tuple[str, str, int | None] | None:
    try:
        parts = urlsplit(origin.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    if port is None:
        port = _DEFAULT_PORTS.get(parts.scheme)
    return parts.scheme, parts.hostname, port


class OriginPolicy:
    """A parsed ``--allowed-origins`` list."""

    def __init__(self, entries: list[str]):
        self.any = False
        self._exact: set[tuple[str, str, int | None]] = set()
        self._wildcards: list[tuple[str, str, int | None]] = []
        for entry in entries:
            entry = entry.strip()
            if entry == "*":
                self.any = True
            elif "://*." in entry:
                parsed = _normalise(entry.replace("://*.", "://", 1))
                if parsed is None:
                    raise ValueError(f"not an origin: {entry!r}")
                self._wildcards.append(parsed)
            else:
                parsed = _normalise(entry)
                if parsed is None:
                    raise ValueError(f"not an origin: {entry!r}")
                self._exact.add(parsed)

    def allows(self, origin: str | None) -> bool:
        """True when a request with this ``Origin`` header (or none) may connect."""
        if origin is None or self.any:
            return True
        parsed = _normalise(origin)
        if parsed is None:
            return False
        if parsed in self._exact:
            return True
        scheme, host, port = parsed
        return any(
            scheme == w_scheme and port == w_port and host.endswith("." + w_host)
            for w_scheme, w_host, w_port in self._wildcards
        )
