#!/usr/bin/env python3
"""knock_config.py: the time of `knocker knock --config FILE`, tree against tree.

What it measures: wall time from just before spawning
`VENV/bin/knocker knock --config CLIENTCONF` to its exit (status 0, OPEN),
against a real `twistd -n --pidfile= knockserver --config SERVERCONF` daemon
on 127.0.0.1 -- the command users actually type, with a client config like
etc/knockclient.conf and its log-file ON.  Beside it, `VENV/bin/python -c pass`
from the same venv: the interpreter's start-up, the floor no knock can beat.
A knock is start-up bound (most of it is the interpreter and imports), so
"p50 - floor" is the part a change to knocker itself can move.  Beside each
wall time, the CPU the process used (user + system, from getrusage of the
reaped child): it leaves out every wait, so on a shared machine, where the
wall time's spread hides a change of a few tenths of a millisecond, it
still shows what a change did to the client's own work.

Each --tree is a venv (give its bin/python) holding a normal (not editable)
install of some knocker checkout; each gets its own daemon, temp dir, server
config (central, interface, state-dir, lockout-scope = source, on-success)
and `knocker generate` client.  on-success defaults to /bin/true, a real
program like etc/scripts/nft-open but cheap; `--on-success builtin` leaves it
unset, and then the daemon's built-in action (`python -m knocker.logaction`,
a second interpreter start-up) adds 15-25 ms to every knock.
All trees are measured in ONE interleaved run: every round runs each entry
once in a freshly shuffled order with a random 0.05-0.3 s pause between
runs; the first round is a discarded warm-up.  Daemons are always stopped
(SIGTERM, then SIGKILL, to the process group).  Two trees are also compared
paired: the median of the rounds' differences, with a bootstrap 95%
interval, steadier than two p50s a minute apart on a shared machine.

    python3 bench/knock_config.py --tree before=/tmp/venv-before/bin/python \
        --tree after=/tmp/venv-after/bin/python --runs 40 [--json OUT]

A file holds 1000 knocks by default, so keep --runs below about 990.
"""
import argparse
import json
import os
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


NAN = float("nan")
div = lambda x, y: x / y if y else NAN  # noqa: E731


def percentile(values, p):
    """Linear interpolation between closest ranks (p in 0..100)."""
    v = sorted(values)
    k = (len(v) - 1) * p / 100.0
    lo = int(k)
    return v[lo] + (v[min(lo + 1, len(v) - 1)] - v[lo]) * (k - lo) if v else NAN


class Tree:
    """One venv: its daemon, configs and portknock file in a temp dir."""

    def __init__(self, label, python, on_success):
        self.label, self.python, self.on_success = label, os.path.abspath(python), on_success
        self.bin = os.path.dirname(self.python)
        self.env = dict(os.environ)
        for var in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE"):  # as users run it:
            self.env.pop(var, None)  # the installed package and its bytecode
        self.dir = tempfile.mkdtemp(prefix="knock-config-%s-" % label)
        self.daemon = None

    def start(self, attempts=5):
        """Draws a pool and starts the daemon; tries again with a fresh state
        if it did not listen (a pool port or the central port taken, e.g. by
        another tree's pool drawn from the same default range)."""
        for attempt in range(attempts):
            state = os.path.join(self.dir, "state")
            shutil.rmtree(state, ignore_errors=True)
            self.port = free_port()
            self.server_conf = os.path.join(self.dir, "knockserver.conf")
            with open(self.server_conf, "w") as f:
                f.write("[server]\ncentral = tcp:%d:interface=127.0.0.1\ninterface = 127.0.0.1\n"
                        "state-dir = %s\nlockout-scope = source\nadmin =\n" % (self.port, state))
                if self.on_success != "builtin":
                    f.write("on-success = %s\n" % self.on_success)
            knock_file = os.path.join(self.dir, "bench.knock")
            r = subprocess.run([os.path.join(self.bin, "knocker"), "generate", "bench", "--config",
                                self.server_conf, "-o", knock_file, "--force"], env=self.env,
                               cwd=self.dir, capture_output=True, text=True, timeout=60)
            if r.returncode != 0:
                raise RuntimeError("%s: knocker generate failed (%s): %s%s"
                                   % (self.label, r.returncode, r.stdout, r.stderr))
            self.client_conf = os.path.join(self.dir, "knockclient.conf")
            with open(self.client_conf, "w") as f:
                f.write("[client]\nserver = tcp:host=127.0.0.1:port=%d\nknock-file = %s\n"
                        "log-file = %s\n" % (self.port, knock_file,
                                             os.path.join(self.dir, "client.log")))
            self.log_path = os.path.join(self.dir, "twistd-%d.out" % attempt)
            with open(self.log_path, "wb") as log:
                self.daemon = subprocess.Popen(
                    [os.path.join(self.bin, "twistd"), "-n", "--pidfile=", "knockserver",
                     "--config", self.server_conf], stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, env=self.env, cwd=self.dir, start_new_session=True)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and self.daemon.poll() is None:
                try:  # the pool listens before the central port does
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return
                except OSError:
                    time.sleep(0.05)
            self.stop()
        raise RuntimeError("%s: knockserver did not start after %d attempts:\n%s"
                           % (self.label, attempts, self.log_tail()))

    def log_tail(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-2000:]
        except (OSError, AttributeError):
            return ""

    def stop(self):
        p, self.daemon = self.daemon, None
        if p is None:
            return
        for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            try:
                os.killpg(p.pid, sig)  # the group: twistd and any action it started
            except (ProcessLookupError, PermissionError):
                pass
            try:  # SIGKILL follows even a clean exit: strays left in the group
                p.wait(grace)
            except subprocess.TimeoutExpired:
                pass

    def argv(self, entry):
        if entry == "knock":
            return [os.path.join(self.bin, "knocker"), "knock", "--config", self.client_conf]
        return [self.python, "-c", "pass"]


def paired(a, b, rng, resamples=2000):
    """
    The median of C{a[i] - b[i]} over the rounds, with a bootstrap 95%
    interval; C{None} when a failed run left the two unaligned.  Each
    round runs every entry once, seconds apart, so a difference within a
    round leaves out most of what moves the machine from one minute to the
    next, which a difference of two p50s keeps.
    """
    if len(a) != len(b) or not a:
        return None
    diffs = [x - y for x, y in zip(a, b)]
    medians = sorted(statistics.median(rng.choices(diffs, k=len(diffs)))
                     for _ in range(resamples))
    return {"n": len(diffs), "median": statistics.median(diffs),
            "low": medians[int(0.025 * resamples)], "high": medians[int(0.975 * resamples) - 1]}


def children_cpu():
    """CPU seconds (user + system) of every child reaped so far."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def timed(tree, entry):
    """
    C{(seconds from just before spawn to exit, CPU seconds the process
    used)}, or C{(None, reason)} on failure.  The CPU figure is far steadier
    than the wall time on a shared machine: it leaves out every wait (the
    daemon, the disk, other tenants), so it shows a change in the client's
    own work when the wall time's noise hides it.
    """
    if entry == "knock" and tree.daemon.poll() is not None:
        raise RuntimeError("%s: daemon exited:\n%s" % (tree.label, tree.log_tail()))
    cpu0 = children_cpu()
    t0 = time.perf_counter()
    p = subprocess.Popen(tree.argv(entry), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, env=tree.env, cwd=tree.dir)
    try:
        _, err = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        return None, "timeout"
    t = time.perf_counter() - t0
    if p.returncode != 0:
        return None, "exit %s: %s" % (p.returncode, err.decode(errors="replace").strip()[-300:])
    return t, children_cpu() - cpu0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tree", action="append", required=True, metavar="LABEL=VENV_PYTHON")
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--json", metavar="OUT")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--on-success", default="/bin/true", metavar="PROGRAM|builtin")
    args = ap.parse_args()
    if not all("=" in spec for spec in args.tree):
        ap.error("--tree takes LABEL=PATH_TO_VENV_PYTHON")
    rng = random.Random(args.seed)
    trees = [Tree(*spec.split("=", 1), args.on_success) for spec in args.tree]
    entries = [(t, e) for t in trees for e in ("knock", "python -c pass")]
    times = {(t.label, e): [] for t, e in entries}
    cpus = {(t.label, e): [] for t, e in entries}
    fails = {(t.label, e): [] for t, e in entries}
    try:
        for t in trees:
            t.start()
        for rnd in range(args.runs + 1):  # round 0: warm-up, discarded
            order = entries[:]
            rng.shuffle(order)
            for t, e in order:
                time.sleep(rng.uniform(0.05, 0.3))
                s, cpu = timed(t, e)
                if s is None:
                    (fails[t.label, e].append(cpu) if rnd else
                     print("warm-up %s %s failed: %s" % (t.label, e, cpu), file=sys.stderr))
                elif rnd:
                    times[t.label, e].append(s * 1000)
                    cpus[t.label, e].append(cpu * 1000)
    finally:
        for t in trees:
            t.stop()
    stats = {}
    for t, e in entries:
        v = times[t.label, e]
        stats["%s %s" % (t.label, e)] = {
            "tree": t.label, "entry": e, "python": t.python, "n": len(v),
            "failures": len(fails[t.label, e]), "failure_reasons": fails[t.label, e][:5],
            "p50_ms": percentile(v, 50), "p95_ms": percentile(v, 95),
            "min_ms": min(v, default=NAN), "max_ms": max(v, default=NAN), "samples_ms": v,
            "cpu_p50_ms": percentile(cpus[t.label, e], 50), "cpu_samples_ms": cpus[t.label, e]}
    for t in trees:
        k, f = stats[t.label + " knock"], stats[t.label + " python -c pass"]
        k["p50_minus_floor_ms"] = k["p50_ms"] - f["p50_ms"]
        k["cpu_p50_minus_floor_ms"] = k["cpu_p50_ms"] - f["cpu_p50_ms"]
    print("%-28s %4s %5s %8s %8s %8s %8s %10s %8s %10s" % (
        "entry (ms)", "n", "fail", "p50", "p95", "min", "max", "p50-floor", "CPU p50", "CPU-floor"))
    for name, s in stats.items():
        knock = "p50_minus_floor_ms" in s
        print("%-28s %4d %5d %8.2f %8.2f %8.2f %8.2f %10s %8.2f %10s" % (
            name, s["n"], s["failures"], s["p50_ms"], s["p95_ms"], s["min_ms"], s["max_ms"],
            "%.2f" % s["p50_minus_floor_ms"] if knock else "", s["cpu_p50_ms"],
            "%.2f" % s["cpu_p50_minus_floor_ms"] if knock else ""))
        for why in s["failure_reasons"]:
            print("    failed: " + why)
    ratios = []
    for j, b in enumerate(trees):  # each later tree over each earlier one
        for a in trees[:j]:
            kb, ka = stats[b.label + " knock"], stats[a.label + " knock"]
            ratios.append({"a": b.label, "b": a.label, "knock_p50": div(kb["p50_ms"], ka["p50_ms"]),
                           "minus_floor_p50": div(kb["p50_minus_floor_ms"],
                                                  ka["p50_minus_floor_ms"]),
                           "cpu_minus_floor_p50_ms": (kb["cpu_p50_minus_floor_ms"]
                                                      - ka["cpu_p50_minus_floor_ms"]),
                           "paired_ms": paired(kb["samples_ms"], ka["samples_ms"], rng),
                           "paired_cpu_ms": paired(kb["cpu_samples_ms"], ka["cpu_samples_ms"],
                                                   rng)})
    if ratios:
        print("\nratios a / b of knock p50, and of knock p50 minus floor p50; the client's CPU"
              " over its floor, a - b:")
        for r in ratios:
            print("  %-12s / %-12s  knock %.3f   minus floor %.3f   CPU %+.2f ms"
                  % (r["a"], r["b"], r["knock_p50"], r["minus_floor_p50"],
                     r["cpu_minus_floor_p50_ms"]))
        print("\npaired: the median of the rounds' differences a - b (the two knocks of a"
              " round ran seconds apart), with a bootstrap 95% interval:")
        for r in ratios:
            for what, key in (("spawn to exit", "paired_ms"), ("client CPU", "paired_cpu_ms")):
                d = r[key]
                if d is None:
                    print("  %-12s - %-12s  %s: not paired (a run failed)" % (r["a"], r["b"], what))
                else:
                    print("  %-12s - %-12s  %-13s %+.2f ms [%+.2f, %+.2f], %d rounds"
                          % (r["a"], r["b"], what, d["median"], d["low"], d["high"], d["n"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": args.runs, "seed": args.seed, "on_success": args.on_success,
                       "entries": stats, "ratios": ratios}, f, indent=1)
    for t in trees:
        shutil.rmtree(t.dir, ignore_errors=True)
    return 1 if any(fails.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
