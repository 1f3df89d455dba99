"""python -m relayd token: mints what the relay accepts, reading the same secret."""

from __future__ import annotations

import subprocess
import sys
import time

import jwt
import pytest

from relayd.daemon.tokens import main
from tests.relayproc import ROOT
from tests.security.helpers import SECRET


def decode(token, secret=SECRET):
    return jwt.decode(token, secret, algorithms=["HS256"])


def test_module_command_prints_a_token(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(b"\n  " + SECRET + b"\n")
    result = subprocess.run(
        [sys.executable, "-m", "relayd", "token", "alice", "--ttl", "60", "--scope", "send",
         "--secret-file", str(secret_file)],
        capture_output=True, text=True, cwd=ROOT, timeout=30, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    claims = decode(result.stdout.strip())
    assert claims["sub"] == "alice" and claims["scope"] == "send"
    assert 50 <= claims["exp"] - time.time() <= 61


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
