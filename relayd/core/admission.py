"""What the gate learned about a connection it let through, handed to its transport."""

from __future__ import annotations

from dataclasses import dataclass

from relayd.core.session import Session


@dataclass(slots=True)
class Admission:
    """An admitted connection: its reserved session, resume point, address, path and grant."""

    session: Session
    last_id: int | None
    epoch: str | None
    peer: str
    path: str
    grant: object = None
