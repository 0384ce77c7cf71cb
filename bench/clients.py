#!/usr/bin/env python3
"""
Many clients: does the daemon stay quick to start, small, and quick to
grant with 10,000 registered clients of 1,000 knocks each?

Two state directories are built once and cached under /tmp (keyed by
clients x knocks x pool; reruns reuse them): 1 client, and 10,000 clients.
Each run starts the real daemon (twistd -n knockserver) on a fresh copy of
the cached state.sqlite, its clients/ folder a symlink to the cache (the
daemon only reads it), so every run starts from "nothing burned".

Per run: ready time (spawn -> audit `start`, from the event's own
timestamp), VmRSS once ready and after the grants, then N grants: a
blocking-socket client (knocker.core.handshake.ClientHandshake) connects from a
rotating 127.0.0.x, sends HELLO, answers the CHALLENGE, checks the GRANT's
HMAC, and closes (which abandons the knock; the number stays burned).
Timed: HELLO sent -> GRANT checked.  With 10,000 clients a random client
each time, so the server's 32-file cache of parsed knock files misses and
each grant parses a 1,000-knock file; with 1 client it always hits.

The two configurations alternate in shuffled order, repeated; medians.

Usage: .venv/bin/python bench/clients.py [--clients 10000] [--knocks 1000]
       [--rounds 5] [--grants 200] [--quick]
"""

import argparse
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import knockerlib  # noqa: E402
from knockerlib import common  # noqa: E402

TARGET_READY_S = 2.0
TARGET_RSS_MB = 200.0
GRANT_SIMILAR = 1.5  # many-clients grant p50 within this factor of 1 client's
CACHE_ROOT = "/tmp/knocker-bench-clients"
CACHE_VERSION = 2  # 2: pools drawn clear of ports held at build time
POOL_RANGE = (1100, 2999)  # clear of the tests' 3000-9999 and the other benches' 10000+
POOL_SIZE = 100
PORTS = 6


def _write_clients(task):
    """Worker: generate and write the server copies of clients [first, last)."""
    directory, first, last, knocks, pool, seed = task
    from datetime import datetime, timezone

    from knocker.core.knockgen import format_knockfile, generate
    from knocker.state.interface import secret_id

    rng = random.Random(seed)
    now = datetime.now(timezone.utc)
    rows = []
    for i in range(first, last):
        name = client_name(i)
        kf = generate(name, pool, knocks, PORTS, rng, rng.randbytes(32), now)
        # No fsync per file (unlike knocker.files.write_private): this is a
        # cached fixture, and the folder is renamed into place only once
        # everything is written.
        fd = os.open(os.path.join(directory, name + ".knock"),
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(format_knockfile(kf))
        rows.append((name, knocks, secret_id(kf.secret)))
    return rows


def client_name(i):
    return "c%05d" % i


def build_cache(clients, knocks):
    """The cached state directory for `clients` x `knocks`; built if missing."""
    from knocker.core.pool import ensure_pool
    from knocker.core.serverconfig import parse_server_config
    from knocker.state.sqlite import SQLiteStore

    key = "v%d-%dc-%dk-%dp-%d-%d" % (CACHE_VERSION, clients, knocks, POOL_SIZE, *POOL_RANGE)
    path = os.path.join(CACHE_ROOT, key)
    if os.path.exists(os.path.join(path, "complete")):
        return path, None
    os.makedirs(CACHE_ROOT, exist_ok=True)
    started = time.monotonic()
    building = tempfile.mkdtemp(prefix=key + ".building-", dir=CACHE_ROOT)
    try:
        state = os.path.join(building, "state")
        config = parse_server_config(overrides={
            "state-dir": state, "pool-size": str(POOL_SIZE),
            "pool-range": "%d-%d" % POOL_RANGE})
        store = SQLiteStore(state)
        # Drawn from the range's ports that nothing holds now (this
        # machine's own services listen in it, 2024 for one): a cached pool
        # holding such a port would fail every later run of this bench.
        held = knockerlib.used_ports()
        free = [port for port in range(POOL_RANGE[0], POOL_RANGE[1] + 1) if port not in held]
        store.set_pool(tuple(sorted(random.SystemRandom().sample(free, POOL_SIZE))))
        pool = ensure_pool(store, config)
        store.close()
        directory = os.path.join(state, "clients")
        os.makedirs(directory, mode=0o700)
        workers = max(1, min(os.cpu_count() or 1, 4))
        step = max(1, -(-clients // (workers * 8)))
        tasks = [(directory, first, min(clients, first + step), knocks, pool, first)
                 for first in range(0, clients, step)]
        rows = []
        if clients > 50:
            import multiprocessing

            with multiprocessing.get_context("fork").Pool(workers) as pool_:
                for part in pool_.imap_unordered(_write_clients, tasks):
                    rows.extend(part)
        else:
            for task in tasks:
                rows.extend(_write_clients(task))
        # One transaction for every counter (Store.register commits and
        # fsyncs once per client): the same row Store.register writes.
        db = sqlite3.connect(os.path.join(state, "state.sqlite"), isolation_level=None)
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO clients (id, next_index, knocks, secret_id) VALUES (?, 1, ?, ?)", rows)
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
        with open(os.path.join(building, "complete"), "w") as handle:
            handle.write("%d clients x %d knocks\n" % (clients, knocks))
        os.rename(building, path)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return path, time.monotonic() - started


def prepare_state(cache, workdir):
    """A fresh state dir: a copy of the cached state.sqlite, clients/ a link."""
    state = os.path.join(workdir, "state")
    os.makedirs(state, mode=0o700)
    shutil.copyfile(os.path.join(cache, "state", "state.sqlite"), os.path.join(state, "state.sqlite"))
    os.chmod(os.path.join(state, "state.sqlite"), 0o600)
    os.symlink(os.path.join(cache, "state", "clients"), os.path.join(state, "clients"))
    return state


def pool_of(cache):
    db = sqlite3.connect("file:%s?mode=ro" % os.path.join(cache, "state", "state.sqlite"), uri=True)
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'pool'").fetchone()
    finally:
        db.close()
    return [int(p) for p in row[0].split(",")]


def wait_pool_free(cache, seconds=15.0):
    pool = pool_of(cache)
    free = common.wait_for(lambda: not knockerlib.busy_ports(pool), seconds, interval=0.2)
    if not free:
        # Something started listening on a port of the cached pool: the
        # cache goes, so the next run draws a pool clear of it.
        shutil.rmtree(cache, ignore_errors=True)
        raise RuntimeError("pool ports busy (another process listens there): %s; "
                           "the cached state was removed, run again"
                           % knockerlib.busy_ports(pool)[:10])


def load_client_file(cache, name):
    from knocker.core.knockfile import parse_knockfile
    from knocker.files import read_private

    path = os.path.join(cache, "state", "clients", name + ".knock")
    return parse_knockfile(read_private(path), path)


def one_run(label, cache, clients, args, rng, root):
    workdir = tempfile.mkdtemp(prefix="run-", dir=root)
    try:
        state = prepare_state(cache, workdir)
        wait_pool_free(cache)
        audit = os.path.join(workdir, "audit.log")
        config = knockerlib.write_config(
            os.path.join(workdir, "server.conf"),
            central="tcp:0:interface=127.0.0.1", interface="127.0.0.1", state_dir=state,
            audit_log=audit, lockout_scope="source", max_concurrent=100, lockout=1)
        daemon = knockerlib.KnockerDaemon(config, audit, workdir)
        try:
            event = daemon.wait_ready(timeout=120)
            if event.get("clients") != clients:
                raise RuntimeError("daemon reports %s clients, wanted %d" % (event.get("clients"), clients))
            result = {"ready_s": daemon.ready_s, "rss_ready_kb": daemon.ready_rss_kb}
            source = knockerlib.Source()
            hello, connect, kinds = [], [], {}
            deadline = time.monotonic() + args.max_seconds_per_run
            for _ in range(args.grants):
                if time.monotonic() > deadline:
                    result["stopped_early"] = True
                    break
                name = client_name(rng.randrange(clients))
                kf = load_client_file(cache, name)  # untimed: the client's own file
                t_hello, t_connect, kind, _ = knockerlib.grant_exchange(
                    daemon.central_port, kf, source=source.next())
                kinds[kind] = kinds.get(kind, 0) + 1
                if kind == "Grant":
                    hello.append(t_hello)
                    connect.append(t_connect)
            result["rss_after_kb"] = daemon.rss_kb()
            result["hwm_kb"] = daemon.rss_kb("VmHWM")
            result["hello_to_grant_s"] = hello
            result["connect_to_grant_s"] = connect
            result["replies"] = kinds
            return result
        finally:
            daemon.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=10000)
    ap.add_argument("--knocks", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--grants", type=int, default=200, help="HELLO->GRANT exchanges per run")
    ap.add_argument("--max-seconds", type=float, default=400.0)
    ap.add_argument("--max-seconds-per-run", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="tiny run for the test suite")
    ap.add_argument("--out", default=os.path.join(common.RESULTS, "clients.json"))
    args = ap.parse_args()
    if args.quick:
        args.clients, args.knocks, args.rounds, args.grants = 100, 20, 1, 10
    args.grants = min(args.grants, args.knocks - 1)
    max_seconds = min(args.max_seconds, knockerlib.DEADLINE_HARD)
    knockerlib.check_venv()
    rng = random.Random(args.seed)

    configs = {}
    builds = {}
    for clients in sorted({1, args.clients}):
        cache, built = build_cache(clients, args.knocks)
        configs["%d client%s" % (clients, "" if clients == 1 else "s")] = (cache, clients)
        if built is not None:
            builds[clients] = round(built, 1)
            print("built %d clients x %d knocks in %.1f s: %s" % (clients, args.knocks, built, cache))
    root = tempfile.mkdtemp(prefix="knocker-clients-", dir="/var/tmp")
    samples = {label: [] for label in configs}
    deadline = time.monotonic() + max_seconds
    stopped = None
    try:
        for round_ in range(args.rounds):
            order = list(configs)
            rng.shuffle(order)
            for label in order:
                if time.monotonic() > deadline:
                    stopped = "max-seconds reached"
                    break
                cache, clients = configs[label]
                r = one_run(label, cache, clients, args, rng, root)
                samples[label].append(r)
                print("round %d  %-14s ready %.3f s, RSS %.1f -> %.1f MB, grant p50 %.3f ms (%s)"
                      % (round_ + 1, label, r["ready_s"], r["rss_ready_kb"] / 1024,
                         r["rss_after_kb"] / 1024,
                         common.median(r["hello_to_grant_s"]) * 1e3 if r["hello_to_grant_s"] else float("nan"),
                         r["replies"]), flush=True)
            if stopped:
                break
    finally:
        shutil.rmtree(root, ignore_errors=True)

    med = common.median
    rows = []
    for label, runs in samples.items():
        if not runs:
            continue
        grants = [s for r in runs for s in r["hello_to_grant_s"]]
        connects = [s for r in runs for s in r["connect_to_grant_s"]]
        g = common.summarize(grants, failures=sum(n for r in runs for k, n in r["replies"].items()
                                                  if k != "Grant"))
        rows.append({
            "config": label, "clients": configs[label][1], "runs": len(runs),
            "ready_ms_p50": round(med([r["ready_s"] for r in runs]) * 1e3, 1),
            "rss_ready_mb_p50": round(med([r["rss_ready_kb"] for r in runs]) / 1024, 1),
            "rss_after_mb_p50": round(med([r["rss_after_kb"] for r in runs]) / 1024, 1),
            "grant": g, "grant_p50_ms": g.get("p50_ms"), "grant_p95_ms": g.get("p95_ms"),
            "grant_min_ms": g.get("min_ms"),
            "connect_to_grant_p50_ms": round(med(connects) * 1e3, 3) if connects else None,
            "not_granted": g["failures"],
        })
    print()
    common.print_table(rows, [
        ("config", "state"), ("runs", "runs"), ("ready_ms_p50", "ready p50 ms"),
        ("rss_ready_mb_p50", "RSS ready MB"), ("rss_after_mb_p50", "RSS after MB"),
        ("grant_p50_ms", "HELLO->GRANT p50 ms"), ("grant_p95_ms", "p95"), ("grant_min_ms", "min"),
        ("connect_to_grant_p50_ms", "connect->GRANT p50"), ("not_granted", "not granted")],
        title="Many clients: %d x %d knocks vs 1 client (%d grants/run, random client)"
              % (args.clients, args.knocks, args.grants))
    by = {r["clients"]: r for r in rows}
    ratios = {}
    verdict = {}
    if 1 in by and args.clients in by and args.clients != 1:
        one, many = by[1], by[args.clients]
        ratios = {k: round(many[k] / one[k], 2) for k in
                  ("ready_ms_p50", "rss_ready_mb_p50", "grant_p50_ms", "grant_p95_ms")
                  if one.get(k) and many.get(k)}
        verdict = {"ready_ok": many["ready_ms_p50"] < TARGET_READY_S * 1e3,
                   "rss_ok": max(many["rss_ready_mb_p50"], many["rss_after_mb_p50"]) < TARGET_RSS_MB,
                   "grant_similar": ratios.get("grant_p50_ms", 99) <= GRANT_SIMILAR}
        print("%d clients / 1 client: %s" % (args.clients, ", ".join("%s x%.2f" % kv for kv in ratios.items())))
        print("targets at %d clients: ready %.0f ms (< %.0f: %s), RSS %.1f MB (< %.0f: %s)"
              % (args.clients, many["ready_ms_p50"], TARGET_READY_S * 1e3,
                 "met" if verdict["ready_ok"] else "NOT met",
                 max(many["rss_ready_mb_p50"], many["rss_after_mb_p50"]), TARGET_RSS_MB,
                 "met" if verdict["rss_ok"] else "NOT met"))
        print("grant p50 %.3f ms vs %.3f ms with 1 client (x%.2f; 'about the same' taken as <= x%.1f: %s)"
              % (many["grant_p50_ms"], one["grant_p50_ms"], ratios.get("grant_p50_ms", float("nan")),
                 GRANT_SIMILAR, "met" if verdict["grant_similar"] else "NOT met"))
    out = {"name": "clients", "machine": common.machine_info(),
           "params": {"clients": args.clients, "knocks": args.knocks, "rounds": args.rounds,
                      "grants": args.grants, "quick": args.quick, "cache": CACHE_ROOT,
                      "built_s": builds},
           "summary": rows, "ratios_many_vs_one": ratios,
           "targets": {"ready_ms": TARGET_READY_S * 1e3, "rss_mb": TARGET_RSS_MB,
                       "grant_ratio_max": GRANT_SIMILAR, **verdict},
           "runs": {label: [{k: v for k, v in r.items() if not k.endswith("_s") or k == "ready_s"}
                            for r in runs] for label, runs in samples.items()}}
    common.write_result(args.out, out, stopped)
    return 0


if __name__ == "__main__":
    sys.exit(main())
