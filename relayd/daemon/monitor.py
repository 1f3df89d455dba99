"""
Monitoring: one log line with the connection counts every
``--monitor-interval`` seconds (the timer lives in relayd/daemon/service.py).
"""

from __future__ import annotations

from twisted.logger import Logger


class Monitor:
    """What the monitor timer reports."""

    log = Logger(namespace="relayd.monitor")

    def __init__(self, registry):
        self.registry = registry

    def report(self) -> None:
        """Log ``clients=N ws=… sse=…``."""
        self.log.info(
            "clients={clients} ws={ws} sse={sse}",
            clients=self.registry.clients,
            ws=self.registry.counts["ws"],
            sse=self.registry.counts["sse"],
        )
