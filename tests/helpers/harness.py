"""
Shared fixtures: a server coordinator wired to fakes, and a client of it
that speaks the protocol from docs/spec.md by hand.
"""

import os
import tempfile

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from knocker.admin.clients import generate_client
from knocker.core import handshake as hs
from knocker.core.knockfile import parse_knockfile
from knocker.core.pool import ensure_pool
from knocker.core.serverconfig import parse_server_config
from knocker.core.tracker import Policy, Tracker
from knocker.daemon.actions import MemoryRunner
from knocker.daemon.audit import MemoryAudit
from knocker.daemon.central import DENIED_AT, CentralFactory
from knocker.daemon.coordinator import KnockServer
from knocker.files import read_private
from knocker.state.book import ClientBook
from knocker.state.sqlite import SQLiteStore


def server_config(state_dir, **overrides):
    # admin off: a service started on the real reactor (tests/processes/
    # test_loopback.py) would otherwise bind the console's port 8750
    values = {"state-dir": state_dir, "pool-size": "20", "pool-range": "20000-20999",
              "admin": ""}
    values.update({key.replace("_", "-"): str(value) for key, value in overrides.items()})
    return parse_server_config(overrides=values)


class Harness:
    """
    A L{KnockServer} on a L{Clock} with a real store, a fake runner and an
    in-memory audit log; clients are generated into C{self.files}.
    """

    def __init__(self, testcase, clients=("alice",), knocks=5, runner=None, **config):
        self.dir = testcase.mktemp()
        os.makedirs(self.dir)
        self.config = server_config(os.path.join(self.dir, "state"), **config)
        self.files = {}
        for client in clients:
            out = os.path.join(self.dir, client + ".knock")
            generate_client(self.config, client, knocks, 3, out)
            self.files[client] = parse_knockfile(read_private(out), out)
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.runner = runner or MemoryRunner()
        self.audit = MemoryAudit()
        self.start()
        testcase.addCleanup(self.stop)

    def start(self):
        self.store = SQLiteStore(self.config.state_dir)
        self.pool = ensure_pool(self.store, self.config)
        self.book = ClientBook(self.config.state_dir, self.pool)
        self.book.load()
        self.server = KnockServer(self.config, self.clock, self.store, self.book,
                                  self.runner, self.audit,
                                  Tracker(self.clock, Policy.from_config(self.config)))
        self.server.restore()
        self.central = CentralFactory(self.server, self.clock, self.config.max_connections,
                                      self.config.handshake_timeout)

    def stop(self):
        self.server.stop()
        self.store.close()

    def restart(self):
        self.stop()
        self.start()

    def tracker_lockouts(self):
        return self.server.tracker.lockouts()

    def connect(self, ip="192.0.2.10", port=40000):
        """
        A central-port connection from C{ip}: (protocol, transport).
        """
        address = (IPv6Address if ":" in ip else IPv4Address)("TCP", ip, port)
        proto = self.central.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        proto.makeConnection(transport)
        return proto, transport

    def hit(self, ip, port, src_port=50000):
        """
        A connection accepted on pool port C{port}, as L{PoolPort} reports it.
        """
        self.server.hit(ip, src_port, port)

    def handshake(self, client="alice", ip="192.0.2.10", secret=None):
        """
        HELLO and PROOF as a client holding C{secret} (default: the real one).

        @return: (reply line, protocol, transport, nonce)
        """
        proto, transport = self.connect(ip)
        proto.dataReceived(hs.format_hello(client))
        challenge = hs.parse_reply(transport.value().rstrip(b"\n"))
        transport.clear()
        if secret is None:
            secret = self.files[client].secret
        proto.dataReceived(hs.format_proof(hs.hello_mac(secret, client, challenge.nonce)))
        if not transport.value():
            self.clock.advance(DENIED_AT)  # DENIED goes out at a fixed delay
        return transport.value(), proto, transport, challenge.nonce

    def knock(self, client="alice", ip="192.0.2.10", ports=None):
        """
        A whole knock; returns (grant reply, transport after the verdict).
        """
        line, proto, transport, nonce = self.handshake(client, ip)
        grant = hs.parse_reply(line.rstrip(b"\n"))
        transport.clear()
        if isinstance(grant, hs.Grant):
            for port in ports or self.files[client].knock(grant.index):
                self.hit(ip, port)
        return grant, transport


class HarnessConnection:
    """
    An enrolling client's connection (L{knocker.enrol.client}'s C{conn})
    to the harness's central port: lines to the protocol and back.
    """

    def __init__(self, proto, transport):
        self.proto = proto
        self.transport = transport
        self.lines = []

    def send(self, line):
        self.proto.dataReceived(line)

    async def readline(self, timeout):
        if not self.lines:
            self.lines = self.transport.value().split(b"\n")[:-1]
            self.transport.clear()
        return self.lines.pop(0) if self.lines else None


def enroll(harness, slot: int, words: str, ip="192.0.2.10"):
    """
    The real client's exchange (L{knocker.enrol.client}) on the harness's
    central port; its L{knocker.enrol.client.Result}.
    """
    from knocker.client.knock import run_blocking
    from knocker.enrol.client import _exchange

    proto, transport = harness.connect(ip)
    return run_blocking(_exchange(HarnessConnection(proto, transport), slot, words,
                                  enrol_deadline()))


def enrol_deadline(seconds: float = 5):
    """An enrolment's deadline on a clock that stands still: never reached."""
    from knocker.enrol.client import _Deadline

    return _Deadline(lambda: 0.0, seconds)


def a_decoy(harness, client="alice", index=1):
    """
    A pool port that is not in knock C{index}.
    """
    knock = set(harness.files[client].knock(index))
    return next(port for port in harness.pool if port not in knock)


def temp_dir() -> str:
    return tempfile.mkdtemp(prefix="knocker-test-")


def epoll_watches(poller) -> set:
    """
    The descriptors C{poller}'s epoll (its C{fileno()}) watches, as the
    kernel lists them: a "tfd:" line each in the epoll's fdinfo.
    """
    with open(f"/proc/self/fdinfo/{poller.fileno()}") as fdinfo:
        return {int(line.split()[1]) for line in fdinfo if line.startswith("tfd:")}
