"""
Who may connect and send: the authentication policy the gate and the transports consult.

:class:`OpenAuth` is open mode (no secret configured): anyone may connect as
any valid id and send. :class:`TokenAuth` checks JWTs signed with HS256 and
the relay's secret (CONTRACT section 6). Both offer the same four methods
and raise :class:`~relayd.core.registry.Refused` (401 for a missing, malformed,
wrongly signed or expired token or a ``sub`` that is not the id; 403 for a
missing scope).

:class:`ExpiryWatch` closes connections whose token has expired: one heap
of expiry times for every connection and one periodic :meth:`sweep`, never
a timer per connection.
"""

from __future__ import annotations

import heapq
import hmac
import itertools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import jwt

from relayd.core.ports import Clock
from relayd.core.registry import Refused
from relayd.wire import is_client_id

ALGORITHM = "HS256"
MAX_TOKEN_LENGTH = 8192
NOT_BEFORE_LEEWAY = 30.0
SEND_SCOPE = "send"


_TOKEN_IN_QUERY = re.compile(rb"((?:^|[?&;#])(?:token|access_token)=)[^&;#]*|eyJ[\w-]*\.[\w-]*\.[\w-]*", re.IGNORECASE)


def redact(uri: bytes) -> str:
    """``uri`` for a log line, with any token (a ``token=`` value, or a JWT anywhere) replaced by ``[redacted]``."""
    shown = _SHOWN.get(uri)
    if shown is not None:
        return shown
    if uri.find(b"eyJ") < 0 and uri.lower().find(b"oken=") < 0:  # no token can be there: skip the regex (find: see wire.loads)
        shown = uri.decode("utf-8", "replace")
        if len(uri) <= 64:  # a path every request repeats (/send-message): remembered, never a query with a token
            if len(_SHOWN) >= 256:
                _SHOWN.clear()
            _SHOWN[uri] = shown
        return shown
    return _TOKEN_IN_QUERY.sub(lambda m: (m.group(1) or b"") + b"[redacted]", uri).decode("utf-8", "replace")


_SHOWN: dict[bytes, str] = {}
"""Short request targets already shown to hold no token, as shown (at most 256, then forgotten)."""


def _unauthorized(error: str, detail: str) -> Refused:
    return Refused(401, error, detail)


@dataclass(frozen=True)
class Grant:
    """What a valid token allows: its id, when it expires, and its scopes."""

    client_id: str
    expires: float
    scopes: frozenset[str]


class OpenAuth:
    """Open mode: ids are taken from the query, every connection may send."""

    def authenticate(self, client_id: str | None, token: str | None) -> tuple[str, object]:
        """Return the connection's id and its grant (None: everything allowed)."""
        if client_id is None:
            raise Refused(400, "invalid_id", "the 'id' query parameter is required")
        return client_id, None

    def authorize_send(self, token: str | None) -> None:
        """Raise Refused unless ``token`` may ``POST /send-message``."""

    def may_send(self, grant: object) -> bool:
        """True when a connection holding ``grant`` may send ``send`` frames."""
        return True

    def refresh(self, client_id: str, token: str) -> object:
        """Return the new grant for ``token``; open mode accepts anything."""
        return None


class TokenAuth:
    """
    Tokens: JWT, HS256 only, signed with ``secret``; ``sub`` and ``exp``
    required, ``scope`` optional (space-separated). ``clock`` decides expiry.
    """

    def __init__(self, secret: bytes, clock: Clock) -> None:
        if not secret:
            raise ValueError("the token secret is empty")
        self._secret = secret
        self._clock = clock

    def authenticate(self, client_id: str | None, token: str | None) -> tuple[str, Grant]:
        """
        The connection's id (``client_id``, or the token's ``sub`` when it is
        None) and its :class:`Grant`; Refused 401 unless the token is valid
        and names that id.
        """
        grant = self._grant(token)
        if client_id is None:
            return grant.client_id, grant
        if not hmac.compare_digest(grant.client_id.encode("utf-8"), client_id.encode("utf-8")):
            raise _unauthorized("invalid_token", "the token's 'sub' is not the id you asked to connect as")
        return client_id, grant

    def authorize_send(self, token: str | None) -> None:
        """Refused 401 for a bad token, 403 when it lacks the ``send`` scope."""
        if not self.may_send(self._grant(token)):
            raise Refused(403, "forbidden", "this token has no 'send' scope")

    def may_send(self, grant: Grant) -> bool:
        """True when ``grant`` includes the ``send`` scope."""
        return SEND_SCOPE in grant.scopes

    def refresh(self, client_id: str, token: str) -> Grant:
        """The grant of a new token for the same id; Refused 401 otherwise."""
        return self.authenticate(client_id, token)[1]

    def _grant(self, token: str | None) -> Grant:
        if not token:
            raise _unauthorized(
                "token_required", "this relay needs a token: an 'Authorization: Bearer' header (or ?token= on /ws and /events)"
            )
        claims = self._decode(token)
        now = self._clock.seconds()
        expires = _number(claims, "exp")
        if now >= expires:
            raise _unauthorized("token_expired", "the token has expired: get a new one")
        if "nbf" in claims and now + NOT_BEFORE_LEEWAY < _number(claims, "nbf"):
            raise _unauthorized("invalid_token", "the token is not valid yet ('nbf')")
        subject = claims["sub"]
        if not isinstance(subject, str) or not is_client_id(subject):
            raise _unauthorized("invalid_token", "the token's 'sub' is not a valid client id")
        scope = claims.get("scope", "")
        if not isinstance(scope, str):
            raise _unauthorized("invalid_token", "the token's 'scope' must be a space-separated string")
        return Grant(subject, expires, frozenset(scope.split()))

    def _decode(self, token: str) -> dict[str, object]:
        if len(token) > MAX_TOKEN_LENGTH:
            raise _unauthorized("invalid_token", f"the token is longer than {MAX_TOKEN_LENGTH} characters")
        try:
            return jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                options={"require": ["exp", "sub"], "verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )
        except jwt.InvalidAlgorithmError:
            raise _unauthorized("invalid_token", f"only {ALGORITHM} tokens are accepted") from None
        except jwt.InvalidSignatureError:
            raise _unauthorized("invalid_token", "the token's signature is not valid for this relay") from None
        except jwt.MissingRequiredClaimError as error:
            raise _unauthorized("invalid_token", f"the token has no '{error.claim}' claim") from None
        except jwt.exceptions.InvalidSubjectError:
            raise _unauthorized("invalid_token", "the token's 'sub' must be a string") from None
        except jwt.InvalidAudienceError:
            raise _unauthorized("invalid_token", "the token is meant for another audience ('aud')") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise _unauthorized("invalid_token", "the token is not a well-formed JWT") from None


def _number(claims: dict[str, object], name: str) -> float:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _unauthorized("invalid_token", f"the token's '{name}' must be a number of seconds since the epoch")
    return float(value)


def expiry_of(grant: object) -> float | None:
    """When ``grant`` expires (None for open mode's grant, which never does)."""
    return grant.expires if isinstance(grant, Grant) else None


class _Entry:
    __slots__ = ("when", "order", "callback")

    def __init__(self, when: float, order: int, callback: Callable[[], None]):
        self.when = when
        self.order = order
        self.callback: Callable[[], None] | None = callback

    def __lt__(self, other: _Entry) -> bool:
        return (self.when, self.order) < (other.when, other.order)


class ExpiryWatch:
    """
    Calls back when a token expires: one heap and one :meth:`sweep` for all.

    ``watch(when, callback)`` returns an entry for :meth:`cancel` (on close
    or refresh). Cancelled entries are dropped lazily; the heap is rebuilt
    when they outnumber the live ones, so its size stays bounded by the
    number of watched connections.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._heap: list[_Entry] = []
        self._order = itertools.count()
        self._cancelled = 0

    def __len__(self) -> int:
        """The number of live (not cancelled) entries."""
        return len(self._heap) - self._cancelled

    def watch(self, when: float | None, callback: Callable[[], None]) -> _Entry | None:
        """Call ``callback`` at the first sweep at or after ``when`` (None: never)."""
        if when is None:
            return None
        entry = _Entry(when, next(self._order), callback)
        heapq.heappush(self._heap, entry)
        return entry

    def cancel(self, entry: _Entry | None) -> None:
        """Forget ``entry`` (a no-op for None or an entry already fired)."""
        if entry is None or entry.callback is None:
            return
        entry.callback = None
        self._cancelled += 1
        if self._cancelled > 64 and self._cancelled * 2 > len(self._heap):
            self._heap = [e for e in self._heap if e.callback is not None]
            heapq.heapify(self._heap)
            self._cancelled = 0

    def sweep(self) -> int:
        """Run the callback of every entry due now; return how many ran."""
        now = self._clock.seconds()
        fired = 0
        while self._heap and self._heap[0].when <= now:
            entry = heapq.heappop(self._heap)
            callback, entry.callback = entry.callback, None
            if callback is None:
                self._cancelled -= 1
                continue
            callback()
            fired += 1
        return fired
