#!/usr/bin/env python3
"""
What the console costs a real daemon under a flood (issue 11: hits/s with
three live console subscribers at least 90 % of hits/s without).

bench/console.py measures the same in process, where a hit costs about
2 µs of Python and nothing else, so the console's fraction of a
microsecond looks large.  Here the hits are real connections: one
`twistd -n knockserver` with a pool of 100 ports on 127.0.0.1, the C flood
(bench/flood.c, from 127.0.0.2-254, RST on close) at its maximum rate
against the pool, in two modes alternating within each repeat:

  bare      admin = (no console)
  console   admin on 127.0.0.1, three `curl -N` subscribers on /events
            (bearer token from `knocker console --token`) reading the live
            events all through the flood

Reported per mode: completed connections/s (median over repeats), the
daemon's CPU per hit (/proc, user+sys), and the console/bare ratio of the
medians.  Default lockout scope (knock): each new source's first hit is a
lockout event, the live page's worst case.

    python3 bench/console_flood.py [--seconds 5] [--repeat 3] [--out FILE]

Needs bench/build/flood (`python3 bench/common.py build`) and curl.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = "127.0.0.2-127.0.0.254"
SUBSCRIBERS = 3


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Daemon:
    def __init__(self, console):
        self.console = console
        self.dir = tempfile.mkdtemp(prefix="knocker-bench-console-flood-")
        self.central = free_port()
        self.admin = free_port()
        self.conf = os.path.join(self.dir, "server.conf")
        with open(self.conf, "w") as f:
            f.write(f"[server]\ncentral = tcp:{self.central}:interface=127.0.0.1\n"
                    f"interface = 127.0.0.1\nstate-dir = {self.dir}/state\n"
                    f"pool-range = 3000-9999\n"
                    f"admin = {'tcp:%d:interface=127.0.0.1' % self.admin if console else ''}\n")
        bindir = os.path.dirname(sys.executable)
        self.knocker = os.path.join(bindir, "knocker")
        subprocess.run([self.knocker, "generate", "bench", "--config", self.conf, "-o",
                        os.path.join(self.dir, "bench.knock")], check=True,
                       capture_output=True, cwd=self.dir)
        self.log = open(os.path.join(self.dir, "twistd.out"), "wb")
        self.proc = subprocess.Popen(
            [os.path.join(bindir, "twistd"), "-n", "--pidfile=", "knockserver",
             "--config", self.conf], stdout=self.log, stderr=subprocess.STDOUT,
            cwd=self.dir, start_new_session=True)
        self._wait_port(self.central)
        self.subscribers = []
        if console:
            self._wait_port(self.admin)
            token = subprocess.run([self.knocker, "console", "--token", "--config", self.conf],
                                   check=True, capture_output=True, text=True,
                                   cwd=self.dir).stdout.split()[0]
            for _ in range(SUBSCRIBERS):
                self.subscribers.append(subprocess.Popen(
                    ["curl", "-sN", "-H", f"Authorization: Bearer {token}",
                     f"http://127.0.0.1:{self.admin}/events"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(0.5)
        self.pool = self._pool()

    def _wait_port(self, port):
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("daemon exited: " + open(self.log.name).read()[-1500:])
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"port {port} never listened")

    def _pool(self):
        out = subprocess.run([self.knocker, "status", "--json", "--config", self.conf],
                             check=True, capture_output=True, text=True, cwd=self.dir).stdout
        return json.loads(out)["pool"]

    def alive_subscribers(self):
        return sum(1 for p in self.subscribers if p.poll() is None)

    def stop(self):
        for p in self.subscribers:
            p.kill()
            p.wait()
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def flood(ports, seconds):
    argv = [os.path.join(HERE, "build", "flood"), "-r", "0", "-t", str(seconds),
            "-n", str(int(200000 * seconds) + 1), "-s", SOURCES, "-x", "-R", "-c", "1024"]
    out = subprocess.run(argv + [str(p) for p in ports], capture_output=True, text=True,
                         timeout=seconds + 30).stdout
    return json.loads(out.strip().splitlines()[-1])


def once(console, seconds):
    daemon = Daemon(console)
    try:
        cpu0 = cpu_seconds(daemon.proc.pid)
        report = flood(daemon.pool, seconds)
        time.sleep(1.0)  # what was queued
        cpu = cpu_seconds(daemon.proc.pid) - cpu0
        alive = daemon.alive_subscribers()
    finally:
        daemon.stop()
    done = report["completed_per_s"]
    return {"completed_per_s": done, "established": report["established"],
            "cpu_us_per_hit": round(cpu * 1e6 / max(1, report["established"]), 1),
            "subscribers_alive_at_end": alive}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(common.RESULTS, "console_flood.json"))
    args = ap.parse_args()
    runs = {"bare": [], "console": []}
    for _ in range(args.repeat):
        for mode in ("bare", "console"):
            runs[mode].append(once(mode == "console", args.seconds))
    result = {"runs": runs, "machine": common.machine_info()}
    for mode in runs:
        result[mode] = {
            "completed_per_s_p50": round(statistics.median(r["completed_per_s"] for r in runs[mode])),
            "cpu_us_per_hit_p50": statistics.median(r["cpu_us_per_hit"] for r in runs[mode]),
        }
    result["ratio"] = round(result["console"]["completed_per_s_p50"]
                            / result["bare"]["completed_per_s_p50"], 3)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    for mode in ("bare", "console"):
        print(f"{mode:8} completed/s p50 {result[mode]['completed_per_s_p50']:,}  "
              f"CPU per hit p50 {result[mode]['cpu_us_per_hit_p50']} µs")
    alive = [r["subscribers_alive_at_end"] for r in runs["console"]]
    print(f"console / bare: {result['ratio']:.1%} of the hits/s (target >= 90 %); "
          f"live subscribers still connected at the end of each run: {alive}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
