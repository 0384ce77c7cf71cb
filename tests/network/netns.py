"""
Three network namespaces for real-network tests: server, client, attacker.

::

    client  eth0 10.231.0.2/24 fd00:6b6e:6f63::2/64 ──┐
                                                      ├─ br0 in server
    attacker eth0 10.231.0.3/24 fd00:6b6e:6f63::3/64 ─┘  10.231.0.1/24
                                                         fd00:6b6e:6f63::1/64

Everything lives inside the namespaces: the veth pairs are created straight
into them and the bridge sits in the server namespace, so the host's own
interfaces, routes and firewall are never touched and the subnet exists
nowhere else. Namespace names are ``knk-<pid>-<random>-<role>``, unique per
run.

Use it from a trial ``TestCase``::

    ok, reason = netns.available()
    if not ok:
        raise SkipTest(reason)
    topology = netns.Topology()
    self.addCleanup(topology.destroy)
    topology.create()
    topology.run("server", ["nft", "list", "ruleset"])
    listener = topology.spawn("server", [...])

``destroy`` kills every process ``spawn`` started (and any process still left
inside the namespaces, which can only be the test's), then deletes the
namespaces. It never raises and may be called more than once. ``create``
undoes its own partial work when a step fails, and first removes what a run
killed outright left behind (``remove_stale``: namespaces of this prefix whose
creating process is gone).

Every wait here is bounded.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from typing import Mapping, Sequence

PREFIX = "knk"
ROLES = ("server", "client", "attacker")

SUBNET4 = "10.231.0.0/24"
SUBNET6 = "fd00:6b6e:6f63::/64"
ADDRESSES4 = {"server": "10.231.0.1", "client": "10.231.0.2", "attacker": "10.231.0.3"}
ADDRESSES6 = {
    "server": "fd00:6b6e:6f63::1",
    "client": "fd00:6b6e:6f63::2",
    "attacker": "fd00:6b6e:6f63::3",
}

#: The helper script run inside the namespaces (listen / connect).
PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "probe.py")

COMMAND_TIMEOUT = 10.0


class NetnsError(Exception):
    """
    A command needed to build or use the namespaces failed.
    """


def _ip() -> str | None:
    return shutil.which("ip") or next(
        (p for p in ("/usr/sbin/ip", "/sbin/ip", "/bin/ip") if os.access(p, os.X_OK)),
        None,
    )


def _nft() -> str | None:
    return shutil.which("nft") or next(
        (p for p in ("/usr/sbin/nft", "/sbin/nft") if os.access(p, os.X_OK)), None
    )


def _run(argv: Sequence[str], timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess:
    """
    Run C{argv} (no shell), capture output; raise L{NetnsError} on failure.
    """
    try:
        result = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NetnsError(f"{' '.join(argv)}: {e}") from e
    if result.returncode != 0:
        raise NetnsError(
            f"{' '.join(argv)}: exit {result.returncode}: {result.stderr.strip()}"
        )
    return result


def _unique(role: str = "") -> str:
    name = f"{PREFIX}-{os.getpid()}-{secrets.token_hex(4)}"
    return f"{name}-{role}" if role else name


_available: tuple[bool, str] | None = None


def available(need_nft: bool = True) -> tuple[bool, str]:
    """
    Can this process build the namespaces (and use nftables in them)?

    @return: C{(True, "")} or C{(False, reason)}, the reason fit for a skip
        message. The probe (a namespace with a bridge and an nft call) runs
        once per process.
    """
    global _available
    if sys.platform != "linux":
        return False, "network namespaces need Linux"
    if os.geteuid() != 0:
        return False, "network namespace tests need root"
    ip = _ip()
    if ip is None:
        return False, "the ip command (iproute2) is not installed"
    nft = _nft()
    if need_nft and nft is None:
        return False, "the nft command (nftables) is not installed"
    if _available is None:
        _available = _probe(ip, nft)
    return _available


def _probe(ip: str, nft: str | None) -> tuple[bool, str]:
    name = _unique("probe")
    try:
        _run([ip, "netns", "add", name])
    except NetnsError as e:
        return False, f"cannot create a network namespace: {e}"
    try:
        _run([ip, "-n", name, "link", "set", "lo", "up"])
        _run([ip, "-n", name, "link", "add", "br0", "type", "bridge"])
        _run([ip, "-n", name, "link", "add", "v0", "type", "veth", "peer", "name", "v1"])
        if nft is not None:
            _run([ip, "netns", "exec", name, nft, "list", "ruleset"])
    except NetnsError as e:
        return False, f"network namespace unusable: {e}"
    finally:
        try:
            _run([ip, "netns", "del", name])
        except NetnsError:
            pass
    return True, ""


def remove_stale(prefix: str = PREFIX) -> list[str]:
    """
    Delete the namespaces C{prefix}-<pid>-... whose process <pid> no longer
    exists (a test run killed before its cleanup), killing what still runs
    in them, which can only be what that run started.

    @return: the names removed.
    """
    ip = _ip()
    if ip is None:
        return []
    try:
        listing = _run([ip, "netns", "list"]).stdout
    except NetnsError:
        return []
    removed = []
    for line in listing.splitlines():
        name = line.split(" ", 1)[0]
        parts = name.split("-")
        if len(parts) < 3 or parts[0] != prefix or not parts[1].isdigit():
            continue
        if _alive(int(parts[1])):
            continue
        for pid in _netns_pids(ip, name):
            _kill(pid)
        try:
            _run([ip, "netns", "del", name])
            removed.append(name)
        except NetnsError:
            pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _netns_pids(ip: str, name: str) -> list[int]:
    try:
        out = _run([ip, "netns", "pids", name]).stdout
    except NetnsError:
        return []
    return [int(word) for word in out.split() if word.isdigit()]


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


class Topology:
    """
    The three namespaces, their processes, and how to run things in them.

    @ivar names: role -> namespace name.
    @ivar address4: role -> IPv4 address (str).
    @ivar address6: role -> IPv6 address (str).
    """

    def __init__(self, prefix: str = PREFIX) -> None:
        self.ip = _ip() or "ip"
        #: the nft program, for commands run in the namespaces
        self.nft = _nft() or "nft"
        tag = f"{prefix}-{os.getpid()}-{secrets.token_hex(4)}"
        self.names = {role: f"{tag}-{role}" for role in ROLES}
        self.address4 = dict(ADDRESSES4)
        self.address6 = dict(ADDRESSES6)
        self._created: list[str] = []
        self._processes: list[subprocess.Popen] = []

    # -- building ----------------------------------------------------------

    def create(self) -> None:
        """
        Make the namespaces, the bridge, the veth pairs and the addresses, and
        wait (a few seconds at most) until client and attacker reach the
        server. On any failure everything made so far is removed and
        L{NetnsError} raised.
        """
        remove_stale()
        try:
            self._create()
            self.wait_reachable()
        except BaseException:
            self.destroy()
            raise

    def _create(self) -> None:
        ip = self.ip
        server = self.names["server"]
        for role in ROLES:
            _run([ip, "netns", "add", self.names[role]])
            self._created.append(self.names[role])
            self._sysctl(role, "net.ipv6.conf.all.accept_dad", "0")
            self._sysctl(role, "net.ipv6.conf.default.accept_dad", "0")
            _run([ip, "-n", self.names[role], "link", "set", "lo", "up"])
        _run([ip, "-n", server, "link", "add", "br0", "type", "bridge"])
        for role in ("client", "attacker"):
            port = f"{role[0]}0"  # c0, a0: the server-side end
            _run([ip, "-n", server, "link", "add", port, "type", "veth",
                  "peer", "name", "eth0", "netns", self.names[role]])
            _run([ip, "-n", server, "link", "set", port, "master", "br0"])
            _run([ip, "-n", server, "link", "set", port, "up"])
            self._address(role, "eth0")
        self._address("server", "br0")

    def _sysctl(self, role: str, key: str, value: str) -> None:
        path = "/proc/sys/" + key.replace(".", "/")
        _run([self.ip, "netns", "exec", self.names[role], "sh", "-c",
              'echo "$1" > "$2"', "sh", value, path])

    def _address(self, role: str, dev: str) -> None:
        ns = self.names[role]
        _run([self.ip, "-n", ns, "addr", "add", f"{self.address4[role]}/24", "dev", dev])
        _run([self.ip, "-n", ns, "addr", "add", f"{self.address6[role]}/64", "dev", dev,
              "nodad"])
        _run([self.ip, "-n", ns, "link", "set", dev, "up"])

    def wait_reachable(self, timeout: float = 5.0) -> None:
        """
        Wait until client and attacker get an answer (a refusal will do) from
        a closed TCP port of the server, over IPv4 and IPv6.
        """
        deadline = time.monotonic() + timeout
        pending = [(role, family) for role in ("client", "attacker") for family in (4, 6)]
        while pending:
            role, family = pending[0]
            host = self.address4["server"] if family == 4 else self.address6["server"]
            outcome = self.connect(role, host, 9, timeout=0.5)
            if outcome in ("ok", "refused"):
                pending.pop(0)
            elif time.monotonic() > deadline:
                raise NetnsError(f"{role} cannot reach the server over IPv{family}: {outcome}")
            else:
                time.sleep(0.1)

    # -- using -------------------------------------------------------------

    def link_address(self, role: str) -> str:
        """
        The MAC address of the interface that carries C{role}'s addresses
        (br0 in the server namespace, eth0 elsewhere), for frames built by
        hand.
        """
        import json

        dev = "br0" if role == "server" else "eth0"
        out = self.run(role, [self.ip, "-j", "link", "show", "dev", dev]).stdout
        return json.loads(out)[0]["address"]

    def command(self, role: str, argv: Sequence[str]) -> list[str]:
        """
        The argv that runs C{argv} inside C{role}'s namespace.
        """
        return [self.ip, "netns", "exec", self.names[role], *argv]

    def run(
        self,
        role: str,
        argv: Sequence[str],
        *,
        timeout: float = COMMAND_TIMEOUT,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        unset: Sequence[str] = (),
        input: str | None = None,
    ) -> subprocess.CompletedProcess:
        """
        Run C{argv} in C{role}'s namespace and wait (at most C{timeout}) for it.

        @param env: extra environment variables on top of ours.
        @param unset: names of our environment variables not to pass on.
        @param check: raise L{NetnsError} on a non-zero exit.
        @return: the completed process, output captured as text.
        """
        full_env = {k: v for k, v in os.environ.items() if k not in unset}
        if env:
            full_env.update(env)
        try:
            result = subprocess.run(
                self.command(role, argv),
                input=input,
                stdin=None if input is not None else subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=full_env,
            )
        except subprocess.TimeoutExpired as e:
            raise NetnsError(f"in {role}: {' '.join(argv)}: no exit within {timeout}s") from e
        if check and result.returncode != 0:
            raise NetnsError(
                f"in {role}: {' '.join(argv)}: exit {result.returncode}: "
                f"{result.stderr.strip()}"
            )
        return result

    def spawn(
        self,
        role: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        **kwargs,
    ) -> subprocess.Popen:
        """
        Start a long-running C{argv} in C{role}'s namespace, in its own process
        group; L{destroy} stops it. Other keyword arguments go to C{Popen}
        (stdin defaults to /dev/null).
        """
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        process = subprocess.Popen(
            self.command(role, argv), env=full_env, start_new_session=True, **kwargs
        )
        self._processes.append(process)
        return process

    def stop(self, process: subprocess.Popen, grace: float = 2.0) -> int | None:
        """
        Stop one spawned process: SIGTERM to its group, then SIGKILL after
        C{grace} seconds. Returns its exit status.
        """
        if process.poll() is None:
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                try:
                    process.wait(grace)
                except subprocess.TimeoutExpired:
                    pass
        else:
            # the leader is gone; its group may not be
            _signal_group(process, signal.SIGKILL)
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()
        return process.returncode

    def listen(self, role: str, port: int, timeout: float = 5.0) -> subprocess.Popen:
        """
        Start the probe listener (accepts, writes a line, closes) on C{port} of
        C{role}, on all IPv4 and IPv6 addresses; return once it listens.
        """
        process = self.spawn(
            role,
            [sys.executable, PROBE, "listen", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        line = read_line(process, timeout)
        if line.strip() != "listening":
            self.stop(process)
            raise NetnsError(f"listener on {role}:{port} did not start: {line!r}")
        return process

    def connect(self, role: str, host: str, port: int, timeout: float = 1.5) -> str:
        """
        Try one TCP connection from C{role} to C{host}:C{port}.

        @return: C{"ok"} (connected and read the listener's line), C{"refused"},
            C{"timeout"} (no answer: dropped), or C{"error: ..."}.
        """
        try:
            result = self.run(
                role,
                [sys.executable, PROBE, "connect", host, str(port), str(timeout)],
                timeout=timeout + COMMAND_TIMEOUT,
                check=False,
            )
        except NetnsError as e:
            return f"error: {e}"
        return result.stdout.strip() or f"error: {result.stderr.strip()}"

    # -- cleaning up ---------------------------------------------------------

    def destroy(self) -> None:
        """
        Stop every spawned process, kill whatever still runs inside our
        namespaces, delete the namespaces. Never raises; safe to repeat.
        """
        while self._processes:
            process = self._processes.pop()
            try:
                self.stop(process)
            except Exception:
                pass
        for name in reversed(self._created):
            for pid in _netns_pids(self.ip, name):
                _kill(pid)
            try:
                _run([self.ip, "netns", "del", name])
            except NetnsError:
                pass
        self._created = []

    def __enter__(self) -> "Topology":
        self.create()
        return self

    def __exit__(self, *exc_info) -> None:
        self.destroy()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except OSError:
        pass


def read_line(process: subprocess.Popen, timeout: float) -> str:
    """
    Read one line of C{process}'s stdout, waiting at most C{timeout} seconds.
    """
    import selectors

    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            return ""
    return process.stdout.readline()
