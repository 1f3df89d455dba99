"""
The package as a new user installs it: ``pip install`` into a fresh virtual
environment, then ``twistd --help`` lists ``relay`` and ``twistd relay
--help`` documents every option of the contract (section 2).

The venv borrows the site-packages of the interpreter running the tests (a
``.pth`` file naming them, so that it works from inside a venv too, where
``--system-site-packages`` would see the base interpreter's instead) for pip
and the dependencies (pip still fetches setuptools for its isolated build),
and the project is installed with ``--no-deps`` from a copy of the worktree,
so the build leaves nothing behind in the repository. (When the test's
interpreter already has relayd installed, Twisted reads the plugin file of
those site-packages too; both name ``relayd.daemon.service``, which the venv's own
copy answers, its site-packages coming first.)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import pytest

from relayd import __version__
from tests.relayproc import LISTENING, ROOT

pytestmark = pytest.mark.integration

CONTRACT_OPTIONS = [
    "--listen", "--secret-file", "--allowed-origins", "--ping-interval", "--ping-timeout",
    "--max-message-size", "--max-connections", "--duplicates", "--max-per-id", "--send-buffer",
    "--history-size", "--history-ttl", "--history-memory", "--broker", "--monitor-interval",
    "--no-sse", "--trust-proxy", "--log-format",
]


# The venv has no twistd script of its own (Twisted comes from the borrowed
# site-packages); this is that script, run by the venv's interpreter.
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; sys.exit(run())"


def twistd(home, *args):
    """The command line of ``twistd ARGS`` in the venv."""
    return [str(home / "bin" / "python"), "-c", TWISTD, *args]


def run(command, cwd, env, timeout=60):
    """Run ``command``; fail with its output if it does not succeed."""
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A fresh venv with relayd installed from a copy of this worktree."""
    base = tmp_path_factory.mktemp("packaging")
    source = base / "src"
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    home = base / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(home)], base, env)
    python = home / "bin" / "python"
    own = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], base, env).strip()
    borrowed = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (Path(own) / "_borrowed.pth").write_text("".join(f"{path}\n" for path in borrowed))
    run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(source)], base, env)
    # What the install instructions tell an operator to do after installing.
    run([str(python), "-c", "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"], base, env)
    return home, env, base


def test_installed_package_comes_from_the_venv(venv):
    home, env, base = venv
    location = run([str(home / "bin" / "python"), "-c", "import relayd; print(relayd.__file__)"], base, env)
    assert location.strip().startswith(str(home)), location
    plugin = home / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages" / "twisted" / "plugins"
    assert (plugin / "relayd_plugin.py").is_file()
    assert not (plugin / "__init__.py").exists(), "an __init__.py here would shadow Twisted's own plugins"


def test_twistd_lists_the_relay_plugin(venv):
    home, env, base = venv
    output = run(twistd(home, "--help"), base, env)
    assert any(line.split()[:1] == ["relay"] for line in output.splitlines()), output


def test_twistd_relay_help_shows_every_contract_option(venv):
    home, env, base = venv
    output = run(twistd(home, "relay", "--help"), base, env)
    missing = [option for option in CONTRACT_OPTIONS if option not in output]
    assert missing == [], output
    assert "RELAY_" in output and "RELAY_SECRET" in output


def test_the_relayd_script_prints_relayds_version(venv):
    home, env, base = venv
    assert run([str(home / "bin" / "relayd"), "--version"], base, env).strip() == f"relayd {__version__}"
    assert run(twistd(home, "relay", "--version"), base, env).strip() == f"relayd {__version__}"


def test_the_relayd_script_groups_its_help(venv):
    home, env, base = venv
    output = run([str(home / "bin" / "relayd"), "--help"], base, env)
    headings = [line for line in output.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert headings == ["listening:", "security:", "limits:", "history:", "broker:", "logging:"], output
    assert output.startswith("Usage: relayd [options]"), output
    listen = next(line for line in output.splitlines() if line.strip().startswith("--listen"))
    assert "RELAY_LISTEN" in listen


def test_the_version_has_one_source(venv):
    home, env, base = venv
    installed = run([str(home / "bin" / "python"), "-c",
                     "from importlib.metadata import version; print(version('relayd'))"], base, env)
    assert installed.strip() == __version__
    assert "version =" not in (ROOT / "pyproject.toml").read_text().split("[project]")[1].split("[")[0]


def test_two_relayd_in_one_directory_both_run_and_write_no_pid_file(venv, tmp_path):
    home, env, _ = venv
    started = []
    try:
        for name in ("first", "second"):
            log = open(tmp_path / f"{name}.log", "wb")
            process = subprocess.Popen([str(home / "bin" / "relayd"), "--listen", "tcp:0:interface=127.0.0.1"],
                                       cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
            started.append((process, tmp_path / f"{name}.log"))
        for process, log_path in started:
            port = wait_for_port(process, log_path)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/livez", timeout=10) as response:
                assert json.load(response) == {"status": "ok"}
        assert not (tmp_path / "twistd.pid").exists()
    finally:
        for process, _ in started:
            process.send_signal(signal.SIGTERM)
    assert [process.wait(15) for process, _ in started] == [0, 0]


def wait_for_port(process, log_path) -> int:
    """The port of a relay's ``listening on`` line (fails if it exits first)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = LISTENING.search(log_path.read_text(errors="replace"))
        if match:
            return int(match.group(1))
        assert process.poll() is None, log_path.read_text(errors="replace")
        time.sleep(0.1)
    raise AssertionError(log_path.read_text(errors="replace"))
