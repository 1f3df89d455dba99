"""
The shipped proxy configurations, for real: nginx (etc/nginx.conf, TLS
terminated) and Caddy (etc/Caddyfile) each in front of a real relay in token
mode, started with ``--trust-proxy 1``. The client connects from 127.0.0.2,
so the address the relay logs can only have come from ``X-Forwarded-For``
(the proxy itself talks to the relay from 127.0.0.1). Checked through each
proxy: WebSocket (with pings crossing it), SSE written through at once,
``POST /send-message``, a forged ``X-Forwarded-For`` not believed,
``/metrics`` refused from outside, and no token in the proxy's own access
log. ``make test`` installs nginx and Caddy; these tests skip only where
they are not installed.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import time

import pytest
from websockets.asyncio.client import connect

from relayd.daemon.tokens import mint
from tests.relayproc import ROOT, RelayProcess

pytestmark = pytest.mark.integration

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
CADDY = shutil.which("caddy")
OUTSIDE = "127.0.0.2"  # a client address the configs do not treat as private
FORGED = "203.0.113.9"
TIMEOUT = 10


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def replaced(text: str, old: str, new: str) -> str:
    """``text`` with ``old`` replaced; fails if the shipped file no longer has ``old``."""
    assert old in text, f"the shipped configuration no longer contains {old!r}"
    return text.replace(old, new)


def nginx_config(directory, relay_port: int, port: int) -> str:
    """etc/nginx.conf, pointed at the test's relay, certificate, port and log."""
    snippet = (ROOT / "etc" / "nginx.conf").read_text()
    snippet = snippet[: snippet.rindex("server {")]  # drop the port-80 redirect
    for old, new in [
        ("server 127.0.0.1:8080;", f"server 127.0.0.1:{relay_port};"),
        ("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;"),
        ("listen [::]:443 ssl;", ""),
        ("/etc/letsencrypt/live/relay.example.com/fullchain.pem", str(directory / "cert.pem")),
        ("/etc/letsencrypt/live/relay.example.com/privkey.pem", str(directory / "key.pem")),
        ("/var/log/nginx/relayd.access.log", str(directory / "access.log")),
    ]:
        snippet = replaced(snippet, old, new)
    return nginx_main(directory, snippet)


def nginx_main(directory, http_block: str) -> str:
    """A whole nginx.conf around ``http_block``, every path under ``directory``."""
    temp = " ".join(f"{kind}_temp_path {directory};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}daemon off; pid {directory}/nginx.pid; error_log {directory}/error.log; worker_processes 1;\n"
        "events { worker_connections 64; }\n"
        f"http {{ {temp}\n{http_block}\n}}\n"
    )


def caddy_config(directory, relay_port: int, port: int) -> str:
    """etc/Caddyfile, served over plain HTTP on ``port``, pointed at the test's relay and log."""
    text = (ROOT / "etc" / "Caddyfile").read_text()
    for old, new in [
        ("relay.example.com {", f"http://127.0.0.1:{port} {{"),
        ("reverse_proxy 127.0.0.1:8080", f"reverse_proxy 127.0.0.1:{relay_port}"),
        ("/var/log/caddy/relayd.access.log", str(directory / "access.log")),
    ]:
        text = replaced(text, old, new)
    return "{\n\tadmin off\n}\n\n" + text


def caddy_env(directory) -> dict:
    """Caddy's home, data and config under ``directory``; the shipped ``bind`` variable set."""
    return dict(os.environ, HOME=str(directory), XDG_DATA_HOME=str(directory), XDG_CONFIG_HOME=str(directory),
                RELAYD_BIND="127.0.0.1")


class Proxy:
    """One running proxy in front of ``relay``: how to reach it and what it logged."""

    def __init__(self, name, relay, process, port, directory, context=None):
        self.name = name
        self.relay = relay
        self.secret = relay.secret
        self.process = process
        self.port = port
        self.directory = directory
        self.context = context

    @property
    def scheme(self) -> str:
        return "https" if self.context else "http"

    def access_log(self) -> str:
        path = self.directory / "access.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def request(self, method, path, body=None, headers=None, source=OUTSIDE):
        """One HTTP request from ``source``; ``(status, headers, body bytes)``."""
        if self.context:
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=TIMEOUT, context=self.context,
                                               source_address=(source, 0))
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT, source_address=(source, 0))
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.headers, response.read()
        finally:
            conn.close()

    def websocket(self, query):
        """An asyncio WebSocket client from ``OUTSIDE``, for ``async with``.

        Not the sync client: its reader thread and the writing thread share
        one SSL object, which OpenSSL does not allow; with TLS 1.3 nginx's
        session ticket, read while the upgrade request is written, made it
        fail now and then with ``[SSL] internal error``. asyncio's TLS is
        one thread.
        """
        scheme = "wss" if self.context else "ws"
        return connect(f"{scheme}://127.0.0.1:{self.port}/ws?{query}", ssl=self.context, open_timeout=TIMEOUT,
                       local_addr=(OUTSIDE, 0))

    def events(self, query):
        """An open ``GET /events`` stream: ``(connection, response)``."""
        if self.context:
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=TIMEOUT, context=self.context,
                                               source_address=(OUTSIDE, 0))
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT, source_address=(OUTSIDE, 0))
        conn.request("GET", f"/events?{query}", headers={"Accept": "text/event-stream"})
        response = conn.getresponse()
        assert response.status == 200, response.read()
        return conn, response


def wait_listening(port, process, log_path):
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            log = log_path.read_text(errors="replace") if log_path.exists() else ""
            assert time.monotonic() < deadline and process.poll() is None, log
            time.sleep(0.1)


def start_nginx(directory, relay):
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-keyout", str(directory / "key.pem"), "-out", str(directory / "cert.pem")],
        check=True, capture_output=True, timeout=30,
    )
    port = free_port()
    config = directory / "nginx.conf"
    config.write_text(nginx_config(directory, relay.port, port))
    check = subprocess.run([NGINX, "-t", "-c", str(config)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    process = subprocess.Popen([NGINX, "-c", str(config)], stderr=subprocess.DEVNULL)
    wait_listening(port, process, directory / "error.log")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return Proxy("nginx", relay, process, port, directory, context)


def start_caddy(directory, relay):
    port = free_port()
    config = directory / "Caddyfile"
    config.write_text(caddy_config(directory, relay.port, port))
    env = caddy_env(directory)
    check = subprocess.run([CADDY, "validate", "--config", str(config), "--adapter", "caddyfile"],
                           capture_output=True, text=True, timeout=30, env=env, cwd=directory)
    assert check.returncode == 0, check.stderr
    log = open(directory / "caddy.log", "wb")
    process = subprocess.Popen([CADDY, "run", "--config", str(config), "--adapter", "caddyfile"],
                               stdout=log, stderr=subprocess.STDOUT, env=env, cwd=directory)
    log.close()
    wait_listening(port, process, directory / "caddy.log")
    return Proxy("caddy", relay, process, port, directory)


STARTERS = {
    "nginx": pytest.param(start_nginx, marks=pytest.mark.skipif(NGINX is None, reason="nginx is not installed")),
    "caddy": pytest.param(start_caddy, marks=pytest.mark.skipif(CADDY is None, reason="caddy is not installed")),
}


@pytest.fixture(scope="module", params=list(STARTERS.values()), ids=list(STARTERS))
def proxy(request, tmp_path_factory):
    """A relay in token mode behind one proxy (nginx, then Caddy)."""
    directory = tmp_path_factory.mktemp("proxy")
    secret = secrets.token_urlsafe(48).encode()
    (directory / "secret").write_bytes(secret)
    relay = RelayProcess(("--trust-proxy", "1", "--ping-interval", "1", "--secret-file", str(directory / "secret")),
                         log_dir=directory).start()
    relay.secret = secret
    proxy = request.param(directory, relay)
    yield proxy
    proxy.process.terminate()
    proxy.process.wait(10)
    relay.stop()


def backend_headers(proxy):
    token = mint(proxy.secret, "backend", ttl=600, scopes=("send",))
    return {"Content-Type": "application/json", "Authorization": f"Bearer {token}", "X-Forwarded-For": FORGED}


def post(proxy, message):
    status, _, body = proxy.request("POST", "/send-message", json.dumps(message).encode(), backend_headers(proxy))
    return status, json.loads(body)


async def received(ws) -> dict:
    """The next frame of ``ws``, decoded; fails after ``TIMEOUT``."""
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))


def test_websocket_and_send_through_the_proxy(proxy):
    client_id = f"ws-{proxy.name}"
    token = mint(proxy.secret, client_id, ttl=600, scopes=("send",))

    async def scenario():
        async with proxy.websocket(f"id={client_id}&token={token}") as ws:
            assert (await received(ws))["type"] == "welcome"
            status, reply = post(proxy, {"receiver_id": client_id, "content": "through the proxy"})
            assert status == 200 and reply["sent"] == [client_id]
            assert (await received(ws))["content"] == "through the proxy"
            await asyncio.sleep(1.5)  # server pings (every 1 s) cross the proxy and are answered
            await ws.send(json.dumps({"type": "send", "ref": "r1", "receiver_id": client_id, "content": "still open"}))
            frames = [await received(ws) for _ in range(2)]
            assert {frame["type"] for frame in frames} == {"message", "ack"}

    asyncio.run(scenario())
    log = proxy.relay.log()
    posts = [line for line in log.splitlines() if '"POST /send-message" 200' in line]
    assert posts and all(line.split("] ", 1)[1].startswith(f"{OUTSIDE} ") for line in posts), posts
    assert f"ws open {client_id} from {OUTSIDE} " in log
    assert FORGED not in log


def test_sse_is_written_through_at_once(proxy):
    client_id = f"sse-{proxy.name}"
    token = mint(proxy.secret, client_id, ttl=600)
    conn, response = proxy.events(f"id={client_id}&token={token}")
    try:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert read_event(response)["event"] == "welcome"
        sent = time.monotonic()
        status, reply = post(proxy, {"receiver_id": client_id, "content": "streamed"})
        assert status == 200 and reply["sent"] == [client_id]
        event = read_event(response)
        waited = time.monotonic() - sent
        assert event["event"] == "message" and json.loads(event["data"])["content"] == "streamed"
        assert waited < 2.0, f"the proxy held the event for {waited:.2f}s"
    finally:
        conn.close()
    assert f"sse open {client_id} from {OUTSIDE} " in proxy.relay.log()


def read_event(response) -> dict:
    """The next SSE event (comment lines skipped) as ``{"event": …, "data": …}``."""
    fields = {}
    while True:
        line = response.readline().decode().rstrip("\r\n")
        if not line:
            if fields:
                return fields
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        fields[name] = value.lstrip(" ")


def test_metrics_are_kept_private(proxy):
    status, _, _ = proxy.request("GET", "/metrics", source=OUTSIDE)
    assert status == 403
    status, _, body = proxy.request("GET", "/metrics", source="127.0.0.1")
    assert status == 200 and b"relay_connections" in body


def test_no_token_reaches_the_proxy_access_log(proxy):
    client_id = f"quiet-{proxy.name}"
    token = mint(proxy.secret, client_id, ttl=600)

    async def welcomed():
        async with proxy.websocket(f"id={client_id}&token={token}") as ws:
            assert (await received(ws))["type"] == "welcome"

    asyncio.run(welcomed())
    conn, response = proxy.events(f"id={client_id}&token={token}")
    assert read_event(response)["event"] == "welcome"
    conn.close()
    proxy.request("GET", f"/health-check?access_token={token}")
    post(proxy, {"receiver_id": client_id, "content": 1})
    deadline = time.monotonic() + TIMEOUT
    while not all(path in proxy.access_log() for path in ("/ws", "/events", "/health-check", "/send-message")):
        assert time.monotonic() < deadline, proxy.access_log()
        time.sleep(0.1)
    log = proxy.access_log()
    signature = token.rsplit(".", 1)[1]
    assert token not in log and signature not in log, log
    assert "Bearer" not in log


# The configurations as text: the shipped files and the snippets in docs/ validate.

def fenced(path, language: str) -> list[str]:
    """The ```language code blocks of a Markdown file."""
    blocks = (ROOT / path).read_text().split(f"```{language}\n")[1:]
    return [block.split("```", 1)[0] for block in blocks]


def self_signed(directory):
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-keyout", str(directory / "key.pem"), "-out", str(directory / "cert.pem")],
        check=True, capture_output=True, timeout=30,
    )


def nginx_accepts(directory, http_block: str) -> None:
    """``nginx -t`` on ``http_block`` (certificates and logs moved under ``directory``)."""
    for old, new in [
        ("/etc/letsencrypt/live/relay.example.com/fullchain.pem", directory / "cert.pem"),
        ("/etc/letsencrypt/live/relay.example.com/privkey.pem", directory / "key.pem"),
        ("/etc/ssl/certs/ssl-cert-snakeoil.pem", directory / "cert.pem"),
        ("/etc/ssl/private/ssl-cert-snakeoil.key", directory / "key.pem"),
        ("/var/log/nginx/", f"{directory}/"),
    ]:
        http_block = http_block.replace(old, str(new))
    config = directory / "check.conf"
    config.write_text(nginx_main(directory, http_block))
    check = subprocess.run([NGINX, "-t", "-c", str(config)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr


def caddy_accepts(directory, caddyfile: str) -> None:
    config = directory / "Caddyfile"
    config.write_text(caddyfile.replace("/var/log/caddy/", f"{directory}/"))
    check = subprocess.run([CADDY, "validate", "--config", str(config), "--adapter", "caddyfile"],
                           capture_output=True, text=True, timeout=30, env=caddy_env(directory), cwd=directory)
    assert check.returncode == 0, check.stderr


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed")
def test_shipped_nginx_conf_and_the_docs_snippets_pass_nginx_t(tmp_path):
    self_signed(tmp_path)
    nginx_accepts(tmp_path, (ROOT / "etc" / "nginx.conf").read_text())
    snippets = fenced("docs/security.md", "nginx") + fenced("docs/operations.md", "nginx")
    assert snippets
    for snippet in snippets:
        nginx_accepts(tmp_path, snippet)


@pytest.mark.skipif(CADDY is None, reason="caddy is not installed")
def test_shipped_caddyfile_and_the_docs_snippets_pass_caddy_validate(tmp_path):
    caddy_accepts(tmp_path, (ROOT / "etc" / "Caddyfile").read_text())
    snippets = fenced("docs/security.md", "caddy") + fenced("docs/operations.md", "caddy")
    assert snippets
    for snippet in snippets:
        caddy_accepts(tmp_path, snippet)
