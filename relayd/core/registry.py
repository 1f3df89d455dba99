"""
The live connections of this node, keyed by client id.

The :class:`Registry` holds every :class:`~relayd.core.session.Session`,
admitted or open, and applies the duplicate policy. It has no I/O and no
clock.
"""

from __future__ import annotations

from collections import Counter

from relayd.core.session import Session

POLICIES = ("replace", "fanout", "reject")


class Refused(Exception):
    """A connection refused before the upgrade, with its HTTP status."""

    def __init__(self, status: int, error: str, detail: str):
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail


class Registry:
    """Every session of this node, by client id, under one duplicate policy."""

    def __init__(self, policy: str = "replace", max_per_id: int = 8, max_connections: int = 10000):
        if policy not in POLICIES:
            raise ValueError(f"duplicate policy must be one of {', '.join(POLICIES)}")
        self.policy = policy
        self.max_per_id = max_per_id
        self.max_connections = max_connections
        # Tuples, replaced whole when a session comes or goes: sessions() hands one out without a copy.
        self._by_id: dict[str, tuple[Session, ...]] = {}
        self.counts: Counter[str] = Counter()

    def __len__(self) -> int:
        """The number of sessions (connections, open or opening)."""
        return sum(self.counts.values())

    @property
    def clients(self) -> int:
        """The number of distinct client ids with a session."""
        return len(self._by_id)

    def sessions(self, client_id: str) -> tuple[Session, ...]:
        """The sessions of ``client_id`` (as they are now: sessions added or removed later are not in it)."""
        return self._by_id.get(client_id, ())

    def all_sessions(self) -> list[Session]:
        """Every session (a copy)."""
        return [s for sessions in self._by_id.values() for s in sessions]

    def check(self, client_id: str) -> None:
        """Raise Refused if a new connection for ``client_id`` may not be admitted."""
        existing = self._by_id.get(client_id, ())
        takes_a_place = not (self.policy == "replace" and existing)
        if takes_a_place and len(self) >= self.max_connections:
            raise Refused(503, "too_many_connections", "the relay is at its connection limit; retry later")
        if self.policy == "reject" and existing:
            raise Refused(409, "duplicate", f"'{client_id}' is already connected")
        if self.policy == "fanout" and len(existing) >= self.max_per_id:
            raise Refused(409, "duplicate", f"'{client_id}' already has {len(existing)} connections, the most allowed")

    def add(self, session: Session) -> list[Session]:
        """
        Admit ``session``; return the older sessions it replaces.

        The caller closes the replaced sessions (with 4000).
        """
        self.check(session.client_id)
        replaced = list(self.sessions(session.client_id)) if self.policy == "replace" else []
        for old in replaced:
            self.remove(old)
        self._by_id[session.client_id] = (*self._by_id.get(session.client_id, ()), session)
        self.counts[session.transport] += 1
        return replaced

    def remove(self, session: Session) -> bool:
        """Forget ``session``; False if it was not here."""
        sessions = self._by_id.get(session.client_id)
        if not sessions or session not in sessions:
            return False
        left = tuple(s for s in sessions if s is not session)
        if left:
            self._by_id[session.client_id] = left
        else:
            del self._by_id[session.client_id]
        self.counts[session.transport] -= 1
        return True
