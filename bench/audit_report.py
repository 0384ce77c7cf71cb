#!/usr/bin/env python3
"""
knocker report over a large audit log: the spec asks for 1,000,000 audit
lines summed up in under 10 s (docs/spec.md section 12, issue 11).

Writes N lines as the daemon writes them (mostly hits, as a scanned
gateway's log is, with grants, opens, failures, lockouts and denials
among them) over three days, split as logrotate leaves them
(audit.log.2.gz, audit.log.1, audit.log), then times the real command,
`knocker report --format json` (process start-up included), best of
--repeat runs, and checks its totals against what was written.

Usage: .venv/bin/python bench/audit_report.py [--lines 1000000] [--repeat 3] [--quick]
"""

import argparse
import gzip
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from knockerlib import common  # noqa: E402

TARGET_SECONDS = 10.0
START = 1_800_000_000  # 2027-01-15T08:00:00Z


def iso(seconds: float) -> str:
    whole = int(seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + \
        f".{int((seconds - whole) * 1e6):06d}Z"


def write_log(folder: str, lines: int, seed: int = 1) -> dict:
    """
    The audit log and its rotations; returns the counts written.
    """
    rng = random.Random(seed)
    counts = {"hit": 0, "open": 0, "fail": 0, "lockout": 0, "denied": 0, "grant": 0}
    step = 3 * 86400 / lines
    cut = (lines // 3, 2 * lines // 3)
    parts = [[], [], []]
    for n in range(lines):
        now = START + n * step
        ip = f"198.51.{rng.randrange(256)}.{rng.randrange(256)}"
        roll = rng.random()
        if roll < 0.9:
            counts["hit"] += 1
            line = (f'{{"time":"{iso(now)}","event":"hit","ip":"{ip}","src_port":'
                    f'{rng.randrange(1024, 65535)},"port":{rng.randrange(10000, 32000)},'
                    f'"outcome":"no-slot"}}')
        else:
            kind = rng.choice(("grant", "open", "fail", "lockout", "denied"))
            counts[kind] += 1
            fields = {"time": iso(now), "event": kind, "ip": ip,
                      "client": f"client{rng.randrange(50)}"}
            if kind == "fail":
                fields["reason"] = rng.choice(("timeout", "wrong-port"))
            if kind == "lockout":
                fields.update(source=ip, scope="source", reason="no-slot", seconds=60, step=0)
            line = json.dumps(fields, separators=(",", ":"))
        parts[0 if n < cut[0] else 1 if n < cut[1] else 2].append(line + "\n")
    path = os.path.join(folder, "audit.log")
    with gzip.open(path + ".2.gz", "wt") as handle:
        handle.writelines(parts[0])
    with open(path + ".1", "w") as handle:
        handle.writelines(parts[1])
    with open(path, "w") as handle:
        handle.writelines(parts[2])
    return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="tiny run for the test suite")
    ap.add_argument("--out", default=os.path.join(common.RESULTS, "audit_report.json"))
    args = ap.parse_args()
    if args.quick:
        args.lines, args.repeat = 10_000, 1
    folder = tempfile.mkdtemp(prefix="knocker-bench-report-")
    try:
        started = time.monotonic()
        counts = write_log(folder, args.lines)
        written_s = time.monotonic() - started
        conf = os.path.join(folder, "server.conf")
        with open(conf, "w") as handle:
            handle.write(f"[server]\nstate-dir = {folder}/state\naudit-log = {folder}/audit.log\n")
        env = {**os.environ, "PYTHONPATH": common.REPO}
        times, report = [], None
        for _ in range(args.repeat):
            t0 = time.monotonic()
            done = subprocess.run(
                [sys.executable, "-m", "knocker.main", "report", "--config", conf,
                 "--format", "json"], env=env, capture_output=True, text=True, timeout=600)
            times.append(time.monotonic() - t0)
            if done.returncode != 0:
                raise SystemExit(done.stderr)
            report = json.loads(done.stdout)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    totals = report["totals"]
    checked = (totals["hits"] == counts["hit"] and totals["opens"] == counts["open"]
               and totals["failures"] == counts["fail"] and totals["lockouts"] == counts["lockout"]
               and totals["denials"] == counts["denied"] and report["events"] == args.lines)
    best = min(times)
    result = {
        "lines": args.lines, "repeat": args.repeat, "seconds_best": round(best, 3),
        "seconds_all": [round(t, 3) for t in times],
        "lines_per_second": round(args.lines / best), "target_seconds": TARGET_SECONDS,
        "within_target": best < TARGET_SECONDS if args.lines >= 1_000_000 else None,
        "totals_match": checked, "rows": len(report["rows"]), "write_seconds": round(written_s, 1),
        "machine": common.machine_info(),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=2)
    print(f"knocker report --format json over {args.lines:,} audit lines (3 files, one gzip'd): "
          f"best {best:.2f} s of {args.repeat} ({args.lines / best:,.0f} lines/s); "
          f"target < {TARGET_SECONDS:.0f} s for 10^6 lines: "
          f"{ {True: 'met', False: 'MISSED', None: 'n/a at this size'}[result['within_target']]}; "
          f"totals "
          f"{'match' if checked else 'DO NOT MATCH'} what was written")
    return 0 if checked else 1


if __name__ == "__main__":
    sys.exit(main())
