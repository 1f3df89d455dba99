"""``python -m relayd token`` as a process (the command's function in memory: tests/unit/test_tokens_cli.py)."""

from __future__ import annotations

import subprocess
import sys
import time

from tests.relayproc import ROOT
from tests.security_helpers import SECRET
from tests.unit.test_tokens_cli import decode


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
