"""Shared helpers for the knocker benchmarks.

Kept free of third-party imports so any python3 can run it (the harness
itself must not need the venv it is measuring).

Clock: every instant here is CLOCK_MONOTONIC in nanoseconds, the same clock
the C marker (marker.c) stamps with, so a client spawn time taken here and an
action time written by the marker subtract directly.

Run ``python3 bench/common.py build`` to compile the C helpers.
"""

import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BUILD = os.path.join(HERE, "build")
RESULTS = os.path.join(HERE, "results")
VENV_BIN = os.path.join(REPO, ".venv", "bin")
VENV_PY = os.path.join(VENV_BIN, "python")

# name -> C source, relative to bench/
TOOLS = {
    "accept_loop": "floor/accept_loop.c",
    "flood": "flood.c",
    "marker": "marker.c",
}


def now_ns():
    """CLOCK_MONOTONIC in ns: the one clock shared with marker.c."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


# --------------------------------------------------------------------------
# building the C helpers

def ensure_built(verbose=False):
    """Compile each C helper into bench/build/ if missing or older than its
    source; returns {name: path}. Cheap when everything is current."""
    os.makedirs(BUILD, exist_ok=True)
    cc = os.environ.get("CC", "gcc")
    paths = {}
    for name, src in TOOLS.items():
        src_path = os.path.join(HERE, src)
        out = os.path.join(BUILD, name)
        if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(src_path):
            if shutil.which(cc) is None:
                raise SystemExit("need a C compiler (%s); run bench/setup.sh" % cc)
            subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-o", out, src_path], check=True)
            if verbose:
                print("built", out)
        paths[name] = out
    return paths


# --------------------------------------------------------------------------
# statistics

def percentile(values, p):
    """Linear-interpolated percentile (p in 0..100) of a non-empty list."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    if len(xs) == 1:
        return xs[0]
    k = (len(xs) - 1) * p / 100.0
    lo = math.floor(k)
    hi = math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def median(values):
    return percentile(values, 50)


def summarize(values, failures=0):
    """p50/p95/min/max/mean of samples in seconds, reported in milliseconds."""
    out = {"n": len(values), "failures": failures}
    if values:
        ms = [v * 1000.0 for v in values]
        out.update(
            p50_ms=round(percentile(ms, 50), 3),
            p95_ms=round(percentile(ms, 95), 3),
            min_ms=round(min(ms), 3),
            max_ms=round(max(ms), 3),
            mean_ms=round(sum(ms) / len(ms), 3),
        )
    return out


# --------------------------------------------------------------------------
# output

def print_table(rows, columns, title=None, out=sys.stdout):
    """Plain fixed-width table; columns is a list of (key, header)."""
    if title:
        print(title, file=out)
    cells = [[h for _, h in columns]]
    for row in rows:
        line = []
        for key, _ in columns:
            v = row.get(key, "")
            if isinstance(v, float):
                v = "%.2f" % v
            line.append(str(v))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for n, r in enumerate(cells):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(r, widths))), file=out)
        if n == 0:
            print("  ".join("-" * w for w in widths), file=out)
    out.flush()


def write_json(path, obj):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def write_result(path, result, stopped=None):
    """Write a benchmark's JSON result (noting why it stopped early, if it
    did) and say where."""
    if stopped:
        result["stopped_early"] = stopped
    write_json(path, result)
    print("wrote", path)


def set_up(entries, root, started, skipped):
    """Set up each entry in a folder of its own under C{root}; return those
    ready.  One whose skip_reason is set, or whose setup fails, is noted in
    C{skipped} and left out; every one set up (even partly) is appended to
    C{started}, to be torn down whatever happens next."""
    active = []
    for e in entries:
        if e.skip_reason:
            print("skip %s: %s" % (e.name, e.skip_reason))
            skipped[e.name] = e.skip_reason
            continue
        wd = os.path.join(root, e.name)
        os.makedirs(wd)
        started.append(e)
        try:
            e.setup(wd)
            active.append(e)
        except Exception as exc:  # one broken entry must not stop the others
            print("skip %s: setup failed: %s" % (e.name, str(exc)[-500:]))
            skipped[e.name] = "setup failed: %s" % str(exc)[-500:]
    return active


def clean_up(teardowns, root, keep):
    """Stop what a run started (each teardown's failure aside), then keep or
    remove its temporary folder."""
    for teardown in teardowns:
        try:
            teardown()
        except Exception as error:  # one stuck daemon must not keep the rest
            print("teardown failed:", error)
    if keep:
        print("kept", root)
    else:
        shutil.rmtree(root, ignore_errors=True)


def machine_info():
    """Enough context to judge a figure later: load, cores, kernel."""
    info = {"cores": os.cpu_count(), "kernel": os.uname().release,
            "python": sys.version.split()[0]}
    try:
        info["loadavg"] = open("/proc/loadavg").read().split()[:3]
    except OSError:
        pass
    info["repo"] = repo_state()
    return info


def pressure():
    """
    The kernel's stall counters (/proc/pressure, PSI): for cpu, io and
    memory, the microseconds some task (and, for io and memory, every task)
    has waited since boot; with a monotonic stamp.  None without PSI.
    """
    counters = {}
    for kind in ("cpu", "io", "memory"):
        try:
            with open(f"/proc/pressure/{kind}") as handle:
                counters[kind] = parse_pressure(handle.read())
        except (OSError, ValueError):
            return None  # no PSI here, or a format this does not know
    return {"at_s": time.monotonic(), "stalls_us": counters}


def parse_pressure(text):
    """{"some": total_us, "full": total_us} from one /proc/pressure file."""
    totals = {}
    for line in text.splitlines():
        kind, _, fields = line.partition(" ")
        for field in fields.split():
            name, _, value = field.partition("=")
            if name == "total":
                totals[kind] = int(value)
    return totals


def pressure_share(before, after):
    """
    The share of the wall time between two L{pressure} readings that tasks
    stalled, per resource and kind, in percent (e.g. io full 12.5: for an
    eighth of the run every runnable task waited on I/O).
    """
    if not before or not after or before["stalls_us"].keys() != after["stalls_us"].keys():
        return None
    wall_us = (after["at_s"] - before["at_s"]) * 1e6
    if wall_us <= 0:
        return None
    return {
        kind: {which: round(100.0 * (after["stalls_us"][kind][which]
                                     - before["stalls_us"][kind][which]) / wall_us, 1)
               for which in after["stalls_us"][kind] if which in before["stalls_us"][kind]}
        for kind in after["stalls_us"]
    }


def stalls_text(stalls):
    """A L{pressure_share}: CPU some, I/O some and full, in words."""
    cpu, io = stalls.get("cpu", {}), stalls.get("io", {})

    def pct(kind, which):
        return f"{kind[which]:.1f}%" if which in kind else "unknown"

    return (f"some task waiting for a CPU {pct(cpu, 'some')}, for I/O {pct(io, 'some')} "
            f"(every task {pct(io, 'full')})")


def repo_state():
    """Commit the knocker figures belong to, and whether knocker/ had
    uncommitted changes (read-only git calls)."""
    def git(*args):
        r = subprocess.run(["git", "-C", REPO] + list(args), capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None
    head = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--", "knocker", "twisted")
    return {"head": head, "knocker_dirty": bool(dirty)} if head else None


# --------------------------------------------------------------------------
# pacing

def random_pause(lo, hi, rng=random):
    """Sleep a random time in [lo, hi] seconds. A fixed gap can phase-lock
    with a daemon's polling timer (fwknopd's pcap loop sleeps 100 ms) and
    report one lucky or unlucky phase every time; a random one samples it."""
    time.sleep(rng.uniform(lo, hi))


def wait_for(predicate, timeout, interval=0.002):
    """Poll predicate until it returns something truthy or timeout passes."""
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v:
            return v
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


# --------------------------------------------------------------------------
# ports and sockets

def _proc_net_ports(kinds, state, skip=None):
    ports = set()
    for kind in kinds:
        try:
            with open("/proc/net/" + kind) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if (state is None or parts[3] == state) and parts[3] != skip:
                        ports.add(int(parts[1].rsplit(":", 1)[1], 16))
        except OSError:
            pass
    return ports


def tcp_listening(port):
    """True if some socket listens on TCP port (read from /proc, so checking
    does not itself connect and count as a knock)."""
    return port in _proc_net_ports(("tcp", "tcp6"), "0A")


def udp_bound(port):
    return port in _proc_net_ports(("udp", "udp6"), None)


# Ports already handed out in this process.  A knockd sequence or a flood
# block is not listened on, so "free now" is not enough: without this, one
# entry's block can land on another's ports (knockd's knocks then hit
# knocker's pool and lock the client out).
_CLAIMED = set()


def free_port_block(count, lo=20000, hi=60000, rng=random, contiguous=False, avoid=()):
    """Pick `count` TCP+UDP ports on 127.0.0.1 nobody uses now and no earlier
    call handed out. With contiguous=True return a free run of `count`."""
    # Every socket but those in TIME_WAIT (06), which do not stop a bind
    # with SO_REUSEADDR and which any busy run leaves all over the range.
    used = (_proc_net_ports(("tcp", "tcp6"), None, skip="06")
            | _proc_net_ports(("udp", "udp6"), None) | set(avoid) | _CLAIMED)
    for _ in range(1000):
        if contiguous:
            start = rng.randrange(lo, hi - count)
            block = list(range(start, start + count))
        else:
            block = rng.sample(range(lo, hi), count)
        if used.isdisjoint(block) and all(_can_bind(p) for p in block[:64]):
            _CLAIMED.update(block)
            return block
    raise RuntimeError("no free block of %d ports" % count)


def _can_bind(port):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def tcp_ext_counters(names=("ListenOverflows", "ListenDrops", "TCPBacklogDrop")):
    """Kernel TcpExt counters (system-wide), to tell a target that dropped
    connections in its accept queue from one that lost them itself."""
    out = {}
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
        for head, vals in zip(lines[::2], lines[1::2]):
            if head.startswith("TcpExt:"):
                table = dict(zip(head.split()[1:], (int(v) for v in vals.split()[1:])))
                out = {n: table.get(n, 0) for n in names}
    except OSError:
        pass
    return out


def counter_delta(before, after):
    return {k: after.get(k, 0) - v for k, v in before.items()}


# --------------------------------------------------------------------------
# processes

class Daemon:
    """A background process in its own session, its output in a log file,
    killed with its whole process group by stop()."""

    # When set (by --daemon-nofile), every daemon starts with this soft
    # RLIMIT_NOFILE: 1024 is what a daemon gets from many init systems.
    nofile = None

    def __init__(self, argv, log_path, env=None, cwd=None):
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "ab")
        preexec = None
        if Daemon.nofile:
            import resource
            soft = Daemon.nofile

            def preexec():
                hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
                resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, hard), hard))
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                     start_new_session=True, preexec_fn=preexec)
        self.pid = self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def log_text(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def wait_log(self, needle, timeout):
        return wait_for(lambda: needle in self.log_text() or not self.alive(), timeout,
                        interval=0.02) and needle in self.log_text()

    def cpu_seconds(self):
        """utime+stime of the daemon and its reaped children (the actions)."""
        try:
            with open("/proc/%d/stat" % self.pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks = sum(int(x) for x in fields[11:15])
            return ticks / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return None

    def stop(self, grace=3.0):
        """SIGTERM the group, then SIGKILL whatever is left. Idempotent."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)  # stray children of the group
        except (ProcessLookupError, PermissionError):
            pass
        if self.proc.poll() is None:
            self.proc.wait(grace)
        self._log.close()
        return self.proc.returncode


def run_timed(argv, timeout=15.0, env=None, cwd=None):
    """Spawn argv, wait for it; returns (start_ns, exit_ns, returncode, output)."""
    t0 = now_ns()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, env=env, cwd=cwd)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
        return t0, now_ns(), None, out.decode(errors="replace")
    return t0, now_ns(), p.returncode, out.decode(errors="replace")


class StampFile:
    """Reads the marker's stamp file line by line as runs append to it."""

    def __init__(self, path):
        self.path = path
        self.seen = 0

    def lines(self):
        try:
            with open(self.path) as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def next_stamp(self, timeout):
        """Wait for one new stamp; returns (ns, args) or None on timeout.
        Extra stamps (an action run twice) are consumed and reported."""
        got = wait_for(lambda: len(self.lines()) > self.seen, timeout)
        if not got:
            return None
        lines = self.lines()
        line = lines[self.seen]
        self.seen = len(lines)
        ns, _, rest = line.partition(" ")
        return int(ns), rest

    def settle(self):
        """Skip anything that arrived late (after a timed-out run)."""
        self.seen = len(self.lines())


if __name__ == "__main__":
    if sys.argv[1:] == ["build"]:
        for name, path in ensure_built(verbose=True).items():
            print(name, path)
    else:
        print("usage: common.py build", file=sys.stderr)
        sys.exit(2)
