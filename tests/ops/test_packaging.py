"""
The package as a new user installs it: ``pip install`` into a fresh virtual
environment, then ``twistd --help`` lists ``relay`` and ``twistd relay
--help`` documents every option of the contract (section 2).

The venv borrows the machine's site-packages for pip and the dependencies (pip
still fetches setuptools for its isolated build), and the project is
installed with ``--no-deps`` from a copy of the worktree, so the build
leaves nothing behind in the repository. (When the machine already has
relayd installed, Twisted reads the plugin file of its own site-packages
first; both name ``relayd.daemon.service``, which the venv's copy answers.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.relayproc import ROOT

pytestmark = pytest.mark.integration

CONTRACT_OPTIONS = [
    "--listen", "--secret-file", "--allowed-origins", "--ping-interval", "--ping-timeout",
    "--max-message-size", "--max-connections", "--duplicates", "--max-per-id", "--send-buffer",
    "--history-size", "--history-ttl", "--history-memory", "--broker", "--monitor-interval",
    "--no-sse", "--trust-proxy", "--log-format",
]


# The venv has no twistd script of its own (Twisted comes from the machine's
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
    run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(home)], base, env)
    python = home / "bin" / "python"
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
