#!/usr/bin/env python3
"""
What the console costs the daemon (issue 11): pool-port hits per second
through the coordinator with the console's observed audit log, metrics and
three live subscribers, against the bare daemon (target: at least 90 %);
and the work behind the overview page, the clients page and /metrics with
10,000 clients (targets: 300 ms, 50 ms for /metrics).

In process, no sockets: KnockServer.hit with the real audit log on disk
(its hit-line budget as configured), a Clock for time; the pages are timed
as their handlers' work (reading the tracker and the store, rendering),
without HTTP.

Usage: .venv/bin/python bench/console.py [--hits 200000] [--clients 10000] [--quick]
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from knockerlib import common  # noqa: E402

sys.path.insert(0, common.REPO)


class Sink:
    """
    A live subscriber's request that reads as fast as it is written.
    """

    def __init__(self):
        self.bytes = 0

    def setHeader(self, name, value):
        pass

    def registerProducer(self, producer, streaming):
        pass

    def write(self, data):
        self.bytes += len(data)

    def notifyFinish(self):
        from twisted.internet.defer import Deferred

        return Deferred()


def build(folder, clients, console):
    from twisted.internet.task import Clock

    from knocker.core.serverconfig import parse_server_config
    from knocker.core.tracker import Policy, Tracker
    from knocker.daemon.audit import AuditLog
    from knocker.daemon.coordinator import KnockServer
    from knocker.state.sqlite import SQLiteStore

    state = os.path.join(folder, "state")
    config = parse_server_config(overrides={"state-dir": state, "pool-size": "100",
                                            "pool-range": "20000-20999", "admin": ""})
    store = SQLiteStore(state)
    if not store.clients() and clients:
        with store._transaction():  # bench set-up: one commit, not one fsync a client
            store._db.executemany(
                "INSERT INTO clients (id, next_index, knocks, secret_id) VALUES (?, ?, 1000, 'x')",
                [(f"client{n:05d}", 1 + n % 900) for n in range(clients)])
    clock = Clock()
    clock.advance(1_800_000_000)
    audit = AuditLog(os.path.join(folder, "audit.log"), clock, hit_rate=config.audit_hit_rate,
                     min_free_mib=0)
    parts = {"store": store, "audit": audit, "clock": clock, "config": config}
    observed = audit
    if console:
        from knocker.console.events import EventBus, EventStream
        from knocker.console.metrics import Metrics
        from knocker.console.view import Activity

        bus, metrics, activity = EventBus(clock), Metrics(clock), Activity(clock)
        observed = console_audit(audit, clock, bus, metrics, activity)
        for _ in range(3):
            EventStream(Sink(), bus)
        parts.update(bus=bus, metrics=metrics, activity=activity)
    server = KnockServer(config, clock, store, None, None, observed,
                         Tracker(clock, Policy.from_config(config)))
    parts["server"] = server
    if console:
        parts["metrics"].attach(server)
    return parts


def console_audit(audit, clock, bus, metrics, activity):
    from knocker.console.events import ObservedAudit

    return ObservedAudit(audit, clock.seconds, (metrics.event, activity, bus.publish),
                         metrics.hit)


def hits_per_second(parts, hits, sources):
    server, clock = parts["server"], parts["clock"]
    addresses = [f"198.51.{(n >> 8) & 255}.{n & 255}" for n in range(min(sources, 65536))]
    started = time.perf_counter()
    for n in range(hits):
        server.hit(addresses[n % len(addresses)], 40000, 20000 + n % 100)
        if n % 1000 == 999:
            clock.advance(0.01)
    return hits / (time.perf_counter() - started)


def best_ms(function, repeat):
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append((time.perf_counter() - started) * 1000)
    return round(min(times), 2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hits", type=int, default=200_000)
    ap.add_argument("--clients", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="tiny run for the test suite")
    ap.add_argument("--out", default=os.path.join(common.RESULTS, "console.json"))
    args = ap.parse_args()
    if args.quick:
        args.hits, args.clients, args.repeat = 5_000, 200, 1
    from knocker.console import pages, view

    result = {"hits": args.hits, "clients": args.clients, "machine": common.machine_info()}
    # A scan from a /24 (each source locked out by its first hit, then its
    # hits are "locked": no event), and the worst case, a new source every
    # hit (every hit starts a lockout: an audit event through the console).
    floods = {"scan_256_sources": 256, "new_source_every_hit": args.hits}
    for flood, sources in floods.items():
        rates = {"bare": [], "console": []}
        for _ in range(args.repeat):
            for kind in ("bare", "console"):
                folder = tempfile.mkdtemp(prefix="knocker-bench-console-")
                try:
                    parts = build(folder, 0, kind == "console")
                    rates[kind].append(hits_per_second(parts, args.hits, sources))
                    parts["audit"].close()
                    parts["store"].close()
                finally:
                    shutil.rmtree(folder, ignore_errors=True)
        bare, console = max(rates["bare"]), max(rates["console"])
        result[flood] = {"hits_per_second_bare": round(bare),
                         "hits_per_second_console": round(console),
                         "ratio": round(console / bare, 3), "ratio_target": 0.9}

    folder = tempfile.mkdtemp(prefix="knocker-bench-console-")
    try:
        parts = build(folder, args.clients, True)
        server, clock, activity = parts["server"], parts["clock"], parts["activity"]
        config, bus, metrics = parts["config"], parts["bus"], parts["metrics"]
        # Each as a request does it: the state read once, then drawn.
        result["overview_ms"] = best_ms(lambda: pages.overview_page(
            view.overview(server, view.snapshot(server.store), "now", clock, config),
            list(bus.recent), "csrf"), args.repeat)
        result["clients_page_ms"] = best_ms(lambda: pages.clients_page(
            view.clients(server, view.snapshot(server.store), clock, activity, 0,
                         view.CLIENTS_PER_PAGE), "csrf"),
            args.repeat)
        result["metrics_ms"] = best_ms(lambda: metrics.text(view.snapshot(server.store)),
                                       args.repeat)
        parts["audit"].close()
        parts["store"].close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=2)
    for flood in floods:
        row = result[flood]
        print(f"{flood.replace('_', ' ')}: hits/s through the coordinator bare "
              f"{row['hits_per_second_bare']:,}, with the console and 3 live subscribers "
              f"{row['hits_per_second_console']:,} ({row['ratio']:.1%}; target >= 90 %)")
    print(f"with {args.clients:,} clients: overview {result['overview_ms']} ms (target 300), "
          f"clients page {result['clients_page_ms']} ms, /metrics {result['metrics_ms']} ms "
          f"(target 50)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
