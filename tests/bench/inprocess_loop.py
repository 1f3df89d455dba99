"""
The in-process loop docs/performance.md counts instructions on: the relay
built on a fake clock (``tests.unit.sim.SimRelay``), 50 WebSocket receivers
over ``iosim``, ``POST /send-message`` on one keep-alive channel over a
``StringTransport``. No sockets and no other process, so that callgrind's
count does not depend on the machine's load::

    valgrind --tool=callgrind python -m tests.bench.inprocess_loop 300
    valgrind --tool=callgrind python -m tests.bench.inprocess_loop 1300

The difference of the two totals over 1,000 is the cost of one POST.
``--batch 100`` posts arrays of 100 messages instead (divide by messages).
Not a test: a tool, kept beside the benchmark's tests.
"""

from __future__ import annotations

import argparse
import json
import os

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogBeginner

from relayd.daemon.logs import text_observer
from tests.unit.sim import SimRelay, relay_clock

RECEIVERS = 50
WARM_UP = 200


def request_bytes(n: int, batch: int) -> bytes:
    """The ``n``-th POST: one message, or ``batch`` of them, to the receivers in turn."""
    def item(k: int) -> dict:
        return {"receiver_id": f"r-{(n + k) % RECEIVERS}", "content": {"t": 1733000000000000 + n, "text": "hello"}}

    body = json.dumps([item(k) for k in range(batch)] if batch else item(0)).encode()
    return (b"POST /send-message HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


def run(posts: int, batch: int, log_to=None) -> int:
    """Send ``WARM_UP`` then ``posts`` POSTs (access lines straight to ``log_to``, as under twistd); how many 200s came back."""
    with relay_clock() as clock:
        sim = SimRelay(clock)
        if log_to is not None:
            sim.parts.site.access.write_to(log_to)
        connections = [sim.ws(f"id=r-{i}") for i in range(RECEIVERS)]
        address = IPv4Address("TCP", "127.0.0.1", 50000)
        transport = StringTransport(peerAddress=address, hostAddress=IPv4Address("TCP", "127.0.0.1", 8080))
        channel = sim.parts.site.buildProtocol(address)
        transport.protocol = channel
        channel.makeConnection(transport)
        requests = [request_bytes(n, batch) for n in range(RECEIVERS)]
        answered = 0
        for n in range(WARM_UP + posts):
            channel.dataReceived(requests[n % RECEIVERS])
            clock.advance(0)
            if n % 100 == 0:  # let go of what was written
                answered += transport.value().count(b"HTTP/1.1 200 ")
                transport.clear()
                for connection in connections:
                    connection.server_transport.stream = []
        return answered + transport.value().count(b"HTTP/1.1 200 ")


def log_as_in_production():
    """
    Log as twistd does once it runs: every event to one LineObserver (here
    writing to nowhere), instead of Twisted's start-up buffer and filter,
    which would count some 23,000 instructions a POST that production does
    not spend; returns that observer (for the access lines, see run).
    """
    observer = text_observer(open(os.devnull, "w"))  # noqa: SIM115
    globalLogBeginner.beginLoggingTo([observer], discardBuffer=True, redirectStandardIO=False)
    return observer


def main() -> None:
    """``python -m tests.bench.inprocess_loop POSTS [--batch N]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("posts", type=int)
    parser.add_argument("--batch", type=int, default=0, help="messages per POST (0: one message object)")
    options = parser.parse_args()
    answered = run(options.posts, options.batch, log_as_in_production())
    assert answered == WARM_UP + options.posts, f"{answered} of {WARM_UP + options.posts} POSTs answered 200"


if __name__ == "__main__":
    main()
