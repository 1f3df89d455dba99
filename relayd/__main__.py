"""
The ``relayd`` command (also ``python -m relayd``):

    relayd [options]        run the relay in the foreground: twistd -n relay [options]
    relayd --version        print relayd's version
    relayd --help           every option, grouped, with its RELAY_* variable
    relayd token alice --ttl 3600 --scope send   print a token

``twistd -n relay`` and ``twist relay`` run the same relay.
"""

from __future__ import annotations

import sys

from relayd.daemon import tokens


def main(argv: list[str]) -> int:
    """Run ``relayd ARGV`` (without the program name); returns the exit status."""
    if argv[:1] == ["token"]:
        return tokens.main(argv[1:], prog="relayd token")
    from twisted.scripts.twistd import run as twistd

    sys.argv = ["relayd", "--nodaemon", "relay", *argv]
    try:
        twistd()
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else _complain(stop.code))
    return 0


def _complain(message) -> int:
    sys.stderr.write(f"{message}\n")
    return 1


def run() -> None:
    """The ``relayd`` console script."""
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    run()
