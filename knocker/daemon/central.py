"""
The central port: a thin adapter between TCP and
L{knocker.core.serverhandshake.ServerHandshake}, which decides what each line
means, and the coordinator, which decides the verdict.
"""

import collections
import select
import socket
import time

from twisted.internet import protocol, tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol, IProtocolNegotiationFactory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from knocker.core import handshake as hs
from knocker.core import serverhandshake as shs
from knocker.core.sources import normalise_ip
from knocker.daemon.places import Places

log = Logger()

#: The central port's protocol, as TLS clients may name it (ALPN).
ALPN = b"knocker/1"

CLOSE_GRACE = 2.0

MIN_RATE = hs.MIN_RATE
"""The slowest a client may take the lines of an enrolment or a renewal
(L{knocker.core.handshake.MIN_RATE}): a batch of them moves the exchange's
deadline, and the cut of its close, back by the time it takes at this rate
past its first second (a file of 100,000 knocks, 5.5 MB, by 84 s; one of
1000 knocks, 55 kB, not at all)."""

LINGER_MAX = 64
"""Connections refused, or that gave way, which may still be closing in
order at once (under TLS a close waits for the peer, up to L{CLOSE_GRACE});
past that they are cut, so churn cannot pile up descriptors."""

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

PRECISE_PER_SECOND = 50
"""Where lockouts do not hold (C{lockout = 0}, C{never-lock}, fresh IPv6
/64s), DENIED is not rare: past this many precise waits in a second (at
most a tenth of the reactor's time), a DENIED goes out when its timer
fires, up to L{PRECISE_EARLY} before its moment, so that a flood of
them cannot keep the reactor asleep while knocks wait.  Its time then
still does not depend on the work behind it, bar the timer's rounding."""


def _sleep_until(moment: float) -> None:
    remaining = moment - time.monotonic()
    if 0 < remaining <= PRECISE_EARLY:
        select.select([], [], [], remaining)  # a relative wait, to the microsecond


class PreciseWaits:
    """
    L{_sleep_until}, at most L{PRECISE_PER_SECOND} times in any second: the
    times of the last so many waits are kept, and another is taken only
    once the oldest of them is a second old.  (Counted per calendar second,
    twice as many could come in the second across a boundary; a bucket
    refilled at that rate allows twice as many in a second too.)
    """

    def __init__(self, now=time.monotonic, sleep_until=_sleep_until):
        self._now = now
        self._sleep_until = sleep_until
        self._taken = collections.deque(maxlen=PRECISE_PER_SECOND)

    def __call__(self, moment: float) -> None:
        now, taken = self._now(), self._taken
        # (a clock set back counts as a second passed)
        if len(taken) == PRECISE_PER_SECOND and 0.0 <= now - taken[0] < 1.0:
            return
        taken.append(now)
        self._sleep_until(moment)


_MORE = getattr(socket, "MSG_MORE", 0)  # Linux: the FIN follows in the same segment


def sends_directly(transport) -> bool:
    """
    Whether lines may go straight to C{transport}'s socket: plain TCP only
    (TLS must write through its own protocol).
    """
    return isinstance(transport, tcp.Connection)


def is_enrol(line: bytes) -> bool:
    """A first line that enrols (knocker.enrol.server is loaded only then)."""
    return line.startswith(b"KNOCKER/1 ENROLL ")


@implementer(IHalfCloseableProtocol)
class CentralProtocol(LineOnlyReceiver):
    """
    One client's exchange on the central port: HELLO, PROOF, then the
    verdict.  Any deviation ends it with C{ERROR <reason>}.

    From the PROOF until its answer is out, a DENIED (or ERROR) waiting
    for its moment (L{DENIED_AT}) included, nothing the client does is
    answered sooner: what it sends is dropped, and its FIN (a half-close,
    hence C{IHalfCloseableProtocol}) waits too.  Else a line too long or a
    FIN sent after the PROOF would end the connection at once, and whether
    that came before or after the judging would tell a real client id from
    an unknown one.
    """

    delimiter = b"\n"
    MAX_LENGTH = hs.MAX_LINE

    def __init__(self, server, clock, timeout: float):
        self._server = server
        self._clock = clock
        self._timeout = timeout
        self._timer = None
        self._handshake = shs.ServerHandshake(server.new_nonce)
        self._exchange = None  # an enrolment, or a renewal after OPEN
        self._nonce = None
        self._lost = False
        self._waiting = False  # for a store's answer to an enrolment or renewal
        self._direct = False  # lines sent straight to the socket (see _write)
        self._closing = False  # the last line is out: what comes in is dropped
        self._answering = False  # from the PROOF until its answer is out
        self._proof_read = False  # a PROOF came in this read: the rest of it is dropped
        self._fin = False  # the client's FIN came while answering
        self._waiting_step = None  # the answer waiting for its moment
        self._granted = False
        self._lingering = False  # counted among LINGER_MAX (CentralFactory.linger)
        self.ip = None

    def connectionMade(self):
        self.ip = normalise_ip(self.transport.getPeer().host)
        self._direct = sends_directly(self.transport)
        self._timer = self._clock.callLater(
            self._timeout, lambda: self._apply(self._handshake.fault("handshake-timeout")))

    def dataReceived(self, data: bytes):
        # Past the last line the connection is closing, but under TLS the
        # peer's bytes keep coming until it closes its own side: dropped,
        # not joined to a buffer on every read (quadratic, and unbounded
        # for as long as the close takes).
        if not (self._closing or self._answering):
            try:
                super().dataReceived(data)
            finally:
                # (an answer already out, synchronously, as SQLite's is, must
                # not let the rest of the PROOF's read through, a part line
                # left in the buffer included: a fleet's, later, finds
                # _answering set and drops it the same way)
                if self._proof_read:
                    self._buffer = b""
                    self._proof_read = False

    def readConnectionLost(self) -> None:
        """
        The client sent its FIN: the connection ends as it always did, but
        not before the answer to its PROOF has gone out.
        """
        if self._answering:
            self._fin = True
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass  # our FIN is sent with shutdown() on the socket, not through here

    def lineReceived(self, line: bytes):
        if self._answering or self._proof_read:
            return  # the rest of the packet that held the PROOF
        if self._exchange is not None or (self._handshake.client is None and is_enrol(line)):
            if self._waiting:
                # A line before the answer it should wait for: the
                # exchange ends (its late answer is dropped).
                self._end_exchange(b"ERROR out-of-turn\n", "out-of-turn")
                return
            if self._exchange is None:
                self._exchange = self._server.enrolment(self.ip)
            try:
                sends = self._exchange.receive(line)
            except Exception:  # the state failing (SQLite busy), as a knock's PROOF may
                log.failure("enrolling or renewing from {ip}", ip=self.ip)
                self._end_exchange(b"ERROR server-error\n")
                return
            self._send(sends)
            return
        step = self._handshake.receive(line)
        if isinstance(step, shs.Judge):
            self._cancel_timer()
            self._answering = self._proof_read = True
            self._nonce = step.nonce
            proved_at = self._clock.seconds()
            try:
                reply = self._server.answer(self.ip, step.client, step.nonce, step.proof, self)
            except Exception:
                # (a damaged state row, say: within the audit log's budget,
                # since every PROOF naming that client would come here)
                if self._server.state_failed(self.ip, step.client, Failure()):
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
        if self._server.state_failed(self.ip, client, failure):
            log.failure("answering {client} from {ip}", failure, client=client, ip=self.ip)
        return hs.Error("server-error")

    def _judged(self, reply: hs.Reply, proved_at: float) -> None:
        delayed = isinstance(reply, hs.Denied) or (
            # (the daemon stopping is no answer to this PROOF: said at once)
            isinstance(reply, hs.Error) and reply.reason != "shutting-down")
        if not delayed:
            self._answering = False  # sent now, below
        step = self._handshake.judged(reply)
        if step is None:
            # The exchange ended while the state answered (the client left,
            # or broke the protocol): a grant made meanwhile ends as
            # abandoned (its number stays burned).
            if isinstance(reply, hs.Grant):
                self._server.session_lost(self)
            return
        if isinstance(reply, hs.Grant):
            self._granted = True
        if delayed:
            moment = proved_at + DENIED_AT
            wake = max(0.0, moment - self.factory.early - self._clock.seconds())
            self._waiting_step = step
            self._timer = self._clock.callLater(wake, self._send_at, moment)
            return
        self._apply(step)
        if self._fin:
            # The client half-closed while a fleet's database answered: its
            # answer is out; now the connection ends, as for any FIN.
            self.transport.loseConnection()

    def _send(self, sends) -> None:
        """
        Lines of an enrolment or a renewal (L{knocker.enrol}), which run
        instead of, or after, the knock; the handshake's rules are done.
        With a store that answers later, C{sends} is a L{Deferred} of them.
        """
        if isinstance(sends, Deferred):
            self._waiting = True
            sends.addCallbacks(self._sent_later, self._exchange_failed)
            return
        # In one write: a renewed file is a line per 400 bytes (135 for
        # 1000 knocks, 14,000 for 100,000), one send each otherwise.
        lines = []
        for send in sends:
            if send.fault:
                self._server.protocol_error(self.ip, send.fault)
            lines.append(send.line)
            if send.close:
                self._close_exchange(self._write_lines(b"".join(lines)))
                lines = []
        if lines:
            self._write_lines(b"".join(lines))

    def _write_lines(self, data: bytes) -> float:
        """
        Write a batch of an exchange's lines, and move its deadline back by
        the time a client reading at L{MIN_RATE} takes them past their first
        second (returned): a big file on a slow link is not cut while it is
        being taken, and a short line changes nothing.
        """
        self._write(data)
        seconds = max(0, len(data) - MIN_RATE) / MIN_RATE
        if self._timer is not None and self._timer.active():
            self._timer.delay(seconds)
        return seconds

    def _sent_later(self, sends) -> None:
        if self._waiting and not self._lost:
            self._waiting = False
            self._send(sends)

    def _exchange_failed(self, failure) -> None:
        log.failure("enrolling or renewing from {ip}", failure, ip=self.ip)
        if self._waiting and not self._lost:
            self._end_exchange(b"ERROR server-error\n")

    def _end_exchange(self, line: bytes | None = None, fault: str | None = None) -> None:
        """
        The enrolment or renewal ends here (a late answer of the store is
        dropped), with C{line} as the last word if there is one.
        """
        self._waiting = False
        if self._exchange is not None:
            self._exchange.done = True
        if fault:
            self._server.protocol_error(self.ip, fault)
        if line is not None:
            self._write(line)
        self._close_exchange()

    def _close_exchange(self, draining: float = 0.0) -> None:
        """
        Close once the last lines are out, and cut the connection if they
        are not after L{CLOSE_GRACE} plus C{draining} seconds (the time
        the last batch takes at L{MIN_RATE}).
        """
        self._handshake.done = True
        self._cancel_timer()
        self._close()
        self._timer = _abort_later(self._clock, self.transport, draining)

    def _exchange_timed_out(self) -> None:
        """
        A renewal past its time (handshake-timeout after OPEN, moved back
        by what it sent): ended, and cut if its close cannot finish, as a
        client that stops reading would otherwise hold its place for ever.
        """
        self._timer = None
        self._end_exchange()

    def lineLengthExceeded(self, line):
        if self._answering or self._proof_read:
            self._buffer = b""  # LineOnlyReceiver's, past the PROOF
            return
        step = self._handshake.fault("line-too-long")
        if step is None:
            # After OPEN, in a renewal: ends it as any fault of its own does
            # (else the buffer would keep growing until the exchange's end).
            self._end_exchange(b"ERROR line-too-long\n", "line-too-long")
            return
        self._apply(step)

    def answer_now(self) -> None:
        """The answer waiting for its moment, now (the daemon is stopping)."""
        if self._waiting_step is not None:
            self._cancel_timer()
            self._send_waiting()

    def _send_at(self, moment: float) -> None:
        self.factory.wait_until(moment)
        self._send_waiting()

    def _send_waiting(self) -> None:
        step, self._waiting_step = self._waiting_step, None
        self._timer = None
        self._answering = False
        self._apply(step)

    def finish(self, reply: hs.Reply) -> None:
        """
        The coordinator's verdict for a granted knock; after OPEN, perhaps
        an offer of a renewed file (section 10) on this connection.  A
        store that answers later decides the offer after OPEN is sent.
        """
        if isinstance(reply, hs.Open) and not self._handshake.done:
            offer = self._server.renewal(self.ip, self._handshake.client, self._nonce)
            if offer is not None:
                self._handshake.answered = self._handshake.done = True
                self._write(shs.format_reply(reply))
                self._timer = self._clock.callLater(self._timeout, self._exchange_timed_out)
                if isinstance(offer, Deferred):
                    self._waiting = True
                    offer.addCallback(self._offer_later)
                else:
                    self._start_offer(offer)
                return
        self._apply(self._handshake.verdict(reply))

    def _offer_later(self, offer) -> None:
        if not self._waiting or self._lost:
            return
        self._waiting = False
        if offer is None:
            self._close_exchange()
        else:
            self._start_offer(offer)

    def _start_offer(self, offer) -> None:
        self._exchange = offer
        self._send(offer.start())

    def _apply(self, step: shs.Respond | None) -> None:
        if step is None:
            return
        if step.fault:
            if self._server.protocol_error(self.ip, step.reply.reason):
                log.info("central {ip}: ERROR {reason}", ip=self.ip, reason=step.reply.reason)
            if self._handshake.knocking:
                # No verdict can follow: the knock ends now, not when the
                # connection does (its last hits must open nothing).
                self._server.session_lost(self)
        self._write(shs.format_reply(step.reply), last=step.close)
        if step.close:
            # An enrolment waiting for the state (handshake-timeout) ends
            # here too: its late answer must not follow this last line.
            # (Its connection_lost still judges whether a try was spent.)
            self._waiting = False
            self._cancel_timer()
            self._close()
            self._timer = _abort_later(self._clock, self.transport)

    def _write(self, line: bytes, last: bool = False) -> None:
        """
        Write C{line}; on a plain TCP connection, send it now rather than on
        the reactor's next turn.  The client waits for every line, and a
        knock is a chain of them.
        Once part of a line had to wait in Twisted's buffer, every later line
        goes there too, so the order holds.
        The C{last} line is held back (C{MSG_MORE}) for the FIN that
        L{_close} sends next, so that the client reads both from one segment.
        """
        if self._direct and not self.transport.disconnecting:
            try:
                sent = self.transport.getHandle().send(line, _MORE if last else 0)
            except OSError:  # full (EAGAIN), or gone: Twisted's buffer will say
                sent = 0
            if sent == len(line):
                return
            line = line[sent:]
            self._direct = False
        self.transport.write(line)

    def _close(self) -> None:
        """
        Close once the last line is out.  When it went out directly, the FIN
        follows it now (the client reads to the end of the connection after
        the verdict, in case a renewal comes); Twisted closes on its next turn.
        """
        self._closing = True
        self._buffer = b""  # LineOnlyReceiver's: an over-long line's remainder, say
        if self._direct:
            try:
                self.transport.getHandle().shutdown(socket.SHUT_WR)
            except OSError:
                pass
        self.transport.loseConnection()

    @property
    def lost(self) -> bool:
        """The client has hung up."""
        return self._lost

    @property
    def may_give_way(self) -> bool:
        """
        Whether this connection may give its place to a newcomer
        (L{CentralFactory}): one short of its PROOF (or of its first line),
        or one closing after a refusal.  Never a granted knock (verdict and
        all), nor an enrolment under way (one cut short counts against its
        invitation) or one closing with its file.
        """
        if self._lost or self._granted:
            return False
        if self._exchange is not None:
            return (self._closing and self._exchange.done
                    and not getattr(self._exchange, "delivered", True))
        return self._closing or self._nonce is None

    def give_way(self) -> None:
        """
        Give up this place to a newcomer.  One already closing after a
        refusal had its answer: left to close.  An idle one gets C{ERROR
        too-many-connections}, as a refusal does, and closes as any last
        line does.  Either way a close that waits for its peer (TLS) is
        counted among L{LINGER_MAX}, and cut past it.
        """
        if not self._closing:
            self._handshake.done = True
            self._cancel_timer()
            self._server.protocol_error(self.ip, "too-many-connections")
            self._write(shs.format_reply(hs.Error("too-many-connections")))
            self._close()
            self._timer = _abort_later(self._clock, self.transport)
        if not self._direct and not self.factory.linger(self):
            self.transport.abortConnection()

    def _cancel_timer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()

    def connectionLost(self, reason):
        self._lost = True
        self.factory.lingered(self)
        self.factory.connection_ended(self)
        self._cancel_timer()
        knocking = self._handshake.knocking  # (a fault after GRANT sent no verdict)
        self._handshake.done = True
        ended = getattr(self._exchange, "connection_lost", None)
        if ended is not None:
            ended()  # an enrolment cut after ENROLLING counts as a failed attempt
        if knocking:
            self._server.session_lost(self)


@implementer(IProtocolNegotiationFactory)
class CentralFactory(protocol.Factory):
    """
    Builds a L{CentralProtocol} per connection, up to C{max_connections} at
    once and C{max_per_source} from one source (an IPv6 prefix counts as
    one, as for lockouts); past either a connection gets
    C{ERROR too-many-connections}, so one address holding idle connections
    cannot take every place.

    When every place is taken, a newcomer may still get one
    (L{knocker.daemon.places.Places}) from a connection that may give way
    (L{CentralProtocol.may_give_way}: short of its PROOF, or closing after
    a refusal).  Without that, a handful of addresses (max-connections /
    max-connections-per-source: 8 by default, or any IPv6 /61) holding
    idle connections renewed every handshake-timeout, or refused ones
    whose close waits (TLS), shut the door for everyone.  A granted knock
    never gives way.
    """

    def acceptableProtocols(self):
        # Over TLS, the protocol named in ALPN: Twisted fails the handshake
        # of any client that offers ALPN when the factory names none.
        return [ALPN]

    early = 0.0
    """How much before its moment a DENIED's timer fires, for L{wait_until}
    to finish the wait precisely (the daemon: L{PRECISE_EARLY})."""

    def __init__(self, server, clock, max_connections: int, timeout: float,
                 max_per_source: int | None = None, precise_time: bool = False):
        if precise_time:
            self.early = PRECISE_EARLY
            self.wait_until = PreciseWaits()
        self._server = server
        self._clock = clock
        self._max_per_source = (max_per_source if max_per_source is not None
                                else server.config.max_connections_per_source)
        self._source_of = server.tracker.source_of
        self._timeout = timeout
        self._places = Places(max_connections, self._max_per_source)
        self.lingering = 0  # closes waiting for their peers (LINGER_MAX)

    @property
    def connections(self) -> int:
        return len(self._places)

    def stopFactory(self) -> None:
        """
        The port stops listening (the daemon is stopping): answers waiting
        for their moment go now, as the reactor may not turn again.
        """
        for proto in self._places.holders():
            proto.answer_now()

    @property
    def per_source(self) -> dict[str, int]:
        return self._places.by_source()

    def buildProtocol(self, addr):
        source = self._source_of(normalise_ip(addr.host)) if addr is not None else ""
        room, victim = self._places.make_room(source, _gives_way)
        if not room:
            refusal = _Refuse(self._server, self._clock)
            refusal.factory = self
            return refusal
        if victim is not None:
            try:
                victim.give_way()
            except Exception:
                log.failure("giving way to a newcomer, {ip}", ip=victim.ip)
                victim.transport.abortConnection()
        proto = CentralProtocol(self._server, self._clock, self._timeout)
        proto.factory = self
        proto.source = source
        self._places.add(source, proto)
        return proto

    @staticmethod
    def wait_until(moment: float) -> None:
        """Tests' clocks need no finishing: the timer fired on the moment."""

    def linger(self, proto) -> bool:
        """
        Whether C{proto}, closing, may wait for its peer (under TLS, up to
        L{CLOSE_GRACE}); if so it is counted until it is gone.
        """
        if self.lingering >= LINGER_MAX:
            return False
        self.lingering += 1
        proto._lingering = True
        return True

    def lingered(self, proto) -> None:
        if proto._lingering:
            proto._lingering = False
            self.lingering -= 1

    def connection_ended(self, proto: CentralProtocol) -> None:
        """Its place is free (if it still held one: not one that gave way)."""
        self._places.remove(proto)


def _gives_way(proto: CentralProtocol) -> bool:
    return proto.may_give_way


class _Refuse(protocol.Protocol):
    """
    A connection past the limits: C{ERROR too-many-connections}, then
    closed.  Under TLS the close waits for the peer, so such ones are
    counted among L{LINGER_MAX} and past it cut at once (their line lost):
    a flood of them cannot pile up descriptors.
    """

    _lingering = False

    def __init__(self, server, clock):
        self._server = server
        self._clock = clock
        self._timer = None

    def connectionMade(self):
        self._server.protocol_error(normalise_ip(self.transport.getPeer().host),
                                    "too-many-connections")
        self.transport.write(shs.format_reply(hs.Error("too-many-connections")))
        if sends_directly(self.transport) or self.factory.linger(self):
            self.transport.loseConnection()
            self._timer = _abort_later(self._clock, self.transport)
        else:
            self.transport.abortConnection()

    def connectionLost(self, reason):
        self.factory.lingered(self)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()


def _abort_later(clock, transport, draining: float = 0.0):
    """
    A closing connection whose last line cannot be delivered (a peer that
    never reads, or never finishes a TLS handshake, so TLS holds the line
    and the connection) is cut after L{CLOSE_GRACE} seconds (plus
    C{draining}, for a file sent last), so it cannot hold a place under
    max-connections for ever.
    """
    return clock.callLater(CLOSE_GRACE + draining, transport.abortConnection)
