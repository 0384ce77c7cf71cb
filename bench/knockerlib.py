"""
Helpers shared by the knocker-only benchmarks (inprocess, scale, clients,
durability): finding free port blocks, writing a server configuration,
running C{twistd knockserver} and timing its start-up, reading RSS, and a
blocking-socket client that does one HELLO -> GRANT exchange.

These benchmarks import knocker itself, so they run with the venv's Python;
the repository goes first on C{sys.path} (and on the daemon's PYTHONPATH)
so the figures belong to this tree, installed or not.
"""

import os
import random
import socket
import sys
import time
from datetime import datetime

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for _path in (HERE, REPO):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import common  # noqa: E402

DEADLINE_HARD = 600.0  # no benchmark here runs longer than this, whatever its options


def env() -> dict:
    """The environment for a daemon: this tree first on PYTHONPATH."""
    e = dict(os.environ)
    e["PYTHONPATH"] = REPO + os.pathsep + e.get("PYTHONPATH", "")
    return e


def python() -> str:
    """The interpreter to measure: this one if it can import knocker (the
    venv normally), else the venv's."""
    return sys.executable


def twistd() -> list:
    from knocker.admin.demo import twistd_command

    return twistd_command()


def used_ports() -> set:
    """Every TCP/UDP port some socket holds now (from /proc: no probing)."""
    return common._proc_net_ports(("tcp", "tcp6", "udp", "udp6"), None)


def free_range(count, preferred=(), lo=10000, hi=32767):
    """A contiguous block of C{count} ports nobody uses now, as (low, high):
    the first of C{preferred} starts that is free, else a random free block
    in [lo, hi] (below the kernel's ephemeral range, so no outgoing
    connection can take one of them mid-run)."""
    used = used_ports()
    starts = list(preferred) + [random.randrange(lo, hi - count + 2) for _ in range(200)]
    for start in starts:
        block = range(start, start + count)
        if block[-1] <= hi and used.isdisjoint(block):
            return start, start + count - 1
    raise RuntimeError(f"no free block of {count} TCP ports in {lo}-{hi}")


def busy_ports(ports) -> list:
    return sorted(used_ports() & set(ports))


def write_config(path, **keys) -> str:
    keys.setdefault("admin", "")  # no console: daemons in parallel would share its port
    with open(path, "w") as handle:
        handle.write("[server]\n")
        for key, value in keys.items():
            handle.write(f"{key.replace('_', '-')} = {value}\n")
    return path


def rss_kb(pid, field="VmRSS"):
    """Resident set size (or VmHWM, the peak) of C{pid} in kB, from /proc."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def parse_time(text) -> float:
    """The audit log's ISO 8601 UTC time as POSIX seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class AuditTail:
    """Reads an audit log's new complete lines as they arrive (only the new
    bytes each time, so polling a busy log stays cheap)."""

    def __init__(self, path):
        self.path = path
        self._offset = 0
        self._partial = b""

    def events(self):
        import json

        try:
            with open(self.path, "rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        return [json.loads(line) for line in lines if line]


class KnockerDaemon:
    """
    C{twistd -n --pidfile= knockserver --config FILE} in its own session
    (stopped with its process group). L{wait_ready} polls the audit log for
    the C{start} event; the ready time is taken from that event's own
    timestamp (microseconds, the daemon's wall clock) minus the wall clock
    just before the spawn, so the polling interval does not add to it.
    """

    def __init__(self, config_path, audit_path, workdir, log_name="twistd.out"):
        self.audit_path = audit_path
        self._tail = AuditTail(audit_path)
        self.spawned_wall = time.time()
        self.spawned = time.monotonic()
        self.proc = common.Daemon(
            twistd() + ["-n", "--pidfile=", "knockserver", "--config", config_path],
            os.path.join(workdir, log_name), env=env(), cwd=workdir)
        self.pid = self.proc.pid
        self.start_event = None
        self.ready_s = None
        self.ready_rss_kb = None

    def wait_ready(self, timeout=60.0, poll=0.002):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self._tail.events():
                if event.get("event") == "start":
                    # RSS first: the nearest reading to the moment of readiness.
                    self.ready_rss_kb = rss_kb(self.pid)
                    self.start_event = event
                    self.ready_s = parse_time(event["time"]) - self.spawned_wall
                    self.seen_s = time.monotonic() - self.spawned
                    return event
            if not self.proc.alive():
                raise RuntimeError("knockserver exited %s before ready:\n%s"
                                   % (self.proc.proc.returncode, self.proc.log_text()[-3000:]))
            time.sleep(poll)
        self.stop()
        raise RuntimeError(f"knockserver not ready in {timeout}s:\n" + self.proc.log_text()[-3000:])

    @property
    def central_port(self):
        return self.start_event["central_port"]

    def rss_kb(self, field="VmRSS"):
        return rss_kb(self.pid, field)

    def stop(self):
        return self.proc.stop(grace=10.0)


class Source:
    """Rotates the client's source address over 127.0.0.2-127.0.0.N: with
    lockout-scope = source each address has its own slot, so an abandoned
    knock whose close the server has not processed yet cannot make the next
    exchange BUSY."""

    def __init__(self, first=2, count=200):
        self._addresses = [f"127.0.{(i >> 8) & 255}.{i & 255}" for i in range(first, first + count)]
        self._next = 0

    def next(self):
        address = self._addresses[self._next]
        self._next = (self._next + 1) % len(self._addresses)
        return address


def grant_exchange(port, knockfile, source="127.0.0.1", host="127.0.0.1", timeout=10.0):
    """
    One central-port exchange on a blocking socket: connect, HELLO,
    CHALLENGE, PROOF, GRANT (its HMAC checked by
    L{knocker.core.handshake.ClientHandshake}), then close, which abandons the
    knock (audit C{fail abandoned}, no lockout; the number stays burned).

    @return: (seconds from HELLO sent to GRANT checked, seconds from
        connect() to GRANT checked, the reply's class name, knock index)
    """
    from knocker.core import handshake as hs

    machine = hs.ClientHandshake(knockfile)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((source, 0))
        t_connect = time.perf_counter()
        sock.connect((host, port))
        t_hello = time.perf_counter()
        sock.sendall(machine.hello().line)
        buffer = b""
        index = None
        while True:
            while b"\n" not in buffer:
                data = sock.recv(4096)
                if not data:
                    return None, None, "closed", None
                buffer += data
            line, _, buffer = buffer.partition(b"\n")
            action = machine.receive(line)
            if isinstance(action, hs.SendLine):
                sock.sendall(action.line)
                continue
            t_end = time.perf_counter()
            if isinstance(action, hs.KnockPorts):
                index = action.index
                kind = "Grant"
            else:
                kind = type(action.reply).__name__
            return t_end - t_hello, t_end - t_connect, kind, index
    finally:
        sock.close()


def exchange_window(daemons, threads, seconds, knockfile, first_source=2, max_each=20000):
    """
    C{threads} clients doing HELLO -> GRANT back to back for C{seconds},
    spread over C{daemons} (each with C{central_port}, and C{host} or
    127.0.0.1), each from its own run of source addresses.  Returns
    (exchanges per second, connect -> GRANT seconds of each, what was
    not a grant).
    """
    import threading

    results = [[] for _ in range(threads)]
    errors = []
    end = time.perf_counter() + seconds

    def worker(n):
        daemon = daemons[n % len(daemons)]
        host = getattr(daemon, "host", "127.0.0.1")
        source = Source(first=first_source + n * 50, count=50)
        try:
            while time.perf_counter() < end and len(results[n]) < max_each:
                _, t_connect, kind, _ = grant_exchange(
                    daemon.central_port, knockfile, source=source.next(), host=host)
                if kind != "Grant":
                    errors.append(kind)
                    if len(errors) > 20:
                        return
                    continue
                results[n].append(t_connect)
        except Exception as error:  # noqa: BLE001 - reported, not hidden
            errors.append(repr(error))

    started = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(seconds + 30)
    elapsed = time.perf_counter() - started
    lat = [x for r in results for x in r]
    return len(lat) / elapsed, lat, errors


def check_venv():
    """Exit with a clear message when knocker or twisted cannot be imported."""
    try:
        import knocker  # noqa: F401
        import twisted  # noqa: F401
    except ImportError as error:
        raise SystemExit(f"{error}: run with the venv's Python (.venv/bin/python)") from None

