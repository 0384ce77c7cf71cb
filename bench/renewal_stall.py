#!/usr/bin/env python3
"""
renewal_stall.py: how long the daemon stops serving while it draws a
renewed file for a big client.

One process, one real epoll reactor, a real KnockServerService (SQLite
state, its thread pool).  A probe on the reactor, a LoopingCall every
millisecond, records how late each of its calls runs: the reactor's stalls,
as a client knocking meanwhile would meet them.  For each round and each
way, a fresh client of --knocks knocks is offered a renewal:

- `batched`: what the daemon does (KnockServer._offer for a store that
  answers at once): knocker.daemon.renewals, 200 knocks a reactor turn,
  the file written in a thread;
- `in-one-go`: knocker.enrol.renewal.prepare_offer called on the reactor,
  as the daemon did before (and as a fleet still does, in a database
  thread).

Reported per way: the time until the offer is ready, and the probe's
worst and 99th-percentile lateness (ms) while it was drawn.

Usage: .venv/bin/python bench/renewal_stall.py [--knocks 100000] [--rounds 3] [--out OUT]
       [--quick]  (1000 knocks, one round: a smoke run)
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import knockerlib  # noqa: E402
from knockerlib import common  # noqa: E402

PROBE = 0.001  # seconds between the probe's calls


def start_daemon(reactor, workdir, knocks, clients):
    from knocker.admin.clients import generate_client
    from knocker.core.serverconfig import parse_server_config
    from knocker.daemon.service import KnockServerService

    low, high = knockerlib.free_range(100, preferred=(26000, 27000, 28000))
    config = parse_server_config(overrides={
        "central": "tcp:0:interface=127.0.0.1", "interface": "127.0.0.1",
        "state-dir": os.path.join(workdir, "state"), "pool-size": "100",
        "pool-range": f"{low}-{high}", "admin": "", "renew-at": str(knocks),
        "audit-log": os.path.join(workdir, "audit.log"),
    })
    for client in clients:
        generate_client(config, client, knocks, 6, os.path.join(workdir, client + ".knock"))
    service = KnockServerService(config, reactor)
    service.privilegedStartService()
    service.startService()
    return service


class Probe:
    """A LoopingCall's lateness, recorded while C{on}."""

    def __init__(self, reactor):
        from twisted.internet.task import LoopingCall

        self.reactor = reactor
        self.on = False
        self.late = []
        self._due = None
        self._call = LoopingCall(self._tick)
        self._call.clock = reactor

    def start(self):
        self._due = self.reactor.seconds()
        self._call.start(PROBE, now=True)

    def _tick(self):
        now = self.reactor.seconds()
        if self.on:
            self.late.append(max(0.0, now - self._due))
        self._due = now + PROBE

    def stop(self):
        self._call.stop()


async def measure(reactor, service, probe, way, client):
    from twisted.internet import defer

    from knocker.enrol.renewal import prepare_offer

    server = service.server
    now = time.time()
    await deferred_sleep(reactor, 0.05)  # the probe settles
    probe.late = []
    probe.on = True
    started = time.perf_counter()
    if way == "batched":
        made = server._renewal_draws().offer(client, now)
    else:
        # As the daemon did before: all of it in one call on the reactor.
        made = defer.Deferred()
        reactor.callLater(0, lambda: made.callback(
            prepare_offer(server._store, server._book, client, now)))
    result = await defer.maybeDeferred(lambda: made)
    ready = time.perf_counter() - started
    await deferred_sleep(reactor, 0.01)  # the probe's call after the last step
    probe.on = False
    if result is None:
        raise RuntimeError(f"{way}: no offer for {client}")
    late = sorted(probe.late)
    return {"ready_ms": ready * 1000, "max_late_ms": late[-1] * 1000 if late else 0.0,
            "p99_late_ms": common.percentile(late, 99) * 1000 if late else 0.0,
            "probe_calls": len(late)}


def deferred_sleep(reactor, seconds):
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)


async def main_async(reactor, args, out):
    workdir = tempfile.mkdtemp(prefix="knocker-renewal-stall-", dir="/var/tmp")
    try:
        ways = ("batched", "in-one-go")
        clients = {(way, r): f"{way[:1]}{r}" for way in ways for r in range(args.rounds)}
        print(f"generating {len(clients)} clients of {args.knocks} knocks ...", flush=True)
        service = start_daemon(reactor, workdir, args.knocks, clients.values())
        probe = Probe(reactor)
        probe.start()
        rows = {way: [] for way in ways}
        for r in range(args.rounds):
            for way in (ways if r % 2 == 0 else ways[::-1]):
                rows[way].append(await measure(reactor, service, probe, way, clients[way, r]))
        probe.stop()
        from twisted.internet import defer

        await defer.maybeDeferred(service.stopService)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    out["knocks"] = args.knocks
    out["rounds"] = args.rounds
    out["ways"] = {}
    print(f"\n{'way':<12}{'ready p50 ms':>14}{'worst stall ms':>16}{'p99 stall ms':>14}")
    for way, samples in rows.items():
        summary = {key: common.percentile([s[key] for s in samples], 50)
                   for key in ("ready_ms", "max_late_ms", "p99_late_ms")}
        summary["worst_late_ms"] = max(s["max_late_ms"] for s in samples)
        summary["samples"] = samples
        out["ways"][way] = summary
        print(f"{way:<12}{summary['ready_ms']:>14.1f}{summary['worst_late_ms']:>16.1f}"
              f"{summary['p99_late_ms']:>14.1f}")
    print("(stall: how late a 1 ms timer on the reactor ran while the file was drawn; "
          "worst over all rounds, p99 the median round's)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--knocks", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=os.path.join(common.RESULTS, "renewal_stall.json"))
    args = parser.parse_args()
    if args.quick:
        args.knocks, args.rounds = 1000, 1
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import defer, reactor

    out = {"machine": common.machine_info()}
    failure = []

    def run():
        d = defer.ensureDeferred(main_async(reactor, args, out))
        d.addErrback(failure.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(run)
    reactor.run()
    if failure:
        failure[0].raiseException()
    common.write_json(args.out, out)
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
