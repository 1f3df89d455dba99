"""
Static pages: ``GET /`` (the demo page) and ``GET /relay-client.js`` (the
browser client). Both are files in ``relayd/web/static/``, read once at start
and served from memory with a strong ``ETag``.
"""

from __future__ import annotations

import hashlib
from importlib import resources

from relayd.web.http import JsonResource

STATIC = "static"


def static_file(name: str) -> bytes:
    """The bytes of ``relayd/web/static/<name>``."""
    return resources.files("relayd.web").joinpath(STATIC, name).read_bytes()


class StaticPage(JsonResource):
    """One file served from memory (GET and HEAD), revalidated by ``ETag``."""

    def __init__(self, body: bytes, content_type: bytes, cross_origin: bool = False):
        super().__init__()
        self.body = body
        self.content_type = content_type
        self.cross_origin = cross_origin
        self.etag = b'"' + hashlib.sha256(body).hexdigest()[:20].encode() + b'"'

    def render_GET(self, request):
        """The file, or 304 when the client's copy is current."""
        request.setHeader(b"content-type", self.content_type)
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"etag", self.etag)
        request.setHeader(b"x-content-type-options", b"nosniff")
        if self.cross_origin:
            request.setHeader(b"access-control-allow-origin", b"*")
        if request.getHeader(b"if-none-match") == self.etag:
            request.setResponseCode(304)
            return b""
        return self.body


def index_page() -> StaticPage:
    """``GET /``: the demo page."""
    return StaticPage(static_file("index.html"), b"text/html; charset=utf-8")


# What relayd/web/static/global.js adds to the module: served with it, so that
# loading /relay-client.js also sets globalThis.RelayClient (contract section 11).
GLOBAL_ASSIGNMENT = b"globalThis.RelayClient = RelayClient;\n"


def client_script() -> StaticPage:
    """
    ``GET /relay-client.js``: the browser client (an ES module, the package's
    side-effect-free ``relay-client.js``) with the global assignment of its
    ``global.js`` entry. Pages of other origins may import it (module scripts
    are fetched with CORS).
    """
    body = static_file("relay-client.js") + b"\n" + GLOBAL_ASSIGNMENT
    return StaticPage(body, b"text/javascript; charset=utf-8", cross_origin=True)
