"""
Mint tokens for development and scripts:

    python -m relayd token alice --ttl 3600 --scope send
    relayd-token alice --ttl 3600 --scope send

The secret is read as ``twistd relay`` reads it: ``--secret-file``, else
``RELAY_SECRET_FILE``, else ``RELAY_SECRET``. The token (JWT, HS256, claims
``sub``, ``iat``, ``exp`` and ``scope`` when given) is printed on standard
output, nothing else; errors go to standard error with exit status 2.

A backend mints the same token with PyJWT in three lines (see :func:`mint`).
"""

from __future__ import annotations

import argparse
import os
import time

import jwt

from relayd.core.auth import ALGORITHM
from relayd.options import read_secret
from relayd.wire import is_client_id

DEFAULT_TTL = 3600


def mint(secret: bytes, client_id: str, ttl: float = DEFAULT_TTL, scopes=(), now: float | None = None) -> str:
    """A token for ``client_id`` valid ``ttl`` seconds from ``now``, with ``scopes``."""
    issued = int(time.time() if now is None else now)
    claims = {"sub": client_id, "iat": issued, "exp": issued + int(ttl)}
    if scopes:
        claims["scope"] = " ".join(scopes)
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Print a relayd token (JWT, HS256) for a client id, signed with the relay's secret.",
        epilog="The secret comes from --secret-file, else $RELAY_SECRET_FILE, else $RELAY_SECRET.",
    )
    parser.add_argument("client_id", help="the id the token lets its holder connect as (its 'sub')")
    parser.add_argument("--ttl", type=int, default=DEFAULT_TTL, help="seconds until it expires [default: 3600]")
    parser.add_argument(
        "--scope", action="append", default=[],
        help="a scope to grant, e.g. 'send' (repeatable, or space-separated)",
    )
    parser.add_argument("--secret-file", help="file holding the HS256 key (whitespace around it is ignored)")
    return parser


def main(argv: list[str] | None = None, prog: str = "relayd-token", environ=None) -> int:
    """Parse ``argv``, print a token; the exit status."""
    parser = _parser(prog)
    args = parser.parse_args(argv)
    if not is_client_id(args.client_id):
        parser.error("client id: 1 to 128 characters from A-Z a-z 0-9 _ . : @ -")
    if args.ttl < 1:
        parser.error("--ttl must be at least 1 second")
    try:
        secret = read_secret(args.secret_file, os.environ if environ is None else environ)
    except ValueError as error:
        parser.error(str(error))
    if secret is None:
        parser.error("no secret: pass --secret-file or set RELAY_SECRET_FILE or RELAY_SECRET")
    scopes = [scope for item in args.scope for scope in item.split()]
    print(mint(secret, args.client_id, args.ttl, scopes))
    return 0
