"""Where Redis is and how to reach it: the ``--broker`` URL, parsed."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from twisted.internet.endpoints import (
    HostnameEndpoint,
    UNIXClientEndpoint,
    wrapClientTLS,
)

CONNECT_TIMEOUT = 2.0
DEFAULT_PREFIX = "relayd:"


@dataclass(frozen=True)
class RedisAddress:
    """Where Redis is and how to use it, from a ``--broker`` URL."""

    scheme: str
    host: str | None
    port: int | None
    path: str | None
    db: int
    username: str | None
    password: str | None
    prefix: str

    def endpoint(self, reactor):
        """A client endpoint reaching this Redis."""
        if self.scheme == "unix":
            return UNIXClientEndpoint(reactor, self.path, timeout=CONNECT_TIMEOUT)
        endpoint = HostnameEndpoint(reactor, self.host, self.port, timeout=CONNECT_TIMEOUT)
        if self.scheme == "rediss":
            from twisted.internet.ssl import optionsForClientTLS

            endpoint = wrapClientTLS(optionsForClientTLS(self.host), endpoint)
        return endpoint

    def describe(self) -> str:
        """The address without its password, for logs."""
        where = self.path if self.scheme == "unix" else f"{self.host}:{self.port}"
        return f"{self.scheme}://{where}/{self.db} (prefix {self.prefix!r})"


def parse_url(url: str) -> RedisAddress:
    """
    Parse ``redis://[[user]:password@]host[:port][/db][?prefix=P]``,
    ``rediss://…`` (TLS) or ``unix:///path/to/socket[?db=N&prefix=P]``.

    Raises ValueError with a message naming what is wrong.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"{url!r}: the scheme must be redis://, rediss:// or unix://")
    query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    unknown = set(query) - {"db", "prefix", "password"}
    if unknown:
        raise ValueError(f"{url!r}: unknown parameter {sorted(unknown)[0]!r} (known: db, prefix, password)")
    db_text = query.get("db") or (parts.path.strip("/") if scheme != "unix" else "") or "0"
    if not db_text.isdigit():
        raise ValueError(f"{url!r}: the database must be a number, got {db_text!r}")
    prefix = query.get("prefix", DEFAULT_PREFIX)
    if not prefix or any(c.isspace() for c in prefix):
        raise ValueError(f"{url!r}: the prefix must be non-empty, without spaces")
    password = unquote(parts.password) if parts.password else query.get("password")
    username = unquote(parts.username) if parts.username else None
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r}: the port must be a number") from None
    if scheme == "unix":
        if not parts.path:
            raise ValueError(f"{url!r}: give the socket path, as unix:///run/redis/redis.sock")
        return RedisAddress(scheme, None, None, parts.path, int(db_text), username, password, prefix)
    if not parts.hostname:
        raise ValueError(f"{url!r}: the host is missing")
    return RedisAddress(scheme, parts.hostname, port or 6379, None, int(db_text), username, password, prefix)
