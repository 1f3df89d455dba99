"""
``GET /livez`` and ``GET /readyz`` (CONTRACT.md section 9), in memory: live
whatever the broker does; ready only when the broker answers, the node is
not draining and it is under --max-connections.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from relayd.core.ports import BrokerUnavailable
from relayd.web.probes import PROBE_TIMEOUT
from tests.unit.sim import parse_response


def broker_down(sim):
    sim.relay.broker.probe = lambda: defer.fail(BrokerUnavailable("redis is unreachable"))


def test_livez_is_200_ok(sim):
    response = sim.request("GET", "/livez")
    assert response.status == 200 and response.json() == {"status": "ok"}


def test_livez_stays_200_while_the_broker_is_down(sim):
    broker_down(sim)
    assert sim.request("GET", "/livez").status == 200
    assert sim.request("GET", "/health-check").status == 503


def test_readyz_is_200_ok(sim):
    response = sim.request("GET", "/readyz")
    assert response.status == 200 and response.json() == {"status": "ok"}


def test_readyz_is_503_while_the_broker_is_down(sim):
    broker_down(sim)
    response = sim.request("GET", "/readyz")
    assert response.status == 503 and response.json() == {"status": "broker_unavailable"}


def test_readyz_is_503_when_the_broker_does_not_answer_in_time(sim):
    sim.relay.broker.probe = defer.Deferred  # never fires
    address = IPv4Address("TCP", "127.0.0.1", 40000)
    transport = StringTransport(peerAddress=address, hostAddress=IPv4Address("TCP", "127.0.0.1", 8080))
    channel = sim.parts.site.buildProtocol(address)
    transport.protocol = channel
    channel.makeConnection(transport)
    channel.dataReceived(b"GET /readyz HTTP/1.1\r\nHost: relay.test\r\nConnection: close\r\n\r\n")
    sim.clock.advance(PROBE_TIMEOUT - 0.1)
    assert transport.value() == b""
    sim.clock.advance(0.1)
    response = parse_response(transport.value())
    assert response.status == 503 and response.json() == {"status": "broker_unavailable"}


def test_readyz_is_503_draining_once_the_stop_began(sim):
    sim.parts.drain.begin()
    response = sim.request("GET", "/readyz")
    assert response.status == 503 and response.json() == {"status": "draining"}
    assert sim.request("GET", "/livez").status == 200


def test_readyz_is_503_full_at_the_connection_limit(make_relay):
    sim = make_relay(max_connections=2)
    sim.ws("id=a")
    assert sim.request("GET", "/readyz").status == 200
    sim.ws("id=b")
    response = sim.request("GET", "/readyz")
    assert response.status == 503 and response.json() == {"status": "full"}


def test_probes_take_only_get(sim):
    response = sim.request("POST", "/readyz", b"{}", {"Content-Type": "application/json"})
    assert response.status == 405 and response.header("allow") == "GET"
