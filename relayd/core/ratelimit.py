"""
The per-connection limit on a client's ``send`` frames (``--send-rate``,
``--send-burst``).

A token bucket per connection, refilled from the injected clock when a frame
arrives (no timer): ``burst`` frames at once, then ``rate`` frames a second.
A frame past the limit is refused (the client gets an ``error`` frame
``rate_limited``); a client that keeps going — ``burst`` refused frames in a
row — is closed with 1008 (policy violation).
"""

from __future__ import annotations

from relayd.core.ports import Clock

ALLOWED = "allowed"
LIMITED = "limited"
EXCEEDED = "exceeded"


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` a second; time comes from ``clock``."""

    __slots__ = ("rate", "burst", "tokens", "stamp", "_clock")

    def __init__(self, rate: float, burst: int, clock: Clock) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self._clock = clock
        self.stamp = clock.seconds()

    def take(self) -> bool:
        """Take one token if there is one; False when the bucket is empty."""
        now = self._clock.seconds()
        elapsed = max(0.0, now - self.stamp)
        self.stamp = now
        self.tokens = min(float(self.burst), self.tokens + elapsed * self.rate)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class SendLimit:
    """One connection's send limit: a bucket, and patience for a client that ignores it."""

    __slots__ = ("_bucket", "_refused", "patience")

    def __init__(self, rate: float, burst: int, clock: Clock) -> None:
        self._bucket = TokenBucket(rate, burst, clock)
        self._refused = 0
        self.patience = burst

    def check(self) -> str:
        """``ALLOWED``, ``LIMITED`` (refuse this frame) or ``EXCEEDED`` (close the connection)."""
        if self._bucket.take():
            self._refused = 0
            return ALLOWED
        self._refused += 1
        return EXCEEDED if self._refused > self.patience else LIMITED
