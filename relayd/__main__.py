"""
``python -m relayd``: small commands around the relay.

    python -m relayd token alice --ttl 3600 --scope send   print a token

The relay itself runs with ``twistd -n relay`` (or ``twist relay``).
"""

from __future__ import annotations

import sys

from relayd.daemon import tokens

USAGE = """usage: python -m relayd token CLIENT_ID [--ttl SECONDS] [--scope SCOPE] [--secret-file PATH]

commands:
  token    print a token (JWT, HS256) for CLIENT_ID, signed with the relay's secret

The relay itself runs with: twistd -n relay [options]   (twistd relay --help)
"""


def main(argv: list[str]) -> int:
    """Dispatch ``argv`` (without the program name) to a command."""
    if argv and argv[0] == "token":
        return tokens.main(argv[1:], prog="python -m relayd token")
    stream = sys.stdout if argv[:1] in (["-h"], ["--help"]) else sys.stderr
    stream.write(USAGE)
    return 0 if stream is sys.stdout else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
