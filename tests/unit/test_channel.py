"""
relayd's HTTP channel (relayd.web.channel) on a ``StringTransport``:
framing, pipelining, the channel's own JSON errors, the head timeout, the
connection limit and the shutdown (CONTRACT.md sections 8 and 14).
"""

from __future__ import annotations

import json

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from relayd.sockets import HOLD
from relayd.web.channel import Request
from relayd.web.http import IDLE_TIMEOUT, OVERFLOW
from tests.unit.sim import parse_response

GET_HEALTH = b"GET /health-check HTTP/1.1\r\nHost: relay.test\r\n\r\n"


def post(body: bytes, extra: bytes = b"") -> bytes:
    return (b"POST /send-message HTTP/1.1\r\nHost: relay.test\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n%s\r\n%s" % (len(body), extra, body))


def responses(data: bytes) -> list:
    """Every response in ``data`` (each framed by its Content-Length)."""
    found = []
    while data:
        response = parse_response(data)
        found.append(response)
        head_end = data.index(b"\r\n\r\n") + 4
        data = data[head_end + len(response.body):]
    return found


class Connection:
    """One client connection to the site, in memory."""

    def __init__(self, site, port: int = 50000):
        address = IPv4Address("TCP", "127.0.0.1", port)
        self.transport = StringTransport(peerAddress=address, hostAddress=IPv4Address("TCP", "127.0.0.1", 8080))
        self.channel = site.buildProtocol(address)
        self.transport.protocol = self.channel
        self.channel.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        """``data`` arrives; the reactor turn ends (replies are written at its end)."""
        self.channel.dataReceived(data)
        self.channel.site.clock.advance(0)

    def take(self) -> list:
        """The replies received so far (once the reactor turn has ended)."""
        self.channel.site.clock.advance(0)
        data = self.transport.value()
        self.transport.clear()
        return responses(data)

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting


@pytest.fixture
def connect(sim):
    ports = iter(range(50000, 60000))
    return lambda site=None: Connection(site or sim.parts.site, next(ports))


def test_a_reply_has_a_content_length_and_is_one_write(sim, connect):
    conn = connect()
    writes = []
    conn.transport.write = lambda data, write=conn.transport.write: (writes.append(data), write(data))
    conn.send(post(b'{"receiver_id": "a", "content": 1}'))
    (response,) = conn.take()
    assert response.status == 200 and response.json()["queued"] == ["a"]
    assert int(response.header("content-length")) == len(response.body)
    assert response.header("transfer-encoding") is None
    assert len(writes) == 1
    assert not conn.closed


def test_a_turns_replies_leave_at_its_end_before_its_frames_one_write_per_connection(sim, connect):
    receiver = sim.ws("id=a")
    writes = []
    frames = receiver.server_transport
    frames.write = lambda data, write=frames.write: (writes.append("frames"), write(data))
    conn = connect()
    conn.transport.write = lambda data, write=conn.transport.write: (writes.append("replies"), write(data))
    conn.channel.dataReceived(post(b'{"receiver_id": "a", "content": 1}') * 2)
    assert writes == []  # nothing during the turn
    sim.clock.advance(0)
    assert writes == ["replies", "frames"]
    assert [r.json()["sent"] for r in conn.take()] == [["a"], ["a"]]
    receiver.flush()
    assert [m["content"] for m in receiver.client.messages] == [1, 1]


def test_in_a_long_turn_a_reply_is_written_at_once_but_frames_wait_for_its_end(sim, connect):
    receiver = sim.ws("id=a")
    frames = []
    receiver.server_transport.write = lambda data, write=receiver.server_transport.write: (frames.append(data), write(data))
    first, second = connect(), connect()
    first.channel.dataReceived(post(b'{"receiver_id": "a", "content": 1}'))
    assert first.transport.value() == b""  # held: the turn has just begun
    sim.clock.rightNow += HOLD * 2  # the turn has run longer than HOLD
    second.channel.dataReceived(post(b'{"receiver_id": "a", "content": 2}'))
    assert b" 200 OK" in first.transport.value() and b" 200 OK" in second.transport.value()
    assert frames == []
    sim.clock.advance(0)
    assert len(frames) == 1  # both frames, in one write at the end of the turn
    receiver.flush()
    assert [m["content"] for m in receiver.client.messages] == [1, 2]


def test_keep_alive_and_pipelined_requests_are_answered_in_order(sim, connect):
    conn = connect()
    conn.send(post(b'{"receiver_id": "a", "content": 1}') + GET_HEALTH + b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
    assert [r.status for r in conn.take()] == [200, 200, 404]
    conn.send(GET_HEALTH[:20])
    conn.send(GET_HEALTH[20:])
    assert [r.status for r in conn.take()] == [200]
    assert not conn.closed


def test_a_pipelined_request_waits_for_the_slow_one_before_it(sim, connect):
    held = defer.Deferred()
    sim.relay.broker.probe = lambda: held
    conn = connect()
    conn.send(GET_HEALTH + post(b'{"receiver_id": "a", "content": 1}'))
    assert conn.take() == []
    held.callback(None)
    responses_ = conn.take()
    assert [r.status for r in responses_] == [200, 200]
    assert "status" in responses_[0].json() and "queued" in responses_[1].json()


def test_http_10_closes_after_the_reply(sim, connect):
    conn = connect()
    conn.send(b"GET /health-check HTTP/1.0\r\n\r\n")
    (response,) = conn.take()
    assert response.status == 200 and response.header("connection") == "close"
    assert conn.closed


def test_head_has_the_length_and_no_body(sim, connect):
    conn = connect()
    conn.send(b"HEAD /relay-client.js HTTP/1.1\r\nHost: x\r\n\r\n")
    data = conn.transport.value()
    head, _, body = data.partition(b"\r\n\r\n")
    assert body == b"" and b" 200 OK" in head and b"Content-Length: 0" not in head


def test_chunked_body_and_expect_continue(sim, connect):
    conn = connect()
    body = b'{"receiver_id": "a", "content": "chunked"}'
    conn.send(b"POST /send-message HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Expect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert conn.transport.value() == b"HTTP/1.1 100 Continue\r\n\r\n"
    conn.transport.clear()
    conn.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    (response,) = conn.take()
    assert response.status == 200 and response.json()["queued"] == ["a"]


def assert_json_error(response, status, error):
    assert response.status == status, (response.status, response.body)
    assert response.header("content-type") == "application/json"
    assert response.header("connection") == "close"
    body = json.loads(response.body)
    assert body["error"] == error and body["detail"]


@pytest.mark.parametrize("garbage", [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
])
def test_what_the_parser_refuses_is_a_json_400_then_close(sim, connect, garbage):
    conn = connect()
    conn.send(garbage)
    (response,) = conn.take()
    assert_json_error(response, 400, "bad_request")
    assert conn.closed


def test_http_11_without_host_is_400(sim, connect):
    conn = connect()
    conn.send(b"GET /health-check HTTP/1.1\r\n\r\n")
    (response,) = conn.take()
    assert_json_error(response, 400, "bad_request")
    assert "Host" in response.json()["detail"]


@pytest.mark.parametrize("head", [
    b"GET /health-check?" + b"x" * 17000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /health-check HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 17000 + b"\r\n\r\n",
    b"GET /health-check HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % n for n in range(2000)) + b"\r\n",
])
def test_a_head_over_16_kib_is_431(sim, connect, head):
    conn = connect()
    for start in range(0, len(head), 4096):  # as it arrives from the network
        conn.send(head[start:start + 4096])
    (response,) = conn.take()
    assert_json_error(response, 431, "request_header_fields_too_large")
    assert conn.closed


@pytest.mark.parametrize("count, status", [(200, 200), (201, 431)])
def test_a_head_may_carry_200_headers_however_small(sim, connect, count, status):
    head = b"GET /health-check HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % n for n in range(count - 1))
    conn = connect()
    conn.send(head + b"\r\n")
    (response,) = conn.take()
    assert response.status == status


def test_a_header_sent_twice_reads_as_its_last_value_and_as_both():
    request = Request(None, b"GET", b"/x", b"1.1", [(b"X-Tag", b"1"), (b"Host", b"h"), (b"x-tag", b"2")], True, 0.0)
    assert request.getHeader(b"x-TAG") == request.getHeader("X-Tag") == b"2"
    assert request.requestHeaders.getRawHeaders(b"X-TAG") == [b"1", b"2"]
    assert request.getHeader(b"absent") is None


@pytest.mark.parametrize("types, status", [((b"text/plain", b"application/json"), 200),
                                            ((b"application/json", b"text/plain"), 415)])
def test_a_header_the_channel_receives_twice_counts_with_its_last_value(sim, connect, types, status):
    body = json.dumps({"receiver_id": "nobody", "content": 1}).encode()
    head = b"POST /send-message HTTP/1.1\r\nHost: relay.test\r\nContent-Length: %d\r\n" % len(body)
    conn = connect()
    conn.send(head + b"".join(b"Content-Type: %s\r\n" % kind for kind in types) + b"\r\n" + body)
    assert [r.status for r in conn.take()] == [status]


def test_headers_set_again_are_what_the_request_reads():
    request = Request(None, b"GET", b"/x", b"1.1", [(b"X-Forwarded-For", b"10.0.0.1")], True, 0.0)
    request.requestHeaders.setRawHeaders(b"x-forwarded-for", [b"10.0.0.2", b"10.0.0.3"])
    assert request.getHeader(b"X-Forwarded-For") == b"10.0.0.3"
    request.requestHeaders.setRawHeaders(b"X-Forwarded-For", [])
    assert request.getHeader(b"x-forwarded-for") is None
    assert not request.requestHeaders.hasHeader(b"x-forwarded-for")


def test_a_head_just_under_16_kib_is_served(sim, connect):
    conn = connect()
    conn.send(b"GET /health-check HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 16000 + b"\r\n\r\n")
    assert [r.status for r in conn.take()] == [200]


def test_error_after_good_requests_answers_them_first(sim, connect):
    conn = connect()
    conn.send(GET_HEALTH + GET_HEALTH + b"NOT HTTP\r\n\r\n")
    statuses = [r.status for r in conn.take()]
    assert statuses == [200, 200, 400]
    assert conn.closed


def test_an_error_reply_is_followed_by_a_half_close_then_an_abort(sim, connect, clock):
    conn = connect()
    conn.transport.loseWriteConnection = lambda: setattr(conn, "half_closed", True)
    conn.transport.abortConnection = lambda: setattr(conn, "aborted", True)
    conn.send(b"GET /health-check HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 40000)  # no end in sight
    assert conn.take()[0].status == 431
    assert conn.half_closed and not conn.transport.disconnecting
    conn.send(b"y" * 50000)  # the rest of the head, read and dropped
    assert conn.take() == []
    clock.advance(3)
    sim.parts.site.sweep()
    assert conn.aborted


def test_a_trickling_head_is_cut_at_the_request_timeout(make_relay, connect, clock):
    sim = make_relay(request_timeout=10)
    site = sim.parts.site
    conn = connect(site)
    for byte in GET_HEALTH[:-4]:  # one byte a second: each byte would restart an idle timer
        conn.send(bytes([byte]))
        clock.advance(1)
        site.sweep()
        if conn.closed:
            break
    assert conn.closed and clock.seconds() <= 11
    (response,) = conn.take()
    assert_json_error(response, 408, "request_timeout")


def test_a_connection_that_sends_nothing_is_cut_too(make_relay, connect, clock):
    sim = make_relay(request_timeout=2)
    conn = connect(sim.parts.site)
    clock.advance(1.5)
    sim.parts.site.sweep()
    assert not conn.closed
    clock.advance(1)
    sim.parts.site.sweep()
    assert conn.closed


def test_a_quick_head_is_not_cut_and_keep_alive_waits_longer(make_relay, connect, clock):
    sim = make_relay(request_timeout=2)
    site = sim.parts.site
    conn = connect(site)
    conn.send(GET_HEALTH)
    assert [r.status for r in conn.take()] == [200]
    clock.advance(IDLE_TIMEOUT - 1)
    site.sweep()
    assert not conn.closed
    clock.advance(2)
    site.sweep()
    assert conn.closed and conn.take() == []


def test_past_the_connection_limit_upgrades_get_503_but_health_and_posts_are_served(make_relay, connect):
    sim = make_relay(max_connections=2)
    site = sim.parts.site
    first, second = connect(site), connect(site)
    over = connect(site)
    over.send(b"GET /ws?id=a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    (response,) = over.take()
    assert response.status == 503 and response.json()["error"] == "too_many_connections"
    for conn in (connect(site), connect(site)):
        conn.send(GET_HEALTH + post(b'{"receiver_id": "a", "content": 1}'))
        assert [r.status for r in conn.take()] == [200, 200]
    first.send(GET_HEALTH)
    assert [r.status for r in first.take()] == [200]
    assert len(sim.registry) == 0 and not second.closed


def test_past_the_overflow_a_new_connection_takes_the_place_of_the_oldest_waiting_one(make_relay, connect):
    held = defer.Deferred()
    sim = make_relay(max_connections=1)
    sim.relay.broker.probe = lambda: held
    site = sim.parts.site
    conns = [connect(site) for _ in range(1 + OVERFLOW)]
    conns[0].send(GET_HEALTH)  # being answered: never evicted
    newest = connect(site)
    assert conns[1].transport.disconnecting and not conns[0].closed
    assert len(site.channels) == 1 + OVERFLOW and newest.channel in site.channels
    newest.send(b"GET /ws?id=a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert [r.status for r in newest.take()] == [503]


def test_closed_and_upgraded_connections_leave_the_count(sim, connect):
    site = sim.parts.site
    conn = connect()
    assert conn.channel in site.channels
    conn.channel.connectionLost(None)
    assert conn.channel not in site.channels
    ws = sim.ws("id=alice")
    assert ws.client.welcome["client_id"] == "alice"
    assert not site.channels


def test_drain_closes_idle_connections_and_says_close_on_the_reply_under_way(sim, connect):
    held = defer.Deferred()
    sim.relay.broker.probe = lambda: held
    site = sim.parts.site
    idle, busy = connect(), connect()
    busy.send(GET_HEALTH + GET_HEALTH)
    site.drain()
    assert idle.closed and not busy.closed
    assert site.busy == 1
    busy.send(GET_HEALTH)  # arrives during the shutdown: never read
    held.callback(None)
    (response,) = busy.take()
    assert response.status == 200 and response.header("connection") == "close"
    assert busy.closed and site.busy == 0


def test_a_streaming_reply_is_chunked_and_leaves_the_count(sim, connect):
    class Stream(Resource):
        isLeaf = True

        def render_GET(self, request):
            request.registerProducer(self, True)
            request.write(b"")
            request.write(b"one")
            self.request = request
            return NOT_DONE_YET

        def pauseProducing(self):
            pass

        def resumeProducing(self):
            pass

        def stopProducing(self):
            pass

    stream = Stream()
    sim.parts.site.resource.putChild(b"stream", stream)
    conn = connect()
    conn.send(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
    assert conn.channel not in sim.parts.site.channels
    assert conn.transport.producer is stream
    stream.request.write(b"two")
    stream.request.unregisterProducer()
    stream.request.finish()
    response = parse_response(conn.transport.value())
    assert response.header("transfer-encoding") == "chunked" and response.body == b"onetwo"


def test_an_exception_in_a_resource_is_a_json_500(sim, connect, logged_failures):
    class Broken(Resource):
        isLeaf = True

        def render_GET(self, request):
            raise RuntimeError("secret detail")

    sim.parts.site.resource.putChild(b"broken", Broken())
    conn = connect()
    conn.send(b"GET /broken HTTP/1.1\r\nHost: x\r\n\r\n" + GET_HEALTH)
    first, second = conn.take()
    assert first.status == 500 and first.json()["error"] == "internal" and b"secret" not in first.body
    assert second.status == 200
    assert any(f.check(RuntimeError) for f in logged_failures)


def test_every_request_gets_an_access_line(sim, connect, log_lines):
    conn = connect()
    conn.send(GET_HEALTH + b"GET /nope?token=SECRET HTTP/1.1\r\nHost: x\r\n\r\nBAD\r\n\r\n")
    access = [line for line in log_lines if '" ' in line and "ms" in line]
    assert len(access) == 3, log_lines
    assert '"GET /health-check" 200' in access[0]
    assert '"GET /nope?token=[redacted]" 404' in access[1]
    assert " 400 " in access[2]
    assert all("SECRET" not in line for line in log_lines)


@pytest.mark.parametrize("trust_proxy, shown", [(0, "127.0.0.1"), (1, "203.0.113.7")])
def test_an_access_line_names_the_peer_or_behind_a_trusted_proxy_the_forwarded_client(
        sim, connect, log_lines, trust_proxy, shown):
    sim.parts.site.access.trust_proxy = trust_proxy
    connect().send(b"GET /health-check HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n")
    (line,) = [line for line in log_lines if '"GET /health-check" 200' in line]
    assert line.startswith(f"{shown} "), line


def test_access_lines_go_straight_to_the_observer_twistd_logs_to(sim, connect, log_lines):
    import io

    from relayd.daemon.logs import text_observer

    out = io.StringIO()
    sim.parts.site.access.write_to(text_observer(out))
    conn = connect()
    conn.send(GET_HEALTH + b"GET /nope?token=SECRET HTTP/1.1\r\nHost: x\r\n\r\n")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and all("[relayd.web.access.AccessLog#info] " in line for line in lines)
    assert '"GET /health-check" 200' in lines[0] and '"GET /nope?token=[redacted]" 404' in lines[1]
    assert not [line for line in log_lines if '" ' in line and "ms" in line]  # not through the publisher too


def test_access_lines_straight_to_a_json_observer_keep_their_fields(sim, connect):
    import io
    import json

    from relayd.daemon.logs import json_observer

    out = io.StringIO()
    sim.parts.site.access.write_to(json_observer(out))
    connect().send(b"GET /nope?token=SECRET HTTP/1.1\r\nHost: x\r\n\r\n")
    (record,) = [json.loads(line) for line in out.getvalue().splitlines()]
    assert record["logger"] == "relayd.web.access.AccessLog" and record["level"] == "info"
    assert (record["method"], record["path"], record["status"]) == ("GET", "/nope?token=[redacted]", 404)
    assert record["size"] > 0 and record["duration_ms"] >= 0 and "SECRET" not in out.getvalue()


def test_a_304_has_neither_body_nor_length_and_the_connection_goes_on(sim, connect):
    conn = connect()
    conn.send(b"GET /relay-client.js HTTP/1.1\r\nHost: x\r\n\r\n")
    (page,) = conn.take()
    conn.send(b"GET /relay-client.js HTTP/1.1\r\nHost: x\r\nIf-None-Match: %s\r\n\r\n" % page.header("etag").encode()
              + GET_HEALTH)
    head, _, rest = conn.transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 304 ") and b"Content-Length" not in head and b"chunked" not in head
    assert parse_response(rest).status == 200


def test_a_body_that_stalls_is_cut_after_the_idle_timeout(make_relay, connect, clock):
    sim = make_relay(request_timeout=2)
    site = sim.parts.site
    conn = connect(site)
    conn.send(b"POST /send-message HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
    clock.advance(IDLE_TIMEOUT - 1)
    site.sweep()
    assert not conn.closed
    clock.advance(2)
    site.sweep()
    assert conn.closed


def test_frames_sent_with_the_upgrade_request_reach_the_websocket(sim, connect):
    bob = sim.ws("id=bob")
    payload = json.dumps({"type": "send", "ref": "r1", "receiver_id": "bob", "content": "early"}).encode()
    mask = b"\x01\x02\x03\x04"
    frame = bytes((0x81, 0x80 | len(payload))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    conn = connect()
    conn.send(b"GET /ws?id=eager HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n" + frame)
    sim.flush()
    out = conn.transport.value()
    assert out.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b'"type":"ack","ref":"r1"' in out
    assert [m["content"] for m in bob.client.messages] == ["early"]
