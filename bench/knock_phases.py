#!/usr/bin/env python3
"""Where the time of one `knocker knock --config FILE` goes, phase by phase.

Against a real `twistd -n --pidfile= knockserver` on 127.0.0.1 (started as in
knock_config.py, on-success /bin/true), with FILE = etc/knockclient.conf
pointed at it (log-file on, in the run's temp dir), three kinds of run,
interleaved in shuffled rounds with random pauses:

  plain      `VENV/bin/knocker knock --config FILE`, spawn to exit
  floor      `VENV/bin/python -c pass`, spawn to exit
  phased     the same knock, run as `VENV/bin/python -c CODE` where CODE
             stamps CLOCK_MONOTONIC around each step and then calls the real
             `knocker.main.main(["knock", "--config", FILE])`, the console
             script's own call; the steps are timed by wrapping the functions
             knock_command calls (module attributes, looked up at call time;
             those of the modules the knock loads after HELLO are wrapped as
             they load), so the code path is the installed one:
               interpreter start   spawn -> first line of CODE (exec, the
                                   runtime, site and its .pth files)
               imports             knocker.main and knocker.client.command
                                   (what the console script and knock_command
                                   load up front), then config/knockfile/files
               args                parse_knock_args
               config read         load_client_config (read + parse FILE)
               file check          load_knockfile (mode 0600, header)
               hello               connect to the central port and say HELLO
                                   (knocker.client.tcp.EarlyHello)
               handshake import    the handshake and SHA-256's C extension,
                                   loaded while CHALLENGE is on its way
               challenge + proof   EarlyHello.answer: CHALLENGE waited for
                                   and read, PROOF made and sent
               driver imports      the blocking driver and the knock
                                   coroutine, loaded while the daemon checks
                                   PROOF and burns the knock
               grant wait          the driver takes the connection -> first
                                   hit (FILE.checked read and the whole-file
                                   check, `file check (whole)`, then GRANT)
               hits                first hit's connect -> last hit's close
               verdict             last hit -> OPEN read (the daemon runs
                                   on-success, then answers)
               log write           log_attempt (the JSON line, appended)
               remember checked    remember_checked (only on a first knock)
               print + return      OPEN printed, main returns
               interpreter exit    main returned -> the harness sees the exit
                                   (the process leaves with os._exit and
                                   the cycle collector is off, as in
                                   knocker.command_line)
  importtime `VENV/bin/knocker knock --config FILE` under
             PYTHONPROFILEIMPORTTIME=1: each top-level import's cumulative
             time (its own overhead inflates these; read them as shares)

    python3 bench/knock_phases.py [--runs 40] [--json OUT]
"""

import argparse
import os
import random
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import peers  # noqa: E402
from knock_config import Tree  # noqa: E402

# Runs in the measured interpreter: stamps, wrappers, then the real entry.
CODE = r'''
import gc
gc.disable()  # as knocker.command_line does for a knock
import time
_now = time.clock_gettime_ns
_M = time.CLOCK_MONOTONIC
T = [("start", _now(_M))]
def mark(name):
    T.append((name, _now(_M)))

# Modules the knock loads late (after HELLO) get their wrappers as they load,
# so the instrumented run loads what the real one loads, when it does.
import sys
import importlib.machinery as _machinery
AFTER = {}
class _Hook:
    def find_spec(self, name, path, target=None):
        if name not in AFTER:
            return None
        spec = _machinery.PathFinder.find_spec(name, path, target)
        real = spec.loader.exec_module
        def exec_module(module):
            real(module)
            AFTER[name](module)
        spec.loader.exec_module = exec_module
        return spec
sys.meta_path.insert(0, _Hook())
mark("hooked")

import knocker.main
mark("imported knocker.main")
import knocker.client.command as cmd
import knocker.client.tcp as tcp
import knocker.core.config as cfg
import knocker.core.knockfile as kf
import knocker.files
mark("imported config, knockfile, files")

def wrap(owner, attr, name):
    inner = getattr(owner, attr)
    def timed(*a, **k):
        mark(name + " <")
        try:
            return inner(*a, **k)
        finally:
            mark(name + " >")
    setattr(owner, attr, timed)

wrap(cmd, "parse_knock_args", "args")
wrap(cfg, "load_client_config", "config")
wrap(cmd, "load_knockfile", "load_knockfile")
wrap(kf.KnockFileText, "check", "whole_check")
wrap(tcp.EarlyHello, "__init__", "hello")
wrap(tcp.EarlyHello, "answer", "answer")

def knock_loaded(kn):
    wrap(kn, "log_attempt", "log")
    wrap(kn, "remember_checked", "remember")
AFTER["knocker.client.knock"] = knock_loaded

def driver_loaded(bd):
    class Driver(bd.BlockingDriver):
        async def connect(self, endpoint, timeout):
            mark("connect <")
            try:
                return await super().connect(endpoint, timeout)
            finally:
                mark("connect >")
        async def hit(self, host, port, timeout):
            mark("hit <")
            try:
                return await super().hit(host, port, timeout)
            finally:
                mark("hit >")
    bd.BlockingDriver = Driver
AFTER["knocker.client.blocking_driver"] = driver_loaded

import os
rc = knocker.main.main(["knock", "--config", sys.argv[1]])
mark("returned")
os.write(2, ("PHASES " + repr(T) + "\n").encode())
# and leaves as knocker.command_line does: no interpreter teardown
sys.stdout.flush()
sys.stderr.flush()
os._exit(rc)
'''

# The floor, split the same way: start-up to its first line, and exit.
FLOOR_CODE = ("import os, time; "
              "os.write(2, b'T %d\\n' % time.clock_gettime_ns(time.CLOCK_MONOTONIC))")

PHASES = ("interpreter start", "imports", "args", "config read", "file check", "hello",
          "handshake import", "challenge + proof", "driver imports", "grant wait",
          "file check (whole, in grant wait)", "hits",
          "verdict", "log write", "remember checked", "print + return", "interpreter exit")


def phases_of(t0, t_exit, stamps):
    """Milliseconds per phase from one phased run's stamps."""
    first, last = {}, {}
    for name, ns in stamps:
        first.setdefault(name, ns)
        last[name] = ns
    ms = lambda a, b: (b - a) / 1e6  # noqa: E731
    hits_start, hits_end = first["hit <"], last["hit >"]
    out = {
        "interpreter start": ms(t0, first["start"]),
        "imports": ms(first["hooked"], first["imported config, knockfile, files"]),
        "args": ms(first["args <"], first["args >"]),
        "config read": ms(first["config <"], first["config >"]),
        "file check": ms(first["load_knockfile <"], first["load_knockfile >"]),
        "hello": ms(first["hello <"], first["hello >"]),
        "handshake import": ms(first["hello >"], first["answer <"]),
        "challenge + proof": ms(first["answer <"], first["answer >"]),
        "driver imports": ms(first["answer >"], first["connect <"]),
        "grant wait": ms(first["connect <"], hits_start),
        "file check (whole, in grant wait)": ms(first["whole_check <"], first["whole_check >"]),
        "hits": ms(hits_start, hits_end),
        "verdict": ms(hits_end, first["log <"]),
        "log write": ms(first["log <"], first["log >"]),
        "remember checked": (ms(first["remember <"], first["remember >"])
                             if "remember <" in first else 0.0),
        "print + return": ms(last["remember >"] if "remember >" in last else first["log >"],
                             first["returned"]),
        "interpreter exit": ms(first["returned"], t_exit),
        "total": ms(t0, t_exit),
    }
    # the steps between the wrapped calls (knock_command's own lines, the
    # coroutine's set-up): what no phase above holds
    covered = sum(v for k, v in out.items()
                  if k not in ("total", "file check (whole, in grant wait)"))
    covered += ms(first["start"], first["hooked"])  # the instrument's own set-up
    out["between phases"] = out["total"] - covered
    return out


def timed(argv, env, cwd, extra_env=None):
    e = dict(env, **(extra_env or {}))
    t0 = common.now_ns()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=e, cwd=cwd)
    out, err = p.communicate(timeout=30)
    t1 = common.now_ns()
    if p.returncode != 0:
        raise RuntimeError("%s: exit %s: %s" % (argv[:3], p.returncode,
                                                err.decode(errors="replace")[-500:]))
    return t0, t1, err.decode(errors="replace")


def importtime_tops(err):
    """Top-level imports (not nested) -> cumulative µs, from -X importtime."""
    tops = {}
    for line in err.splitlines():
        if not line.startswith("import time:"):
            continue
        parts = line[len("import time:"):].split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue  # the header line
        name = parts[2][1:]  # one space after the bar, then two per level
        if not name.startswith(" "):
            tops[name.strip()] = int(parts[1])
    return tops


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--importtime-runs", type=int, default=15)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    tree = Tree("phases", common.VENV_PY, "/bin/true")
    result = {"machine": common.machine_info(), "runs": args.runs}
    samples = {"plain": [], "floor": []}
    phased, tops, floor_split = [], [], []
    try:
        tree.start()
        log = os.path.join(tree.dir, "client-log", "client.log")
        peers.write_client_conf(tree.client_conf, "tcp:host=127.0.0.1:port=%d" % tree.port,
                                os.path.join(tree.dir, "bench.knock"), log)
        knock = [os.path.join(tree.bin, "knocker"), "knock", "--config", tree.client_conf]
        kinds = ["plain", "floor", "phased", "floor-phased"] + ["importtime"] * (args.importtime_runs > 0)
        for rnd in range(args.runs + 1):  # round 0: warm-up (writes FILE.checked)
            order = kinds[:]
            rng.shuffle(order)
            for kind in order:
                time.sleep(rng.uniform(0.05, 0.3))
                if kind == "plain":
                    t0, t1, _ = timed(knock, tree.env, tree.dir)
                elif kind == "floor":
                    t0, t1, _ = timed([tree.python, "-c", "pass"], tree.env, tree.dir)
                elif kind == "floor-phased":
                    t0, t1, err = timed([tree.python, "-c", FLOOR_CODE], tree.env, tree.dir)
                    stamp = int(err.split()[1])
                    if rnd:
                        floor_split.append(((stamp - t0) / 1e6, (t1 - stamp) / 1e6))
                    continue
                elif kind == "phased":
                    t0, t1, err = timed([tree.python, "-c", CODE, tree.client_conf],
                                        tree.env, tree.dir)
                    line = next(x for x in err.splitlines() if x.startswith("PHASES "))
                    stamps = eval(line[7:], {})  # our own repr of [(str, int)]
                    if rnd:
                        phased.append(phases_of(t0, t1, stamps))
                    continue
                else:
                    if rnd and len(tops) < args.importtime_runs:
                        _, _, err = timed(knock, tree.env, tree.dir,
                                          {"PYTHONPROFILEIMPORTTIME": "1"})
                        tops.append(importtime_tops(err))
                    continue
                if rnd:
                    samples[kind].append((t1 - t0) / 1e6)
    finally:
        tree.stop()
    med = common.median
    rows = []
    for name in PHASES + ("between phases", "total"):
        v = [p[name] for p in phased]
        rows.append({"phase": name, "p50": med(v), "p95": common.percentile(v, 95)})
    result["phases_ms"] = {r["phase"]: {"p50": round(r["p50"], 3), "p95": round(r["p95"], 3)}
                           for r in rows}
    result["plain_knock_ms"] = {"p50": med(samples["plain"]),
                                "p95": common.percentile(samples["plain"], 95)}
    result["floor_ms"] = {"p50": med(samples["floor"]),
                          "p95": common.percentile(samples["floor"], 95)}
    result["floor_split_ms_p50"] = {
        "interpreter start": med([a for a, _ in floor_split]),
        "interpreter exit": med([b for _, b in floor_split])}
    names = sorted({n for t in tops for n in t}, key=lambda n: -med([t.get(n, 0) for t in tops]))
    result["importtime_top_us_p50"] = {n: med([t.get(n, 0) for t in tops]) for n in names}
    common.print_table(rows, [("phase", "phase of knocker knock --config"), ("p50", "p50 ms"),
                              ("p95", "p95 ms")],
                       title="phased runs (n=%d); 'between phases' is what no wrapper covers"
                       % len(phased))
    print("\nplain knocker knock --config: p50 %.2f ms, p95 %.2f ms;  python -c pass: p50 %.2f,"
          " p95 %.2f  (n=%d each)" % (result["plain_knock_ms"]["p50"],
                                      result["plain_knock_ms"]["p95"], result["floor_ms"]["p50"],
                                      result["floor_ms"]["p95"], len(samples["plain"])))
    print("python -c pass split the same way (p50): interpreter start %.2f ms, "
          "interpreter exit %.2f ms" % (result["floor_split_ms_p50"]["interpreter start"],
                                        result["floor_split_ms_p50"]["interpreter exit"]))
    print("\n-X importtime, top-level imports of one knock, cumulative µs p50 (n=%d):" % len(tops))
    for n in names:
        if result["importtime_top_us_p50"][n] >= 100:
            print("  %-40s %7.0f" % (n, result["importtime_top_us_p50"][n]))
    if args.json:
        common.write_json(args.json, result)


if __name__ == "__main__":
    main()
