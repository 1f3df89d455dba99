"""
How far behind this node's subscription is, so that the node refuses new
messages (HTTP 503 ``overloaded``) instead of letting a backlog grow in
Redis until Redis cuts the subscriber (CONTRACT.md section 14).

Every record carries the time it was published: when the script that
published it ran, on Redis's clock. Its *lag* when it reaches this node is
how long it waited for this node's subscription, in Redis's output buffer
and this node's own; when the last record's lag passes ``limit`` the node
is *behind* until records arrive promptly again, or none arrive for
``quiet`` seconds (nothing is waiting any more). A call Redis ran late because Redis itself
stalled is not lag: no node is behind for it. The lag compares Redis's
clock with this node's: on other hosts than Redis's, keep the clocks in
step (NTP), as a skew counts as lag.
"""

from __future__ import annotations

from relayd.core.ports import Clock

LAG_LIMIT = 0.05
QUIET = 0.05
ANNOUNCE_EVERY = 0.1


class Pacing:
    """The lag of one subscription, from the records it delivers."""

    def __init__(self, clock: Clock, limit: float = LAG_LIMIT, quiet: float = QUIET):
        self.clock = clock
        self.limit = limit
        self.quiet = quiet
        self.lag = 0.0
        self._last = float("-inf")
        self._announced = float("-inf")

    def observe(self, received: float) -> bool:
        """
        A record whose POST arrived at ``received`` was delivered now.

        Returns True when the other nodes should be told (again) that this
        one is behind (at most every ``ANNOUNCE_EVERY`` seconds).
        """
        now = self.clock.seconds()
        self.lag = now - received
        self._last = now
        if self.lag > self.limit and now - self._announced >= ANNOUNCE_EVERY:
            self._announced = now
            return True
        return False

    @property
    def behind(self) -> bool:
        """True while records arrive later than ``limit`` after their POST."""
        return self.lag > self.limit and self.clock.seconds() - self._last < self.quiet
