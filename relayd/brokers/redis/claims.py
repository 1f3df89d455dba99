"""
This node's connections per id as the cluster knows them: each one's
takeover number (under ``replace``), and each id's *floor*, the last id
this node was in step with, from which it catches up after an outage.
"""

from __future__ import annotations


class Claims:
    """The claims and floors of one node, without I/O."""

    def __init__(self) -> None:
        self._by_id: dict[str, dict[int, int | None]] = {}
        self._floors: dict[str, tuple[str, int]] = {}
        self._overtaken: dict[str, int] = {}

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._by_id

    def __len__(self) -> int:
        return len(self._by_id)

    def ids(self) -> list[str]:
        """Every id with a connection here."""
        return list(self._by_id)

    def count(self, client_id: str) -> int:
        """This node's connections of ``client_id``."""
        return len(self._by_id.get(client_id, ()))

    def add(self, client_id: str, key: int) -> int:
        """A connection asks to claim ``client_id``; returns this node's count with it."""
        claims = self._by_id.setdefault(client_id, {})
        claims[key] = None
        return len(claims)

    def settle(self, client_id: str, key: int, admitted: bool, seq: int) -> bool:
        """
        The cluster answered the claim: True when the connection keeps it
        (admitted, and not overtaken meanwhile by a takeover numbered above
        ``seq``); otherwise it is forgotten.
        """
        claims = self._by_id.get(client_id)
        if claims is None or key not in claims:
            return False
        overtaken = self._overtaken.pop(client_id, 0)
        if not admitted or seq < overtaken:
            self.forget(client_id, key)
            return False
        claims[key] = seq
        return True

    def forget(self, client_id: str, key: int) -> int:
        """A connection's claim ends; returns this node's remaining count of ``client_id``."""
        claims = self._by_id.get(client_id, {})
        claims.pop(key, None)
        if not claims:
            self._by_id.pop(client_id, None)
            self._floors.pop(client_id, None)
            self._overtaken.pop(client_id, None)
        return len(claims)

    def survivor(self, client_id: str, seq: int) -> int | None:
        """
        Another node took ``client_id`` over with takeover number ``seq``:
        the key of the connection here that stays (a newer claim, or one
        still waiting for its answer, which then must beat ``seq``), or None.
        """
        claims = self._by_id.get(client_id, {})
        keep = next((key for key, own in claims.items() if own is not None and own > seq), None)
        if keep is None:
            keep = next((key for key, own in claims.items() if own is None), None)
            if keep is not None:
                self._overtaken[client_id] = max(seq, self._overtaken.get(client_id, 0))
        return keep

    def replayed(self, client_id: str, epoch: str, last: int) -> None:
        """A connection of ``client_id`` read its replay up to ``last`` in ``epoch``: lower the floor to it."""
        if client_id not in self._by_id:
            return
        floor_epoch, floor = self._floors.get(client_id, (epoch, last))
        self._floors[client_id] = (epoch, min(last, floor) if floor_epoch == epoch else last)

    def floored(self) -> list[str]:
        """The ids with a floor (to catch up after an outage)."""
        return list(self._floors)

    def floor(self, client_id: str, epoch: str) -> int:
        """Catch ``client_id`` up from above this id (0 in another epoch: its first message closes old sessions with 4009)."""
        floor_epoch, floor = self._floors.get(client_id, (epoch, 0))
        return floor if floor_epoch == epoch else 0
