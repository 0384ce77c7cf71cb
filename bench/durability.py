#!/usr/bin/env python3
"""
Durability cost: what committing the burn (SQLite WAL, synchronous=FULL,
so an fsync per commit) before every GRANT costs.

(a) Raw Store.burn() calls per second, in this process, with the state on
    the state disk (/var/tmp, the same filesystem as /tmp and the repo) and
    on /dev/shm (tmpfs, where fsync is free), plus two contrasts on the
    disk: the same Store with synchronous=NORMAL (no fsync at commit in WAL
    mode: what the guarantee would cost to drop), and a bare
    pwrite()+fdatasync() of one line in place (the device's flush floor).
(b) Full HELLO -> CHALLENGE -> PROOF -> GRANT exchanges per second over
    loopback against the real daemon (twistd -n knockserver), state on the
    disk vs on /dev/shm, from 1 client thread (back to back: latency-bound)
    and from 4 (the daemon saturated: its reactor blocks in the commit, so
    this is its grant capacity).  Each exchange closes after GRANT (the knock
    is abandoned; the number stays burned).  Daemon CPU per grant from
    /proc/PID/stat.

Every configuration is measured in short windows that alternate in
shuffled order, repeated; medians of the windows are reported.

Usage: .venv/bin/python bench/durability.py [--rounds 5] [--window 1.0] [--quick]
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

DISK_BASE = "/var/tmp"
SHM_BASE = "/dev/shm"
MAX_PER_WINDOW = 20000  # a count bound on every loop, whatever the window


def fs_of(path):
    """'ext4 on /dev/vda' for the filesystem holding `path`."""
    best = ("", "?", "?")
    try:
        with open("/proc/mounts") as handle:
            for line in handle:
                dev, mnt, fstype = line.split()[:3]
                if (path + "/").startswith(mnt.rstrip("/") + "/") and len(mnt) >= len(best[0]):
                    best = (mnt, dev, fstype)
    except OSError:
        pass
    return "%s on %s (%s)" % (best[2], best[1], best[0])


# (a) raw calls ------------------------------------------------------------

class RawStore:
    def __init__(self, base, synchronous=None):
        from knocker.state.sqlite import SQLiteStore

        self.dir = tempfile.mkdtemp(prefix="knocker-durability-", dir=base)
        self.store = SQLiteStore(self.dir)
        if synchronous:
            # Contrast only: knocker never does this.
            self.store._db.execute("PRAGMA synchronous=%s" % synchronous)
        self.store.register("bench", 1_000_000, b"\0" * 32)

    def op(self):
        return self.store.burn("bench")

    def close(self):
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class RawFsync:
    """The device's flush floor: rewrite one line in place (no size or
    metadata change, like a WAL frame in a reused WAL) and fdatasync it,
    the call SQLite makes on Linux."""

    def __init__(self, base):
        self.dir = tempfile.mkdtemp(prefix="knocker-durability-", dir=base)
        self.fd = os.open(os.path.join(self.dir, "f"), os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(self.fd, b"\0" * 4096)
        os.fsync(self.fd)

    def op(self):
        os.pwrite(self.fd, b"burn bench 123\n", 0)
        os.fdatasync(self.fd)

    def close(self):
        os.close(self.fd)
        shutil.rmtree(self.dir, ignore_errors=True)


def raw_window(target, seconds):
    lat = []
    end = time.perf_counter() + seconds
    t_start = time.perf_counter()
    while len(lat) < MAX_PER_WINDOW:
        t0 = time.perf_counter()
        target.op()
        t1 = time.perf_counter()
        lat.append(t1 - t0)
        if t1 >= end:
            break
    return len(lat) / (time.perf_counter() - t_start), lat


# (b) the daemon ------------------------------------------------------------

def start_daemon(base, knocks, root, preferred):
    from knocker.admin.clients import generate_client
    from knocker.core.knockfile import parse_knockfile
    from knocker.core.serverconfig import parse_server_config
    from knocker.files import read_private

    low, high = knockerlib.free_range(100, preferred=preferred)
    workdir = tempfile.mkdtemp(prefix="daemon-", dir=root)
    state = tempfile.mkdtemp(prefix="knocker-durability-state-", dir=base)
    audit = os.path.join(workdir, "audit.log")
    keys = dict(central="tcp:0:interface=127.0.0.1", interface="127.0.0.1", state_dir=state,
                pool_size=100, pool_range=f"{low}-{high}", audit_log=audit,
                lockout_scope="source", max_concurrent=100, lockout=1)
    config = knockerlib.write_config(os.path.join(workdir, "server.conf"), **keys)
    server_config = parse_server_config(overrides={k.replace("_", "-"): str(v) for k, v in keys.items()})
    out = os.path.join(workdir, "bench.knock")
    generate_client(server_config, "bench", knocks, 6, out)
    kf = parse_knockfile(read_private(out), out)
    daemon = knockerlib.KnockerDaemon(config, audit, workdir)
    daemon.wait_ready(timeout=60)
    daemon.state_dir = state
    daemon.knockfile = kf
    return daemon


def exchange_window(daemon, threads, seconds, first_source):
    """`threads` clients doing HELLO->GRANT back to back for `seconds`."""
    cpu0 = daemon.proc.cpu_seconds()
    rate, lat, errors = knockerlib.exchange_window(
        [daemon], threads, seconds, daemon.knockfile, first_source, MAX_PER_WINDOW)
    cpu1 = daemon.proc.cpu_seconds()
    cpu_per = ((cpu1 - cpu0) / len(lat) * 1e6) if lat and cpu0 is not None and cpu1 is not None else None
    return rate, lat, errors, cpu_per


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--window", type=float, default=1.0, help="seconds per measurement window")
    ap.add_argument("--threads", default="1,4", help="client threads for (b)")
    ap.add_argument("--max-seconds", type=float, default=300.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="tiny run for the test suite")
    ap.add_argument("--out", default=os.path.join(common.RESULTS, "durability.json"))
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.window = 1, 0.2
    threads = [int(t) for t in args.threads.split(",")]
    knockerlib.check_venv()
    rng = random.Random(args.seed)
    deadline = time.monotonic() + min(args.max_seconds, knockerlib.DEADLINE_HARD)
    stopped = None

    # (a)
    raw_targets = {
        "Store.burn, disk, synchronous=FULL (knocker)": lambda: RawStore(DISK_BASE),
        "Store.burn, tmpfs, synchronous=FULL": lambda: RawStore(SHM_BASE),
        "Store.burn, disk, synchronous=NORMAL (contrast)": lambda: RawStore(DISK_BASE, "NORMAL"),
        "pwrite+fdatasync of one line, disk (floor)": lambda: RawFsync(DISK_BASE),
    }
    raw = {name: make() for name, make in raw_targets.items()}
    raw_samples = {name: {"rates": [], "lat": []} for name in raw}
    try:
        for name in raw:  # warm-up: first commits create the WAL
            raw_window(raw[name], 0.05)
        for _ in range(args.rounds):
            order = list(raw)
            rng.shuffle(order)
            for name in order:
                rate, lat = raw_window(raw[name], args.window / 2)
                raw_samples[name]["rates"].append(rate)
                raw_samples[name]["lat"].extend(lat)
            if time.monotonic() > deadline:
                stopped = "max-seconds reached in (a)"
                break
    finally:
        for target in raw.values():
            target.close()
    raw_rows = []
    for name, s in raw_samples.items():
        lat = common.summarize(s["lat"])
        raw_rows.append({"what": name, "per_s_p50": round(common.median(s["rates"])),
                         "us_p50": round(lat["p50_ms"] * 1e3, 1), "us_p95": round(lat["p95_ms"] * 1e3, 1),
                         "windows": len(s["rates"])})
    common.print_table(raw_rows, [("what", "(a) raw, in process"), ("per_s_p50", "calls/s p50"),
                                  ("us_p50", "us/call p50"), ("us_p95", "p95"), ("windows", "windows")],
                       title="Durability (a): one commit per burn; state disk %s, tmpfs %s"
                             % (fs_of(DISK_BASE), fs_of(SHM_BASE)))
    print()

    # (b)
    max_rate = 5000
    knocks = min(1_000_000, int(max_rate * args.window * args.rounds * len(threads) * 1.2) + 500)
    root = tempfile.mkdtemp(prefix="knocker-durability-", dir=DISK_BASE)
    daemons = {}
    ex_samples = {}
    try:
        daemons["disk"] = start_daemon(DISK_BASE, knocks, root, (27200, 27400))
        daemons["tmpfs"] = start_daemon(SHM_BASE, knocks, root, (27600, 27800))
        for d in daemons.values():  # warm: the server parses the file once
            exchange_window(d, 1, 0.1, 2)
        configs = [(where, t) for where in daemons for t in threads]
        ex_samples = {c: {"rates": [], "lat": [], "errors": [], "cpu": []} for c in configs}
        for _ in range(args.rounds):
            if time.monotonic() > deadline:
                stopped = "max-seconds reached in (b)"
                break
            rng.shuffle(configs)
            for where, t in configs:
                rate, lat, errors, cpu = exchange_window(daemons[where], t, args.window, 2)
                s = ex_samples[(where, t)]
                s["rates"].append(rate)
                s["lat"].extend(lat)
                s["errors"].extend(errors)
                if cpu is not None:
                    s["cpu"].append(cpu)
    finally:
        for d in daemons.values():
            d.stop()
            shutil.rmtree(d.state_dir, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
    ex_rows = []
    for (where, t), s in sorted(ex_samples.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        lat = common.summarize(s["lat"], failures=len(s["errors"]))
        ex_rows.append({"state": where, "threads": t,
                        "grants_per_s_p50": round(common.median(s["rates"])) if s["rates"] else None,
                        "latency_p50_ms": lat.get("p50_ms"), "latency_p95_ms": lat.get("p95_ms"),
                        "daemon_cpu_us_per_grant": round(common.median(s["cpu"]), 1) if s["cpu"] else None,
                        "not_granted": len(s["errors"]), "errors": s["errors"][:5],
                        "windows": len(s["rates"])})
    common.print_table(ex_rows, [("state", "(b) daemon state on"), ("threads", "clients"),
                                 ("grants_per_s_p50", "grants/s p50"),
                                 ("latency_p50_ms", "connect->GRANT p50 ms"), ("latency_p95_ms", "p95"),
                                 ("daemon_cpu_us_per_grant", "daemon CPU us/grant"),
                                 ("not_granted", "not granted")],
                       title="Durability (b): HELLO->GRANT exchanges over loopback against twistd knockserver")

    by_raw = {r["what"]: r for r in raw_rows}
    full = by_raw["Store.burn, disk, synchronous=FULL (knocker)"]
    shm = by_raw["Store.burn, tmpfs, synchronous=FULL"]
    fsync_cost_us = round(full["us_p50"] - shm["us_p50"], 1)
    by_ex = {(r["state"], r["threads"]): r for r in ex_rows}
    cost = {"fsync_us_per_burn": fsync_cost_us,
            "burn_us_disk": full["us_p50"], "burn_us_tmpfs": shm["us_p50"]}
    for t in threads:
        d, m = by_ex.get(("disk", t)), by_ex.get(("tmpfs", t))
        if d and m and d["grants_per_s_p50"] and m["grants_per_s_p50"]:
            cost["grants_per_s_disk_vs_tmpfs_%d" % t] = round(d["grants_per_s_p50"] / m["grants_per_s_p50"], 3)
            cost["latency_added_ms_%d" % t] = round(d["latency_p50_ms"] - m["latency_p50_ms"], 3)
    print("\nfsync (disk - tmpfs) per burn: %.0f us p50; grants/s disk/tmpfs: %s"
          % (fsync_cost_us, ", ".join("%s %.2f" % (k.rsplit("_", 1)[1] + " client(s)", v)
                                      for k, v in cost.items() if k.startswith("grants_per_s"))))
    out = {"name": "durability", "machine": common.machine_info(),
           "params": {"rounds": args.rounds, "window_s": args.window, "threads": threads,
                      "quick": args.quick, "disk": fs_of(DISK_BASE), "tmpfs": fs_of(SHM_BASE)},
           "raw": raw_rows, "exchanges": ex_rows, "cost": cost}
    common.write_result(args.out, out, stopped)
    return 0


if __name__ == "__main__":
    sys.exit(main())
