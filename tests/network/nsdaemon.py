"""
A real ``twistd -n knockserver`` in the server namespace, for the attack
tests (spoofing, scans): a base L{TestCase} that builds the namespaces,
writes the daemon's configuration, generates alice's portknock file, starts
the daemon and reads its audit log, and runs the clients and tools of the
other namespaces.

The success action is a recorder script by default, so the attack tests
need no nftables and are about what the daemon sees and decides;
test_knock.py puts the real nftables actions in its place.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from twisted.internet.endpoints import quoteStringArgument
from twisted.trial.unittest import SkipTest, TestCase

from knocker.admin.demo import twistd_command
from tests.helpers.processes import write_recorder

from . import netns

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
HOLDKNOCK = os.path.join(HERE, "holdknock.py")
RAWTCP = os.path.join(HERE, "rawtcp.py")
CENTRAL = 7000


def read_audit(path: str) -> list[dict]:
    events = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    events.append(json.loads(line))
                except ValueError:
                    pass  # a line being written
    return events


def knock_ports(path: str, index: int) -> list[int]:
    """
    The ports of knock C{index} in a portknock file (docs/spec.md section 3).
    """
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            number, _, ports = line.strip().partition(" ")
            if number == str(index):
                return [int(port) for port in ports.split(",")]
    raise LookupError(f"no knock {index} in {path}")


class Held:
    """
    A client in a namespace holding its central connection after GRANT
    (holdknock.py).
    """

    def __init__(self, net: netns.Topology, process: subprocess.Popen):
        self._net = net
        self.process = process
        line = netns.read_line(process, 20)
        if not line:
            net.stop(process)
            raise AssertionError("the held client said nothing within 20 s")
        self.first = json.loads(line)
        self.index = self.first.get("grant")
        self.ports = self.first.get("ports", [])

    def verdict(self, command: str, seconds: float = 40) -> str | None:
        """
        Send C{command} (knock / wait) and return the verdict line.
        """
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        line = netns.read_line(self.process, seconds)
        self._net.stop(self.process)
        if not line:
            raise AssertionError(f"no verdict from the held client after {command!r}")
        return json.loads(line)["verdict"]


class DaemonInNamespace(TestCase):
    """
    Subclasses call L{start_server} with the configuration keys they need.
    """

    timeout = 120
    need_nft = False

    def setUp(self) -> None:
        ok, reason = netns.available(need_nft=self.need_nft)
        if not ok:
            raise SkipTest(reason)
        # not self.mktemp(): under pytest that lands in the working directory
        self.directory = tempfile.mkdtemp(prefix="knocker-netns-")
        self.addCleanup(shutil.rmtree, self.directory, ignore_errors=True)
        self.net = netns.Topology()
        self.addCleanup(self.net.destroy)
        self.net.create()
        self.env = {
            "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
        }
        self.audit_path = os.path.join(self.directory, "audit.log")
        self.knock_file = os.path.join(self.directory, "alice.knock")
        self.daemon = None

    # -- the daemon ----------------------------------------------------------

    def server_address(self, family: int = 4) -> str:
        return self.net.address4["server"] if family == 4 else self.net.address6["server"]

    def start_server(self, family: int = 4, knocks: int = 20, ports: int = 4, **keys) -> None:
        """
        Write the configuration (C{keys}, underscores for dashes, on top of
        the defaults here), generate alice's file, start the daemon in the
        server namespace on its IPv4 or IPv6 address, wait for its start.
        """
        address = self.server_address(family)
        on_success, self.success_out = write_recorder(self.directory, "on-success")
        values = {
            "central": f"tcp{'6' if family == 6 else ''}:{CENTRAL}:"
                       f"interface={quoteStringArgument(address)}",
            "interface": address,
            "state-dir": os.path.join(self.directory, "state"),
            "pool-size": "100",
            "pool-range": "20000-20599",
            "knock-window": "30",
            "lockout": "60",
            "on-success": on_success,
            "script-timeout": "5",
            "audit-log": self.audit_path,
            "admin": "",
        }
        values.update({key.replace("_", "-"): str(value) for key, value in keys.items()})
        self.config_path = os.path.join(self.directory, "server.conf")
        with open(self.config_path, "w", encoding="utf-8") as handle:
            handle.write("[server]\n")
            for key, value in values.items():
                handle.write(f"{key} = {value}\n")
        generate = subprocess.run(
            [sys.executable, "-m", "knocker.main", "generate", "alice", "--config",
             self.config_path, "--knocks", str(knocks), "--ports", str(ports),
             "-o", self.knock_file],
            env={**os.environ, **self.env}, capture_output=True, text=True, timeout=30,
            stdin=subprocess.DEVNULL,
        )
        self.assertEqual(generate.returncode, 0, generate.stderr)
        self.daemon_log = os.path.join(self.directory, "twistd.log")
        with open(self.daemon_log, "wb") as log:
            self.daemon = self.net.spawn(
                "server",
                twistd_command() + ["-n", "--pidfile=", "knockserver", "--config",
                                    self.config_path],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.directory,
            )
        self.wait_until(lambda: any(e["event"] == "start" for e in self.audit()), 20,
                        "the daemon's start")

    def audit(self, event: str | None = None) -> list[dict]:
        events = read_audit(self.audit_path)
        return events if event is None else [e for e in events if e["event"] == event]

    def status(self) -> dict:
        """
        C{knocker status --json} with the daemon's configuration.
        """
        done = subprocess.run(
            [sys.executable, "-m", "knocker.main", "status", "--config", self.config_path,
             "--json"],
            env={**os.environ, **self.env}, capture_output=True, text=True, timeout=30,
            stdin=subprocess.DEVNULL,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        return json.loads(done.stdout)

    def daemon_tail(self) -> str:
        if not os.path.exists(getattr(self, "daemon_log", "")):
            return ""
        with open(self.daemon_log, encoding="utf-8", errors="replace") as handle:
            return "".join(handle.readlines()[-30:])

    def wait_until(self, predicate, seconds: float, what: str) -> None:
        deadline = time.monotonic() + seconds
        while not predicate():
            if self.daemon is not None and self.daemon.poll() is not None:
                self.fail(f"the daemon exited while waiting for {what}:\n{self.daemon_tail()}")
            if time.monotonic() > deadline:
                self.fail(f"{what} did not happen within {seconds}s\n{self.daemon_tail()}")
            time.sleep(0.05)

    def knock_ports(self, index: int) -> list[int]:
        return knock_ports(self.knock_file, index)

    # -- the other namespaces ------------------------------------------------

    def knock(self, role: str = "client", family: int = 4) -> subprocess.CompletedProcess:
        """
        C{knocker knock} from C{role}'s namespace with alice's file.
        """
        host = self.server_address(family)
        server = f"tcp:host={quoteStringArgument(host)}:port={CENTRAL}"
        return self.net.run(
            role,
            [sys.executable, "-m", "knocker.main", "knock", "--server", server,
             "--knock-file", self.knock_file,
             "--log-file", os.path.join(self.directory, f"{role}-client.log"),
             "--busy-retries", "0"],
            env=self.env, timeout=60, check=False,
        )

    def hold(self, role: str = "client", family: int = 4) -> Held:
        """
        Start a handshake from C{role} that holds its connection after GRANT.
        """
        process = self.net.spawn(
            role,
            [sys.executable, HOLDKNOCK, self.server_address(family), str(CENTRAL),
             self.knock_file],
            env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True,
        )
        return Held(self.net, process)
