"""
C{/metrics}: the daemon's figures in the Prometheus text format, from a
registry of its own (not prometheus-client's global one).

Counters are counted here as the events happen (L{Metrics.event}, fed by
L{knocker.console.events.ObservedAudit}), not re-derived from the state;
gauges are read from the tracker and the store when scraped.  No label
ever carries an address: a scan would make one series per scanner.
"""

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from knocker.core.tracker import HitVerdict

#: Audit events that end a handshake, and the result label each gives.
HANDSHAKE_RESULTS = {"grant": "grant", "denied": "denied", "locked": "locked", "busy": "busy",
                     "exhausted": "exhausted"}


class Metrics:
    """
    The counters and histograms; L{attach} adds the gauges of a running
    L{knocker.daemon.coordinator.KnockServer}.
    """

    def __init__(self, clock):
        self._clock = clock
        self.registry = registry = CollectorRegistry()
        self.handshakes = Counter("knocker_handshakes", "Central-port handshakes by result",
                                  ["result"], registry=registry)
        self.knocks = Counter("knocker_knocks", "Granted knocks by verdict (open, or the "
                              "failure's reason)", ["verdict"], registry=registry)
        # Hits: the pool ports' hot path counts in a plain dict (an
        # increment, no lock); the registry reads it when scraped.
        self.hit_counts = {verdict.value: 0 for verdict in HitVerdict}
        registry.register(HitCounts(self.hit_counts))
        self.lockouts = Counter("knocker_lockouts", "Lockouts started, by scope", ["scope"],
                                registry=registry)
        self.actions = Counter("knocker_actions", "Action programs run, by action and result",
                               ["action", "result"], registry=registry)
        self.admin = Counter("knocker_admin_changes", "Changes made through the console or "
                             "its API", ["change"], registry=registry)
        self.knock_seconds = Histogram(
            "knocker_knock_duration_seconds", "From GRANT to the verdict",
            registry=registry, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.action_seconds = Histogram(
            "knocker_action_duration_seconds", "Run time of action programs", ["action"],
            registry=registry, buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self._granted: dict[tuple, float] = {}
        self._gauges = None
        self._lockout: dict[str, object] = {}
        for result in (*HANDSHAKE_RESULTS.values(), "error"):
            self.handshakes.labels(result)

    def hit(self, outcome: str) -> None:
        self.hit_counts[outcome] += 1

    def event(self, entry: dict) -> None:
        """
        Count one audit event (everything but hits).
        """
        kind = entry["event"]
        if kind in HANDSHAKE_RESULTS:
            self.handshakes.labels(HANDSHAKE_RESULTS[kind]).inc()
            if kind == "grant":
                if len(self._granted) > 10000:  # verdicts never heard of: forget
                    self._granted.clear()
                self._granted[(entry.get("client"), entry.get("index"))] = self._clock.seconds()
        elif kind == "error" and "client" in entry:
            self.handshakes.labels("error").inc()
        elif kind in ("open", "fail"):
            verdict = "open" if kind == "open" else str(entry.get("reason", "unknown"))
            self.knocks.labels(verdict).inc()
            started = self._granted.pop((entry.get("client"), entry.get("index")), None)
            if started is not None:
                self.knock_seconds.observe(max(0.0, self._clock.seconds() - started))
        elif kind == "lockout":
            scope = entry.get("scope", "source")
            inc = self._lockout.get(scope)
            if inc is None:  # (a flood of sources is a flood of lockouts: bound once)
                inc = self._lockout[scope] = self.lockouts.labels(scope).inc
            inc()
        elif kind == "script":
            ok = entry.get("exit_code") == 0 and not entry.get("timed_out")
            result = "ok" if ok else "timeout" if entry.get("timed_out") else "failed"
            self.actions.labels(entry.get("action", "?"), result).inc()
        elif kind.startswith("admin-"):
            self.admin.labels(kind[len("admin-"):]).inc()

    def timed(self, runner, config):
        """
        C{runner} with each run's duration observed under the key that
        names the program (on-success, on-close, on-check).
        """
        names = {config.on_close: "on-close", config.on_check: "on-check",
                 config.on_success: "on-success"}
        names.pop(None, None)
        return TimedRunner(runner, self, self._clock, names)

    def attach(self, server) -> None:
        self._gauges = StateGauges(server)
        self.registry.register(self._gauges)

    def text(self, state=None) -> bytes:
        """
        The text format; the state's gauges from C{state} (a
        L{knocker.console.view.StateView} read off the reactor), or read
        here when none is given (a store that answers at once).
        """
        if self._gauges is None:
            return generate_latest(self.registry)
        self._gauges.state = state if state is not None else self._gauges.read()
        try:
            return generate_latest(self.registry) + self._gauges.knocks_left()
        finally:
            self._gauges.state = None


class HitCounts:
    """
    C{knocker_hits_total} from the daemon's own counts, when scraped.
    """

    def __init__(self, counts: dict):
        self._counts = counts

    def collect(self):
        family = CounterMetricFamily("knocker_hits", "Connections to pool ports by outcome",
                                     labels=["outcome"])
        for outcome, count in self._counts.items():
            family.add_metric([outcome], count)
        yield family


class TimedRunner:
    """
    A runner (L{knocker.daemon.actions.ProcessRunner}) whose runs are timed
    into C{knocker_action_duration_seconds}.
    """

    def __init__(self, runner, metrics: Metrics, clock, names: dict):
        self._runner = runner
        self._metrics = metrics
        self._clock = clock
        self._names = names

    def run(self, argv, env, *args, **kwargs):
        started = self._clock.seconds()
        action = self._names.get(argv[0], "on-success")  # else the built-in one

        def observe(result):
            self._metrics.action_seconds.labels(action).observe(
                max(0.0, self._clock.seconds() - started))
            return result

        return self._runner.run(argv, env, *args, **kwargs).addBoth(observe)

    def __getattr__(self, name):
        return getattr(self._runner, name)


class StateGauges:
    """
    The gauges, read from the daemon when scraped.
    """

    def __init__(self, server):
        self._server = server
        self.state = None  # the StateView of the scrape under way

    def read(self):
        from knocker.console.view import snapshot

        return snapshot(self._server.store)

    def collect(self):
        server = self._server
        tracker = server.tracker
        state = self.state if self.state is not None else self.read()
        yield GaugeMetricFamily("knocker_lockouts_in_force", "Lockouts in force now",
                                value=len(tracker.lockouts()))
        yield GaugeMetricFamily("knocker_slots", "Granted knocks in progress",
                                value=len(tracker.slots()))
        yield GaugeMetricFamily("knocker_pending_closes", "Close actions waiting to run",
                                value=state.pending_closes)

    def knocks_left(self) -> bytes:
        """
        C{knocker_knocks_left}, one line a client, in the text format.
        Written here rather than by the registry: prometheus-client takes
        about 7 ms a thousand samples, and 10,000 clients must scrape in
        well under 50 ms.  Client ids are [a-z0-9_.-] (knockfile), so the
        label needs no escaping; anything else is escaped all the same.
        """
        lines = ["# HELP knocker_knocks_left One-time knocks left per client\n"
                 "# TYPE knocker_knocks_left gauge\n"]
        for state in self.state.clients:
            client = state.client
            if not _PLAIN_LABEL.issuperset(client):
                client = client.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
            lines.append(f'knocker_knocks_left{{client="{client}"}} {max(0, state.left)}.0\n')
        return "".join(lines).encode("utf-8")


_PLAIN_LABEL = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_.-")
