"""
The central port: a thin adapter between TCP and
L{knocker.core.handshake.ServerHandshake}, which decides what each line
means, and the coordinator, which decides the verdict.
"""

import select
import time

from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

from knocker.core import handshake as hs
from knocker.core.sources import normalise_ip

log = Logger()

CLOSE_GRACE = 2.0

DENIED_AT = 0.02
"""Seconds after the PROOF at which every DENIED (and ERROR) is sent.  An
unknown client, a wrong proof and a client whose server copy is unusable
take a little different work (a few µs, more for a file read); answering
all at one fixed moment after the PROOF, rather than as soon as decided,
keeps that difference off the wire, so a stranger cannot tell which
client ids exist from the time."""

PRECISE_EARLY = 0.002
"""The reactor's timers are not precise enough for that: epoll rounds its
timeout up to whole milliseconds from the moment the reactor went to
sleep, so the reply would still leave later by the work done before.  In
the daemon a DENIED's timer fires this much early and the last stretch is
slept on the monotonic clock (at most this long; a DENIED is rare, since
each one locks its source out)."""


def _sleep_until(moment: float) -> None:
    remaining = moment - time.monotonic()
    if 0 < remaining <= PRECISE_EARLY:
        select.select([], [], [], remaining)  # a relative wait, to the microsecond


class CentralProtocol(LineOnlyReceiver):
    """
    One client's exchange on the central port: HELLO, PROOF, then the
    verdict.  Any deviation ends it with C{ERROR <reason>}.
    """

    delimiter = b"\n"
    MAX_LENGTH = hs.MAX_LINE

    def __init__(self, server, clock, timeout: float):
        self._server = server
        self._clock = clock
        self._timeout = timeout
        self._timer = None
        self._handshake = hs.ServerHandshake(server.new_nonce)
        self._lost = False
        self.ip = None

    def connectionMade(self):
        self.ip = normalise_ip(self.transport.getPeer().host)
        self._timer = self._clock.callLater(
            self._timeout, lambda: self._apply(self._handshake.fault("handshake-timeout")))

    def lineReceived(self, line: bytes):
        step = self._handshake.receive(line)
        if isinstance(step, hs.Judge):
            self._cancel_timer()
            proved_at = self._clock.seconds()
            try:
                reply = self._server.answer(self.ip, step.client, step.nonce, step.proof, self)
            except Exception:
                log.failure("answering {client} from {ip}", client=step.client, ip=self.ip)
                reply = hs.Error("server-error")
            if isinstance(reply, Deferred):
                # A fleet's database answers later (knocker.daemon.fleet).
                reply.addErrback(self._answer_failed, step.client)
                reply.addCallback(self._judged, proved_at)
                return
            self._judged(reply, proved_at)
            return
        self._apply(step)

    def _answer_failed(self, failure, client):
        log.failure("answering {client} from {ip}", failure, client=client, ip=self.ip)
        return hs.Error("server-error")

    def _judged(self, reply: hs.Reply, proved_at: float) -> None:
        if self._lost:
            # The client left while the state answered: a grant made
            # meanwhile ends as abandoned (its number stays burned).
            if isinstance(reply, hs.Grant):
                self._server.session_lost(self)
            return
        step = self._handshake.judged(reply)
        if isinstance(reply, (hs.Denied, hs.Error)):
            moment = proved_at + DENIED_AT
            wake = max(0.0, moment - self.factory.early - self._clock.seconds())
            self._timer = self._clock.callLater(wake, self._send_at, moment, step)
            return
        self._apply(step)

    def lineLengthExceeded(self, line):
        self._apply(self._handshake.fault("line-too-long"))

    def _send_at(self, moment: float, step: hs.Respond) -> None:
        self.factory.wait_until(moment)
        self._apply(step)

    def finish(self, reply: hs.Reply) -> None:
        """
        The coordinator's verdict for a granted knock.
        """
        self._apply(self._handshake.verdict(reply))

    def _apply(self, step: hs.Respond | None) -> None:
        if step is None:
            return
        if step.fault:
            log.info("central {ip}: ERROR {reason}", ip=self.ip, reason=step.reply.reason)
            self._server.protocol_error(self.ip, step.reply.reason)
        self.transport.write(hs.format_reply(step.reply))
        if step.close:
            self._cancel_timer()
            self.transport.loseConnection()
            self._timer = _abort_later(self._clock, self.transport)

    @property
    def lost(self) -> bool:
        """The client has hung up."""
        return self._lost

    def _cancel_timer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()

    def connectionLost(self, reason):
        self._lost = True
        self.factory.connection_ended(self)
        self._cancel_timer()
        granted = self._handshake.granted and not self._handshake.done
        self._handshake.done = True
        if granted:
            self._server.session_lost(self)


class CentralFactory(protocol.Factory):
    """
    Builds a L{CentralProtocol} per connection, up to C{max_connections} at
    once and C{max_per_source} from one source (an IPv6 prefix counts as
    one, as for lockouts); past either a connection gets
    C{ERROR too-many-connections}, so one address holding idle connections
    cannot take every place.
    """

    early = 0.0
    """How much before its moment a DENIED's timer fires, for L{wait_until}
    to finish the wait precisely (the daemon: L{PRECISE_EARLY})."""

    def __init__(self, server, clock, max_connections: int, timeout: float,
                 max_per_source: int | None = None, precise_time: bool = False):
        if precise_time:
            self.early = PRECISE_EARLY
            self.wait_until = _sleep_until
        self._server = server
        self._clock = clock
        self._max = max_connections
        self._max_per_source = (max_per_source if max_per_source is not None
                                else server.config.max_connections_per_source)
        self._source_of = server.tracker.source_of
        self._timeout = timeout
        self.connections = 0
        self.per_source: dict[str, int] = {}

    def buildProtocol(self, addr):
        source = self._source_of(normalise_ip(addr.host)) if addr is not None else ""
        held = self.per_source.get(source, 0)
        if self.connections >= self._max or held >= self._max_per_source:
            return _Refuse(self._server, self._clock)
        self.connections += 1
        self.per_source[source] = held + 1
        proto = CentralProtocol(self._server, self._clock, self._timeout)
        proto.factory = self
        proto.source = source
        return proto

    @staticmethod
    def wait_until(moment: float) -> None:
        """Tests' clocks need no finishing: the timer fired on the moment."""

    def connection_ended(self, proto: CentralProtocol) -> None:
        self.connections -= 1
        left = self.per_source[proto.source] - 1
        if left:
            self.per_source[proto.source] = left
        else:
            del self.per_source[proto.source]


class _Refuse(protocol.Protocol):
    def __init__(self, server, clock):
        self._server = server
        self._clock = clock
        self._timer = None

    def connectionMade(self):
        self._server.protocol_error(normalise_ip(self.transport.getPeer().host),
                                    "too-many-connections")
        self.transport.write(hs.format_reply(hs.Error("too-many-connections")))
        self.transport.loseConnection()
        self._timer = _abort_later(self._clock, self.transport)

    def connectionLost(self, reason):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()


def _abort_later(clock, transport):
    """
    A closing connection whose last line cannot be delivered (a peer that
    never reads, or never finishes a TLS handshake, so TLS holds the line
    and the connection) is cut after L{CLOSE_GRACE} seconds, so it cannot
    hold a place under max-connections for ever.
    """
    return clock.callLater(CLOSE_GRACE, transport.abortConnection)
