#!/usr/bin/env python3
"""
noise.py: what background noise on the pool does to a legitimate client
(part A), and what a million failing sources cost the tracker (part B).

A. Availability under noise -- the real daemon, the documented commands.
   For each lockout-scope (knock, global, source) and each noise rate (1, 10,
   60 stray hits a minute): a fresh `twistd -n --pidfile= knockserver
   --config FILE` on 127.0.0.1 (central tcp:0, pool-size 100, the pool-range
   exactly a free block of 100 ports so every pool port is known, on-success
   /bin/true), a client made by `knocker generate`, then a noise source that
   makes full TCP connects (connect, wait for the server's close, close) to
   random pool ports from ~1000 distinct source addresses 127.0.1.1 ..
   127.0.4.238 (never 127.0.0.1), Poisson at the given rate, while the
   client runs `knocker knock --config CLIENTCONF` from 127.0.0.1 every ~2 s
   (uniform 1.5-2.5 s real).  Reported: the share of knocks that exit 0
   (OPEN) per (scope, rate), their exit statuses, the median time of an open
   knock, and from the audit log the lockouts started (global / source) and
   the noise hits the daemon saw.

   Time is compressed (default 10x): lockout 6 s, lockout-memory and
   lockout-max 360 s, and the noise rates x10 (so "1/min" is 10/min of real
   time).  The product lockout x rate is what decides availability: with
   `global`, a renewal argument gives 1 / (1 + rate x lockout) of the time
   free (the "model" column; a lockout is not extended by hits during it).
   Noise starts one (compressed) lockout before the first knock, so the
   first knocks do not all find the server fresh.

B. Per-source state at 10^6 addresses -- in process, the pure tracker.
   1,000,000 hits on a pool port from distinct addresses with no slot open
   (each a stray hit: a failure) into `Tracker(Clock(), Policy(scope=...))`,
   once from distinct IPv4 addresses (from 1.0.0.0 upwards) and once from
   distinct IPv6 /64s (2001:db8:H:L::1), with scope `knock` (each failure a
   source lockout) and `global` (one lockout; every later hit LOCKED).  The
   task.Clock advances 1 s every 10,000 failures (10,000 failures/s).  Each
   (family, scope) runs in a fresh child process so its RSS is its own.
   Reported: us per hit (median, p95, max of batches of 10,000, and overall),
   VmRSS before, after the first 100,000 and after all (and VmHWM), the
   sources remembered (bounded by tracker.MAX_SOURCES = 100,000) and the
   forget heap, and the cost of a hit from an address already locked out
   (the LOCKED fast path): the same address repeated, and cycling over
   10,000 locked sources.

Usage (the venv's Python):

    .venv/bin/python bench/noise.py                 # both parts, ~6 min
    .venv/bin/python bench/noise.py --part b        # part B only, ~1 min
    .venv/bin/python bench/noise.py --quick         # smoke run, seconds
    .venv/bin/python bench/noise.py --json OUT.json

Exit status 1 when the harness failed (a daemon did not start, a knock
count or a check came out wrong, the source bound was exceeded), else 0;
the availability figures themselves never fail the run.
"""

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import knockerlib  # noqa: E402
from knockerlib import common  # noqa: E402

SCOPES = ("knock", "global", "source")
RATES = (1, 10, 60)  # stray hits a (simulated) minute
LOCKOUT = 60.0  # the defaults the compression scales
LOCKOUT_MEMORY = 3600.0
LOCKOUT_MAX = 3600.0
POOL_SIZE = 100
CLIENT = "127.0.0.1"


def noise_addresses(count):
    """127.0.1.1 upwards, 254 to a /24: distinct sources, never 127.0.0.1."""
    return ["127.0.%d.%d" % (1 + i // 254, 1 + i % 254) for i in range(count)]


# --------------------------------------------------------------------------
# Part A: the real daemon under noise

class Noise(threading.Thread):
    """Poisson stray connects (rate per real second) to random pool ports
    from random noise addresses until stopped.  Each is a full TCP connect:
    connect, wait for the server's close (the daemon accepts, records, closes),
    close.  One at a time; when a connect runs late the next one is not made
    up for (the schedule is re-anchored), so the rate is an upper bound."""

    def __init__(self, rate, ports, addresses, rng):
        super().__init__(daemon=True)
        self.rate, self.ports, self.addresses, self.rng = rate, ports, addresses, rng
        self.stopping = threading.Event()
        self.sent = self.completed = self.errors = 0
        self.error_kinds = {}
        self.used = set()

    def run(self):
        next_at = time.monotonic() + self.rng.expovariate(self.rate)
        while not self.stopping.is_set():
            wait = next_at - time.monotonic()
            if wait > 0 and self.stopping.wait(wait):
                break
            self.one()
            next_at = max(next_at, time.monotonic() - 0.05) + self.rng.expovariate(self.rate)

    def one(self):
        source = self.rng.choice(self.addresses)
        port = self.rng.choice(self.ports)
        self.sent += 1
        self.used.add(source)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(2.0)
            sock.bind((source, 0))
            sock.connect(("127.0.0.1", port))
            while sock.recv(64):
                pass
            self.completed += 1
        except OSError as error:
            self.errors += 1
            kind = type(error).__name__
            self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1
        finally:
            sock.close()

    def stop(self):
        self.stopping.set()
        self.join(10)


def knocker_bin():
    return os.path.join(os.path.dirname(sys.executable), "knocker")


def start_cell(scope, compress, workdir):
    """Config, client file, daemon; returns (daemon, client config, pool ports)."""
    low, high = knockerlib.free_range(POOL_SIZE)
    state = os.path.join(workdir, "state")
    audit = os.path.join(workdir, "audit.log")
    server_conf = knockerlib.write_config(
        os.path.join(workdir, "knockserver.conf"),
        central="tcp:0:interface=127.0.0.1", interface="127.0.0.1", state_dir=state,
        pool_size=POOL_SIZE, pool_range=f"{low}-{high}", on_success="/bin/true",
        audit_log=audit, lockout=LOCKOUT / compress, lockout_scope=scope,
        lockout_memory=LOCKOUT_MEMORY / compress, lockout_max=LOCKOUT_MAX / compress)
    knock_file = os.path.join(workdir, "bench.knock")
    r = subprocess.run([knocker_bin(), "generate", "bench", "--config", server_conf,
                        "-o", knock_file], env=knockerlib.env(), cwd=workdir,
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"knocker generate exited {r.returncode}: {r.stdout}{r.stderr}")
    daemon = knockerlib.KnockerDaemon(server_conf, audit, workdir)
    daemon.wait_ready(timeout=30)
    if daemon.start_event.get("pool_size", POOL_SIZE) != POOL_SIZE:
        daemon.stop()
        raise RuntimeError(f"daemon reports pool_size {daemon.start_event.get('pool_size')}")
    client_conf = os.path.join(workdir, "knockclient.conf")
    with open(client_conf, "w") as handle:
        handle.write(f"[client]\nserver = tcp:host=127.0.0.1:port={daemon.central_port}\n"
                     f"knock-file = {knock_file}\nlog-file = {workdir}/client.log\n")
    return daemon, client_conf, list(range(low, high + 1))


def knock(client_conf, workdir):
    """One `knocker knock --config FILE`: (exit status or None, seconds, stderr tail)."""
    t0 = time.monotonic()
    p = subprocess.Popen([knocker_bin(), "knock", "--config", client_conf],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, env=knockerlib.env(), cwd=workdir)
    try:
        _, err = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
        return None, time.monotonic() - t0, "timed out after 30 s"
    return p.returncode, time.monotonic() - t0, err.decode(errors="replace").strip()[-200:]


def audit_summary(path, noise_set):
    """Lockouts started (by scope, and any of the client's address), hits by
    outcome, split into noise and client hits."""
    from knocker.daemon.audit import read_audit

    out = {"lockouts_global": 0, "lockouts_source": 0, "client_source_lockouts": 0,
           "noise_hits": 0, "client_hits": 0, "hit_outcomes": {}, "global_reasons": {},
           "source_steps": {}, "events": {}}
    for event in read_audit(path):
        kind = event.get("event")
        out["events"][kind] = out["events"].get(kind, 0) + 1
        if kind == "lockout":
            if event.get("scope") == "global":
                out["lockouts_global"] += 1
                reason = f"{event.get('reason')} from {'noise' if event.get('ip') in noise_set else event.get('ip')}"
                out["global_reasons"][reason] = out["global_reasons"].get(reason, 0) + 1
            else:
                out["lockouts_source"] += 1
                step = str(event.get("step"))
                out["source_steps"][step] = out["source_steps"].get(step, 0) + 1
                if event.get("ip") == CLIENT:
                    out["client_source_lockouts"] += 1
        elif kind == "hit":
            if event.get("ip") in noise_set:
                out["noise_hits"] += 1
                outcome = str(event.get("outcome"))
                out["hit_outcomes"][outcome] = out["hit_outcomes"].get(outcome, 0) + 1
            elif event.get("ip") == CLIENT:
                out["client_hits"] += 1
    return out


def model_share(scope, rate_per_min):
    """Share of time a knock finds the door open, noise alone (global: a
    renewal of Exp(rate) free time then one lockout of 60 s)."""
    if scope == "global":
        return 1.0 / (1.0 + rate_per_min * LOCKOUT / 60.0)
    return 1.0


def run_cell(scope, rate, args, rng, keep):
    workdir = tempfile.mkdtemp(prefix=f"noise-{scope}-{rate}-")
    real_rate = rate * args.compress / 60.0  # stray hits a real second
    addresses = noise_addresses(args.noise_sources)
    cell = {"scope": scope, "rate_per_min": rate, "real_rate_per_s": real_rate,
            "lockout_real_s": LOCKOUT / args.compress, "knocks": [], "workdir": workdir}
    daemon = noise = None
    t_start = time.monotonic()
    try:
        daemon, client_conf, ports = start_cell(scope, args.compress, workdir)
        noise = Noise(real_rate, ports, addresses, random.Random(rng.random()))
        noise.start()
        t_noise = time.monotonic()
        time.sleep(args.warmup if args.warmup is not None else LOCKOUT / args.compress)
        for n in range(args.knocks):
            if n:
                time.sleep(rng.uniform(*args.gap))
            if not daemon.proc.alive():
                raise RuntimeError("daemon exited:\n" + daemon.proc.log_text()[-2000:])
            status, seconds, err = knock(client_conf, workdir)
            cell["knocks"].append({"t": round(time.monotonic() - t_noise, 3), "status": status,
                                   "ms": round(seconds * 1000, 1),
                                   **({"stderr": err} if status != 0 else {})})
        noise.stop()
        cell["noise_real_s"] = round(time.monotonic() - t_noise, 2)
    except Exception as error:  # noqa: BLE001 -- reported, the run goes on
        cell["error"] = f"{type(error).__name__}: {error}"
    finally:
        if noise is not None and noise.is_alive():
            noise.stop()
        if daemon is not None:
            time.sleep(0.2)  # the last hits reach the audit log
            daemon.stop()
    if noise is not None:
        cell.update(noise_sent=noise.sent, noise_completed=noise.completed,
                    noise_errors=noise.errors, noise_error_kinds=noise.error_kinds,
                    noise_sources_used=len(noise.used))
    if os.path.exists(os.path.join(workdir, "audit.log")):
        cell["audit"] = audit_summary(os.path.join(workdir, "audit.log"), set(addresses))
    statuses = [k["status"] for k in cell["knocks"]]
    cell["n"] = len(statuses)
    cell["open"] = statuses.count(0)
    cell["share_open"] = cell["open"] / len(statuses) if statuses else float("nan")
    cell["model_share"] = model_share(scope, rate)
    times = [k["ms"] for k in cell["knocks"] if k["status"] == 0]
    cell["open_ms_p50"] = common.median(times) if times else None
    cell["statuses"] = {str(s): statuses.count(s) for s in sorted(set(statuses), key=str)}
    cell["cell_s"] = round(time.monotonic() - t_start, 1)
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
        del cell["workdir"]
    return cell


STATUS_NAMES = {0: "OPEN", 3: "unreachable", 4: "DENIED", 5: "LOCKED", 6: "BUSY",
                8: "wrong-port", 9: "timeout", 10: "locked-out", 11: "action-failed",
                12: "ERROR", 13: "protocol", 14: "no-verdict", None: "hung"}


def part_a(args, rng):
    print(f"A. availability under noise: time compressed {args.compress:g}x: lockout "
          f"{LOCKOUT / args.compress:g} s, lockout-memory/max {LOCKOUT_MEMORY / args.compress:g} s, "
          f"rates x{args.compress:g}; the ratio lockout x rate is what decides availability.")
    print(f"   {args.knocks} knocks a cell, every {args.gap[0]:g}-{args.gap[1]:g} s real, after "
          f"{args.warmup if args.warmup is not None else LOCKOUT / args.compress:g} s of noise; "
          f"noise from {args.noise_sources} addresses 127.0.1.1.., client from {CLIENT}.",
          flush=True)
    cells = []
    for scope in args.scopes:
        for rate in args.rates:
            cell = run_cell(scope, rate, args, rng, args.keep)
            cells.append(cell)
            a = cell.get("audit", {})
            print(f"   {scope:6} {rate:3}/min: {cell['open']}/{cell['n']} open, "
                  f"{cell.get('noise_completed', 0)} stray connects, "
                  f"lockouts global {a.get('lockouts_global', 0)} source "
                  f"{a.get('lockouts_source', 0)} ({cell['cell_s']} s)"
                  + (f"  ERROR {cell['error']}" if "error" in cell else ""), flush=True)
    rows = []
    for c in cells:
        a = c.get("audit", {})
        other = {STATUS_NAMES.get(int(s) if s != "None" else None, s): n
                 for s, n in c["statuses"].items() if s != "0"}
        rows.append({
            "scope": c["scope"], "rate": "%d/min" % c["rate_per_min"],
            "real": "%.3g/s" % c["real_rate_per_s"],
            "open": "%d/%d" % (c["open"], c["n"]),
            "ms": "%.0f" % c["open_ms_p50"] if c["open_ms_p50"] else "-",
            "share": "%.0f%%" % (100 * c["share_open"]) if c["n"] else "-",
            "model": "%.0f%%" % (100 * c["model_share"]),
            "stray": "%d/%d" % (c.get("noise_completed", 0), c.get("noise_sent", 0)),
            "srcs": c.get("noise_sources_used", 0),
            "seen": a.get("noise_hits", "-"),
            "glob": a.get("lockouts_global", "-"), "src": a.get("lockouts_source", "-"),
            "others": " ".join(f"{k}:{v}" for k, v in other.items()) or "-"})
    print()
    common.print_table(rows, [
        ("scope", "scope"), ("rate", "noise"), ("real", "real rate"), ("open", "knocks open"),
        ("share", "share"), ("model", "model"), ("ms", "open ms p50"), ("stray", "stray done/sent"),
        ("srcs", "noise srcs"), ("seen", "audited"), ("glob", "lockouts glob"),
        ("src", "src"), ("others", "other exits")],
        title="Availability under noise (share of `knocker knock` exiting 0; model: "
              "1/(1+rate x lockout) for global, 100% otherwise)")
    print()
    return cells


# --------------------------------------------------------------------------
# Part B: the pure tracker at 10^6 failing sources

def _vm(field):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def ipv4(i):
    i += 1 << 24  # from 1.0.0.0
    return "%d.%d.%d.%d" % (i >> 24, (i >> 16) & 255, (i >> 8) & 255, i & 255)


def ipv6(i):
    return "2001:db8:%x:%x::1" % (i >> 16, i & 0xFFFF)


class NullObserver:
    def __init__(self):
        self.lockouts = 0

    def knock_completed(self, slot):
        pass

    def knock_failed(self, slot, reason):
        pass

    def lockout_started(self, lockout):
        self.lockouts += 1


def tracker_run(family, scope, total, batch):
    """One (family, scope) in this process; returns a dict (printed as JSON
    by the child)."""
    from twisted.internet.task import Clock

    from knocker.core import tracker as tr

    make = ipv4 if family == "ipv4" else ipv6
    clock = Clock()
    clock.advance(1_000_000)  # any start: lockout ends are absolute times
    observer = NullObserver()
    tracker = tr.Tracker(clock, tr.Policy(scope=scope), observer)
    hit = tracker.hit
    port = 20000
    rss_before = _vm("VmRSS")
    perf = time.perf_counter
    batch_us = []
    elapsed = 0.0
    verdicts = {}
    most_sources = 0
    rss_by_batch = []
    for b in range(total // batch):
        ips = [make(i) for i in range(b * batch, (b + 1) * batch)]
        t0 = perf()
        for ip in ips:
            hit(ip, port)
        dt = perf() - t0
        elapsed += dt
        batch_us.append(dt / batch * 1e6)
        v = hit(make(total + b), port)  # one outside the timing: the verdict kind
        verdicts[v.value] = verdicts.get(v.value, 0) + 1
        most_sources = max(most_sources, len(tracker._sources))
        rss_by_batch.append(_vm("VmRSS"))
        clock.advance(batch / 10_000)  # 10,000 failures a second
    rss_after = _vm("VmRSS")
    hwm = _vm("VmHWM")
    n = len(batch_us) * batch
    remembered = len(tracker._sources)
    in_force = len(tracker.lockouts())
    # The LOCKED fast path: hits from addresses whose lockout is in force.
    last = [make(i) for i in range(n - 10_000, n)]
    assert all(tracker.locked_for(ip) > 0 for ip in last[:100]), "last sources not locked"
    locked_cycle = []
    for _ in range(10):
        t0 = perf()
        for ip in last:
            hit(ip, port)
        locked_cycle.append((perf() - t0) / len(last) * 1e6)
    same = [last[-1]] * 10_000
    locked_same = []
    for _ in range(10):
        t0 = perf()
        for ip in same:
            hit(ip, port)
        locked_same.append((perf() - t0) / len(same) * 1e6)
    v = hit(last[-1], port).value
    return {
        "family": family, "scope": scope, "failures": n, "batch": batch,
        "us_per_hit_median": common.median(batch_us),
        "us_per_hit_p95": common.percentile(batch_us, 95),
        "us_per_hit_max": max(batch_us), "us_per_hit_overall": elapsed / n * 1e6,
        "seconds": elapsed, "batch_us": [round(x, 3) for x in batch_us],
        "rss_before_kb": rss_before, "rss_after_kb": rss_after, "vmhwm_kb": hwm,
        "rss_growth_kb": rss_after - rss_before, "rss_by_batch_kb": rss_by_batch,
        "rss_at_100k_kb": rss_by_batch[min(len(rss_by_batch), 100_000 // batch) - 1],
        "remembered_sources": remembered, "most_sources_seen": most_sources,
        "max_sources": tr.MAX_SOURCES, "forget_heap": len(tracker._forget),
        "lockouts_in_force": in_force, "lockouts_started": observer.lockouts,
        "sample_verdicts": verdicts, "locked_verdict": v,
        "locked_cycle_us_median": common.median(locked_cycle),
        "locked_same_us_median": common.median(locked_same),
    }


def part_b(args):
    print(f"B. per-source state: {args.failures:,} hits with no slot from distinct addresses "
          f"into the pure Tracker (task.Clock, +1 s per 10,000), batches of {args.batch:,}; "
          f"one child process per run.", flush=True)
    runs = []
    for family in ("ipv4", "ipv6"):
        for scope in ("knock", "global"):
            r = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--tracker-child",
                 f"{family}:{scope}:{args.failures}:{args.batch}"],
                capture_output=True, text=True, env=knockerlib.env(), timeout=knockerlib.DEADLINE_HARD)
            if r.returncode != 0:
                runs.append({"family": family, "scope": scope,
                             "error": f"child exited {r.returncode}: {r.stderr[-1500:]}"})
                print(f"   {family} {scope}: ERROR {runs[-1]['error']}", flush=True)
                continue
            runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(f"   {family} {scope}: {runs[-1]['seconds']:.1f} s", flush=True)
    ok = [r for r in runs if "error" not in r]
    rows = [{
        "run": f"{r['family']} {r['scope']}", "n": f"{r['failures']:,}",
        "med": "%.2f" % r["us_per_hit_median"], "p95": "%.2f" % r["us_per_hit_p95"],
        "max": "%.2f" % r["us_per_hit_max"], "all": "%.2f" % r["us_per_hit_overall"],
        "lockouts": f"{r['lockouts_started']:,}",
        "kept": f"{r['remembered_sources']:,}", "heap": f"{r['forget_heap']:,}",
        "before": "%.1f" % (r["rss_before_kb"] / 1024),
        "at100k": "%.1f" % (r["rss_at_100k_kb"] / 1024), "after": "%.1f" % (r["rss_after_kb"] / 1024),
        "hwm": "%.1f" % (r["vmhwm_kb"] / 1024),
        "lcyc": "%.2f" % r["locked_cycle_us_median"], "lsame": "%.2f" % r["locked_same_us_median"],
    } for r in ok]
    print()
    common.print_table(rows, [
        ("run", "run"), ("n", "hits"), ("med", "us/hit p50"), ("p95", "p95"), ("max", "max"),
        ("all", "overall"), ("lockouts", "lockouts"), ("kept", "sources kept"),
        ("heap", "forget heap"), ("before", "RSS MB before"), ("at100k", "at 100k"),
        ("after", "after"),
        ("hwm", "peak"), ("lcyc", "LOCKED us (10k srcs)"), ("lsame", "LOCKED us (1 src)")],
        title="Tracker at many failing sources (us per hit: median/p95/max of batches, "
              "overall = total time / hits; RSS of the child process)")
    print()
    return runs


def check(cells, runs, quick):
    """Harness sanity (not the figures): what makes the exit status 1."""
    problems = []
    for c in cells:
        tag = f"A {c['scope']} {c['rate_per_min']}/min"
        if "error" in c:
            problems.append(f"{tag}: {c['error']}")
        if c["n"] < (1 if quick else 10):
            problems.append(f"{tag}: only {c['n']} knocks")
        if c.get("noise_sent", 0) and not c.get("noise_completed"):
            problems.append(f"{tag}: no stray connect completed")
    for r in runs:
        tag = f"B {r['family']} {r['scope']}"
        if "error" in r:
            problems.append(f"{tag}: {r['error']}")
            continue
        if r["most_sources_seen"] > r["max_sources"]:
            problems.append(f"{tag}: {r['most_sources_seen']} sources remembered > "
                            f"MAX_SOURCES {r['max_sources']}")
        expected = r["failures"] if r["scope"] == "knock" else 1
        if r["lockouts_started"] < expected:
            problems.append(f"{tag}: {r['lockouts_started']} lockouts, expected {expected}")
        if r["locked_verdict"] != "locked":
            problems.append(f"{tag}: a locked source's hit was judged {r['locked_verdict']}")
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    ap.add_argument("--part", choices=("a", "b", "both"), default="both")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: A with scopes knock,global at 60/min, 2 knocks; "
                         "B with 110,000 hits")
    ap.add_argument("--json", metavar="OUT")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--keep", action="store_true", help="keep part A's temp dirs")
    ap.add_argument("--compress", type=float, default=10.0,
                    help="time compression of part A (lockout 60/F s, rates xF)")
    ap.add_argument("--scopes", default=",".join(SCOPES))
    ap.add_argument("--rates", default=",".join(map(str, RATES)),
                    help="stray hits a simulated minute")
    ap.add_argument("--knocks", type=int, default=12, help="knocks a cell")
    ap.add_argument("--gap", default="1.5,2.5", help="real seconds between knocks: LO,HI")
    ap.add_argument("--warmup", type=float, help="real seconds of noise before the first "
                    "knock (default: one compressed lockout)")
    ap.add_argument("--noise-sources", type=int, default=1000)
    ap.add_argument("--failures", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--tracker-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    knockerlib.check_venv()
    if args.tracker_child:
        family, scope, total, batch = args.tracker_child.split(":")
        print(json.dumps(tracker_run(family, scope, int(total), int(batch))))
        return 0
    args.scopes = [s for s in args.scopes.split(",") if s]
    args.rates = [int(r) for r in args.rates.split(",") if r]
    args.gap = tuple(float(x) for x in args.gap.split(","))
    if args.quick:
        args.scopes = [s for s in args.scopes if s in ("knock", "global")] or args.scopes[:1]
        args.rates = [max(args.rates)]
        args.knocks, args.gap, args.warmup = 2, (0.2, 0.4), 0.5
        args.failures = min(args.failures, 110_000)
    if not 50 <= args.noise_sources <= 254 * 250:
        ap.error("--noise-sources: 50 .. 63500")
    rng = random.Random(args.seed)
    t0 = time.monotonic()
    cells = part_a(args, rng) if args.part in ("a", "both") else []
    runs = part_b(args) if args.part in ("b", "both") else []
    problems = check(cells, runs, args.quick)
    for p in problems:
        print("PROBLEM: " + p)
    print(f"total {time.monotonic() - t0:.0f} s")
    if args.json:
        common.write_result(args.json, {
            "benchmark": "noise", "quick": args.quick, "seed": args.seed,
            "compress": args.compress, "lockout_real_s": LOCKOUT / args.compress,
            "machine": common.machine_info(), "availability": cells, "tracker": runs,
            "problems": problems})
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
