"""
etc/nginx.conf in front of a real relay: TLS termination, the WebSocket
upgrade, pings through the proxy, POST /send-message, and the client
address from X-Forwarded-For (a client's own forged header is not trusted).
Skipped where nginx is not installed.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request

import pytest
from websockets.sync.client import connect

from tests.relayproc import ROOT

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")

pytestmark = [pytest.mark.integration, pytest.mark.skipif(NGINX is None, reason="nginx is not installed")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def nginx_config(directory, relay_port: int, port: int) -> str:
    """The shipped snippet, pointed at the test's relay, certificate and port."""
    snippet = (ROOT / "etc" / "nginx.conf").read_text()
    snippet = snippet[: snippet.rindex("server {")]  # drop the port-80 redirect
    snippet = (
        snippet.replace("server 127.0.0.1:8080;", f"server 127.0.0.1:{relay_port};")
        .replace("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
        .replace("listen [::]:443 ssl;", "")
        .replace("/etc/letsencrypt/live/relay.example.com/fullchain.pem", str(directory / "cert.pem"))
        .replace("/etc/letsencrypt/live/relay.example.com/privkey.pem", str(directory / "key.pem"))
    )
    return (
        f"daemon off; pid {directory}/nginx.pid; error_log {directory}/error.log; worker_processes 1;\n"
        "events { worker_connections 64; }\n"
        f"http {{ access_log off; client_body_temp_path {directory}; proxy_temp_path {directory};\n"
        f"{snippet}\n}}\n"
    )


@pytest.fixture
def proxied(tmp_path, start_relay):
    relay = start_relay("--trust-proxy", "1", "--ping-interval", "1")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
        check=True, capture_output=True, timeout=30,
    )
    port = free_port()
    (tmp_path / "nginx.conf").write_text(nginx_config(tmp_path, relay.port, port))
    check = subprocess.run([NGINX, "-t", "-c", str(tmp_path / "nginx.conf")], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    nginx = subprocess.Popen([NGINX, "-c", str(tmp_path / "nginx.conf")], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline and nginx.poll() is None, (tmp_path / "error.log").read_text()
            time.sleep(0.1)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    yield relay, port, context
    nginx.terminate()
    nginx.wait(10)


def test_websocket_and_send_through_nginx(proxied):
    relay, port, context = proxied
    with connect(f"wss://127.0.0.1:{port}/ws?id=proxied", ssl=context) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "welcome"
        request = urllib.request.Request(
            f"https://127.0.0.1:{port}/send-message", method="POST",
            data=b'{"receiver_id": "proxied", "content": "through nginx"}',
            headers={"Content-Type": "application/json", "X-Forwarded-For": "203.0.113.9"},
        )
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            assert json.load(response)["sent"] == ["proxied"]
        assert json.loads(ws.recv(timeout=10))["content"] == "through nginx"
        time.sleep(2.5)  # a few server pings (every 1 s) cross the proxy
        ws.send('{"type": "send", "ref": "r1", "receiver_id": "proxied", "content": "still open"}')
        frames = [json.loads(ws.recv(timeout=10)) for _ in range(2)]
        assert {f["type"] for f in frames} == {"message", "ack"}
    access = [line for line in relay.log().splitlines() if '"POST /send-message" 200' in line]
    assert access and access[0].split("] ")[1].startswith("127.0.0.1 "), access
    assert "203.0.113.9" not in relay.log()
