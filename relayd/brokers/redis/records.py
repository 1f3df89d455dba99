"""
The record codec: the message frame's parts the PUBLISH script puts an id
into, and the script's reply decoded into a :class:`~relayd.core.history.Reply`.
"""

from __future__ import annotations

import secrets

from relayd.brokers.redis.resp import BULK, Encoded
from relayd.core.history import Reply
from relayd.core.ports import DROPPED, QUEUED, SENT
from relayd.wire import dumps


def frame_parts(sender_id: str | None, content_json: bytes, timestamp: str) -> tuple[bytes, bytes]:
    """
    ``(mid, tail)`` such that ``b'{"type":"message","id":' + id + mid +
    receiver_id + tail`` is the message frame (see wire.message_frame);
    the Lua script puts the id in.
    """
    if sender_id is None:
        mid = _NO_SENDER
    else:
        mid = b',"sender_id":' + dumps(sender_id) + b',"receiver_id":"'
    # (a timestamp is wire.utc_timestamp's: ASCII with nothing to escape, its JSON is itself in quotes)
    return mid, b"".join((b'","timestamp":"', timestamp.encode(), b'","content":', content_json, b"}"))


_NO_SENDER = b',"sender_id":null,"receiver_id":"'


# One receiver's message as PUBLISH reads it (scripts.PUBLISH): 1 receiver, received, mid, tail, message id,
# keyed, id, epoch (8 bytes).
_ONE = b"$1\r\n1\r\n" + BULK * 4 + b"$1\r\n%d\r\n" + BULK + b"$8\r\n%b\r\n"


def message_args(receivers: tuple[str, ...], received: bytes, mid: bytes, tail: bytes, message_id: str, keyed: bool,
                 epochs: Epochs) -> Encoded:
    """One message's arguments of a PUBLISH call, in RESP (a one-receiver message in one formatting step)."""
    ident = message_id.encode()
    if len(receivers) == 1:
        rid = receivers[0].encode()
        return Encoded(8, _ONE % (len(received), received, len(mid), mid, len(tail), tail, len(ident), ident, keyed,
                                  len(rid), rid, epochs.take_bytes()))
    items = [b"%d" % len(receivers), received, mid, tail, ident, b"1" if keyed else b"0"]
    for receiver in receivers:
        items += [receiver.encode(), epochs.take_bytes()]
    return Encoded.of(items)


_OUTCOMES = {ord("s"): SENT, ord("q"): QUEUED, ord("d"): DROPPED}


def parse_reply(reply: bytes) -> Reply:
    """The :class:`Reply` from the PUBLISH script's ``<message id> <letters> <receiver>...`` (a keyed message's)."""
    message_id, letters, *named = reply.decode().split(" ")
    return outcomes(message_id, tuple(receiver for receiver in named if receiver), letters.encode())


def outcomes(message_id: str, receivers: tuple[str, ...], letters: bytes) -> Reply:
    """The :class:`Reply` for ``receivers`` from the PUBLISH script's outcome letters, one per receiver in order."""
    if len(letters) == 1 and len(receivers) == 1:  # the usual message: one receiver
        outcome = _OUTCOMES[letters[0]]
        return Reply(message_id, receivers if outcome is SENT else (), receivers if outcome is QUEUED else (),
                     receivers if outcome is DROPPED else ())
    lists: dict[str, list[str]] = {SENT: [], QUEUED: [], DROPPED: []}
    for receiver, letter in zip(receivers, letters, strict=True):
        lists[_OUTCOMES[letter]].append(receiver)
    return Reply(message_id, tuple(lists[SENT]), tuple(lists[QUEUED]), tuple(lists[DROPPED]))


class Epochs:
    """
    Candidate epoch names for the scripts, like relayd.core.history.new_epoch's
    (8 URL-safe characters, 48 random bits), 64 from each read of the system's
    random source instead of one: every message proposes one per receiver.
    """

    def __init__(self) -> None:
        self._pool: list[bytes] = []

    def take(self) -> str:
        """A fresh candidate."""
        return self.take_bytes().decode()

    def take_bytes(self) -> bytes:
        """A fresh candidate, as ASCII bytes (8 of them)."""
        if not self._pool:
            text = secrets.token_urlsafe(6 * 64).encode()
            self._pool = [text[start:start + 8] for start in range(0, len(text), 8)]
        return self._pool.pop()
