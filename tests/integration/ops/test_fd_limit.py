"""Contract section 1: at start the relay raises its open-file limit and says how many connections it can hold."""

import resource

from tests.relayproc import RelayProcess


def test_soft_limit_is_raised_and_max_connections_lowered_to_fit(tmp_path):
    relay = RelayProcess(
        log_dir=tmp_path,
        preexec=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (100, 300)),
    ).start()
    try:
        log = relay.log()
        assert "--max-connections 10000 lowered to 236: the open-file limit is 300" in log
        assert "open-file limit 300: this relay can hold up to 236 connections" in log
        assert int(open(f"/proc/{relay.process.pid}/limits").read().split("Max open files")[1].split()[0]) == 300
        assert relay.health()[0] == 200
    finally:
        relay.stop()
