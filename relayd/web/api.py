"""
The HTTP API: ``POST /send-message`` and ``GET /health-check``.
"""

from __future__ import annotations

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET

from relayd import __version__
from relayd.core.ports import BrokerUnavailable, Overloaded
from relayd.core.registry import Refused
from relayd.web.gate import bearer_token, refusal
from relayd.web.http import JsonResource, header, json_error, json_reply
from relayd.wire import InvalidRequest, parse_send_body

PROBE_TIMEOUT = 2.0


def _finish(request, body: bytes) -> None:
    if not request._disconnected and not request.finished:
        request.write(body)
        request.finish()


def _media_type(request) -> str:
    """The request's ``Content-Type`` without its parameters, in lower case (``""`` when absent)."""
    return (header(request, b"content-type") or "").split(";")[0].strip().lower()


class SendMessage(JsonResource):
    """``POST /send-message``: one message object or a batch (JSON array)."""

    methods = ("POST",)
    log = Logger()

    def __init__(self, relay, auth, max_body: int, clock):
        super().__init__()
        self.relay = relay
        self.auth = auth
        self.max_body = max_body
        self.clock = clock

    def render_POST(self, request):
        """Validate, send, and answer with the delivery report(s)."""
        received = self.clock.seconds()
        try:
            requests, batch = self._parse(request, received)
        except Refused as refused:
            return refusal(request, refused)
        except InvalidRequest as invalid:
            return json_error(request, 400, invalid.code, invalid.detail)
        answer = self._reply_batch if batch else self._reply
        try:
            outcome = self.relay.send_batch(requests) if batch else self.relay.send_now(requests[0])
        except Exception:
            self._failed(Failure(), request)
            return NOT_DONE_YET
        if isinstance(outcome, (dict, list)):  # answered at once (asking for a Deferred, an ABC, costs more)
            answer(outcome, request)
        else:
            outcome.addCallbacks(answer, self._failed, callbackArgs=(request,), errbackArgs=(request,))
        return NOT_DONE_YET

    def _parse(self, request, received: float):
        # The usual header compared as sent first: the parsing below is for the variants (case, parameters).
        if request.getHeader(b"content-type") != b"application/json" and _media_type(request) != "application/json":
            raise Refused(415, "unsupported_media_type", "send the body as Content-Type: application/json")
        self.auth.authorize_send(bearer_token(request, {}))
        if request.too_large:
            raise Refused(413, "too_large", f"the body is larger than --max-message-size ({self.max_body} bytes)")
        return parse_send_body(request.body, received)

    def _reply_batch(self, reports, request):
        _finish(request, json_reply(request, 200, reports))

    def _reply(self, report, request):
        if report["sent"] or report["queued"] or not (report["dropped"]):
            body = json_reply(request, 200, report)
        else:
            body = json_error(
                request, 404, "not_delivered",
                "no receiver is connected and nothing is kept (--history-size 0)", **report,
            )
        _finish(request, body)

    def _failed(self, failure, request):
        if failure.check(Overloaded):
            body = json_error(request, 503, "overloaded", "this relay cannot deliver as fast as it is sent to; retry later")
        elif failure.check(BrokerUnavailable):
            body = json_error(request, 503, "broker_unavailable", "the broker is unreachable; retry later")
        else:
            self.log.failure("send-message failed", failure)
            body = json_error(request, 500, "internal", "internal error; it has been logged")
        _finish(request, body)


class HealthCheck(JsonResource):
    """``GET /health-check``: this node's clients, and the broker's health."""

    def __init__(self, relay, clock, started: float):
        super().__init__()
        self.relay = relay
        self.clock = clock
        self.started = started

    def render_GET(self, request):
        """Probe the broker (bounded by PROBE_TIMEOUT) and report."""
        d = self.relay.broker.probe()
        d.addTimeout(PROBE_TIMEOUT, self.clock)
        d.addCallbacks(lambda _: ("ok", 200), lambda _: ("degraded", 503))
        d.addCallback(lambda result: _finish(request, self._report(request, *result)))
        return NOT_DONE_YET

    def _report(self, request, status: str, code: int) -> bytes:
        registry = self.relay.registry
        return json_reply(
            request,
            code,
            {
                "status": status,
                "clients": registry.clients,
                "connections": {"ws": registry.counts["ws"], "sse": registry.counts["sse"]},
                "uptime_s": round(self.clock.seconds() - self.started, 3),
                "version": __version__,
                "broker": self.relay.broker.name,
            },
        )
