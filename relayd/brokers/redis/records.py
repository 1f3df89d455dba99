"""
The record codec: the message frame's parts the PUBLISH script puts an id
into, and the script's reply decoded into a :class:`~relayd.core.history.Reply`.
"""

from __future__ import annotations

import secrets

from relayd.core.history import Reply
from relayd.core.ports import DROPPED, QUEUED, SENT
from relayd.wire import dumps


def frame_parts(sender_id: str | None, content_json: bytes, timestamp: str) -> tuple[bytes, bytes]:
    """
    ``(mid, tail)`` such that ``b'{"type":"message","id":' + id + mid +
    receiver_id + tail`` is the message frame (see wire.message_frame);
    the Lua script puts the id in.
    """
    mid = b',"sender_id":' + dumps(sender_id) + b',"receiver_id":"'
    tail = b'","timestamp":' + dumps(timestamp) + b',"content":' + content_json + b"}"
    return mid, tail


_OUTCOMES = {ord("s"): SENT, ord("q"): QUEUED, ord("d"): DROPPED}


def parse_reply(reply: bytes) -> Reply:
    """The :class:`Reply` from the PUBLISH script's ``<message id> <letters> <receiver>...``."""
    message_id, letters, *named = reply.decode().split(" ")
    receivers = [receiver for receiver in named if receiver]
    outcomes = {receiver: _OUTCOMES[letter] for receiver, letter in zip(receivers, letters.encode(), strict=True)}
    lists: dict[str, list[str]] = {SENT: [], QUEUED: [], DROPPED: []}
    for receiver in receivers:
        lists[outcomes[receiver]].append(receiver)
    return Reply(message_id, tuple(lists[SENT]), tuple(lists[QUEUED]), tuple(lists[DROPPED]))


class Epochs:
    """
    Candidate epoch names for the scripts, like relayd.core.history.new_epoch's
    (8 URL-safe characters, 48 random bits), 64 from each read of the system's
    random source instead of one: every message proposes one per receiver.
    """

    def __init__(self) -> None:
        self._pool: list[str] = []

    def take(self) -> str:
        """A fresh candidate."""
        if not self._pool:
            text = secrets.token_urlsafe(6 * 64)
            self._pool = [text[start:start + 8] for start in range(0, len(text), 8)]
        return self._pool.pop()
