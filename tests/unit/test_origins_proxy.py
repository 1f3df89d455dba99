"""--allowed-origins matching, its validation, and --trust-proxy client addresses."""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address
from twisted.python import usage
from twisted.web.test.requesthelper import DummyRequest

from relayd.core.origins import OriginPolicy
from relayd.options import Options
from relayd.web.http import client_address

POLICY = OriginPolicy(["https://app.example.com", "https://*.example.org", "http://localhost:3000"])


@pytest.mark.parametrize("origin, allowed", [
    (None, True),
    ("https://app.example.com", True),
    ("https://APP.example.com", True),
    ("https://app.example.com:443", True),
    ("https://app.example.com:8443", False),
    ("http://app.example.com", False),
    ("https://evil.com", False),
    ("https://app.example.com.evil.com", False),
    ("https://evilapp.example.com", False),
    ("https://a.example.org", True),
    ("https://a.b.example.org", True),
    ("https://example.org", False),
    ("https://evilexample.org", False),
    ("http://a.example.org", False),
    ("http://localhost:3000", True),
    ("http://localhost", False),
    ("null", False),
    ("", False),
    ("https://app.example.com:99999", False),
    ("https://app.example.com@evil.com", False),
])
def test_origin_matching(origin, allowed):
    assert POLICY.allows(origin) is allowed


def test_star_allows_everything():
    assert OriginPolicy(["*"]).allows("null") and OriginPolicy(["https://a.b", "*"]).allows("https://x.y")


@pytest.mark.parametrize("bad", ["example.com", "*.example.com", "https://*.", "https://"])
def test_bad_entries_are_a_usage_error(bad):
    options = Options(environ={})
    with pytest.raises(usage.UsageError, match="allowed-origins"):
        options.parseOptions(["--allowed-origins", f"https://ok.example.com,{bad}"])


def request_from(peer, forwarded=None):
    request = DummyRequest([b""])
    request.client = IPv4Address("TCP", peer, 40000)
    if forwarded is not None:
        request.requestHeaders.setRawHeaders(b"x-forwarded-for", [forwarded])
    return request


def test_forwarded_for_is_ignored_without_trust_proxy():
    assert client_address(request_from("10.0.0.5", "203.0.113.9"), 0) == "10.0.0.5"


def test_one_trusted_proxy_gives_the_address_it_saw():
    # A client may send its own X-Forwarded-For; nginx appends the real address.
    assert client_address(request_from("10.0.0.5", "6.6.6.6, 203.0.113.9"), 1) == "203.0.113.9"


def test_two_trusted_proxies():
    assert client_address(request_from("10.0.0.5", "6.6.6.6, 203.0.113.9, 10.0.0.4"), 2) == "203.0.113.9"


def test_no_header_behind_a_proxy_gives_the_peer():
    assert client_address(request_from("10.0.0.5"), 1) == "10.0.0.5"


def test_a_garbage_hop_is_not_trusted():
    assert client_address(request_from("10.0.0.5", 'unknown, "><script>'), 1) == "10.0.0.5"
