#!/usr/bin/env python3
"""
A fleet's cost (docs/fleet.md): the state in PostgreSQL against SQLite.

(a) HELLO -> GRANT exchanges over loopback against real twistd knockserver
    daemons, each exchange closed after GRANT (the knock is abandoned, the
    number stays burned): one daemon on SQLite (state on /var/tmp), one
    gateway on PostgreSQL, and two gateways (127.0.0.2 and 127.0.0.3) on
    the same database with the clients split between them.  Grants/s and
    connect -> GRANT p50/p95, from 1 and from 4 client threads, in short
    windows that alternate in shuffled order.
(b) Lockout propagation: a failed knock on gateway 1 locks the whole server
    out; gateway 2 is asked back to back until it answers LOCKED.  Seconds
    from the failing hit to that LOCKED, p50/p95 (lockout = 1 s, so each
    run starts clean).
(c) Time to open through a fleet: from just before spawning
    `VENV/bin/knocker knock --config FILE` (a client config like
    etc/knockclient.conf, its log-file on) to its exit with OPEN (status 0),
    p50/p95, for: one daemon on SQLite; the two gateways on PostgreSQL, the
    config's `server` listing both, which one first alternating round by
    round; the same with a dead endpoint (a closed port on 127.0.0.4) listed
    first, so every knock fails over; beside `VENV/bin/python -c pass`, the
    floor.  Interleaved: every round runs each entry once in a fresh
    shuffled order, a random 0.05-0.3 s pause before each run, round 0 a
    discarded warm-up.  The client is the venv's installed knocker (as users
    run it: no PYTHONPATH), so reinstall after changing knocker/.

The cluster is a throwaway one (tests/helpers/postgres.py: Debian's
postgresql, initdb/pg_ctl as postgres, unix socket only, fsync on), so this
needs root.  Usage: .venv/bin/python bench/fleet.py [--rounds 5] [--window 1.0]
[--lockout-runs 20] [--knock-rounds 30] [--quick]
"""

import argparse
import os
import random
import shutil
import socket
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import knockerlib  # noqa: E402
from knockerlib import common  # noqa: E402

DISK_BASE = "/var/tmp"
MAX_PER_WINDOW = 20000
HOSTS = ("127.0.0.2", "127.0.0.3")
DEAD_HOST = "127.0.0.4"  # nothing listens there: a gateway that is down
KNOCK_ENTRIES = ("python -c pass", "SQLite, 1 daemon", "PostgreSQL, 2 gateways",
                 "PostgreSQL, 2 gateways, first dead")


def start(workdir, name, knock_host, keys):
    home = os.path.join(workdir, name)
    os.mkdir(home)
    audit = os.path.join(home, "audit.log")
    config = knockerlib.write_config(os.path.join(home, "server.conf"), audit_log=audit, **keys)
    daemon = knockerlib.KnockerDaemon(config, audit, home)
    daemon.wait_ready(timeout=60)
    daemon.host = knock_host
    return daemon


def lockout_run(first, second, knockfile, pool, limit=5.0):
    """Seconds from a wrong-port hit on `first` to LOCKED from `second`."""
    from knocker.core import handshake as hs

    machine = hs.ClientHandshake(knockfile)
    sock = socket.create_connection((first.host, first.central_port), timeout=5,
                                    source_address=("127.0.0.1", 0))
    reader = sock.makefile("rb")
    try:
        sock.sendall(machine.hello().line)
        granted = None
        while granted is None:
            action = machine.receive(reader.readline().rstrip(b"\n"))
            if isinstance(action, hs.SendLine):
                sock.sendall(action.line)
            elif isinstance(action, hs.KnockPorts):
                granted = action
            else:
                return None
        wrong = next(p for p in pool if p != granted.ports[0])
        started = time.perf_counter()
        try:
            socket.create_connection((first.host, wrong), timeout=2,
                                     source_address=("127.0.0.1", 0)).close()
        except OSError:
            pass
    finally:
        sock.close()
    source = knockerlib.Source(first=300, count=100)
    while time.perf_counter() - started < limit:
        _, _, kind, _ = knockerlib.grant_exchange(second.central_port, knockfile,
                                                  source=source.next(), host=second.host)
        if kind == "Locked":
            return time.perf_counter() - started
    return None


def dead_port(host):
    """A port on C{host} that nothing listens on (bound, then let go)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def endpoint(host, port):
    return f"tcp:host={host}:port={port}"


def client_config(path, servers, knock_file, log_file):
    """A client config as etc/knockclient.conf ships it, pointed at this run."""
    with open(path, "w") as handle:
        handle.write("[client]\nserver = %s\nknock-file = %s\nlog-file = %s\ntimeout = 60\n"
                     "connect-timeout = 5\nbusy-retries = 3\n"
                     % (" ".join(servers), knock_file, log_file))
    return path


def opened_on(tails, limit=2.0):
    """Which daemon logged the knock's C{open} (read after the timed span:
    the client may exit before its daemon's audit line is written)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        for name, tail in tails.items():
            if any(e.get("event") == "open" and e.get("client") == "knock" for e in tail.events()):
                return name
        time.sleep(0.005)
    return None


def knock_runs(rng, rounds, root, knock_files, daemons):
    """(c): time to open through the fleet, interleaved with the floor."""
    bindir = os.path.dirname(sys.executable)
    env = dict(os.environ)
    for var in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE"):  # as users run it
        env.pop(var, None)
    home = os.path.join(root, "knock")
    os.mkdir(home)
    log_file = os.path.join(home, "client.log")
    gateways = [endpoint(daemons[g].host, daemons[g].central_port) for g in ("gw1", "gw2")]
    dead = endpoint(DEAD_HOST, dead_port(DEAD_HOST))
    configs = {"SQLite, 1 daemon": [[endpoint("127.0.0.1", daemons["sqlite"].central_port)]],
               "PostgreSQL, 2 gateways": [gateways, gateways[::-1]],
               "PostgreSQL, 2 gateways, first dead": [[dead] + gateways, [dead] + gateways[::-1]]}
    argv = {"python -c pass": [[sys.executable, "-c", "pass"]]}
    for name, variants in configs.items():
        kf = knock_files["sqlite" if name.startswith("SQLite") else "postgres"]
        argv[name] = []
        for n, servers in enumerate(variants):
            path = client_config(os.path.join(home, f"{len(argv)}-{n}.conf"), servers, kf, log_file)
            argv[name].append([os.path.join(bindir, "knocker"), "knock", "--config", path])
    tails = {name: knockerlib.AuditTail(d.audit_path) for name, d in daemons.items()}
    for tail in tails.values():
        tail.events()  # (a) and (b)'s lines: not this run's
    times = {e: [] for e in KNOCK_ENTRIES}
    fails = {e: [] for e in KNOCK_ENTRIES}
    opened_by = {e: {} for e in KNOCK_ENTRIES}
    order = list(KNOCK_ENTRIES)
    for rnd in range(rounds + 1):  # round 0: warm-up, discarded
        rng.shuffle(order)
        for entry in order:
            common.random_pause(0.05, 0.3, rng)
            variants = argv[entry]
            t0, t1, status, output = common.run_timed(variants[rnd % len(variants)], 30.0,
                                                      env, home)
            seconds, why = (t1 - t0) / 1e9, None
            if status != 0:  # None: killed after 30 s
                why = "exit %s: %s" % (status, output.strip()[-300:])
            if entry != "python -c pass" and why is None:
                where = opened_on(tails)
                if rnd:
                    opened_by[entry][where] = opened_by[entry].get(where, 0) + 1
            if rnd == 0:
                if why:
                    print(f"warm-up {entry} failed: {why}", file=sys.stderr)
            elif why:
                fails[entry].append(why)
            else:
                times[entry].append(seconds)
    floor = common.summarize(times["python -c pass"])
    rows = []
    for entry in KNOCK_ENTRIES:
        s = common.summarize(times[entry], failures=len(fails[entry]))
        rows.append({"entry": entry, "n": s["n"], "failures": s["failures"],
                     "p50_ms": s.get("p50_ms"), "p95_ms": s.get("p95_ms"),
                     "min_ms": s.get("min_ms"), "max_ms": s.get("max_ms"),
                     "p50_minus_floor_ms": round(s["p50_ms"] - floor["p50_ms"], 3)
                     if s.get("p50_ms") is not None and floor.get("p50_ms") is not None else None,
                     "opened_by": opened_by[entry] if entry != "python -c pass" else None,
                     "failure_reasons": fails[entry][:5],
                     "samples_ms": [round(t * 1000, 3) for t in times[entry]]})
    return rows, {"gateways": gateways, "dead": dead}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--window", type=float, default=1.0)
    ap.add_argument("--threads", default="1,4")
    ap.add_argument("--lockout-runs", type=int, default=20)
    ap.add_argument("--knock-rounds", type=int, default=30,
                    help="(c) timed rounds of knocker knock --config (plus one warm-up)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="tiny run for the test suite")
    ap.add_argument("--out", default=os.path.join(common.RESULTS, "fleet.json"))
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.window, args.lockout_runs, args.knock_rounds = 1, 0.3, 3, 3
    threads = [int(t) for t in args.threads.split(",")]
    knockerlib.check_venv()
    from tests.helpers import postgres

    reason = postgres.skip_reason()
    if reason:
        raise SystemExit(f"bench/fleet.py: {reason}")
    from knocker.admin.clients import generate_client
    from knocker.core.knockfile import parse_knockfile
    from knocker.core.serverconfig import parse_server_config
    from knocker.files import read_private

    rng = random.Random(args.seed)
    knocks = min(1_000_000, int(3000 * args.window * args.rounds * len(threads) * 3 * 1.2) + 500)
    root = tempfile.mkdtemp(prefix="knocker-fleet-bench-", dir=DISK_BASE)
    cluster = postgres.Cluster(fsync=True)
    daemons = {}
    try:
        cluster.start()
        db_name = cluster.new_database()
        db = cluster.uri(db_name)
        low, high = knockerlib.free_range(100, preferred=(28200,))
        common_keys = dict(pool_size=100, pool_range=f"{low}-{high}", lockout_scope="knock",
                           max_concurrent=100, lockout=1, knock_window=5,
                           on_success="/bin/true")
        key_file = os.path.join(root, "fleet.key")
        fleet_keys = dict(common_keys, database=db, database_key_file=key_file)
        setups = {"sqlite": dict(common_keys, state_dir=os.path.join(root, "sqlite-state")),
                  "postgres": fleet_keys}
        knockfiles, knock_files = {}, {}
        for name, keys in setups.items():
            out = os.path.join(root, name + ".knock")
            conf = parse_server_config(overrides={k.replace("_", "-"): str(v) for k, v in
                                                  dict(keys, state_dir=keys.get(
                                                      "state_dir", root)).items()})
            generate_client(conf, "bench", knocks, 6, out)
            knockfiles[name] = parse_knockfile(read_private(out), out)
            # (c)'s own client: its numbers and slot apart from (a)'s and (b)'s
            knock_files[name] = os.path.join(root, name + "-knock.knock")
            generate_client(conf, "knock", args.knock_rounds + 10, 6, knock_files[name])
        daemons["sqlite"] = start(root, "sqlite", "127.0.0.1", dict(
            setups["sqlite"], central="tcp:0:interface=127.0.0.1", interface="127.0.0.1"))
        for n, host in enumerate(HOSTS):
            daemons[f"gw{n + 1}"] = start(root, f"gw{n + 1}", host, dict(
                fleet_keys, central=f"tcp:0:interface={host}", interface=host,
                state_dir=os.path.join(root, f"gw{n + 1}-state"), gateway=f"gw{n + 1}"))
        targets = {"SQLite, 1 daemon": ([daemons["sqlite"]], knockfiles["sqlite"]),
                   "PostgreSQL, 1 gateway": ([daemons["gw1"]], knockfiles["postgres"]),
                   "PostgreSQL, 2 gateways": ([daemons["gw1"], daemons["gw2"]],
                                              knockfiles["postgres"])}
        for ds, kf in targets.values():  # warm-up
            knockerlib.exchange_window(ds, 1, 0.1, kf)
        configs = [(name, t) for name in targets for t in threads]
        samples = {c: {"rates": [], "lat": [], "errors": []} for c in configs}
        for _ in range(args.rounds):
            rng.shuffle(configs)
            for name, t in configs:
                ds, kf = targets[name]
                rate, lat, errors = knockerlib.exchange_window(ds, t, args.window, kf, 2, MAX_PER_WINDOW)
                samples[(name, t)]["rates"].append(rate)
                samples[(name, t)]["lat"].extend(lat)
                samples[(name, t)]["errors"].extend(errors)
        time.sleep(1.5)  # no slot left from the windows
        pool = [int(p) for p in cluster.psql(db_name, "SELECT value FROM meta WHERE key = 'pool'")
                .strip().split(",")]
        propagation, missed = [], 0
        for run in range(args.lockout_runs):
            first, second = (daemons["gw1"], daemons["gw2"]) if run % 2 == 0 else \
                (daemons["gw2"], daemons["gw1"])
            seconds = lockout_run(first, second, knockfiles["postgres"], pool)
            if seconds is None:
                missed += 1
            else:
                propagation.append(seconds)
            time.sleep(1.3)  # the 1 s lockout ends everywhere
        knock_rows, knock_setup = knock_runs(rng, args.knock_rounds, root, knock_files, daemons)
    finally:
        for d in daemons.values():
            d.stop()
        cluster.destroy()
        shutil.rmtree(root, ignore_errors=True)
    rows = []
    for (name, t), s in sorted(samples.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        lat = common.summarize(s["lat"], failures=len(s["errors"]))
        rows.append({"state": name, "threads": t,
                     "grants_per_s_p50": round(common.median(s["rates"])) if s["rates"] else None,
                     "latency_p50_ms": lat.get("p50_ms"), "latency_p95_ms": lat.get("p95_ms"),
                     "not_granted": len(s["errors"]), "errors": s["errors"][:5],
                     "windows": len(s["rates"])})
    common.print_table(rows, [("state", "(a) state"), ("threads", "clients"),
                              ("grants_per_s_p50", "grants/s p50"),
                              ("latency_p50_ms", "connect->GRANT p50 ms"),
                              ("latency_p95_ms", "p95"), ("not_granted", "not granted")],
                       title="Fleet (a): HELLO->GRANT over loopback, SQLite vs PostgreSQL")
    spread = common.summarize(propagation, failures=missed)
    print("\nFleet (b): global lockout on one gateway -> LOCKED on the other: "
          "p50 %s ms, p95 %s ms, %d runs, %d never seen within 5 s"
          % (spread.get("p50_ms"), spread.get("p95_ms"), len(propagation), missed))
    common.print_table(knock_rows, [("entry", "(c) knocker knock --config"), ("n", "n"),
                                    ("failures", "fail"), ("p50_ms", "p50 ms"),
                                    ("p95_ms", "p95 ms"), ("min_ms", "min"), ("max_ms", "max"),
                                    ("p50_minus_floor_ms", "p50-floor")],
                       title="\nFleet (c): time to open, spawn of knocker knock -> exit with OPEN")
    for row in knock_rows:
        for why in row["failure_reasons"]:
            print(f"    {row['entry']} failed: {why}")
    out = {"name": "fleet", "machine": common.machine_info(),
           "params": {"rounds": args.rounds, "window_s": args.window, "threads": threads,
                      "lockout_runs": args.lockout_runs, "knock_rounds": args.knock_rounds,
                      "quick": args.quick},
           "exchanges": rows, "lockout_propagation": spread,
           "time_to_open": {"entries": knock_rows, **knock_setup}}
    common.write_result(args.out, out, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
