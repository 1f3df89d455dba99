"""
The composition root: ``twistd relay`` calls :func:`makeService`. Only this
module touches the global reactor.
"""

from __future__ import annotations

import gc
import re
import resource

from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet import defer, task
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python.failure import Failure

from relayd import __version__
from relayd.core.session import CLOSE_GOING_AWAY
from relayd.daemon.logs import (
    flush_per_turn,
    json_observer,
    text_observer,
    twistd_observer,
    use_json_under_twistd,
    use_text_under_twistd,
)
from relayd.daemon.monitor import Monitor
from relayd.daemon.polling import lean_poll
from relayd.daemon.sdnotify import Notifier
from relayd.options import Config
from relayd.options import Options as _Options
from relayd.site import Parts, build
from relayd.transports import autobahn_shim
from relayd.transports.rota import SLICES

FD_RESERVE = 64
SHUTDOWN_GRACE = 5.0
ABORT_GRACE = 0.5
SWEEP_INTERVAL = 5.0
EXPIRY_SWEEP_INTERVAL = 1.0
MIN_SECRET_BYTES = 32

log = Logger(namespace="relayd")


class Options(_Options):
    """``twistd relay`` options (see relayd.options)."""

    def postOptions(self):
        """
        Validate, and make ``--log-format`` decide the log format under
        twistd and under twist (whose own default is JSON when its output is
        not a terminal).
        """
        super().postOptions()
        parent = getattr(self, "parent", None)
        json_logs = self.config.log_format == "json"
        if parent is None:
            return
        if "fileLogObserverFactory" in parent:
            parent["fileLogObserverFactory"] = json_observer if json_logs else text_observer
        elif "logger" in parent and not parent["logger"] and not parent.get("syslog"):
            parent["logger"] = use_json_under_twistd(parent) if json_logs else use_text_under_twistd(parent)


def raise_fd_limit(config: Config) -> int:
    """
    Raise the open-file soft limit to the hard limit; lower
    ``config.max_connections`` (with a warning) if descriptors would run out
    first. Returns the soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1048576)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    room = max(1, soft - FD_RESERVE)
    if config.max_connections > room:
        log.warn(
            "--max-connections {wanted} lowered to {room}: the open-file limit is {open_files}",
            wanted=config.max_connections, room=room, open_files=soft,
        )
        config.max_connections = room
    log.info(
        "open-file limit {open_files}: this relay can hold up to {connections} connections",
        open_files=soft, connections=config.max_connections,
    )
    return soft


def is_loopback(description: str) -> bool:
    """True for an endpoint only this machine can reach (loopback interface, UNIX socket)."""
    kind = description.split(":", 1)[0].lower()
    if kind == "unix":
        return True
    match = re.search(r"(?:^|:)interface=(\\:\\:1|[^:]+)", description)
    return bool(match) and match.group(1).replace("\\", "") in ("127.0.0.1", "::1", "localhost")


def describe_address(address) -> str:
    """``127.0.0.1:8080``, ``[::1]:8080`` or a UNIX socket path."""
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is None:
        name = getattr(address, "name", address)
        return name.decode() if isinstance(name, bytes) else str(name)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Listener(Service):
    """Listens on one endpoint; a failure to listen at start aborts start-up."""

    def __init__(self, description: str, endpoint, factory):
        self.description = description
        self.endpoint = endpoint
        self.factory = factory
        self.port = None

    def startService(self):
        """Listen now; exit with a one-line error if that fails at once (port in use)."""
        super().startService()
        d = self.endpoint.listen(self.factory)
        if not d.called:  # an endpoint that listens later: report when it settles
            d.addCallbacks(self._listening, self._failed_later)
            return
        outcome = []
        d.addBoth(outcome.append)
        if not isinstance(outcome[0], Failure):
            self._listening(outcome[0])
            return
        reason = outcome[0].value
        if isinstance(reason, (CannotListenError, OSError)):
            raise SystemExit(f"relayd: cannot listen on {self.description!r}: {reason}")
        outcome[0].raiseException()

    def _failed_later(self, failure) -> None:
        log.failure("cannot listen on {description}", failure, description=self.description)

    def _listening(self, port):
        self.port = port
        log.info("listening on {address} ({description})", address=describe_address(port.getHost()), description=self.description)

    def stopService(self):
        """Stop accepting connections."""
        super().stopService()
        if self.port is not None:
            return defer.maybeDeferred(self.port.stopListening)
        return None


class RelayService(MultiService):
    """The whole relay: listeners, monitor, sweep, and a graceful stop."""

    def __init__(self, parts: Parts, reactor, notifier: Notifier | None = None):
        super().__init__()
        self.parts = parts
        self.reactor = reactor
        self.notifier = notifier or Notifier({})
        self.listeners = []
        config = parts.config
        for description in config.listen:
            try:
                endpoint = serverFromString(reactor, description)
            except (ValueError, KeyError, TypeError) as error:
                raise SystemExit(f"relayd: --listen {description!r} is not a valid endpoint: {error}") from None
            except IndexError:
                raise SystemExit(
                    f"relayd: --listen {description!r}: systemd passed no socket at that index "
                    "(LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID name none for this process); start relayd from its "
                    ".socket unit, or listen on a tcp: or unix: endpoint"
                ) from None
            listener = Listener(description, endpoint, parts.site)
            listener.setServiceParent(self)
            self.listeners.append(listener)
        if config.monitor_interval > 0:
            monitor = TimerService(config.monitor_interval, Monitor(parts.relay.registry).report)
            monitor.clock = reactor
            monitor.setServiceParent(self)
        if parts.sse is not None and config.ping_interval > 0:
            keepalive = TimerService(config.ping_interval / SLICES, parts.sse.tick)
            keepalive.clock = reactor
            keepalive.setServiceParent(self)
        head_sweep = TimerService(min(1.0, config.request_timeout / 2), parts.site.sweep)
        head_sweep.clock = reactor
        head_sweep.setServiceParent(self)
        if parts.history is not None:
            sweep = TimerService(SWEEP_INTERVAL, parts.history.sweep)
            sweep.clock = reactor
            sweep.setServiceParent(self)
        if parts.expiry is not None and config.secret:
            expiry = TimerService(EXPIRY_SWEEP_INTERVAL, parts.expiry.sweep)
            expiry.clock = reactor
            expiry.setServiceParent(self)
        if self.notifier.watchdog_interval:
            watchdog = TimerService(self.notifier.watchdog_interval, self.notifier.watchdog)
            watchdog.clock = reactor
            watchdog.setServiceParent(self)

    def startService(self):
        """Start the broker, listen, then tell systemd (if it asks) that relayd is ready."""
        self.parts.relay.start()
        log.info("relayd {version}: broker {broker}", version=__version__, broker=self.parts.relay.broker.name)
        observer = twistd_observer()  # twistd started logging before it started this service
        if observer is not None:
            self.parts.site.access.write_to(observer)
        super().startService()
        freeze_start_up()
        addresses = [describe_address(listener.port.getHost()) for listener in self.listeners if listener.port]
        self.notifier.ready(f"listening on {', '.join(addresses)}")

    @defer.inlineCallbacks
    def stopService(self):
        """Stop accepting, close everyone with 1001 (SSE: end the stream), wait a little, abort the rest."""
        self.notifier.stopping()
        self.parts.drain.begin()
        yield defer.gatherResults([defer.maybeDeferred(listener.stopService) for listener in self.listeners])
        site = self.parts.site
        site.drain()
        yield self.parts.links.close_all(CLOSE_GOING_AWAY, "server shutting down", SHUTDOWN_GRACE, ABORT_GRACE)
        deadline = self.reactor.seconds() + SHUTDOWN_GRACE
        while site.busy and self.reactor.seconds() < deadline:  # in-flight requests get their replies
            yield task.deferLater(self.reactor, 0.05, lambda: None)
        yield self.parts.relay.broker.stop()
        yield MultiService.stopService(self)
        self._exit_cleanly()

    def _exit_cleanly(self) -> None:
        """
        After a graceful stop, exit with status 0: twistd otherwise kills
        itself again with the signal that stopped it (status 143 for SIGTERM),
        which supervisors and scripts read as a failure.
        """
        if getattr(self.reactor, "_exitSignal", None) is not None:
            self.reactor._exitSignal = None


def freeze_start_up() -> None:
    """
    Move what start-up made (modules, classes, the site: some 50,000
    objects that live as long as the process) out of the cyclic
    collector's sight, so that its full passes walk only what came after
    (``gc.freeze``; garbage is collected first, so none of it is kept).
    """
    gc.collect()
    gc.freeze()


def makeService(options) -> RelayService:
    """Build the relay service from parsed options (twistd's entry point)."""
    from twisted.internet import reactor

    config = options.config
    autobahn_shim.install()
    raise_fd_limit(config)
    if config.secret is None:
        log.warn("open mode: no --secret-file or RELAY_SECRET, anyone can connect as any id and send")
        for description in config.listen:
            if not is_loopback(description):
                log.warn("open mode on {listen}: this relay may be reachable from other machines", listen=description)
    elif len(config.secret) < MIN_SECRET_BYTES:
        log.warn(
            "the token secret is only {length} bytes: use at least {minimum} random bytes",
            length=len(config.secret), minimum=MIN_SECRET_BYTES,
        )
    try:
        parts = build(config, reactor)
    except ValueError as error:
        raise SystemExit(f"relayd: {error}") from None
    flush_per_turn(reactor, parts.flusher)
    if lean_poll(reactor, parts.flusher.turn_end):  # the end of a turn from the poll step, not a callLater(0)
        parts.flusher.end_turns_itself()
    return RelayService(parts, reactor, Notifier())
