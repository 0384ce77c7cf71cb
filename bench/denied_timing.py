#!/usr/bin/env python3
"""
denied_timing.py: can a stranger tell from the time of the central port's
answer to PROOF which client ids exist?

A real daemon, the documented commands: `twistd -n --pidfile= knockserver
--config FILE` from the venv (.venv/bin/twistd, the installed package) on
127.0.0.1 (central tcp:0, a free block of 100 pool ports, on-success
/bin/true, never-lock = 127.0.0.0/8 so no denial starts a lockout or
disturbs the next one, max-connections-per-source = 1000), and two clients
made by `.venv/bin/knocker generate NAME --config FILE -o ...`: alice, and
bob, whose server copy (STATE/clients/bob.knock) is then deleted, so bob is
registered (a counter in the state) with no usable copy.

Three kinds of attempt, N of each, interleaved: every round runs one of each
in a freshly shuffled order (the first --warmup rounds are discarded):

  unknown      HELLO mallory-<i> (a fresh id never registered), random PROOF
  wrong-proof  HELLO alice, random PROOF (wrong)
  no-copy      HELLO bob, random PROOF

Each attempt: a plain blocking socket (TCP_NODELAY), connect, HELLO, read
CHALLENGE, then the time from just before sending PROOF to the reply line
read in full (time.perf_counter_ns), and the reply line itself.  One
connection at a time.  Proofs are drawn before the clock starts.

Reported per kind: the replies seen, median, p5, p95 (us), and for each pair
the difference of medians with a 95% percentile-bootstrap confidence
interval (each kind resampled with replacement, 2000 times, stdlib random
with a fixed seed), saying whether the interval contains 0.  The daemon's
audit log is read afterwards for its denied/error/lockout counts.

    python3 bench/denied_timing.py                 # N = 4000, ~4-5 minutes
    python3 bench/denied_timing.py --quick         # N = 100, seconds
    python3 bench/denied_timing.py --json OUT.json

Exit status 1 when the harness failed (the daemon did not start or died, an
attempt got no reply, a reply was not the expected one, a lockout started);
a timing difference never fails the run.
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
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
import knockerlib  # noqa: E402

VENV_BIN = os.path.join(common.REPO, ".venv", "bin")
TWISTD = os.path.join(VENV_BIN, "twistd")
KNOCKER = os.path.join(VENV_BIN, "knocker")
VENV_PY = os.path.join(VENV_BIN, "python")

KINDS = ("unknown", "wrong-proof", "no-copy")
CLIENT_OF = {"unknown": "mallory-{i}", "wrong-proof": "alice", "no-copy": "bob"}
EXPECTED = {"unknown": "DENIED", "wrong-proof": "DENIED", "no-copy": "ERROR server-error"}
PAIRS = (("wrong-proof", "unknown"), ("no-copy", "unknown"), ("no-copy", "wrong-proof"))
POOL_SIZE = 100
BOOTSTRAP = 2000


def clean_env():
    """The environment users have: the installed package, not this tree."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def installed_info(workdir):
    """Where the venv's knocker lives, its DENIED_AT, and which of its
    files differ from this tree's knocker/ (a stale install measures old
    code)."""
    r = subprocess.run(
        [VENV_PY, "-c", "import os, knocker; from knocker.daemon.central import DENIED_AT; "
         "print(os.path.dirname(knocker.__file__)); print(DENIED_AT)"],
        capture_output=True, text=True, env=clean_env(), cwd=workdir, timeout=60)
    if r.returncode != 0:
        return {"error": (r.stdout + r.stderr).strip()[-500:]}
    path, denied_at = r.stdout.split()
    tree = os.path.join(common.REPO, "knocker")
    differ = []
    for base, dirs, files in os.walk(tree):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if not name.endswith(".py"):
                continue
            mine = os.path.join(base, name)
            rel = os.path.relpath(mine, tree)
            theirs = os.path.join(path, rel)
            try:
                with open(mine, "rb") as a, open(theirs, "rb") as b:
                    same = a.read() == b.read()
            except OSError:
                same = False
            if not same:
                differ.append("knocker/" + rel)
    return {"path": path, "denied_at_s": float(denied_at), "differs_from_tree": sorted(differ)}


def generate(name, config, out, workdir):
    r = subprocess.run([KNOCKER, "generate", name, "--config", config, "-o", out],
                       capture_output=True, text=True, env=clean_env(), cwd=workdir, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"knocker generate {name} exited {r.returncode}: {r.stdout}{r.stderr}")


def prepare(workdir):
    """Config, alice and bob, bob's server copy removed; returns (config
    path, audit path)."""
    low, high = knockerlib.free_range(POOL_SIZE)
    state = os.path.join(workdir, "state")
    audit = os.path.join(workdir, "audit.log")
    config = knockerlib.write_config(
        os.path.join(workdir, "knockserver.conf"),
        central="tcp:0:interface=127.0.0.1", interface="127.0.0.1", state_dir=state,
        pool_size=POOL_SIZE, pool_range=f"{low}-{high}", on_success="/bin/true",
        audit_log=audit, never_lock="127.0.0.0/8", max_connections_per_source=1000)
    generate("alice", config, os.path.join(workdir, "alice.knock"), workdir)
    generate("bob", config, os.path.join(workdir, "bob.knock"), workdir)
    bob_copy = os.path.join(state, "clients", "bob.knock")
    if not os.path.exists(bob_copy):
        raise RuntimeError(f"{bob_copy}: no server copy to delete (layout changed?)")
    os.unlink(bob_copy)
    return config, audit


def spawn_daemon(config, workdir):
    """`twistd -n --pidfile= knockserver --config FILE` in its own session
    (common.Daemon.stop: SIGTERM to the group, then SIGKILL)."""
    return common.Daemon([TWISTD, "-n", "--pidfile=", "knockserver", "--config", config],
                         os.path.join(workdir, "twistd.out"), env=clean_env(), cwd=workdir)


def wait_started(daemon, audit, timeout=60.0):
    """The central port, from the audit log's 'start' event."""
    tail = knockerlib.AuditTail(audit)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in tail.events():
            if event.get("event") == "start":
                return event["central_port"]
        if not daemon.alive():
            break
        time.sleep(0.01)
    raise RuntimeError("knockserver did not start (no 'start' audit event):\n"
                       + daemon.log_text()[-3000:])


class NoReply(Exception):
    pass


def read_line(sock, buffer):
    while b"\n" not in buffer:
        data = sock.recv(4096)
        if not data:
            raise NoReply("closed" + (f" after {buffer!r}" if buffer else ""))
        buffer += data
    line, _, rest = buffer.partition(b"\n")
    return line.rstrip(b"\r").decode("ascii", "replace"), rest


def attempt(port, client, proof, timeout):
    """One exchange; returns (ns from just before PROOF to the reply line,
    ns from HELLO to CHALLENGE, the reply line)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.connect(("127.0.0.1", port))
        hello = f"KNOCKER/1 HELLO {client}\n".encode("ascii")
        proof_line = f"PROOF {proof}\n".encode("ascii")
        t_hello = time.perf_counter_ns()
        sock.sendall(hello)
        line, rest = read_line(sock, b"")
        t_challenge = time.perf_counter_ns()
        if not line.startswith("CHALLENGE "):
            raise NoReply(f"expected CHALLENGE, got {line!r}")
        if rest:
            raise NoReply(f"data after CHALLENGE: {rest!r}")
        t0 = time.perf_counter_ns()
        sock.sendall(proof_line)
        reply, _ = read_line(sock, b"")
        t1 = time.perf_counter_ns()
        return t1 - t0, t_challenge - t_hello, reply
    except OSError as error:
        raise NoReply(f"{type(error).__name__}: {error}") from None
    finally:
        sock.close()


def median(xs):
    return common.percentile(xs, 50)


def bootstrap_medians(samples, rng, times=BOOTSTRAP):
    n = len(samples)
    out = []
    for _ in range(times):
        s = sorted(rng.choices(samples, k=n))
        mid = n // 2
        out.append(s[mid] if n % 2 else (s[mid - 1] + s[mid]) / 2)
    return out


def audit_counts(path):
    counts = {}
    try:
        with open(path, errors="replace") as handle:
            for line in handle:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                key = event.get("event")
                if key in ("denied", "error"):
                    key = f"{key} {event.get('reason')}"
                counts[key] = counts.get(key, 0) + 1
    except OSError:
        pass
    return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__.strip().split("\n")[0])
    ap.add_argument("-n", "--n", type=int, default=4000, help="attempts of each kind (4000)")
    ap.add_argument("--quick", action="store_true", help="N = 100 and 5 warm-up rounds")
    ap.add_argument("--warmup", type=int, default=20, help="rounds discarded first (20)")
    ap.add_argument("--seed", type=int, default=20261201, help="order and bootstrap seed")
    ap.add_argument("--timeout", type=float, default=5.0, help="socket timeout, seconds")
    ap.add_argument("--max-seconds", type=float, default=1800.0,
                    help="stop measuring after this long (1800)")
    ap.add_argument("--json", metavar="OUT")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (daemon log, audit)")
    args = ap.parse_args()
    if args.quick:
        args.n, args.warmup = 100, 5
    for path in (TWISTD, KNOCKER, VENV_PY):
        if not os.path.exists(path):
            raise SystemExit(f"{path} missing: python3 -m venv .venv && .venv/bin/pip install .")

    order_rng = random.Random(args.seed)
    proof_rng = random.Random(args.seed + 1)
    boot_rng = random.Random(args.seed + 2)
    workdir = tempfile.mkdtemp(prefix="denied-timing-")
    installed = installed_info(workdir)
    if "error" in installed:
        raise SystemExit("cannot import the venv's knocker: " + installed["error"])
    if installed["differs_from_tree"]:
        print("warning: the venv's knocker (%s) differs from this tree in %s"
              % (installed["path"], ", ".join(installed["differs_from_tree"])), file=sys.stderr)

    rt = {k: [] for k in KINDS}  # PROOF -> reply, ns
    ht = {k: [] for k in KINDS}  # HELLO -> CHALLENGE, ns
    replies = {k: {} for k in KINDS}
    failures = {k: [] for k in KINDS}
    problems = []
    stopped = None
    daemon = None
    started = time.monotonic()
    ok = False
    try:
        config, audit = prepare(workdir)
        daemon = spawn_daemon(config, workdir)
        port = wait_started(daemon, audit)
        print(f"daemon pid {daemon.pid}, central 127.0.0.1:{port}, DENIED_AT "
              f"{installed['denied_at_s'] * 1000:g} ms, N {args.n} per kind "
              f"(+{args.warmup} warm-up rounds), seed {args.seed}", flush=True)
        total = args.warmup + args.n
        next_report = time.monotonic() + 30
        for rnd in range(total):
            if time.monotonic() - started > args.max_seconds:
                stopped = f"--max-seconds {args.max_seconds:g} reached after {rnd} rounds"
                break
            if not daemon.alive():
                stopped = "daemon exited:\n" + daemon.log_text()[-2000:]
                problems.append(stopped)
                break
            kinds = list(KINDS)
            order_rng.shuffle(kinds)
            for kind in kinds:
                client = CLIENT_OF[kind].format(i=rnd)
                proof = "%064x" % proof_rng.getrandbits(256)
                try:
                    ns, hello_ns, reply = attempt(port, client, proof, args.timeout)
                except NoReply as error:
                    if rnd >= args.warmup:
                        failures[kind].append(str(error))
                    continue
                if rnd < args.warmup:
                    continue
                rt[kind].append(ns)
                ht[kind].append(hello_ns)
                replies[kind][reply] = replies[kind].get(reply, 0) + 1
            if sum(len(f) for f in failures.values()) > max(10, args.n // 100):
                stopped = "too many attempts without a reply"
                break
            if time.monotonic() >= next_report:
                next_report += 30
                print(f"  {rnd + 1}/{total} rounds, {time.monotonic() - started:.0f} s",
                      file=sys.stderr, flush=True)
        ok = True
    finally:
        if daemon is not None:
            daemon.stop(grace=5.0)
        if not ok:
            print("kept " + workdir, file=sys.stderr)
    elapsed = time.monotonic() - started
    events = audit_counts(audit)

    # ---- results
    us = lambda ns: ns / 1000.0  # noqa: E731
    kinds_out = {}
    rows = []
    for kind in KINDS:
        v = [us(x) for x in rt[kind]]
        h = [us(x) for x in ht[kind]]
        unexpected = {r: c for r, c in replies[kind].items() if r != EXPECTED[kind]}
        if unexpected:
            problems.append(f"{kind}: unexpected replies {unexpected}")
        if failures[kind]:
            problems.append(f"{kind}: {len(failures[kind])} attempts without a reply, e.g. "
                            f"{failures[kind][0]}")
        kinds_out[kind] = {
            "client": CLIENT_OF[kind].format(i="N"), "expected": EXPECTED[kind],
            "n": len(v), "replies": replies[kind], "failures": len(failures[kind]),
            "failure_examples": failures[kind][:5],
            "median_us": median(v), "p5_us": common.percentile(v, 5),
            "p95_us": common.percentile(v, 95), "min_us": min(v, default=float("nan")),
            "max_us": max(v, default=float("nan")),
            "hello_median_us": median(h), "samples_ns": rt[kind], "hello_samples_ns": ht[kind]}
        rows.append({"kind": kind, "client": kinds_out[kind]["client"],
                     "replies": ", ".join(f"{r} x{c}" for r, c in sorted(replies[kind].items())),
                     "median": "%.1f" % kinds_out[kind]["median_us"],
                     "p5": "%.1f" % kinds_out[kind]["p5_us"],
                     "p95": "%.1f" % kinds_out[kind]["p95_us"],
                     "hello": "%.1f" % kinds_out[kind]["hello_median_us"]})
    print()
    common.print_table(rows, [("kind", "kind"), ("client", "client"), ("replies", "replies"),
                              ("median", "median us"), ("p5", "p5 us"), ("p95", "p95 us"),
                              ("hello", "HELLO->CHALLENGE median us")],
                       title=f"PROOF sent -> reply line read ({elapsed:.0f} s, "
                             f"{sum(len(rt[k]) for k in KINDS)} timed attempts)")

    boots = {k: bootstrap_medians([us(x) for x in rt[k]], boot_rng) if rt[k] else None
             for k in KINDS}
    pairs_out = []
    for a, b in PAIRS:
        if not boots[a] or not boots[b]:
            continue
        diffs = sorted(x - y for x, y in zip(boots[a], boots[b]))
        lo, hi = common.percentile(diffs, 2.5), common.percentile(diffs, 97.5)
        d = kinds_out[a]["median_us"] - kinds_out[b]["median_us"]
        pairs_out.append({"a": a, "b": b, "median_diff_us": d, "ci95_us": [lo, hi],
                          "ci_contains_zero": lo <= 0 <= hi})
    print(f"\ndifference of medians, a - b, with a 95% bootstrap CI "
          f"({BOOTSTRAP} resamples of each kind, seed {args.seed + 2}):")
    for p in pairs_out:
        verdict = ("contains 0: no difference shown" if p["ci_contains_zero"]
                   else "does NOT contain 0: %s is %s than %s"
                   % (p["a"], "slower" if p["median_diff_us"] > 0 else "faster", p["b"]))
        print("  %-11s - %-11s %+8.1f us   CI [%+.1f, %+.1f] us   CI %s"
              % (p["a"], p["b"], p["median_diff_us"], p["ci95_us"][0], p["ci95_us"][1], verdict))
    print("\naudit log: " + ", ".join(f"{k} {v}" for k, v in sorted(events.items())))
    if events.get("lockout"):
        problems.append(f"{events['lockout']} lockouts started (never-lock should prevent them)")
    if stopped:
        print("stopped early: " + stopped.splitlines()[0])
    for p in problems:
        print("PROBLEM: " + p)

    if args.json:
        common.write_json(args.json, {
            "benchmark": "denied_timing", "n": args.n, "warmup_rounds": args.warmup,
            "seed": args.seed, "bootstrap": BOOTSTRAP, "elapsed_s": elapsed,
            "installed": installed, "machine": common.machine_info(),
            "kinds": kinds_out, "pairs": pairs_out, "audit_events": events,
            "stopped_early": stopped, "problems": problems})
        print("wrote", args.json)
    if args.keep:
        print("kept", workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if problems or (stopped and "max-seconds" not in stopped) else 0


if __name__ == "__main__":
    sys.exit(main())
