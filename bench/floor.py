#!/usr/bin/env python3
"""Pool-port cost: knocker's pool against a C floor, under the same flood.

The floor is bench/floor/accept_loop.c: epoll, accept, close, count - the
least any pool server can do per hit. Both targets get the same connect flood
(bench/flood.c, from 127.0.0.2-254 so the flood is "other hosts") at each
target rate, alternating floor/knocker within each repeat, and we report:

- achieved completed connections/s and connects that timed out (a target that
  falls behind fills its backlog and the kernel drops SYNs);
- the target's CPU per accepted connection (getrusage for the floor,
  /proc/PID/stat for twistd, both user+sys);
- for knocker, how many of the flood's connections its audit log records as
  hits (docs/spec.md section 7: every hit is logged).

Usage: python3 bench/floor.py [--seconds 5] [--rates 10000,0] [--repeat 3]
(rate 0 = as fast as the flood tool can go).
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import peers  # noqa: E402

SOURCES = "127.0.0.2-127.0.0.254"


def run_flood(tools, ports, rate, seconds):
    """One bounded flood; its JSON report plus the kernel's listen-queue
    overflow counters over the flood (loopback only carries our traffic)."""
    before = common.tcp_ext_counters()
    argv = [tools["flood"], "-r", str(rate), "-t", str(seconds),
            "-n", str(int((rate or 200000) * seconds) + 1),
            "-s", SOURCES, "-x", "-R", "-c", "1024"] + [str(p) for p in ports]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    rep["kernel"] = common.counter_delta(before, common.tcp_ext_counters())
    return rep


def floor_once(tools, ports, rate, seconds):
    """A fresh accept_loop per measurement, so its getrusage is this flood's."""
    proc = subprocess.Popen([tools["accept_loop"], "-t", str(seconds + 20)] + [str(p) for p in ports],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # it prints "ready" on stderr once every port listens
        said = proc.stderr.readline().strip()
        if said != "ready":
            raise RuntimeError(f"accept_loop did not start: {said or 'no word'}")
        flood = run_flood(tools, ports, rate, seconds)
        time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    target = json.loads(out.strip().splitlines()[-1])
    cpu = target["cpu_user_s"] + target["cpu_sys_s"]
    return {"flood": flood, "accepts": target["accepts"], "cpu_s": round(cpu, 3)}


SUMMARY_WAIT = 10.5


def count_hits(path, start_offset):
    """Hits the audit log accounts for: one a "hit" line, plus the counts of
    the "hits" and "hits-overflow" summaries a flood is written as."""
    n = 0
    with open(path, "rb") as f:
        f.seek(start_offset)
        for line in f:
            if b'"event":"hit"' in line:
                n += 1
            elif b'"event":"hits' in line:
                n += json.loads(line)["count"]
    return n


def knocker_once(peer, tools, ports, rate, seconds):
    audit = os.path.join(peer.workdir, "audit.log")
    offset = os.path.getsize(audit) if os.path.exists(audit) else 0
    cpu0 = peer.daemon_cpu()
    flood = run_flood(tools, ports, rate, seconds)
    # let the daemon finish what is queued: wait for its CPU to stop moving
    last = peer.daemon_cpu()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        time.sleep(0.3)
        c = peer.daemon_cpu()
        if c - last < 0.01:
            break
        last = c
    cpu = peer.daemon_cpu() - cpu0
    time.sleep(SUMMARY_WAIT)  # summaries of the flood's hits are written 10 s on
    hits = count_hits(audit, offset) if os.path.exists(audit) else None
    return {"flood": flood, "accepts": hits, "cpu_s": round(cpu, 3),
            "audit_hits": hits, "alive": peer.daemon.alive()}


def row(name, rate, res):
    f = res["flood"]
    acc = res["accepts"] or 0
    return {
        "name": name, "rate": rate or "max",
        "done_per_s": round(f["completed_per_s"]),
        "established": f["established"], "timeouts": f["timeouts"],
        "accepts": acc,
        "listen_overflows": f.get("kernel", {}).get("ListenOverflows"),
        "lost": f["established"] - acc,
        "cpu_s": res["cpu_s"],
        "cpu_us_per_hit": round(res["cpu_s"] * 1e6 / acc, 1) if acc else None,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="flood length per measurement")
    ap.add_argument("--rates", default="10000,0", help="target conn/s list; 0 = max")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--ports", type=int, default=100, help="pool / floor port count")
    ap.add_argument("--daemon-nofile", type=int,
                    help="soft RLIMIT_NOFILE for the knocker daemon (e.g. 1024)")
    ap.add_argument("--out", default=os.path.join(common.RESULTS, "floor.json"))
    args = ap.parse_args()
    common.Daemon.nofile = args.daemon_nofile

    tools = common.ensure_built()
    rates = [int(r) for r in args.rates.split(",")]
    root = tempfile.mkdtemp(prefix="knocker-floor-")
    knocker = peers.Knocker(tools, pool_size=args.ports)
    result = {"machine": common.machine_info(), "seconds": args.seconds, "sources": SOURCES,
              "daemon_nofile": args.daemon_nofile,
              "runs": []}
    try:
        # Below the ephemeral range: a connection made meanwhile (the
        # flood's, another run's) could take a port of the block as its
        # own, and the listener's bind would fail.
        floor_ports = common.free_port_block(args.ports, lo=20000, hi=32000, contiguous=True)
        knocker_ports = None
        if knocker.skip_reason:
            print("knocker: skipped:", knocker.skip_reason)
            result["knocker_skipped"] = knocker.skip_reason
        else:
            wd = os.path.join(root, "knocker")
            os.makedirs(wd)
            knocker.setup(wd)
            knocker_ports = knocker.pool_ports()
            print("knocker pool: %d ports known from the knock file" % len(knocker_ports))
        for rep in range(args.repeat):
            for rate in rates:
                targets = ["floor"] + (["knocker"] if knocker_ports else [])
                random.shuffle(targets)
                for t in targets:
                    if t == "floor":
                        res = floor_once(tools, floor_ports, rate, args.seconds)
                    else:
                        res = knocker_once(knocker, tools, knocker_ports, rate, args.seconds)
                    r = row(t, rate, res)
                    r["repeat"] = rep
                    r["raw"] = res
                    result["runs"].append(r)
                    print("  %s rate=%s: %s/s done, %s timeouts, %s established, %s seen, "
                          "%s listen overflows, cpu %.2fs (%s us/hit)"
                          % (t, r["rate"], r["done_per_s"], r["timeouts"], r["established"],
                             r["accepts"], r["listen_overflows"], r["cpu_s"], r["cpu_us_per_hit"]))
                    time.sleep(random.uniform(0.5, 1.0))
    finally:
        knocker.teardown()
        shutil.rmtree(root, ignore_errors=True)

    # medians per (target, rate)
    summary = []
    for t in ("floor", "knocker"):
        for rate in rates:
            rs = [r for r in result["runs"] if r["name"] == t and r["rate"] == (rate or "max")]
            if not rs:
                continue
            med = lambda k, rs=rs: common.median([r[k] for r in rs if r[k] is not None]) \
                if any(r[k] is not None for r in rs) else None  # noqa: E731
            summary.append({"name": t, "rate": rate or "max", "n": len(rs),
                            "done_per_s": round(med("done_per_s")),
                            "timeouts": med("timeouts"),
                            "lost_p50": med("lost"),
                            "cpu_us_per_hit": med("cpu_us_per_hit")})
    for s in summary:
        if s["name"] == "knocker":
            fl = [f for f in summary if f["name"] == "floor" and f["rate"] == s["rate"]]
            if fl and fl[0]["cpu_us_per_hit"] and s["cpu_us_per_hit"]:
                s["cpu_vs_floor"] = "%.1fx" % (s["cpu_us_per_hit"] / fl[0]["cpu_us_per_hit"])
    result["summary"] = summary
    common.print_table(summary, [("name", "target"), ("rate", "target/s"), ("n", "n"),
                                 ("done_per_s", "done/s p50"), ("timeouts", "timeouts p50"),
                                 ("lost_p50", "unseen p50"),
                                 ("cpu_us_per_hit", "cpu us/hit p50"),
                                 ("cpu_vs_floor", "vs floor")],
                       title="\npool port cost under a connect flood (medians)")
    result["machine"]["loadavg_end"] = common.machine_info().get("loadavg")
    common.write_json(args.out, result)
    print("\nwrote", args.out)


if __name__ == "__main__":
    main()
