"""TokenAuth in memory: every refusal, with a fake clock."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet.task import Clock

from relayd.core.auth import OpenAuth, TokenAuth
from relayd.core.registry import Refused
from tests.security_helpers import SECRET, token, unsigned

NOW = 1_800_000_000


@pytest.fixture
def auth():
    clock = Clock()
    clock.advance(NOW)
    return TokenAuth(SECRET, clock)


def good(sub="alice", ttl=300, scope=None, **claims):
    return token(sub, scope=scope, exp=NOW + ttl, **claims)


def refused(call, *args):
    with pytest.raises(Refused) as info:
        call(*args)
    return info.value


def test_valid_token_names_the_id(auth):
    client_id, grant = auth.authenticate("alice", good(scope="send read"))
    assert client_id == "alice" and grant.expires == NOW + 300
    assert grant.scopes == frozenset({"send", "read"}) and auth.may_send(grant)


def test_id_is_taken_from_sub_when_absent(auth):
    assert auth.authenticate(None, good("bob"))[0] == "bob"


@pytest.mark.parametrize("bad, error", [
    (None, "token_required"),
    ("", "token_required"),
    ("not-a-jwt", "invalid_token"),
    ("a.b.c", "invalid_token"),
    ("x" * 10000, "invalid_token"),
])
def test_missing_and_malformed(auth, bad, error):
    refusal = refused(auth.authenticate, "alice", bad)
    assert (refusal.status, refusal.error) == (401, error)


def test_wrongly_signed(auth):
    refusal = refused(auth.authenticate, "alice", token(exp=NOW + 60, secret=b"another-secret-0123456789abcdef0123"))
    assert refusal.status == 401 and "signature" in refusal.detail


def test_expired_by_the_injected_clock(auth):
    tok = good(ttl=10)
    auth.authenticate("alice", tok)
    auth._clock.advance(10)
    refusal = refused(auth.authenticate, "alice", tok)
    assert (refusal.status, refusal.error) == (401, "token_expired")


def test_alg_none_is_refused(auth):
    assert refused(auth.authenticate, "alice", unsigned(ttl=NOW)).status == 401


@pytest.mark.parametrize("algorithm", ["HS384", "HS512"])
def test_other_hmac_algorithms_are_refused(auth, algorithm):
    refusal = refused(auth.authenticate, "alice", token(exp=NOW + 60, algorithm=algorithm))
    assert refusal.status == 401 and "HS256" in refusal.detail


def test_rs256_and_key_confusion_are_refused(auth):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    assert refused(auth.authenticate, "alice", token(exp=NOW + 60, secret=pem, algorithm="RS256")).status == 401
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    # A relay whose "secret" is a public key must not accept HS256 tokens forged with it.
    confused = TokenAuth(public, auth._clock)
    forged = "eyJhbGciOiJIUzI1NiJ9." + token(exp=NOW + 60).split(".")[1] + ".AAAA"
    assert refused(confused.authenticate, "alice", forged).status == 401


def test_wrong_sub(auth):
    refusal = refused(auth.authenticate, "victim", good("mallory"))
    assert refusal.status == 401 and "sub" in refusal.detail


@pytest.mark.parametrize("claims, word", [
    ({"exp": None}, "exp"),
    ({"sub": None}, "sub"),
    ({"exp": "tomorrow"}, "exp"),
    ({"exp": True}, "exp"),
    ({"sub": "bad id!"}, "sub"),
    ({"sub": 42}, "sub"),
    ({"scope": ["send"]}, "scope"),
    ({"nbf": NOW + 3600}, "nbf"),
])
def test_bad_claims(auth, claims, word):
    claims = {"exp": NOW + 60, **claims}
    sub = claims.pop("sub", "alice")
    refusal = refused(auth.authenticate, None, token(sub, **claims))
    assert refusal.status == 401 and word in refusal.detail


def test_send_needs_the_send_scope(auth):
    auth.authorize_send(good("billing", scope="send"))
    assert refused(auth.authorize_send, good("billing", scope="read")).status == 403
    assert refused(auth.authorize_send, good("billing")).status == 403
    assert refused(auth.authorize_send, None).status == 401
    assert not auth.may_send(auth.authenticate("alice", good())[1])


def test_refresh_keeps_the_id(auth):
    grant = auth.refresh("alice", good(ttl=900, scope="send"))
    assert grant.expires == NOW + 900 and auth.may_send(grant)
    assert refused(auth.refresh, "alice", good("bob")).status == 401
    assert refused(auth.refresh, "alice", good(ttl=-1)).error == "token_expired"


def test_open_mode_takes_the_query_id():
    open_auth = OpenAuth()
    assert open_auth.authenticate("alice", None) == ("alice", None)
    assert refused(open_auth.authenticate, None, None).status == 400


@pytest.mark.parametrize("uri", [b"/ws?id=a&token=abc.def", b"/events?id=a&Token=x", b"/x/eyJhbGciOi.e30.sig"])
def test_a_token_is_redacted_every_time_it_is_logged(uri):
    from relayd.core.auth import redact

    assert redact(b"/send-message") == redact(b"/send-message") == "/send-message"
    for _ in range(3):  # never remembered as shown: each line redacts it again
        shown = redact(uri)
        assert "[redacted]" in shown and b"abc" not in shown.encode() and "e30" not in shown
