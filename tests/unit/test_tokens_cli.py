"""python -m relayd token: mints what the relay accepts, reading the same secret."""

from __future__ import annotations

import jwt
import pytest

from relayd.daemon.tokens import main
from tests.security_helpers import SECRET


def decode(token, secret=SECRET):
    return jwt.decode(token, secret, algorithms=["HS256"])




@pytest.mark.parametrize("environ", [
    lambda path: {"RELAY_SECRET": SECRET.decode()},
    lambda path: {"RELAY_SECRET_FILE": str(path), "RELAY_SECRET": "other-secret-that-loses"},
])
def test_secret_from_the_environment(tmp_path, capsys, environ):
    path = tmp_path / "secret"
    path.write_bytes(SECRET)
    assert main(["bob", "--scope", "send read"], environ=environ(path)) == 0
    claims = decode(capsys.readouterr().out.strip())
    assert claims["sub"] == "bob" and claims["scope"] == "send read"


def test_without_a_secret_it_says_so(capsys):
    with pytest.raises(SystemExit) as info:
        main(["bob"], environ={})
    assert info.value.code == 2 and "RELAY_SECRET" in capsys.readouterr().err


def test_bad_id_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["not ok"], environ={"RELAY_SECRET": "x" * 40})
    assert "client id" in capsys.readouterr().err
