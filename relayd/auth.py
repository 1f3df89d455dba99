"""
Who may connect and send: the authentication policy the gate and the transports consult.

:class:`OpenAuth` is open mode (no secret configured): anyone may connect as
any valid id and send. A token-checking policy offers the same three methods.
"""

from __future__ import annotations

from relayd.registry import Refused


class OpenAuth:
    """Open mode: ids are taken from the query, every connection may send."""

    secured = False

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

