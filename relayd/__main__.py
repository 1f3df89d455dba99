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
    from twisted.python import usage
    from twisted.scripts.twistd import ServerOptions, runApp

    sys.argv[0] = "relayd"
    config = ServerOptions()
    try:
        config.parseOptions(["--nodaemon", "relay", *argv])
    except usage.error as error:
        sys.stderr.write(f"{config}\nrelayd: {error}\n")
        return 1
    runApp(config)
    return 0


def run() -> None:
    """The ``relayd`` console script."""
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    run()
