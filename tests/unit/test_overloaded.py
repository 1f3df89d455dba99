"""A broker that is behind refuses with Overloaded: POST /send-message answers 503 ``overloaded`` (CONTRACT.md section 14)."""

from __future__ import annotations

from twisted.internet import defer

from relayd.core.ports import Overloaded


def test_an_overloaded_broker_is_a_503_overloaded(sim):
    sim.relay.broker.publish = lambda request, timestamp, message_id: defer.fail(Overloaded("behind"))
    response = sim.post({"receiver_id": "a", "content": 1})
    assert response.status == 503 and response.json()["error"] == "overloaded"
