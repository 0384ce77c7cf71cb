"""
A client that knocks a L{tests.helpers.harness.Harness} and takes renewal
offers the way C{knocker knock} does (L{knocker.enrol.renewal.take_offer}),
over the harness's in-memory transport, with places to cut the exchange.
"""

import os

from knocker import files
from knocker.client.knock import run_blocking
from knocker.core import handshake as hs
from knocker.core.knockfile import KnockFileText
from knocker.enrol import renewal
from knocker.files import read_private


class Cut(Exception):
    """The test cut the exchange here."""


class _Config:
    def __init__(self, path):
        self.knock_file = path


class _Conn:
    """
    take_offer's view of the central connection: lines it sends go to the
    protocol; lines it reads come from the transport.
    """

    def __init__(self, proto, transport, cut, tamper=None):
        self.proto = proto
        self.transport = transport
        self.lines = []
        self.cut = cut
        self.tamper = tamper or (lambda line: line)

    def send(self, line):
        if self.cut == "before-accept":
            raise Cut("the ACCEPT line is lost")
        if self.cut == "confirm-lost" and line.startswith(b"CONFIRM "):
            raise Cut("the CONFIRM line is lost")
        self.proto.dataReceived(line)
        if self.cut == "after-accept":
            raise Cut("the connection is cut before the file arrives")

    async def readline(self, timeout):
        if not self.lines:
            data = self.transport.value()
            self.transport.clear()
            self.lines = [line for line in data.split(b"\n") if line]
        if self.cut == "mid-file" and self.lines and self.lines[0].startswith(b"DATA"):
            raise Cut("the connection is cut during the file")
        return self.tamper(self.lines.pop(0)) if self.lines else None


class RenewingClient:
    def __init__(self, harness, path, client="alice", ip="192.0.2.10"):
        self.harness = harness
        self.path = path
        self.client = client
        self.ip = ip
        self.granted = []  # (secret, index) of every GRANT whose HMAC checked out
        self.renewed = 0
        self.refused = []  # what take_offer said of each renewal refused at CONFIRM

    def text(self, path=None):
        return read_private(path or self.path)

    def secret(self, path=None):
        return KnockFileText(self.text(path), "x").secret

    def knock(self, path=None, cut=None):
        """
        One knock with the file at C{path} (default: the current one); on
        OPEN, the offer if one follows, cut at C{cut} (C{None},
        C{"before-accept"}, C{"after-accept"}, C{"mid-file"},
        C{"before-write"}, C{"between-writes"}, C{"confirm-lost"}).  Returns
        the verdict.
        """
        path = path or self.path
        proto, transport = self.harness.connect(self.ip)
        try:
            return self._knock(path, cut, proto, transport)
        finally:
            proto.connectionLost(None)

    def _knock(self, path, cut, proto, transport):
        h = self.harness
        kf = KnockFileText(self.text(path), path)
        machine = hs.ClientHandshake(kf)
        proto.dataReceived(machine.hello().line)
        line = transport.value().rstrip(b"\n")
        transport.clear()
        step = machine.receive(line)
        proto.dataReceived(step.line)
        if not transport.value():
            h.clock.advance(0.05)  # DENIED goes out at a fixed delay
        line, _, rest = transport.value().partition(b"\n")
        transport.clear()
        step = machine.receive(line)
        if isinstance(step, hs.Finished):
            return step.reply
        self.granted.append((kf.secret, step.index))
        for port in step.ports:
            h.hit(self.ip, port)
        line, _, rest = transport.value().partition(b"\n")
        transport.clear()
        verdict = machine.receive(line).reply
        if isinstance(verdict, hs.Open) and rest.startswith(b"OFFER "):
            offer, _, more = rest.partition(b"\n")
            transport.write(more)  # put back what followed, if anything
            self._take(proto, transport, offer, kf, machine.nonce, cut, path)
        return verdict

    def _take(self, proto, transport, offer, kf, nonce, cut, path):
        conn = _Conn(proto, transport, cut)
        config = _Config(path)
        original = files.write_private
        if cut in ("before-write", "between-writes"):
            calls = []

            def dying(path, text):
                calls.append(path)
                if cut == "before-write" or len(calls) == 2:
                    raise Cut("the client is killed while writing")
                original(path, text)

            files.write_private = dying
        try:
            run_blocking(renewal.take_offer(conn, offer, config, kf, nonce, 5.0))
            self.renewed += 1
        except Cut:
            pass
        except renewal.Refused as refusal:
            self.refused.append(str(refusal))
        finally:
            files.write_private = original

    def previous(self):
        prev = self.path + renewal.PREVIOUS_SUFFIX
        return prev if os.path.exists(prev) else None
