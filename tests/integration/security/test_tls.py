"""``--listen ssl:...``: a real TLS handshake with a certificate the test makes."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import ssl
import urllib.request

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import connect as connect_async
from websockets.sync.client import connect

from tests.security_helpers import SECRET, token

pytestmark = pytest.mark.integration


def make_certificate(directory):
    """A self-signed certificate for 127.0.0.1; returns (key path, cert path)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / "key.pem", directory / "cert.pem"
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def test_wss_and_https(start_relay, tmp_path):
    key_path, cert_path = make_certificate(tmp_path)
    relay = start_relay(
        env={"RELAY_SECRET": SECRET.decode()},
        listen=f"ssl:0:interface=127.0.0.1:privateKey={key_path}:certKey={cert_path}",
    )
    context = ssl.create_default_context(cafile=str(cert_path))
    request = urllib.request.Request(
        f"https://127.0.0.1:{relay.port}/send-message",
        data=json.dumps({"receiver_id": "tls-alice", "content": "secret stuff"}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token('be', scope='send')}"},
    )

    async def scenario():
        # The asyncio client: the sync one reads in a thread while another
        # writes, on one SSL object (OpenSSL forbids it; a TLS 1.3 session
        # ticket arriving during the upgrade made it fail now and then).
        url = f"wss://127.0.0.1:{relay.port}/ws?id=tls-alice&token={token('tls-alice')}"
        async with connect_async(url, ssl=context, open_timeout=10) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "welcome"
            assert ws.transport.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
            with urllib.request.urlopen(request, context=context, timeout=10) as response:
                assert response.status == 200 and json.loads(response.read())["sent"] == ["tls-alice"]
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["content"] == "secret stuff"

    asyncio.run(scenario())

    untrusting = ssl.create_default_context()
    with pytest.raises(ssl.SSLCertVerificationError):
        connect(f"wss://127.0.0.1:{relay.port}/ws?id=tls-bob&token={token('tls-bob')}", ssl=untrusting)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_old_tls_is_refused(start_relay, tmp_path):
    key_path, cert_path = make_certificate(tmp_path)
    relay = start_relay(listen=f"ssl:0:interface=127.0.0.1:privateKey={key_path}:certKey={cert_path}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(cert_path))
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    try:
        context.set_ciphers("ALL:@SECLEVEL=0")
    except ssl.SSLError:
        pass
    with pytest.raises(ssl.SSLError) as info:
        connect(f"wss://127.0.0.1:{relay.port}/ws?id=old", ssl=context, open_timeout=10)
    # The server's alert, not the client refusing to offer TLS 1.1 itself.
    assert "ALERT_PROTOCOL_VERSION" in str(info.value)
