"""
The Redis broker's RESP reader (relayd.brokers.redis.resp) and its pacing
(relayd.brokers.redis.pacing), in memory on a fake clock.
"""

from __future__ import annotations

import pytest
import txredisapi
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from relayd.brokers.redis.connection import CommandProtocol, script_sha
from relayd.brokers.redis.pacing import ANNOUNCE_EVERY, Pacing
from relayd.brokers.redis.resp import FastReplies, Reader, encode


def resp_message(channel: bytes, payload: bytes) -> bytes:
    return b"*3\r\n$7\r\nmessage\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(channel), channel, len(payload), payload)


def replies(data: bytes, cut: int | None = None) -> list:
    reader, out = Reader(), []
    for piece in ([data] if cut is None else [data[:cut], data[cut:]]):
        reader.feed(piece)
        while (reply := reader.gets()) is not False:
            out.append(reply)
    return out


def test_every_reply_kind():
    data = b"+OK\r\n:42\r\n$5\r\nhe\r\no\r\n$-1\r\n*-1\r\n*2\r\n*1\r\n:1\r\n$0\r\n\r\n-ERR wrong\r\n"
    got = replies(data)
    assert got[:6] == [b"OK", 42, b"he\r\no", None, None, [[1], b""]]
    assert isinstance(got[6], txredisapi.ResponseError) and str(got[6]) == "ERR wrong"


@pytest.mark.parametrize("cut", range(1, 40))
def test_a_reply_split_anywhere_comes_out_whole_and_once(cut):
    data = resp_message(b"relayd:n:node", b"m e1 1 alice 1.0 {}") + b":7\r\n"
    assert replies(data, cut) == [[b"message", b"relayd:n:node", b"m e1 1 alice 1.0 {}"], 7]


def test_a_burst_of_records_reaches_the_subscriber_in_order():
    got = []

    class Subscriber(FastReplies, txredisapi.SubscriberProtocol):
        def messageReceived(self, pattern, channel, message):
            got.append(message)

    proto = Subscriber(charset=None, convertNumbers=False)
    proto.makeConnection(StringTransport())
    burst = b"".join(resp_message(b"c", b"record %d" % n) for n in range(1000))
    for start in range(0, len(burst), 4096):
        proto.dataReceived(burst[start:start + 4096])
    assert got == [b"record %d" % n for n in range(1000)]


def test_an_unknown_type_is_a_protocol_error():
    reader = Reader()
    reader.feed(b"?what\r\n")
    with pytest.raises(txredisapi.InvalidData):
        reader.gets()


def test_encode_writes_each_argument_as_a_bulk_string():
    assert encode((b"SET", "k\u00e9", 12, 0.5)) == b"*4\r\n$3\r\nSET\r\n$3\r\nk\xc3\xa9\r\n$2\r\n12\r\n$8\r\n0.500000\r\n"


def connected_command():
    proto = CommandProtocol(charset=None, convertNumbers=False)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def test_commands_are_answered_in_order_and_an_error_reply_fails_only_its_own():
    proto, transport = connected_command()
    first, second, third = proto.publish("c", b"x"), proto.execute_command("GET", "k"), proto.publish("c", b"y")
    assert transport.value() == encode(("PUBLISH", "c", b"x")) + encode(("GET", "k")) + encode(("PUBLISH", "c", b"y"))
    proto.dataReceived(b":1\r\n-WRONGTYPE no\r\n:2\r\n")
    assert first.result == 1 and third.result == 2
    failures = []
    second.addErrback(failures.append)
    assert failures[0].check(txredisapi.ResponseError)


def test_a_script_goes_as_eval_until_redis_knows_it_then_as_evalsha():
    proto, transport = connected_command()
    proto.eval("return 1", ["k"], [7])
    assert transport.value() == encode(("EVAL", "return 1", 1, "k", 7))
    transport.clear()
    proto.dataReceived(b":1\r\n")
    later = proto.eval("return 1", ["k"], [8])
    got = []
    later.addCallback(got.append)
    assert transport.value() == encode(("EVALSHA", script_sha("return 1"), 1, "k", 8))
    transport.clear()
    proto.dataReceived(b"-NOSCRIPT No matching script\r\n")  # Redis forgot it (SCRIPT FLUSH)
    assert transport.value() == encode(("EVAL", "return 1", 1, "k", 8)) and got == []
    proto.dataReceived(b":5\r\n")
    assert got == [5]


def test_commands_sent_together_go_in_one_write_when_the_block_ends():
    proto, transport = connected_command()
    with proto.together():
        first, second = proto.execute_command("GET", "a"), proto.execute_command("GET", "b")
        assert transport.value() == b""
    assert transport.value() == encode(("GET", "a")) + encode(("GET", "b"))
    proto.dataReceived(b"$1\r\n1\r\n$1\r\n2\r\n")
    assert (first.result, second.result) == (b"1", b"2")
    proto.execute_command("GET", "c")
    assert transport.value().endswith(encode(("GET", "c")))


def test_commands_waiting_when_the_connection_drops_fail():
    proto, transport = connected_command()
    waiting = proto.execute_command("GET", "k")
    proto.connectionLost(ConnectionError("gone"))
    failures = []
    waiting.addErrback(failures.append)
    assert failures[0].check(txredisapi.ConnectionError)
    with pytest.raises(txredisapi.ConnectionError):
        proto.execute_command("GET", "k")


# Pacing

def test_records_on_time_are_not_behind():
    clock = Clock()
    pacing = Pacing(clock, limit=0.05, quiet=0.05)
    clock.advance(10)
    assert pacing.observe(clock.seconds() - 0.01) is False
    assert not pacing.behind


def test_a_late_record_is_behind_until_records_are_on_time_or_stop():
    clock = Clock()
    pacing = Pacing(clock, limit=0.05, quiet=0.05)
    clock.advance(10)
    assert pacing.observe(clock.seconds() - 0.2) is True  # announce
    assert pacing.behind
    clock.advance(0.01)
    assert pacing.observe(clock.seconds() - 0.2) is False  # announced a moment ago
    assert pacing.behind
    clock.advance(ANNOUNCE_EVERY)
    assert pacing.observe(clock.seconds() - 0.3) is True
    pacing.observe(clock.seconds() - 0.001)
    assert not pacing.behind
    pacing.observe(clock.seconds() - 0.3)
    assert pacing.behind
    clock.advance(0.05)  # nothing more arrived: nothing is waiting
    assert not pacing.behind
