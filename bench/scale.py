#!/usr/bin/env python3
"""
Pool scale: what a large pool costs the daemon at start-up and in memory.

For each pool size (default 100, 1,000, 10,000) the real daemon
(twistd -n --pidfile= knockserver --config FILE, fresh state directory, no
clients) is spawned and timed from just before the spawn to its audit `start`
event (written once every pool port and the central port listen; the
event's own microsecond timestamp is used, so polling adds nothing); its
VmRSS is read from /proc the moment the event is seen, and its peak (VmHWM).

For comparison, a bare Twisted process (same Python, default epoll reactor)
that only does reactor.listenTCP with a trivial factory on the same number
of ports, timed the same way (it prints its wall clock once listening).
This is the floor for "Python + Twisted + N listening ports".

The pool range is exactly the pool (a contiguous block checked free in
/proc before each run, 10000-19999 when free), so the pool is every port in
it.  Runs are interleaved (each round visits every size and kind in a
shuffled order) and repeated; medians are reported.

Usage: .venv/bin/python bench/scale.py [--sizes 100,1000,10000] [--repeat 5] [--quick]
"""

import argparse
import os
import random
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import knockerlib  # noqa: E402
from knockerlib import common  # noqa: E402

TARGET_READY_S = 1.0
TARGET_RSS_MB = 80.0

BARE = r"""
import resource, sys, time
n, low, interface = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if soft != resource.RLIM_INFINITY and soft < n + 256:
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 256), hard))
from twisted.internet import protocol, reactor

class Close(protocol.Protocol):
    def connectionMade(self):
        self.transport.loseConnection()

factory = protocol.Factory.forProtocol(Close)
factory.noisy = False
for port in range(low, low + n):
    reactor.listenTCP(port, factory, interface=interface)
sys.stdout.write("ready %r\n" % time.time())
sys.stdout.flush()
reactor.run()
"""


def block_for(size):
    """A free contiguous block of `size` ports (10000-... preferred)."""
    return knockerlib.free_range(size, preferred=(10000, 20000, 12000))


def run_daemon(size, workdir):
    low, high = block_for(size)
    run_dir = tempfile.mkdtemp(prefix="run-", dir=workdir)
    audit = os.path.join(run_dir, "audit.log")
    config = knockerlib.write_config(
        os.path.join(run_dir, "server.conf"),
        central="tcp:0:interface=127.0.0.1", interface="127.0.0.1",
        state_dir=os.path.join(run_dir, "state"), pool_size=size,
        pool_range=f"{low}-{high}", audit_log=audit, lockout_scope="source")
    daemon = knockerlib.KnockerDaemon(config, audit, run_dir)
    try:
        event = daemon.wait_ready(timeout=60)
        if event.get("pool_size") != size:
            raise RuntimeError(f"daemon reports pool_size {event.get('pool_size')}, wanted {size}")
        hwm = daemon.rss_kb("VmHWM")
        return {"ready_s": daemon.ready_s, "seen_s": daemon.seen_s,
                "rss_kb": daemon.ready_rss_kb, "hwm_kb": hwm, "block": [low, high]}
    finally:
        daemon.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


def run_bare(size, workdir):
    low, high = block_for(size)
    log = os.path.join(workdir, "bare.out")
    if os.path.exists(log):
        os.unlink(log)
    spawned_wall = time.time()
    spawned = time.monotonic()
    proc = common.Daemon([knockerlib.python(), "-c", BARE, str(size), str(low), "127.0.0.1"],
                         log, env=knockerlib.env(), cwd=workdir)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = proc.log_text()
            if "ready " in text:
                rss = knockerlib.rss_kb(proc.pid)
                seen = time.monotonic() - spawned
                stamp = float(text.split("ready ", 1)[1].split()[0])
                return {"ready_s": stamp - spawned_wall, "seen_s": seen, "rss_kb": rss,
                        "hwm_kb": knockerlib.rss_kb(proc.pid, "VmHWM"), "block": [low, high]}
            if not proc.alive():
                raise RuntimeError("bare reactor exited:\n" + text[-2000:])
            time.sleep(0.002)
        raise RuntimeError("bare reactor not ready in 60 s:\n" + proc.log_text()[-2000:])
    finally:
        proc.stop(grace=10.0)


def probe_inherited_limit(size, workdir):
    """Does the daemon start with `size` pool ports under the file-descriptor
    limits this benchmark inherited?  (Before we raise them for the runs.)"""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    out = {"pool_size": size, "soft": soft, "hard": hard}
    try:
        run_daemon(size, workdir)
        out["starts"] = True
    except Exception as error:  # noqa: BLE001 - the reason is reported
        out["starts"] = False
        out["error"] = [line for line in str(error).splitlines() if line.strip()][-1][-300:]
    return out


def raise_nofile(wanted):
    """Lift this process's (and so its children's) descriptor limits to
    `wanted` if they are lower; the hard limit only as root."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:  # root outside a container may; a container often may not
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, wanted), wanted))
        except (ValueError, OSError):
            pass
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        soft = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--max-seconds", type=float, default=300.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--nofile", type=int, default=None,
                    help="descriptor limit for the runs (default 2 x largest pool + 1024)")
    ap.add_argument("--quick", action="store_true", help="tiny run for the test suite")
    ap.add_argument("--out", default=os.path.join(common.RESULTS, "scale.json"))
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.repeat = "10,100", 1
    sizes = [int(s) for s in args.sizes.split(",")]
    max_seconds = min(args.max_seconds, knockerlib.DEADLINE_HARD)
    knockerlib.check_venv()
    rng = random.Random(args.seed)
    workdir = tempfile.mkdtemp(prefix="knocker-scale-", dir="/var/tmp")
    probe = probe_inherited_limit(max(sizes), workdir)
    if not probe["starts"]:
        print("knockserver with %d pool ports does NOT start under the inherited fd limit "
              "(soft %s, hard %s): %s" % (max(sizes), probe["soft"], probe["hard"], probe["error"]))
    # Room for any knocker version: each pool port may hold more than one
    # descriptor (this one keeps a spare /dev/null per port).
    limits = raise_nofile(args.nofile or 2 * max(sizes) + 1024)
    substituted = None
    if not probe["starts"] and limits[1] != -1 and 2 * max(sizes) + 200 > limits[1]:
        # Cannot lift the hard limit here: measure the largest pool that
        # fits (two descriptors a port) and say so.
        fits = (limits[1] - 200) // 2 // 100 * 100
        substituted = {"wanted": max(sizes), "measured": fits, "why": probe["error"],
                       "nofile_hard": limits[1]}
        print("measuring %d ports in place of %d (hard fd limit %d cannot be raised here)"
              % (fits, max(sizes), limits[1]))
        sizes = [fits if size == max(sizes) else size for size in sizes]
    samples = {(size, kind): [] for size in sizes for kind in ("knockserver", "bare-twisted")}
    runners = {"knockserver": run_daemon, "bare-twisted": run_bare}
    deadline = time.monotonic() + max_seconds
    stopped = None
    try:
        for round_ in range(args.repeat):
            order = list(samples)
            rng.shuffle(order)
            for size, kind in order:
                if time.monotonic() > deadline:
                    stopped = "max-seconds reached"
                    break
                result = runners[kind](size, workdir)
                samples[(size, kind)].append(result)
                print("round %d  %-12s %6d ports: ready %.3f s, RSS %.1f MB"
                      % (round_ + 1, kind, size, result["ready_s"], result["rss_kb"] / 1024),
                      flush=True)
            if stopped:
                break
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    med = common.median
    rows = []
    for (size, kind), runs in samples.items():
        if not runs:
            continue
        rows.append({
            "pool_size": size, "kind": kind, "n": len(runs),
            "ready_ms_p50": round(med([r["ready_s"] for r in runs]) * 1e3, 1),
            "ready_ms_min": round(min(r["ready_s"] for r in runs) * 1e3, 1),
            "ready_ms_max": round(max(r["ready_s"] for r in runs) * 1e3, 1),
            "rss_mb_p50": round(med([r["rss_kb"] for r in runs]) / 1024, 1),
            "peak_rss_mb_p50": round(med([r["hwm_kb"] for r in runs]) / 1024, 1),
        })
    by = {(r["pool_size"], r["kind"]): r for r in rows}
    for size in sizes:
        d, b = by.get((size, "knockserver")), by.get((size, "bare-twisted"))
        if d and b:
            d["ready_vs_bare"] = round(d["ready_ms_p50"] / b["ready_ms_p50"], 2)
            d["rss_vs_bare"] = round(d["rss_mb_p50"] / b["rss_mb_p50"], 2)
    # Marginal cost of a pool port: slope between the smallest and largest size.
    marginal = {}
    lo, hi = min(sizes), max(sizes)
    for kind in ("knockserver", "bare-twisted"):
        a, z = by.get((lo, kind)), by.get((hi, kind))
        if a and z and hi > lo:
            marginal[kind] = {
                "ready_us_per_port": round((z["ready_ms_p50"] - a["ready_ms_p50"]) * 1e3 / (hi - lo), 2),
                "rss_kb_per_port": round((z["rss_mb_p50"] - a["rss_mb_p50"]) * 1024 / (hi - lo), 2),
            }
    rows.sort(key=lambda r: (r["pool_size"], r["kind"]))
    print()
    common.print_table(rows, [
        ("kind", "process"), ("pool_size", "ports"), ("n", "n"),
        ("ready_ms_p50", "ready p50 ms"), ("ready_ms_min", "min"), ("ready_ms_max", "max"),
        ("rss_mb_p50", "RSS p50 MB"), ("peak_rss_mb_p50", "peak MB"),
        ("ready_vs_bare", "ready/bare"), ("rss_vs_bare", "RSS/bare")],
        title="Pool scale: spawn -> audit 'start' (daemon) / listening (bare), RSS when ready")
    for kind, m in marginal.items():
        print("%s: %.1f us and %.2f kB per extra listening port (%d -> %d)"
              % (kind, m["ready_us_per_port"], m["rss_kb_per_port"], lo, hi))
    top = by.get((hi, "knockserver"))
    verdict = {}
    if top:
        verdict = {"pool_size": hi,
                   "ready_ok": top["ready_ms_p50"] < TARGET_READY_S * 1e3,
                   "rss_ok": top["rss_mb_p50"] < TARGET_RSS_MB}
        print("at %d ports: ready %.0f ms (target < %.0f ms: %s), RSS %.1f MB (target < %.0f MB: %s)"
              % (hi, top["ready_ms_p50"], TARGET_READY_S * 1e3,
                 "met" if verdict["ready_ok"] else "NOT met", top["rss_mb_p50"], TARGET_RSS_MB,
                 "met" if verdict["rss_ok"] else "NOT met"))
    out = {"name": "scale", "machine": common.machine_info(),
           "params": {"sizes": sizes, "repeat": args.repeat, "quick": args.quick,
                      "nofile_soft_hard": list(limits)},
           "inherited_limit_probe": probe, "size_substituted": substituted,
           "summary": rows, "marginal": marginal, "targets": {
               "ready_ms": TARGET_READY_S * 1e3, "rss_mb": TARGET_RSS_MB, **verdict},
           "runs": {f"{kind}-{size}": runs for (size, kind), runs in samples.items()}}
    common.write_result(args.out, out, stopped)
    return 0


if __name__ == "__main__":
    sys.exit(main())
