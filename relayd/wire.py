"""
The wire format, with no I/O: client ids, send requests, and the JSON frames.

Everything here is pure: it turns bytes and parsed JSON into validated
values, and values into the bytes that go on the wire. The HTTP API, the
WebSocket transport and the SSE transport all use it, so a message is
validated one way and encoded once however many connections receive it.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeGuard

import orjson

CLIENT_ID = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")
MAX_RECEIVERS = 1000
MAX_BATCH = 1000
MAX_DEPTH = 500

_TARGETS = ("receiver_id", "receiver_ids", "broadcast")
HTTP_FIELDS = frozenset(_TARGETS + ("content", "sender_id", "idempotency_key"))
FRAME_SEND_FIELDS = frozenset(_TARGETS + ("content", "type", "ref", "idempotency_key"))
IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,128}")


class InvalidRequest(ValueError):
    """
    A request or frame that cannot be accepted.

    ``code`` is the machine-readable error code, ``detail`` says what to fix;
    ``ref`` is the ``ref`` of the client frame it answers (None if none).
    """

    ref: object = None

    def __init__(self, detail: str, code: str = "invalid_request"):
        super().__init__(detail)
        self.detail = detail
        self.code = code


KNOWN_IDS = 10_000
"""How many valid client ids :func:`is_client_id` remembers (then it starts again): the same ids come back."""

_known_ids: set[str] = set()


def is_client_id(value: object) -> TypeGuard[str]:
    """True when ``value`` is a string that is a valid client id."""
    if value.__class__ is str and value in _known_ids:  # (a set lookup: a tenth of the regex's time)
        return True
    if not isinstance(value, str) or CLIENT_ID.fullmatch(value) is None:
        return False
    if len(_known_ids) >= KNOWN_IDS:
        _known_ids.clear()
    _known_ids.add(value)
    return True


def check_client_id(value: object, name: str = "id") -> str:
    """Return ``value`` if it is a valid client id, else raise InvalidRequest."""
    if is_client_id(value):
        return value
    raise InvalidRequest(
        f"'{name}' must be 1 to 128 characters from A-Z a-z 0-9 _ . : @ -",
        code="invalid_id",
    )


def dumps(value: object) -> bytes:
    """Encode ``value`` as compact UTF-8 JSON."""
    try:
        return orjson.dumps(value)
    except TypeError:  # an integer past 64 bits
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def utc_timestamp(seconds: float) -> str:
    """Format POSIX ``seconds`` as ``2026-11-25T23:00:00.123Z`` (the date and time formatted once a second)."""
    fraction, whole = math.modf(seconds)  # rounded as datetime.fromtimestamp rounds
    micros = round(fraction * 1e6)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    elif micros < 0:
        whole, micros = whole - 1, micros + 1_000_000
    if whole != _last_second[0]:
        _last_second[:] = [whole, datetime.fromtimestamp(whole, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.")]
    return _last_second[1] + _MILLIS[micros // 1000]  # type: ignore[operator, no-any-return]


_last_second: list[object] = [None, ""]
_MILLIS = [f"{n:03d}Z" for n in range(1000)]
"""A time stamp's last part for each millisecond (a concatenation per stamp, not a formatting step)."""


@dataclass(slots=True)
class SendRequest:
    """
    One validated message to send.

    Exactly one of ``receiver_ids`` (non-empty, de-duplicated, in order) or
    ``broadcast`` is set. Treat it as immutable (``dataclasses.replace``
    makes a changed copy): it is not frozen because a frozen dataclass
    sets each field through ``object.__setattr__``, ten times slower to
    make (2.5 µs more for every message of a batch).
    """

    content: object
    receiver_ids: tuple[str, ...] = ()
    broadcast: bool = False
    sender_id: str | None = None
    idempotency_key: str | None = None
    received: float | None = field(default=None, compare=False)


@dataclass(slots=True, weakref_slot=True)
class Message:
    """
    A message on its way to one receiver (or to everyone, for a broadcast).

    ``frame`` is the JSON text sent on ``/ws`` and in the SSE ``data:`` line;
    it is encoded once, when the message is made, and shared by every
    connection that receives it. ``ws`` and ``sse`` are that frame as each
    transport puts it on the wire, made by the first connection of that
    transport that writes it and shared by the others. ``received`` is when
    its ``send`` arrived; ``timed`` is set once its delivery time has been
    observed; ``marked`` when the broker counted it as delivered as it
    routed it (it needs no ``mark_delivered`` once written).
    """

    id: int | None
    epoch: str | None
    receiver_id: str | None
    frame: bytes
    received: float | None = field(default=None, repr=False, compare=False)
    ws: bytes | None = field(default=None, repr=False, compare=False)
    sse: bytes | None = field(default=None, repr=False, compare=False)
    timed: bool = field(default=False, repr=False, compare=False)
    marked: bool = field(default=False, repr=False, compare=False)

    @property
    def size(self) -> int:
        """Bytes this message holds in history."""
        return len(self.frame)


def message_frame(
    message_id: int | None,
    receiver_id: str | None,
    sender_id: str | None,
    content_json: bytes,
    timestamp: str,
) -> bytes:
    """
    Encode a ``message`` frame.

    ``content_json`` is the already-encoded content, so the content of a
    message sent to many receivers is encoded once. ``receiver_id`` and
    ``sender_id`` are client ids (checked by ``parse_send`` and at the
    gate) and ``timestamp`` is ``utc_timestamp``'s: none of their
    characters needs a JSON escape, so the frame is one formatting step.
    """
    sender = b"null" if sender_id is None else b'"' + sender_id.encode("ascii") + b'"'
    if message_id is not None and receiver_id is not None:  # a numbered message: one formatting step in all
        return _NUMBERED_FRAME % (message_id, sender, receiver_id.encode("ascii"), timestamp.encode("ascii"),
                                  content_json)
    return _MESSAGE_FRAME % (
        b"null" if message_id is None else b"%d" % message_id,
        sender,
        b"null" if receiver_id is None else b'"%s"' % receiver_id.encode("ascii"),
        timestamp.encode("ascii"), content_json,
    )


_MESSAGE_FRAME = b'{"type":"message","id":%s,"sender_id":%s,"receiver_id":%s,"timestamp":"%s","content":%s}'
_NUMBERED_FRAME = b'{"type":"message","id":%d,"sender_id":%s,"receiver_id":"%s","timestamp":"%s","content":%s}'


def welcome_frame(client_id: str, epoch: str, last_id: int, replayed: int, lost: bool) -> bytes:
    """Encode the ``welcome`` frame, the first frame of every connection."""
    return dumps(
        {
            "type": "welcome",
            "client_id": client_id,
            "epoch": epoch,
            "last_id": last_id,
            "replayed": replayed,
            "lost": lost,
        }
    )


def ack_frame(ref: object, report: dict[str, object] | None = None) -> bytes:
    """Encode an ``ack`` frame; ``report`` is a delivery report (see reports)."""
    return dumps({"type": "ack", "ref": ref, **(report or {})})


def error_frame(ref: object, error: str, detail: str) -> bytes:
    """Encode an ``error`` frame for a bad client frame."""
    return dumps({"type": "error", "ref": ref, "error": error, "detail": detail})


def _suggest(name: str, known: frozenset[str]) -> str:
    """A ``did you mean`` hint for an unknown field name, or ''."""
    squashed = name.replace("_", "").replace("-", "").lower()
    for candidate in sorted(known):
        if candidate.replace("_", "") == squashed:
            return f" (did you mean '{candidate}'?)"
    close = difflib.get_close_matches(name.lower(), sorted(known), n=1, cutoff=0.7)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _check_fields(obj: dict[str, object], known: frozenset[str]) -> None:
    if obj.keys() <= known:  # the usual case, asked in one set operation
        return
    for name in obj:
        if name not in known:
            raise InvalidRequest(f"unknown field '{name}'{_suggest(str(name), known)}")


def _receivers(obj: dict[str, object]) -> tuple[tuple[str, ...], bool]:
    present = [name for name in _TARGETS if name in obj]
    if len(present) != 1:
        raise InvalidRequest(
            "exactly one of 'receiver_id', 'receiver_ids' or 'broadcast' is required"
            + (f", got {', '.join(present)}" if present else "")
        )
    target = present[0]
    value = obj[target]
    if target == "broadcast":
        if value is not True:
            raise InvalidRequest("'broadcast' must be true")
        return (), True
    if target == "receiver_id":
        return (check_client_id(value, "receiver_id"),), False
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_RECEIVERS:
        raise InvalidRequest(f"'receiver_ids' must be a list of 1 to {MAX_RECEIVERS} ids")
    for index, receiver in enumerate(value):
        check_client_id(receiver, f"receiver_ids[{index}]")
    return tuple(dict.fromkeys(value)), False


def parse_send(obj: object, known: frozenset[str] = HTTP_FIELDS, sender_id: str | None = None,
               received: float | None = None) -> SendRequest:
    """
    Validate one message object (from ``POST /send-message`` or a ``send`` frame).

    ``known`` is the set of allowed fields. When ``sender_id`` is given it is
    the sender (a WebSocket client's own id); otherwise the object's optional
    ``sender_id`` is used. ``received`` is when it arrived.
    """
    if not isinstance(obj, dict):
        raise InvalidRequest("a message must be a JSON object")
    if not obj.keys() <= known:  # (the usual case asked here, in one set operation, without a call)
        _check_fields(obj, known)
    receivers: tuple[str, ...]
    if "receiver_id" in obj and "receiver_ids" not in obj and "broadcast" not in obj:  # the usual case
        receiver = obj["receiver_id"]
        if receiver.__class__ is not str or receiver not in _known_ids:  # (is_client_id's first step, inline)
            receiver = check_client_id(receiver, "receiver_id")
        receivers, broadcast = (receiver,), False
    else:
        receivers, broadcast = _receivers(obj)
    if "content" not in obj:
        raise InvalidRequest("'content' is required")
    if sender_id is None and obj.get("sender_id") is not None:
        sender_id = check_client_id(obj["sender_id"], "sender_id")
    key = None if "idempotency_key" not in obj else _idempotency_key(obj)
    # content, receiver_ids, broadcast, sender_id, idempotency_key, received (positional: fewer steps than keywords)
    return SendRequest(obj["content"], receivers, broadcast, sender_id, key, received)


def _idempotency_key(obj: dict[str, object]) -> str | None:
    """The message's ``idempotency_key`` (1 to 128 printable ASCII characters), or None."""
    key = obj.get("idempotency_key")
    if key is None:
        return None
    if not isinstance(key, str) or IDEMPOTENCY_KEY.fullmatch(key) is None:
        raise InvalidRequest("'idempotency_key' must be 1 to 128 printable ASCII characters")
    return key


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON value")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"the key {key!r} appears twice in one object")
            seen.add(key)
    return obj


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"the number {text} is too large")
    return value


def loads(data: bytes) -> object:
    """
    Parse JSON text, raising InvalidRequest with a useful detail.

    ``NaN``, ``Infinity`` and numbers too large for a float are refused:
    they are not JSON, and no client could parse a frame carrying them.
    So is nesting more than ``MAX_DEPTH`` levels deep, which could not be encoded
    again (Python's recursion limit) once the message is on its way, and an
    object that names one key twice (which value was meant is anyone's guess).

    orjson parses; what it refuses, might read differently (integers past
    64 bits, which it turns into floats) or may have read with a key named
    twice goes to the standard library's parser, which has the last word
    and says what is wrong.
    """
    digits = data.translate(_DIGITS_AS_ONES)
    # No integer that could be past 64 bits (find, not in: bytes' `in` tries its operand as an int first);
    # the usual body has no run of 19 digits at all, and then neither kind.
    if digits.find(_RUN_19) < 0 or (digits.find(_LONG_RUN) < 0 and digits.find(_LONG_NEGATIVE) < 0):
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
        else:
            escaped = data.find(b"\\u") >= 0
            again = None if escaped else _encoded_again(value)
            if _keys_are_unique(value, data, again):
                # Encoded again (``again``), ``value`` nests no deeper than orjson encodes, not too deep when
                # ORJSON_BOUNDS_DEPTH, and with no \u escape it holds no lone surrogate: nothing is left to check.
                return value if again is not None and ORJSON_BOUNDS_DEPTH else _checked(value, data, escaped)
    return _checked(_stdlib_loads(data), data, True)


_DIGITS_AS_ONES = bytes(0x31 if 0x30 <= byte <= 0x39 else 0x2D if byte == 0x2D else 0x30 for byte in range(256))
"""
A ``bytes.translate`` table: each digit becomes ``1``, ``-`` stays, any
other byte becomes ``0``: an integer past 64 bits has 20 digits
(``_LONG_RUN``), or 19 after a minus sign (``_LONG_NEGATIVE``). Ten times
faster than a regular expression, which counts each run of digits again
from every one of its digits.
"""
_LONG_RUN = b"1" * 20
_LONG_NEGATIVE = b"-" + b"1" * 19
_RUN_19 = b"1" * 19
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


def orjson_refuses_depth(depth: int) -> bool:
    """True when orjson refuses to encode lists nested ``depth`` levels deep."""
    nested: list[object] = []
    for _ in range(depth - 1):
        nested = [nested]
    try:
        orjson.dumps(nested)
    except orjson.JSONEncodeError:
        return True
    return False


ORJSON_BOUNDS_DEPTH = orjson_refuses_depth(MAX_DEPTH + 1)
"""
True when orjson encodes nothing nested deeper than MAX_DEPTH (its encoder
stops at a few hundred levels, 254 or 255 by release, and parses deeper):
then a body it encoded again needs no depth check. Asked of the installed
orjson once, at import.
"""


def _encoded_again(value: object) -> bytes | None:
    """``value`` (as orjson parsed it) encoded again, or None when it nests deeper than orjson encodes."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return None


def _keys_are_unique(value: object, data: bytes, again: bytes | None) -> bool:
    """
    True when no object in ``data`` names a key twice: ``again``, ``value``
    encoded again, has as many ':' as ``data`` (a key named twice loses one,
    and its dropped value cannot add any back). Without ``again`` (a \\u
    escape in ``data`` could have hidden a ':', or ``value`` nests deeper than
    orjson encodes) every ':' outside strings must end one key of ``value``.
    """
    if again is not None:
        return data.count(b":") == again.count(b":")
    keys = _count_keys(value)
    return data.count(b":") == keys or _STRING.sub(b"", data).count(b":") == keys


def _count_keys(value: object) -> int:
    """The number of keys of every object in ``value`` (as orjson made it: exact dicts and lists)."""
    kind = type(value)
    if kind is not dict and kind is not list:
        return 0
    keys, stack = 0, [value]
    pop, push = stack.pop, stack.append
    while stack:
        item: Any = pop()
        if type(item) is dict:
            keys += len(item)
            children = item.values()
        else:
            children = item
        for child in children:
            kind = type(child)
            if kind is dict or kind is list:
                push(child)
    return keys


def _stdlib_loads(data: bytes) -> object:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("the body is not UTF-8") from None
    try:
        return json.loads(
            text, parse_constant=_refuse_constant, parse_float=_finite_float, object_pairs_hook=_unique_keys
        )
    except (ValueError, RecursionError) as error:
        raise InvalidRequest(f"invalid JSON: {error}") from None


def _checked(value: object, data: bytes, escaped: bool) -> object:
    # (A text nested deeper than MAX_DEPTH opens and closes more than MAX_DEPTH brackets: it is longer than
    # _SHALLOW; and only a \u escape, ``escaped``, can spell a lone surrogate.)
    if len(data) > _SHALLOW and data.count(b"[") + data.count(b"{") > MAX_DEPTH and _too_deep(value):
        raise InvalidRequest(f"invalid JSON: nested deeper than {MAX_DEPTH} levels")
    if escaped and _ESCAPED_SURROGATE.search(data) and _has_lone_surrogate(value):
        raise InvalidRequest("invalid JSON: a \\u escape is a lone UTF-16 surrogate, which is not text")
    return value


_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")
_SHALLOW = 2 * MAX_DEPTH + 1


def _has_lone_surrogate(value: object) -> bool:
    """True when a string in ``value`` holds a lone surrogate (it cannot be encoded as UTF-8)."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _too_deep(value: object) -> bool:
    """True when ``value`` nests lists and objects more than ``MAX_DEPTH`` levels deep."""
    stack = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > MAX_DEPTH:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def parse_send_body(body: bytes, received: float | None = None) -> tuple[list[SendRequest], bool]:
    """
    Validate a ``POST /send-message`` body that arrived at ``received``.

    Returns the requests and whether the body was a batch (a JSON array).
    A batch is validated whole: the first bad item raises, naming its index.
    """
    value = loads(body)
    if not isinstance(value, list):
        return [parse_send(value, received=received)], False
    if not 1 <= len(value) <= MAX_BATCH:
        raise InvalidRequest(f"a batch must hold 1 to {MAX_BATCH} messages")
    requests = []
    for index, item in enumerate(value):
        try:
            requests.append(parse_send(item, received=received))
        except InvalidRequest as error:
            raise InvalidRequest(f"message [{index}]: {error.detail}", error.code) from None
    return requests, True


@dataclass(frozen=True)
class ClientFrame:
    """A validated frame from a client: ``send`` or ``refresh``."""

    type: str
    ref: object
    send: SendRequest | None = None
    token: str | None = None


def parse_client_frame(data: bytes, sender_id: str) -> ClientFrame:
    """
    Validate a text frame from a connected client.

    Raises InvalidRequest (code ``invalid_frame``) with the frame's ``ref``
    in ``error.ref`` when the frame had one.
    """
    try:
        value = loads(data)
    except InvalidRequest as error:
        raise _frame_error(error.detail, None) from None
    if not isinstance(value, dict):
        raise _frame_error("a frame must be a JSON object", None)
    ref = value.get("ref")
    kind = value.get("type")
    try:
        if kind == "send":
            return ClientFrame("send", ref, send=parse_send(value, FRAME_SEND_FIELDS, sender_id))
        if kind == "refresh":
            _check_fields(value, frozenset(("type", "ref", "token")))
            token = value.get("token")
            if not isinstance(token, str) or not token:
                raise InvalidRequest("'refresh' needs a 'token' string")
            return ClientFrame("refresh", ref, token=token)
    except InvalidRequest as error:
        raise _frame_error(error.detail, ref) from None
    raise _frame_error(f"unknown frame type {kind!r}: expected 'send' or 'refresh'", ref)


def _frame_error(detail: str, ref: object) -> InvalidRequest:
    error = InvalidRequest(detail, code="invalid_frame")
    error.ref = ref
    return error
