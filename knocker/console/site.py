"""
The console inside the daemon: what L{knocker.daemon.service} builds when
C{admin} is set.  Before the coordinator exists it wraps the audit log
(L{observe}) and the action runner (L{timed}) so the live events and the
metrics see everything; once the daemon is up, L{listen} serves the
console on C{admin} and writes C{daemon.json} for the commands.
"""

from twisted.internet.endpoints import serverFromString
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.web.server import Site

from knocker.console.access import Credentials, Sessions
from knocker.console.events import EventBus, ObservedAudit
from knocker.console.metrics import Metrics
from knocker.console.resource import Console
from knocker.console.view import Activity
from knocker.core.config import admin_endpoint


class QuietSite(Site):
    """
    No access log: login URLs carry their token in the query.
    """

    def log(self, request):
        pass


class ConsoleService:
    def __init__(self, config, reactor, wall):
        self.config = config
        self._reactor = reactor
        self._wall = wall
        self.bus = EventBus(reactor)
        self.metrics = Metrics(reactor)
        self.activity = Activity(reactor)
        self.credentials = Credentials(config.state_dir)
        self.port = None
        self.url = None

    def observe(self, audit) -> ObservedAudit:
        return ObservedAudit(audit, self._wall,
                             (self.metrics.event, self.activity, self.bus.publish),
                             self.metrics.hit)

    def timed(self, runner):
        return self.metrics.timed(runner, self.config)

    def listen(self, server, audit) -> int:
        """
        Serve the console; return the port.  Raises L{ValueError} naming
        C{admin} when it cannot listen.
        """
        self.metrics.attach(server)
        console = Console(server, self.config, audit, self._reactor, self._wall,
                          self.credentials, Sessions(self._reactor), self.bus, self.activity,
                          self.metrics, blocking=deferToThread)
        result = []
        endpoint = serverFromString(self._reactor, self.config.admin)
        endpoint.listen(QuietSite(console)).addBoth(result.append)
        if not result or isinstance(result[0], Failure):
            why = result[0].value if result else "did not listen at once"
            raise ValueError(f"admin = {self.config.admin}: {why}")
        self.port = result[0]
        kind, host, _ = admin_endpoint(self.config.admin)
        port = self.port.getHost().port
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{'https' if kind == 'ssl' else 'http'}://{shown}:{port}/"
        console.daemon_token = self.credentials.publish(self.url)
        return port

    def stop(self):
        self.credentials.unpublish()
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None
