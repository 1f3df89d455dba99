"""The ``relay`` twistd plugin: ``twistd -n relay --help``."""
from twisted.application.service import ServiceMaker

relay = ServiceMaker(
    "relayd",
    "relayd.daemon.service",
    "A real-time push relay over WebSocket and Server-Sent Events.",
    "relay",
)
