"""
The gate in front of ``/ws`` and ``/events``: every refusal happens here,
before any upgrade or registration, with a JSON body.

Checks, in this order: 426 plain GET on ``/ws`` (no upgrade), 400 bad or
missing id (and bad ``last_id``/``epoch``), 401 token, 403 origin, 503
connection limit, 409 duplicate. A request that passes gets a reserved
:class:`~relayd.core.session.Session` and is handed to its transport.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from twisted.logger import Logger
from twisted.web.server import NOT_DONE_YET

from relayd.core.admission import Admission
from relayd.core.auth import redact
from relayd.core.registry import Refused
from relayd.web.http import JsonResource, header, json_error, query
from relayd.wire import InvalidRequest, check_client_id

MAX_EPOCH = 64
WEBSOCKET_KEY = re.compile(r"[A-Za-z0-9+/]{22}==")


def bearer_token(request, params: dict[str, str]) -> str | None:
    """The token from ``?token=`` or an ``Authorization: Bearer`` header."""
    if params.get("token"):
        return params["token"]
    authorization = header(request, b"authorization")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return None


def resume_point(params: dict[str, str], last_event_id: str | None = None) -> tuple[int | None, str | None]:
    """
    ``(last_id, epoch)`` from the query, or from an SSE ``Last-Event-ID``
    (``<epoch>:<id>`` or a bare ``<id>``) when the query has no ``last_id``.
    """
    raw_last, epoch = params.get("last_id"), params.get("epoch")
    if raw_last in (None, "") and last_event_id:
        epoch_part, sep, id_part = last_event_id.strip().rpartition(":")
        raw_last, epoch = id_part, (epoch_part if sep else epoch)
    if raw_last in (None, ""):
        last_id = None
    elif raw_last.isascii() and raw_last.isdigit() and len(raw_last) <= 18:
        last_id = int(raw_last)
    else:
        raise InvalidRequest("'last_id' must be a non-negative integer", code="invalid_last_id")
    if epoch == "":
        epoch = None
    if epoch is not None and (len(epoch) > MAX_EPOCH or not epoch.isprintable()):
        raise InvalidRequest("'epoch' must be the epoch string from a welcome", code="invalid_epoch")
    return last_id, epoch


def refusal(request, refused: Refused) -> bytes:
    """The JSON reply to a refusal, with ``WWW-Authenticate`` on 401 and ``Upgrade`` on 426."""
    headers = {401: {b"www-authenticate": b'Bearer realm="relayd"'}, 426: {b"upgrade": b"websocket"}}
    return json_error(request, refused.status, refused.error, refused.detail, headers.get(refused.status))


def is_websocket_key(key: str | None) -> bool:
    """True for a well-formed ``Sec-WebSocket-Key``: 16 bytes in base64."""
    return key is not None and WEBSOCKET_KEY.fullmatch(key.strip()) is not None


def is_upgrade(request) -> bool:
    """True for a WebSocket upgrade request."""
    upgrade = (header(request, b"upgrade") or "").lower()
    connection = (header(request, b"connection") or "").lower()
    return upgrade == "websocket" and "upgrade" in connection


class Gate(JsonResource):
    """
    Admits connections for one transport (``ws`` or ``sse``).

    ``accept(request, admission)`` hands an admitted request to the
    transport; it must take over the request (answer it or keep it open).
    """

    log = Logger()

    def __init__(self, transport: str, relay, auth, origins, access, accept: Callable, head_headers: tuple = ()):
        super().__init__()
        self.transport = transport
        self.head_headers = head_headers
        self.relay = relay
        self.auth = auth
        self.origins = origins
        self.access = access
        self.accept = accept

    def render_GET(self, request):
        """Check the request; refuse it with JSON or admit it."""
        try:
            client_id, grant, last_id, epoch = self._check(request)
        except Refused as refused:
            return refusal(request, refused)
        except InvalidRequest as invalid:
            return json_error(request, 400, invalid.code, invalid.detail)
        if request.method == b"HEAD":
            return self._head(request)
        d = self.relay.admit(client_id, self.transport)
        d.addCallback(self.relay.prepare, last_id, epoch)
        d.addCallbacks(
            self._admitted, self._failed,
            callbackArgs=(request, grant, last_id, epoch), errbackArgs=(request,),
        )
        d.addErrback(lambda failure: self.log.failure("starting a connection failed", failure))
        return NOT_DONE_YET

    def _check(self, request):
        if self.transport == "ws":
            if not is_upgrade(request):
                raise Refused(426, "upgrade_required", "this is a WebSocket endpoint: connect with a WebSocket client")
            if not is_websocket_key(header(request, b"sec-websocket-key")) or header(request, b"sec-websocket-version") != "13":
                raise Refused(400, "bad_handshake", "a WebSocket upgrade needs Sec-WebSocket-Key and Sec-WebSocket-Version: 13")
        params = query(request)
        client_id = params.get("id") or None
        if client_id is not None:
            check_client_id(client_id)
        last_id, epoch = resume_point(params, header(request, b"last-event-id"))
        client_id, grant = self.auth.authenticate(client_id, bearer_token(request, params))
        check_client_id(client_id)
        if not self.origins.allows(header(request, b"origin")):
            raise Refused(403, "origin_not_allowed", "this page's origin may not connect (see --allowed-origins)")
        return client_id, grant, last_id, epoch

    def _head(self, request) -> bytes:
        """HEAD: what GET would answer, without admitting (so it never replaces a live connection)."""
        for name, value in self.head_headers:
            request.setHeader(name, value)
        request.setResponseCode(200)
        return b""

    def _admitted(self, session, request, grant, last_id, epoch):
        if request.channel is None or request._disconnected:
            self.relay.close(session)
            return
        admission = Admission(
            session=session,
            last_id=last_id,
            epoch=epoch,
            peer=self.access.peer(request),
            path=redact(request.uri),
            grant=grant,
        )
        try:
            self.accept(request, admission)
        except Exception:
            self.relay.close(session)
            raise

    def _failed(self, failure, request):
        if request.channel is None or request._disconnected:
            return
        if failure.check(Refused):
            body = refusal(request, failure.value)
        else:
            self.log.failure("admitting a connection failed", failure)
            body = json_error(request, 503, "unavailable", "the relay cannot admit connections right now; retry later")
        request.write(body)
        request.finish()
