"""
Every refusal against a real ``twistd relay`` with a secret: before the
upgrade, with a JSON body, never registered, never disturbing the victim.
"""

from __future__ import annotations

import json
import time

import pytest
from websockets.sync.client import connect

from tests.relayproc import RelayProcess
from tests.security_helpers import SECRET, recv_json, token, unsigned, upgrade

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def relay(tmp_path_factory):
    """One secured relay for the module; only https://app.example.com may open /ws from a browser."""
    directory = tmp_path_factory.mktemp("refusals")
    secret_file = directory / "secret"
    secret_file.write_bytes(SECRET + b"\n")
    process = RelayProcess(
        ["--secret-file", str(secret_file), "--allowed-origins", "https://app.example.com,https://*.example.org"],
        log_dir=directory,
    ).start()
    yield process
    process.stop()


@pytest.fixture
def victim(relay):
    """A connected client 'victim' that must not notice any refusal."""
    with connect(f"{relay.ws}/ws?id=victim", additional_headers={"Authorization": f"Bearer {token('victim')}"}) as ws:
        assert recv_json(ws)["type"] == "welcome"
        yield ws


def assert_victim_undisturbed(relay, ws, marker):
    status, reply = relay.send({"receiver_id": "victim", "content": marker},
                               headers={"Authorization": f"Bearer {token('backend', scope='send')}"})
    assert status == 200 and reply["sent"] == ["victim"]
    frame = recv_json(ws)
    assert frame["type"] == "message" and frame["content"] == marker
    # Connections of earlier tests may still be closing: wait for them, not for the refused one
    # (it never registered; had it replaced the victim, the message above would not have arrived).
    deadline = time.monotonic() + 10
    while (health := relay.health()[1])["clients"] != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert health["clients"] == 1 and health["connections"]["ws"] == 1


# Made when the module is collected: valid for a day, so that a long suite run does not see them expire.
DAY = 86400
REFUSALS = {
    "missing": (None, 401, "token_required"),
    "malformed": ("not.a.token", 401, "invalid_token"),
    "garbage": ("%%%%", 401, "invalid_token"),
    "wrongly-signed": (token("victim", ttl=DAY, secret=b"not-the-relay-secret-0123456789abcdef"), 401, "invalid_token"),
    "expired": (token("victim", ttl=-5), 401, "token_expired"),
    "alg-none": (unsigned("victim"), 401, "invalid_token"),
    "hs512": (token("victim", ttl=DAY, algorithm="HS512"), 401, "invalid_token"),
    "wrong-sub": (token("mallory", ttl=DAY), 401, "invalid_token"),
    "no-exp": (token("victim", exp=None, ttl=0), 401, "invalid_token"),
}


@pytest.mark.parametrize("name", list(REFUSALS))
@pytest.mark.parametrize("where", ["query", "header"])
def test_impersonation_is_refused_before_the_upgrade(relay, victim, name, where):
    bad, status, error = REFUSALS[name]
    if bad is None:
        path, headers = "/ws?id=victim", {}
    elif where == "query":
        path, headers = f"/ws?id=victim&token={bad}", {}
    else:
        path, headers = "/ws?id=victim", {"Authorization": f"Bearer {bad}"}
    code, response, body = upgrade(relay, path, headers)
    assert code == status
    assert body["error"] == error and body["detail"]
    assert response.getheader("WWW-Authenticate", "").startswith("Bearer")
    assert_victim_undisturbed(relay, victim, f"after {name} {where}")


def test_id_comes_from_sub_when_absent(relay):
    with connect(f"{relay.ws}/ws?token={token('carol')}") as ws:
        assert recv_json(ws)["client_id"] == "carol"


def test_forbidden_origin_is_403(relay, victim):
    good = token("victim")
    code, response, body = upgrade(relay, f"/ws?id=victim&token={good}", {"Origin": "https://evil.example.com"})
    assert code == 403 and body["error"] == "origin_not_allowed"
    assert_victim_undisturbed(relay, victim, "after evil origin")


@pytest.mark.parametrize("origin", ["https://app.example.com", "https://chat.example.org"])
def test_allowed_origins_connect(relay, origin):
    with connect(f"{relay.ws}/ws?id=olivia&token={token('olivia')}", origin=origin) as ws:
        assert recv_json(ws)["type"] == "welcome"


def test_refusal_order_400_before_401_before_403(relay):
    assert upgrade(relay, "/ws?id=bad%20id", {"Origin": "https://evil.com"})[0] == 400
    assert upgrade(relay, "/ws?id=zed", {"Origin": "https://evil.com"})[0] == 401
    assert upgrade(relay, f"/ws?id=zed&token={token('zed')}", {"Origin": "https://evil.com"})[0] == 403


def test_post_needs_a_token_with_send_scope(relay, victim):
    body = {"receiver_id": "victim", "content": "forged", "sender_id": "bank"}
    status, response, reply = relay.request("POST", "/send-message", body)
    assert status == 401 and reply["error"] == "token_required" and response["WWW-Authenticate"].startswith("Bearer")
    for bad in (token("backend", ttl=-1, scope="send"), unsigned("backend"), "x.y.z"):
        status, _, reply = relay.request("POST", "/send-message", body, {"Authorization": f"Bearer {bad}"})
        assert status == 401, reply
    status, _, reply = relay.request("POST", "/send-message", body, {"Authorization": f"Bearer {token('backend')}"})
    assert status == 403 and reply["error"] == "forbidden"
    assert_victim_undisturbed(relay, victim, "after refused posts")


def test_send_frame_needs_send_scope(relay, victim):
    with connect(f"{relay.ws}/ws?id=reader&token={token('reader', scope='read')}") as ws:
        recv_json(ws)
        ws.send(json.dumps({"type": "send", "ref": "r1", "receiver_id": "victim", "content": "x"}))
        frame = recv_json(ws)
        assert frame == {"type": "error", "ref": "r1", "error": "forbidden", "detail": frame["detail"]}
    with connect(f"{relay.ws}/ws?id=writer&token={token('writer', scope='send')}") as ws:
        recv_json(ws)
        ws.send(json.dumps({"type": "send", "ref": "r2", "receiver_id": "victim", "content": "x", "sender_id": "bank"}))
        frame = recv_json(ws)
        assert frame["type"] == "error" and frame["error"] == "invalid_frame" and "sender_id" in frame["detail"]
        ws.send(json.dumps({"type": "send", "ref": "r3", "receiver_id": "victim", "content": "hello"}))
        assert recv_json(ws)["type"] == "ack"
    received = recv_json(victim)
    assert received["content"] == "hello" and received["sender_id"] == "writer"


def test_bypassing_the_gate_header_is_useless(relay):
    code, _, body = upgrade(relay, "/ws?id=victim", {"X-Relayd-Admission": "guess"})
    assert code == 401
