"""
The SSE transport in memory: the whole Site built on a ``task.Clock``, each
stream a ``StringTransport``; no reactor, no sockets.
"""

from __future__ import annotations

import re

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.python.failure import Failure

from relayd.options import Config
from relayd.site import build
from relayd.transports.rota import SLICES
from relayd.wire import parse_send


class Peer(StringTransport):
    """A stream's transport; what it holds is read once the reactor turn has ended (replies are written then)."""

    def __init__(self, clock: Clock, **kwargs):
        super().__init__(**kwargs)
        self.clock = clock

    def value(self) -> bytes:
        self.clock.advance(0)
        return super().value()


def whole_round(parts) -> None:
    """A keepalive round at once: every slice's tick (the timer gives one per ``--ping-interval`` / SLICES)."""
    for _ in range(SLICES):
        parts.sse.tick()


def make_relay(**options):
    config = Config(**options)
    parts = build(config, Clock())
    parts.relay.start()
    return parts


def open_stream(parts, query: str, headers: bytes = b""):
    """A client that sent ``GET /events?<query>``: ``(channel, transport)``."""
    channel = parts.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = Peer(parts.site.clock, peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    transport.protocol = channel
    channel.makeConnection(transport)
    channel.dataReceived(b"GET /events?" + query.encode() + b" HTTP/1.1\r\nHost: relay\r\n" + headers + b"\r\n")
    return channel, transport


def body(transport) -> bytes:
    """The response body so far, chunked framing removed."""
    raw = transport.value().split(b"\r\n\r\n", 1)[1]
    out, rest = b"", raw
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out, rest = out + rest[:size], rest[size + 2:]
    return out


def drop(channel, transport) -> None:
    """
    The TCP connection is gone, as a real transport reports it: it stops its
    producer, then tells its protocol, whichever that is now (a
    StringTransport does neither).
    """
    if transport.producer is not None:
        transport.producer.stopProducing()
    transport.protocol.connectionLost(Failure(ConnectionLost()))


def send(parts, client_id: str, content):
    results = []
    parts.relay.send(parse_send({"receiver_id": client_id, "content": content})).addBoth(results.append)
    return results[0]


def test_stream_writes_welcome_and_message_events_with_epoch_ids():
    parts = make_relay()
    _, transport = open_stream(parts, "id=alice")
    assert b"content-type: text/event-stream" in transport.value().lower()
    send(parts, "alice", "hi")
    text = body(transport).decode()
    epoch = re.search(r'"epoch":"([^"]+)"', text).group(1)
    assert re.match(r"retry: \d{4}\nevent: welcome\ndata: \{", text)
    assert 1000 <= int(text.split("\n")[0][7:]) <= 5000
    assert f"\n\nid: {epoch}:1\nevent: message\ndata: " in text and text.endswith('"content":"hi"}\n\n')
    assert parts.relay.registry.counts["sse"] == 1


def test_one_message_is_encoded_once_for_every_stream():
    parts = make_relay(duplicates="fanout")
    transports = [open_stream(parts, "id=fan")[1] for _ in range(3)]
    send(parts, "fan", {"n": 1})
    events = [body(t).split(b"\n\n")[1] for t in transports]
    assert events[0].startswith(b"id: ") and events.count(events[0]) == 3


def test_keepalive_reaches_every_stream_but_a_backed_up_one():
    parts = make_relay()
    streams = [open_stream(parts, f"id=k{n}") for n in range(3)]
    paused_channel, paused_transport = streams[2]
    paused_transport.producer.pauseProducing()  # Twisted's buffer for this one is full
    whole_round(parts)
    assert body(streams[0][1]).endswith(b": keepalive\n\n")
    assert body(streams[1][1]).endswith(b": keepalive\n\n")
    assert b"keepalive" not in body(paused_transport)


def test_slow_consumer_is_cut_counted_and_loses_nothing():
    parts = make_relay(send_buffer=1000)
    channel, transport = open_stream(parts, "id=slow")
    epoch = re.search(rb'"epoch":"([^"]+)"', body(transport)).group(1).decode()
    transport.producer.pauseProducing()
    for _ in range(5):
        send(parts, "slow", "x" * 300)
    assert transport.disconnecting, "the stream is aborted once more than --send-buffer bytes wait"
    assert parts.metrics.slow_consumers._value.get() == 1
    drop(channel, transport)
    assert parts.relay.registry.counts["sse"] == 0
    assert b'"content":"xxx' not in body(transport)

    _, again = open_stream(parts, f"id=slow&last_id=0&epoch={epoch}")
    replay = body(again).decode()
    assert '"replayed":5' in replay and replay.count("event: message") == 5


def test_client_going_away_unregisters_and_logs_a_close_line():
    parts = make_relay()
    lines = []
    parts.site.access.log = Logger(namespace="relayd.access", observer=lines.append)
    channel, transport = open_stream(parts, "id=gone")
    assert parts.relay.registry.clients == 1
    drop(channel, transport)
    assert parts.relay.registry.clients == 0
    closes = [e for e in lines if e.get("log_text", "").startswith("sse close")]
    assert len(closes) == 1 and closes[0]["transport"] == "sse" and closes[0]["close_code"] == 1006
    assert send(parts, "gone", "later")["queued"] == ("gone",)


def test_close_writes_a_close_event_and_ends_the_response():
    parts = make_relay()
    channel, transport = open_stream(parts, "id=bye")
    [session] = parts.relay.registry.sessions("bye")
    session.close(4000, "replaced by a newer connection")
    assert body(transport).endswith(
        b'event: close\ndata: {"type":"close","code":4000,"reason":"replaced by a newer connection"}\n\n')
    assert transport.value().endswith(b"0\r\n\r\n") and transport.disconnecting
    assert parts.relay.registry.clients == 1, "registered until its bytes are flushed and the connection is gone"
    drop(channel, transport)
    assert parts.relay.registry.clients == 0


def test_close_all_fires_when_every_connection_is_gone():
    parts = make_relay()
    streams = [open_stream(parts, f"id=s{n}") for n in range(3)]
    fired = []
    parts.links.close_all(1001, "server shutting down", grace=5.0, abort_grace=1.0).addCallback(fired.append)
    assert all(b'"code":1001' in body(t) for _, t in streams) and fired == []
    for channel, transport in streams[:2]:
        drop(channel, transport)
        parts.site.reactor.advance(0.1)
        assert fired == [], "fired before every connection was gone"
    drop(*streams[2])
    assert fired == [None], "every connection is gone: it fires at once, not at the end of the grace period"
    assert parts.relay.registry.clients == 0 and parts.site.reactor.getDelayedCalls() == []


def test_close_all_aborts_what_is_left_after_the_grace_period():
    parts = make_relay()
    streams = [open_stream(parts, f"id=s{n}") for n in range(2)]
    fired = []
    parts.links.close_all(1001, "server shutting down", grace=5.0, abort_grace=1.0).addCallback(fired.append)
    drop(*streams[0])
    parts.site.reactor.advance(4.9)
    assert fired == [] and not streams[1][1].disconnected
    parts.site.reactor.advance(0.2)
    assert streams[1][1].disconnected and fired == []  # aborted
    parts.site.reactor.advance(1.0)  # its connection never reports the loss: stop waiting
    assert fired == [None]


def test_no_sse_means_no_events_resource():
    parts = make_relay(sse=False)
    assert parts.sse is None
    _, transport = open_stream(parts, "id=x")
    assert transport.value().startswith(b"HTTP/1.1 404")


def test_stream_ends_with_4001_when_its_token_expires():
    import jwt

    secret = b"s" * 32
    parts = make_relay(secret=secret)
    clock = parts.relay.clock
    token = jwt.encode({"sub": "tok", "exp": 30}, secret, algorithm="HS256")
    _, transport = open_stream(parts, f"token={token}")
    assert b"event: welcome" in body(transport)
    clock.advance(29)
    parts.expiry.sweep()
    assert parts.relay.registry.counts["sse"] == 1
    clock.advance(2)
    parts.expiry.sweep()
    assert b'event: close\ndata: {"type":"close","code":4001' in body(transport)
    assert transport.disconnecting


def test_head_events_answers_headers_without_replacing_the_live_stream():
    parts = make_relay()
    _, live = open_stream(parts, "id=solo")
    channel = parts.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001))
    head = Peer(parts.site.clock, peerAddress=IPv4Address("TCP", "127.0.0.1", 40001))
    channel.makeConnection(head)
    channel.dataReceived(b"HEAD /events?id=solo HTTP/1.1\r\nHost: relay\r\n\r\n")
    assert head.value().startswith(b"HTTP/1.1 200 ") and b"text/event-stream" in head.value()
    assert not live.disconnecting and b"event: close" not in body(live)
    send(parts, "solo", "still here")
    assert body(live).endswith(b'"content":"still here"}\n\n')
    assert parts.relay.registry.counts["sse"] == 1


def test_a_backed_up_stream_still_learns_why_it_was_closed():
    """The 4000 'do not reconnect' notice must not be dropped with the held events."""
    parts = make_relay()
    _, older = open_stream(parts, "id=tab")
    (stream,) = parts.sse.rota  # its one open stream
    stream.link.queue.pauseProducing()  # Twisted's buffer is full: events are held
    send(parts, "tab", "held")
    open_stream(parts, "id=tab")
    text = body(older)
    assert b'event: close\ndata: {"type":"close","code":4000' in text and b"held" not in text


def test_a_stream_whose_reader_takes_nothing_is_ended_after_interval_plus_timeout():
    parts = make_relay(ping_interval=2, ping_timeout=2)
    clock = parts.site.reactor
    channel, frozen = open_stream(parts, "id=frozen")
    _, alive = open_stream(parts, "id=alive")
    frozen.producer.pauseProducing()  # Twisted holds bytes the reader does not take
    for _ in range(2):  # ticks at 2 and 4 s: stalled since the first
        clock.advance(2)
        whole_round(parts)
        assert parts.relay.registry.counts["sse"] == 2 and not frozen.disconnecting
    clock.advance(2)  # at 6 s it has taken nothing for 4 s = interval + timeout
    whole_round(parts)
    assert frozen.disconnected and not alive.disconnecting  # aborted: it would never take the rest
    drop(channel, frozen)
    assert parts.relay.registry.sessions("frozen") == () and parts.relay.registry.counts["sse"] == 1
    assert body(alive).endswith(b": keepalive\n\n")


def test_a_reader_that_catches_up_is_not_ended():
    parts = make_relay(ping_interval=2, ping_timeout=2)
    clock = parts.site.reactor
    _, slow = open_stream(parts, "id=slow")
    for tick in range(6):
        if tick % 2 == 0:
            slow.producer.pauseProducing()
        else:
            slow.producer.resumeProducing()  # it took what waited
        clock.advance(2)
        whole_round(parts)
    assert not slow.disconnecting and parts.relay.registry.counts["sse"] == 1


def test_a_round_of_keepalives_is_spread_over_the_interval_each_stream_once():
    parts = make_relay()
    streams = [open_stream(parts, f"id=s{n}") for n in range(2 * SLICES)]

    def kept_alive():
        return [body(transport).count(b": keepalive\n\n") for _, transport in streams]

    parts.sse.tick()
    assert sum(kept_alive()) == 2  # a 20th of the streams at a tick, not all of them
    for _ in range(SLICES - 1):
        parts.sse.tick()
    assert kept_alive() == [1] * len(streams)  # the round: every stream once
    gone_channel, gone = streams.pop()
    drop(gone_channel, gone)
    whole_round(parts)
    assert kept_alive() == [2] * len(streams)
    assert len(parts.sse.rota) == len(streams)  # the ended one is forgotten
