"""What the gate hands a transport when it lets a connection through."""

from __future__ import annotations

from dataclasses import dataclass

from relayd.core.registry import Session


@dataclass
class Admission:
    """What the gate learned about a connection it let through."""

    session: Session
    last_id: int | None
    epoch: str | None
    peer: str
    path: str
    grant: object = None
