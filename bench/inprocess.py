#!/usr/bin/env python3
"""
In-process knock: what one knock costs knocker itself, without process
start-up or the success program.

One process, one real epoll reactor.  Server: a real KnockServerService on
127.0.0.1 (central port tcp:0, 100 pool ports), with its real Store (SQLite,
the burn fsync'd before GRANT) and real audit log on the state disk; only the
on-success program is replaced by a runner that answers "exit 0" at once.
Client: knocker.client.twisted_driver.knock(reactor, config, knockfile), the Twisted driver,
over real loopback sockets.  Timed: from the knock() call to its result
(connect, HELLO, CHALLENGE, PROOF, GRANT, 6 hits each waiting for the
server's close, OPEN, client log line).  lockout-scope = source.

A second, interleaved set of knocks runs the same coroutine with a driver
that stamps each phase (connect, handshake, hits, verdict) and with the
server's answer() and Store.burn() timed, to see where the time goes.
--profile adds a pass under cProfile: top functions and time by area.

Usage: .venv/bin/python bench/inprocess.py [--knocks 300] [--profile] [--quick]
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

TARGET_P50_MS = 2.0


def install_reactor():
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor

    return reactor


class ImmediateRunner:
    """The success action, excluded: every program 'exits 0' at once."""

    def run(self, argv, env):
        from twisted.internet import defer

        from knocker.daemon.actions import ActionResult

        return defer.succeed(ActionResult(tuple(argv), 0, None, False, "", ""))


class Timed:
    """Wraps a bound method; records its duration while C{on} is set."""

    def __init__(self, method):
        self.method = method
        self.on = False
        self.samples = []

    def __call__(self, *args, **kwargs):
        if not self.on:
            return self.method(*args, **kwargs)
        t0 = time.perf_counter()
        try:
            return self.method(*args, **kwargs)
        finally:
            self.samples.append(time.perf_counter() - t0)


def make_phase_io(reactor, marks):
    """A TwistedDriver that stamps when the central connection is up and when
    each hit starts and ends (the driver knocker.client.twisted_driver.knock uses)."""
    from knocker.client.twisted_driver import TwistedDriver

    class PhaseIO(TwistedDriver):
        async def connect(self, endpoint, timeout):
            conn = await super().connect(endpoint, timeout)
            marks["connected"] = time.perf_counter()
            return conn

        async def hit(self, host, port, timeout):
            marks.setdefault("first_hit", time.perf_counter())
            await super().hit(host, port, timeout)
            marks["last_hit_done"] = time.perf_counter()

    return PhaseIO(reactor)


def setup(reactor, workdir, knocks):
    from knocker.admin.clients import generate_client
    from knocker.client.command import load_knockfile
    from knocker.core.config import parse_client_config
    from knocker.core.serverconfig import parse_server_config
    from knocker.daemon.service import KnockServerService

    low, high = knockerlib.free_range(100, preferred=(26000, 27000, 28000))
    state = os.path.join(workdir, "state")
    config = parse_server_config(overrides={
        "central": "tcp:0:interface=127.0.0.1", "interface": "127.0.0.1",
        "state-dir": state, "pool-size": "100", "pool-range": f"{low}-{high}",
        "lockout-scope": "source", "knock-window": "10", "lockout": "1",
        "audit-log": os.path.join(workdir, "audit.log"), "admin": "",
        # The knock, not a renewal: the client holds its file in memory, and a
        # renewal taken part way would leave it knocking with the old secret.
        "renew-at": "0",
    })
    knock_path = os.path.join(workdir, "bench.knock")
    generate_client(config, "bench", knocks, 6, knock_path)
    service = KnockServerService(config, reactor)
    service.privilegedStartService()
    service.startService()
    service.server._runner = ImmediateRunner()
    port = service.central_port.getHost().port
    client_config = parse_client_config(overrides={
        "server": f"tcp:host=127.0.0.1:port={port}", "knock-file": knock_path,
        "log-file": os.path.join(workdir, "client.log"), "busy-retries": "0",
    })
    return service, client_config, load_knockfile(client_config), (low, high)


async def run(reactor, args, workdir, out):
    from twisted.internet import defer

    from knocker.client import knock as knock_module
    from knocker.client import twisted_driver as client
    from knocker.client.knock import Outcome

    passes = 2 + (1 if args.profile else 0)
    service, cconfig, kf, pool_range = setup(
        reactor, workdir, args.warmup + args.knocks * passes + 50)
    out["pool_range"] = list(pool_range)
    server = service.server
    answer = server.answer = Timed(server.answer)
    store = server._store
    burn = store.burn = Timed(store.burn)
    deadline = time.monotonic() + args.max_seconds
    failures = []

    async def plain():
        t0 = time.perf_counter()
        result = await client.knock(reactor, cconfig, kf)
        return time.perf_counter() - t0, result

    async def phased(marks):
        t0 = time.perf_counter()
        result = await defer.ensureDeferred(
            knock_module.knock(make_phase_io(reactor, marks), cconfig, kf))
        marks["end"] = time.perf_counter()
        marks["start"] = t0
        return marks["end"] - t0, result

    def ok(result):
        if result.outcome is Outcome.OPEN:
            return True
        failures.append(result.message())
        if len(failures) > 10:
            raise RuntimeError("too many failed knocks: %s" % failures[:3])
        return False

    for _ in range(args.warmup):
        ok((await plain())[1])
    failures.clear()

    samples, phase_samples, phases = [], [], []
    for i in range(args.knocks * 2):
        if time.monotonic() > deadline:
            out["stopped_early"] = "max-seconds reached"
            break
        if i % 2 == 0:
            seconds, result = await plain()
            if ok(result):
                samples.append(seconds)
        else:
            marks = {}
            answer.on = burn.on = True
            seconds, result = await phased(marks)
            answer.on = burn.on = False
            if ok(result):
                phase_samples.append(seconds)
                phases.append(marks)
    out["knock"] = common.summarize(samples, failures=len(failures))
    out["knock_phase_driver"] = common.summarize(phase_samples)
    med = common.median
    out["phases_p50_ms"] = {
        "connect": med([(m["connected"] - m["start"]) * 1e3 for m in phases]),
        "handshake": med([(m["first_hit"] - m["connected"]) * 1e3 for m in phases]),
        "hits_x6": med([(m["last_hit_done"] - m["first_hit"]) * 1e3 for m in phases]),
        "verdict": med([(m["end"] - m["last_hit_done"]) * 1e3 for m in phases]),
    } if phases else {}
    out["server_p50_ms"] = {
        "answer": med([s * 1e3 for s in answer.samples]) if answer.samples else None,
        "store_burn": med([s * 1e3 for s in burn.samples]) if burn.samples else None,
    }
    out["failure_reasons"] = failures[:5]

    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        prof_samples = []
        profiler.enable()
        for _ in range(args.knocks):
            if time.monotonic() > deadline:
                break
            seconds, result = await plain()
            if ok(result):
                prof_samples.append(seconds)
        profiler.disable()
        out["profile"] = profile_report(profiler, len(prof_samples))
        out["profile"]["knock_under_profiler"] = common.summarize(prof_samples)

    await service.stopService()


def area(key):
    """Which part of the system a profiled function belongs to."""
    filename, _, name = key
    if "sqlite3.Connection" in name:
        return "sqlite execute (BEGIN/UPDATE/COMMIT+fsync)"
    if "select.epoll" in name:
        return "epoll wait (idle: loopback round trips)"
    if "_socket.socket" in name or "posix.close" in name:
        return "socket syscalls (connect/accept/recv/send/close)"
    if "posix.write" in name or "posix.open" in name:
        return "file writes (audit, client log)"
    if "/knocker/" in filename:
        base = os.path.basename(filename)
        if "/knocker/client/" in filename or base == "knockfile.py":
            return "knocker client code"
        return "knocker server code"
    if "/twisted/" in filename:
        return "twisted (reactor, transports, deferreds)"
    if filename == "~":
        return "other builtins"
    return "other stdlib/python"


def profile_report(profiler, knocks):
    import pstats

    stats = pstats.Stats(profiler)
    rows = []
    by_area = {}
    total = 0.0
    for key, (_cc, nc, tt, ct, _callers) in stats.stats.items():
        total += tt
        by_area[area(key)] = by_area.get(area(key), 0.0) + tt
        filename, line, name = key
        where = name if filename == "~" else "%s:%d(%s)" % (
            os.path.relpath(filename, knockerlib.REPO) if knockerlib.REPO in filename
            else "/".join(filename.split("/")[-2:]), line, name)
        rows.append({"function": where, "calls": nc, "tottime_ms": tt * 1e3, "cumtime_ms": ct * 1e3})
    per = max(1, knocks)
    top_tt = sorted(rows, key=lambda r: -r["tottime_ms"])[:25]
    focus = ("answer", "burn", "hit", "record", "knock", "lineReceived", "doRead", "_attempt")
    top_knocker = sorted(
        (r for r in rows if "knocker/" in r["function"] and r["function"].endswith(
            tuple("(%s)" % f for f in focus))),
        key=lambda r: -r["cumtime_ms"])[:15]
    for r in top_tt + top_knocker:
        r["tottime_ms_per_knock"] = round(r["tottime_ms"] / per, 4)
        r["cumtime_ms_per_knock"] = round(r["cumtime_ms"] / per, 4)
    # Server-side handlers are entry points the reactor calls directly (not
    # nested in one another), so their cumulative times add up to what the
    # server costs a knock; the rest is the client, the reactor and idle.
    server_entry = ("daemon/central.py", ("lineReceived", "connectionMade", "connectionLost",
                                          "buildProtocol")), ("daemon/poolport.py", ("doRead",))
    server_ms = 0.0
    log_callers = {}
    for (filename, _line, name), (_cc, _nc, _tt, ct, callers) in stats.stats.items():
        for base, names in server_entry:
            if filename.endswith("/knocker/" + base) and name in names:
                server_ms += ct * 1e3
        if (filename.endswith("twisted/logger/_logger.py")
                and name in ("debug", "info", "warn", "error", "critical")) or (
                filename.endswith("twisted/python/log.py") and name == "msg"):
            for (cf, cl, cn), value in callers.items():
                label = "%s:%d(%s)" % ("/".join(cf.split("/")[-2:]), cl, cn)
                log_callers[label] = log_callers.get(label, 0) + (value[0] if isinstance(value, tuple) else value)
    return {
        "knocks": knocks,
        "server_handlers_cum_ms_per_knock": round(server_ms / per, 4),
        "log_events_per_knock_by_caller": {
            k: round(v / per, 2) for k, v in sorted(log_callers.items(), key=lambda kv: -kv[1])},
        "total_ms_per_knock": round(total * 1e3 / per, 4),
        "by_area_ms_per_knock": {k: round(v * 1e3 / per, 4)
                                 for k, v in sorted(by_area.items(), key=lambda kv: -kv[1])},
        "top_tottime": top_tt,
        "knocker_cumtime": top_knocker,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--knocks", type=int, default=300,
                    help="timed knocks per pass (a plain pass and a phase pass, interleaved)")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--profile", action="store_true", help="add a pass under cProfile")
    ap.add_argument("--max-seconds", type=float, default=120.0)
    ap.add_argument("--quick", action="store_true", help="tiny run for the test suite")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--out", default=os.path.join(common.RESULTS, "inprocess.json"))
    args = ap.parse_args()
    if args.quick:
        args.knocks, args.warmup, args.max_seconds = 15, 3, 30.0
    args.max_seconds = min(args.max_seconds, knockerlib.DEADLINE_HARD)
    knockerlib.check_venv()

    reactor = install_reactor()
    from twisted.internet import defer

    workdir = tempfile.mkdtemp(prefix="knocker-inprocess-", dir="/var/tmp")
    out = {"name": "inprocess", "machine": common.machine_info(),
           "reactor": type(reactor).__module__ + "." + type(reactor).__name__,
           "params": {"knocks": args.knocks, "warmup": args.warmup, "quick": args.quick,
                      "state_dir": workdir, "ports_per_knock": 6},
           "target_p50_ms": TARGET_P50_MS}
    errors = []

    def start():
        d = defer.ensureDeferred(run(reactor, args, workdir, out))
        d.addErrback(lambda f: errors.append(f))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    watchdog = reactor.callLater(args.max_seconds + 30, reactor.stop)
    reactor.run()
    if watchdog.active():
        watchdog.cancel()
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    if errors:
        print(errors[0].getTraceback(), file=sys.stderr)
        return 1
    if "knock" not in out:
        print("inprocess: no result (watchdog)", file=sys.stderr)
        return 1

    k = out["knock"]
    out["meets_target"] = bool(k.get("p50_ms") is not None and k["p50_ms"] <= TARGET_P50_MS)
    rows = [dict(name="knock (client.knock)", **k)]
    if out["knock_phase_driver"].get("n"):
        rows.append(dict(name="knock (phase-stamping driver)", **out["knock_phase_driver"]))
    if "profile" in out:
        rows.append(dict(name="knock under cProfile", **out["profile"]["knock_under_profiler"]))
    common.print_table(rows, [("name", "in-process knock, ms"), ("n", "n"), ("p50_ms", "p50"),
                              ("p95_ms", "p95"), ("min_ms", "min"), ("max_ms", "max"),
                              ("failures", "fail")],
                       title="In-process knock: handshake + 6 hits + OPEN, one epoll reactor, "
                             "real Store/audit, success action excluded (target p50 <= %.1f ms)"
                             % TARGET_P50_MS)
    print()
    phase_rows = [{"phase": name, "p50_ms": round(v, 3)} for name, v in out["phases_p50_ms"].items()]
    phase_rows += [{"phase": "server: KnockServer.answer (incl. burn)",
                    "p50_ms": out["server_p50_ms"]["answer"]},
                   {"phase": "server: Store.burn (commit + fsync)",
                    "p50_ms": out["server_p50_ms"]["store_burn"]}]
    common.print_table(phase_rows, [("phase", "where the time goes"), ("p50_ms", "p50 ms")])
    if "profile" in out:
        print()
        p = out["profile"]
        common.print_table(
            [{"area": a, "ms": v} for a, v in p["by_area_ms_per_knock"].items()],
            [("area", "cProfile: own time by area"), ("ms", "ms/knock")])
        print()
        common.print_table(
            p["top_tottime"][:15],
            [("function", "top functions by own time"), ("calls", "calls"),
             ("tottime_ms_per_knock", "own ms/knock"), ("cumtime_ms_per_knock", "cum ms/knock")])
        print("server handlers (central + pool) cumulative: %.3f ms/knock of %.3f profiled"
              % (p["server_handlers_cum_ms_per_knock"], p["total_ms_per_knock"]))
        print("twisted log events per knock, by caller:",
              ", ".join("%s %.1f" % kv for kv in p["log_events_per_knock_by_caller"].items()))
        print()
        common.print_table(
            p["knocker_cumtime"],
            [("function", "knocker entry points by cumulative time"), ("calls", "calls"),
             ("cumtime_ms_per_knock", "cum ms/knock")])
    print("\np50 %.3f ms vs target %.1f ms: %s" % (
        k.get("p50_ms", float("nan")), TARGET_P50_MS, "met" if out["meets_target"] else "NOT met"))
    common.write_result(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
