"""
Probes for supervisors and load balancers (contract section 9):

    GET /livez    200 {"status": "ok"} while the process and its reactor
                  answer, whatever the broker does (a liveness probe: restart
                  only a relay that is stuck)
    GET /readyz   200 {"status": "ok"} when this node can serve new clients
                  and messages; else 503 with "status" naming why:
                  "draining" (shutting down), "broker_unavailable", "full"
                  (at --max-connections)

``/health-check`` stays as it was (counts, uptime, broker; 503 "degraded").
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.web.server import NOT_DONE_YET

from relayd.web.http import JsonResource, json_reply

PROBE_TIMEOUT = 2.0


class Drain:
    """Whether this node is shutting down; the service's graceful stop sets it first."""

    def __init__(self):
        self.draining = False

    def begin(self) -> None:
        """The node has begun to stop: it is no longer ready."""
        self.draining = True


def _answer(request, gone: list, status: str) -> None:
    if not gone:
        request.write(json_reply(request, 200 if status == "ok" else 503, {"status": status}))
        request.finish()


class Livez(JsonResource):
    """``GET /livez``: the process and its reactor are alive."""

    def render_GET(self, request):
        """Always 200 while the reactor runs this."""
        return json_reply(request, 200, {"status": "ok"})


class Readyz(JsonResource):
    """``GET /readyz``: this node can take new clients and messages."""

    def __init__(self, relay, drain: Drain, clock):
        super().__init__()
        self.relay = relay
        self.drain = drain
        self.clock = clock

    def render_GET(self, request):
        """503 ``draining`` or ``full`` at once; else probe the broker (bounded by PROBE_TIMEOUT)."""
        if self.drain.draining:
            return json_reply(request, 503, {"status": "draining"})
        registry = self.relay.registry
        if len(registry) >= registry.max_connections:
            return json_reply(request, 503, {"status": "full"})
        gone: list = []
        request.notifyFinish().addBoth(gone.append)
        d = defer.maybeDeferred(self.relay.broker.probe)
        d.addTimeout(PROBE_TIMEOUT, self.clock)
        d.addCallbacks(lambda _: "ok", lambda _: "broker_unavailable")
        d.addCallback(lambda status: _answer(request, gone, status))
        return NOT_DONE_YET
