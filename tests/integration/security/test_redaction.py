"""
Tokens never reach a log line: read the real log of a real ``twistd relay``
after tokens went by in every place a client can put one, accepted or not,
including requests that Autobahn itself refuses.
"""

from __future__ import annotations

import http.client
import json

import pytest
from websockets.sync.client import connect

from tests.security_helpers import SECRET, recv_json, token, upgrade

pytestmark = pytest.mark.integration


def raw_request(relay, data: bytes) -> bytes:
    """Send raw bytes; return what comes back (the server closes or answers)."""
    import socket

    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks):
                    break
        except OSError:
            pass
    return b"".join(chunks)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_token_in_the_log(start_relay, log_format):
    relay = start_relay("--log-format", log_format, env={"RELAY_SECRET": SECRET.decode()})
    tokens = {name: token("red", ttl=300 + n, scope="send") for n, name in enumerate(
        ["query", "header", "post", "post-query", "refresh", "autobahn", "notfound", "access", "http10", "fragment",
         "head"])}
    tokens["forged"] = token("red", secret=b"wrong-secret-0123456789abcdef0123456789")

    with connect(f"{relay.ws}/ws?id=red&token={tokens['query']}") as ws:
        recv_json(ws)
        ws.send(json.dumps({"type": "refresh", "token": tokens["refresh"]}))
        assert recv_json(ws)["type"] == "ack"
    with connect(f"{relay.ws}/ws?id=red", additional_headers={"Authorization": f"Bearer {tokens['header']}"}) as ws:
        recv_json(ws)
    assert upgrade(relay, f"/ws?id=red&token={tokens['forged']}")[0] == 401
    assert relay.send({"receiver_id": "red", "content": 1}, {"Authorization": f"Bearer {tokens['post']}"})[0] == 200
    status, _, _ = relay.request("POST", f"/send-message?token={tokens['post-query']}", {"receiver_id": "red", "content": 1},
                                 {"Authorization": f"Bearer {tokens['post']}"})
    assert status == 200
    assert upgrade(relay, f"/ws?id=red&token={tokens['autobahn']}", {"Sec-WebSocket-Version": "99"})[0] >= 400
    assert relay.request("GET", f"/nothing-here?token={tokens['notfound']}")[0] == 404
    assert relay.request("GET", f"/ws?id=red&access_token={tokens['access']}")[0] == 426
    # A HEAD answered with a body (which is not sent) is logged, redacted.
    conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=10)
    conn.request("HEAD", f"/ws?id=red&token={tokens['head']}")
    assert conn.getresponse().status == 426
    conn.close()
    raw_request(relay, (f"GET /ws?id=red&token={tokens['http10']} HTTP/1.0\r\nHost: x\r\nUpgrade: websocket\r\n"
                        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                        "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    raw_request(relay, (f"GET /ws?id=red&token={tokens['fragment']}&x=#token={tokens['fragment']} HTTP/1.1\r\n"
                        "Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    relay.stop()

    log = relay.log()
    assert "token=[redacted]" in log
    assert "#token=[redacted]" in log  # a token after a '#' in the request line too
    assert 'HEAD /ws?id=red&token=[redacted]' in log
    assert "ws open red" in log and "code=401" in log.replace('" 401', "code=401")
    for name, value in tokens.items():
        signature = value.rsplit(".", 1)[1]
        assert signature not in log, f"the {name} token leaked into the log"
    if log_format == "json":
        for line in log.splitlines():
            if line.startswith("{"):
                json.loads(line)
