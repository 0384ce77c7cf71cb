"""Two network namespaces joined by a veth pair, for the benchmarks.

    server namespace  <name>-s   kb<tag>s  10.77.0.1/24
                                    |  veth
    client namespace  <name>-c   kb<tag>c  10.77.0.2/24

So the daemons sniff and listen on a real (virtual) Ethernet interface and
the clients' packets cross it, instead of everything staying on `lo`.

Names are `kbench-<pid>-<random>-s` / `-c` (interfaces `kb<random>s` /
`kb<random>c`), unique per run.  The interfaces are created straight into
the namespaces, so nothing of the host (its interfaces, routes, firewall)
is touched.  `Veth.destroy()` kills whatever still runs in the two
namespaces (only what the benchmark started can be there) and deletes them;
it never raises and may be called twice.  `create()` first removes what a
killed run left behind (namespaces `kbench-<pid>-...` whose pid is gone).

Running things inside: `with veth.inside("server"): subprocess.Popen(...)`
moves this (single-threaded) harness into the namespace with setns(2) for
the duration of the block, so a child spawned there is born in it with no
`ip netns exec` (and its exec, mount namespace and /sys remount) between
the harness's clock and the program; sockets made there stay there.
`Loopback` offers the same interface for the default mode and does nothing.

Kept free of third-party imports, like common.py.
"""

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import time

PREFIX = "kbench"
CLONE_NEWNET = 0x40000000
SERVER_IP, CLIENT_IP, PREFIXLEN = "10.77.0.1", "10.77.0.2", 24

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "setns: " + os.strerror(err))


def ip_cmd():
    return shutil.which("ip") or next(
        (p for p in ("/usr/sbin/ip", "/sbin/ip", "/bin/ip") if os.access(p, os.X_OK)), None)


def nft_cmd():
    return shutil.which("nft") or next(
        (p for p in ("/usr/sbin/nft", "/sbin/nft") if os.access(p, os.X_OK)), None)


def available():
    """(True, "") or (False, why not)."""
    if os.geteuid() != 0:
        return False, "network namespaces need root"
    if ip_cmd() is None:
        return False, "the ip command (iproute2) is not installed"
    return True, ""


def _run(argv, timeout=10, check=True):
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError("%s: exit %s: %s" % (" ".join(argv), r.returncode, r.stderr.strip()))
    return r


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _kill_inside(ip, name):
    """SIGKILL every process in namespace `name` (ours: the name is)."""
    r = _run([ip, "netns", "pids", name], check=False)
    for word in r.stdout.split():
        if word.isdigit():
            try:
                os.kill(int(word), signal.SIGKILL)
            except OSError:
                pass


def remove_stale():
    """Delete kbench-<pid>-... namespaces whose process <pid> is gone."""
    ip = ip_cmd()
    if ip is None:
        return []
    removed = []
    for line in _run([ip, "netns", "list"], check=False).stdout.splitlines():
        name = line.split(" ", 1)[0]
        parts = name.split("-")
        if len(parts) != 4 or parts[0] != PREFIX or not parts[1].isdigit():
            continue
        if _pid_alive(int(parts[1])):
            continue
        _kill_inside(ip, name)
        if _run([ip, "netns", "del", name], check=False).returncode == 0:
            removed.append(name)
    return removed


class Loopback:
    """The default mode: everything on 127.0.0.1 / lo, in this namespace."""

    mode = "loopback"
    server_ip = client_ip = "127.0.0.1"
    server_if = "lo"

    @contextlib.contextmanager
    def inside(self, role):
        yield

    def describe(self):
        return {"mode": self.mode}

    def destroy(self):
        pass


class Veth:
    mode = "veth"
    server_ip, client_ip = SERVER_IP, CLIENT_IP

    def __init__(self):
        self.ip = ip_cmd() or "ip"
        tag = secrets.token_hex(4)
        base = "%s-%d-%s" % (PREFIX, os.getpid(), tag)
        self.names = {"server": base + "-s", "client": base + "-c"}
        self.ifnames = {"server": "kb%ss" % tag, "client": "kb%sc" % tag}
        self.server_if = self.ifnames["server"]
        self._fds = {}
        self._home = None
        self._where = None
        self._created = []

    # building ------------------------------------------------------------
    def create(self):
        """Make both namespaces, the pair and the addresses; wait until the
        client reaches the server.  On failure, undo and raise."""
        remove_stale()
        try:
            ip = self.ip
            for role in ("server", "client"):
                _run([ip, "netns", "add", self.names[role]])
                self._created.append(self.names[role])
                _run([ip, "-n", self.names[role], "link", "set", "lo", "up"])
            _run([ip, "-n", self.names["server"], "link", "add", self.ifnames["server"],
                  "type", "veth", "peer", "name", self.ifnames["client"],
                  "netns", self.names["client"]])
            for role, addr in (("server", SERVER_IP), ("client", CLIENT_IP)):
                ns, dev = self.names[role], self.ifnames[role]
                _run([ip, "-n", ns, "addr", "add", "%s/%d" % (addr, PREFIXLEN), "dev", dev])
                _run([ip, "-n", ns, "link", "set", dev, "up"])
            self._home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            for role in ("server", "client"):
                self._fds[role] = os.open("/run/netns/" + self.names[role],
                                          os.O_RDONLY | os.O_CLOEXEC)
            self._wait_reachable()
        except BaseException:
            self.destroy()
            raise
        return self

    def _wait_reachable(self, timeout=5.0):
        import socket
        deadline = time.monotonic() + timeout
        while True:
            with self.inside("client"):
                s = socket.socket()
            s.settimeout(0.5)
            try:
                s.connect((SERVER_IP, 9))
                return
            except ConnectionRefusedError:
                return  # a RST from the server: the link works
            except OSError as e:
                if time.monotonic() > deadline:
                    raise RuntimeError("client cannot reach %s over the veth: %s"
                                       % (SERVER_IP, e)) from None
                time.sleep(0.05)
            finally:
                s.close()

    # using ---------------------------------------------------------------
    @contextlib.contextmanager
    def inside(self, role):
        """Run this block (and what it spawns) in `role`'s namespace."""
        if self._where is not None:
            raise RuntimeError("already inside %s" % self._where)
        _setns(self._fds[role])
        self._where = role
        try:
            yield
        finally:
            _setns(self._home)
            self._where = None

    def run(self, role, argv, **kw):
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 10)
        if kw.get("input") is None:
            kw.pop("input", None)
            kw["stdin"] = subprocess.DEVNULL
        with self.inside(role):
            return subprocess.run(argv, **kw)

    def describe(self):
        return {"mode": self.mode, "namespaces": self.names, "interfaces": self.ifnames,
                "server_ip": SERVER_IP, "client_ip": CLIENT_IP}

    def destroy(self):
        """Kill what runs inside, delete the namespaces.  Never raises."""
        if self._where is not None:
            try:
                _setns(self._home)
            except OSError:
                pass
            self._where = None
        for fd in list(self._fds.values()) + ([self._home] if self._home is not None else []):
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds, self._home = {}, None
        for name in self._created:
            try:
                _kill_inside(self.ip, name)
                _run([self.ip, "netns", "del", name], check=False)
            except Exception:  # noqa: BLE001 - cleanup must go on
                pass
        self._created = []


def make(mode):
    """Loopback() or a created Veth()."""
    if mode == "veth":
        ok, why = available()
        if not ok:
            raise RuntimeError(why)
        return Veth().create()
    return Loopback()
