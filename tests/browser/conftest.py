"""
Fixtures for the browser tests: Debian's Chromium driven by Playwright, a
relay that can be restarted on the same port, and a proxy that refuses
WebSocket upgrades (as some corporate proxies do).

Chromium is ``/usr/bin/chromium`` (``make services`` installs it); Playwright's
own browser download is never used. Pages are always loaded from the relay
itself first: Chromium refuses a page's WebSocket to 127.0.0.1 when the page
did not come from loopback.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
OUTPUT = Path(__file__).resolve().parents[2] / "test-output" / "browser"



def free_port() -> int:
    """A loopback port nobody listens on right now (picked by the kernel)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    """
    One headless Chromium per module: Playwright's sync API keeps an event
    loop running in this thread while it is open, so it must be closed before
    later tests that run their own asyncio loop.
    """
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is not installed (make services installs it)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def context(browser):
    """A fresh browser context (its own cookies, its own online/offline switch)."""
    ctx = browser.new_context(viewport={"width": 900, "height": 760})
    ctx.set_default_timeout(30_000)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context):
    """A page whose console errors are kept in ``page.errors``."""
    new_page = context.new_page()
    new_page.errors = []
    new_page.on("pageerror", lambda error: new_page.errors.append(str(error)))
    return new_page


@pytest.fixture
def output_dir() -> Path:
    """``test-output/browser/`` (gitignored): screenshots a person can look at."""
    OUTPUT.mkdir(parents=True, exist_ok=True)
    return OUTPUT


@pytest.fixture
def restartable_relay(start_relay):
    """
    ``relay = restartable_relay(*args)`` starts a relay on a free port picked
    here; ``relay = relay.restarted()`` stops it (SIGTERM) and starts a new
    process with the same options on the same port.
    """

    class Restartable:
        def __init__(self, args, port):
            self.args = args
            self.port = port
            self.process = start_relay(*args, listen=f"tcp:{port}:interface=127.0.0.1")

        def restarted(self):
            self.process.stop()
            return Restartable(self.args, self.port)

        def __getattr__(self, name):
            return getattr(self.process, name)

    return lambda *args: Restartable(args, free_port())


class Proxy:
    """
    A loopback TCP proxy in front of a relay, one connection per request.

    ``block_upgrades``: a WebSocket upgrade is answered with 403, so the
    page's WebSocket cannot open while ``/events`` works through it (as
    behind some corporate proxies). ``freeze()``: the connections open now
    stop carrying bytes either way but stay open (a dead network path that
    nobody reports); new connections work.
    """

    def __init__(self, upstream_port: int, block_upgrades: bool):
        self.upstream_port = upstream_port
        self.block_upgrades = block_upgrades
        self.upgrades_refused = 0
        self._frozen: set[int] = set()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self._sockets.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket):
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(65536)
            if not chunk:
                client.close()
                return
            head += chunk
        if self.block_upgrades and b"\nupgrade: websocket" in head.lower():
            self.upgrades_refused += 1
            client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            client.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        self._sockets.append(upstream)
        is_upgrade = b"\nupgrade: websocket" in head.lower()
        upstream.sendall(head if is_upgrade else self.one_request_per_connection(head))
        threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()
        self._pipe(client, upstream)

    @staticmethod
    def one_request_per_connection(head: bytes) -> bytes:
        """The request with ``Connection: close``, so each request is checked on a new connection."""
        line, _, rest = head.partition(b"\r\n")
        rest = re.sub(rb"(?im)^connection:[^\r\n]*\r\n", b"", rest)
        return line + b"\r\nConnection: close\r\n" + rest

    def freeze(self):
        """Stop carrying bytes on every connection open now (without closing them)."""
        self._frozen.update(id(sock) for sock in self._sockets)

    def _pipe(self, source: socket.socket, target: socket.socket):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if id(source) not in self._frozen:
                    target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self._closed = True
        self._server.close()
        for sock in self._sockets:
            sock.close()


@pytest.fixture
def proxy():
    """``proxy(relay.port, block_upgrades=True)``: closed when the test ends."""
    proxies = []

    def start(upstream_port: int, block_upgrades: bool = False) -> Proxy:
        proxy = Proxy(upstream_port, block_upgrades)
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        proxy.close()
