"""In-memory checks of the Redis broker's pure parts: URL parsing, frame assembly, epoch candidates."""

import re

import pytest

from relayd.brokers.redis.address import parse_url
from relayd.brokers.redis.records import Epochs, frame_parts, message_args, outcomes, parse_reply
from relayd.brokers.redis.resp import encode
from relayd.core.history import Reply
from relayd.wire import dumps, message_frame


def test_url_with_database_and_prefix():
    address = parse_url("redis://:s3cret@redis.example:6380/4?prefix=eu1:")
    assert (address.host, address.port, address.db, address.password, address.prefix) == (
        "redis.example", 6380, 4, "s3cret", "eu1:"
    )
    assert "s3cret" not in address.describe()


def test_url_defaults_and_unix_socket():
    address = parse_url("redis://127.0.0.1")
    assert (address.port, address.db, address.prefix) == (6379, 0, "relayd:")
    unix = parse_url("unix:///run/redis/redis.sock?db=2")
    assert (unix.path, unix.db) == ("/run/redis/redis.sock", 2)
    assert parse_url("rediss://cache.example/1").scheme == "rediss"


@pytest.mark.parametrize(
    "url, complaint",
    [
        ("http://127.0.0.1:6379", "scheme"),
        ("redis://127.0.0.1:6379/zero", "database"),
        ("redis://127.0.0.1:port/0", "port"),
        ("redis://127.0.0.1/0?prefx=a", "unknown parameter 'prefx'"),
        ("redis:///0", "host"),
        ("unix://", "socket path"),
    ],
)
def test_bad_urls_say_what_is_wrong(url, complaint):
    with pytest.raises(ValueError, match=complaint):
        parse_url(url)


@pytest.mark.parametrize("sender", [None, "billing"])
def test_frame_assembled_by_the_script_is_the_wire_frame(sender):
    content = dumps({"text": "héllo", "n": [1, 2]})
    mid, tail = frame_parts(sender, content, "2026-11-25T23:00:00.123Z")
    assembled = b'{"type":"message","id":' + b"42" + mid + b"alice" + tail
    assert assembled == message_frame(42, "alice", sender, content, "2026-11-25T23:00:00.123Z")


def test_epoch_candidates_are_new_epoch_shaped_and_never_repeat():
    epochs = Epochs()
    taken = [epochs.take() if n % 2 else epochs.take_bytes().decode() for n in range(64 * 3 + 1)]
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{8}", epoch) for epoch in taken)
    assert len(set(taken)) == len(taken)


@pytest.mark.parametrize(("reply", "parsed"), [
    (b"7 s bob", Reply("7", ("bob",))),
    (b"7 q bob", Reply("7", (), ("bob",))),
    (b"7 d bob", Reply("7", (), (), ("bob",))),
    (b"7 sdqs a b c d", Reply("7", ("a", "d"), ("c",), ("b",))),
    (b"7  ", Reply("7")),
])
def test_the_publish_scripts_reply_sorts_receivers_by_outcome(reply, parsed):
    assert parse_reply(reply) == parsed


@pytest.mark.parametrize("reply", [b"7 x bob", b"7 ss bob"])
def test_a_reply_with_an_unknown_letter_or_a_letter_too_many_is_refused(reply):
    with pytest.raises((KeyError, ValueError)):
        parse_reply(reply)


@pytest.mark.parametrize(("receivers", "letters", "parsed"), [
    (("bob",), b"s", Reply("7", ("bob",))),
    (("bob",), b"q", Reply("7", (), ("bob",))),
    (("bob",), b"d", Reply("7", (), (), ("bob",))),
    (("a", "b", "c", "d"), b"sdqs", Reply("7", ("a", "d"), ("c",), ("b",))),
])
def test_an_unkeyed_messages_letters_sort_its_receivers_by_outcome(receivers, letters, parsed):
    assert outcomes("7", receivers, letters) == parsed


@pytest.mark.parametrize(("receivers", "letters"), [(("bob",), b"x"), (("bob",), b"ss"), (("a", "b"), b"s"), (("bob",), b"")])
def test_letters_unknown_or_not_one_per_receiver_are_refused(receivers, letters):
    with pytest.raises((KeyError, ValueError)):
        outcomes("7", receivers, letters)


class FixedEpochs:
    """Candidate epochs E0000000, E0000001, … in turn (8 bytes, as Epochs makes them)."""

    def __init__(self):
        self.taken = 0

    def take_bytes(self):
        self.taken += 1
        return b"E%07d" % (self.taken - 1)


@pytest.mark.parametrize("receivers", [("alice",), ("alice", "bøb", "carol")])
@pytest.mark.parametrize("keyed", [False, True])
def test_a_messages_arguments_encoded_once_are_the_arguments_encoded_one_by_one(receivers, keyed):
    encoded = message_args(receivers, b"1500000", b",mid", b"tail}", "m1", keyed, FixedEpochs())
    one_by_one = [len(receivers), b"1500000", b",mid", b"tail}", "m1", 1 if keyed else 0]
    for n, receiver in enumerate(receivers):
        one_by_one += [receiver, b"E%07d" % n]
    assert encoded.count == len(one_by_one)
    assert encode(("EVALSHA", "sha", encoded, "after")) == encode(("EVALSHA", "sha", *one_by_one, "after"))
