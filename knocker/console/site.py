"""
The console inside the daemon: what L{knocker.daemon.service} builds when
C{admin} is set.  Before the coordinator exists it wraps the audit log
(L{observe}) and the action runner (L{timed}) so the live events and the
metrics see everything; once the daemon is up, L{listen} serves the
console on C{admin} and writes C{daemon.json} for the commands.

The web server is bounded before any request reaches the console's gate:
a body over C{MAX_BODY} is refused unread (L{BoundedRequest}), a request
line or header over 16 KiB at once (L{ConsoleChannel}), a request not all
there (head and body) within C{REQUEST_SECONDS} is cut, and past
C{MAX_CONNECTIONS} at once the oldest connection that never showed a
session makes room, or, past C{MAX_PER_SOURCE} from one address, a
connection is told to come back later (L{ConnectionLimit}), so nobody,
logged in or not, can take the daemon's memory, reactor or file
descriptors through the console, nor hold its connections by sending
slowly, nor keep the operator out by holding them.
"""

from contextlib import nullcontext
from io import BytesIO

from twisted.internet.defer import gatherResults, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.internet.protocol import Protocol
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.server import Request, Site
from zope.interface import implementer

from knocker.console.access import Credentials, Sessions
from knocker.console.events import EventBus, ObservedAudit
from knocker.console.metrics import Metrics
from knocker.console.resource import Console
from knocker.console.view import Activity
from knocker.core.serverconfig import admin_endpoint
from knocker.core.sources import SourceKeys, normalise_ip

log = Logger()

#: The console's forms are a few short fields (its largest, an invitation,
#: is under 1 KiB).
MAX_BODY = 8 * 1024
#: Fields in a query or a form, and parts of a path: the console's have a
#: few.  twisted.web splits them all before the console's gate sees who
#: asks, on the reactor that serves the knocks too.
MAX_FIELDS = 32
MAX_PATH_PARTS = 16
FORM = b"application/x-www-form-urlencoded"
#: Browsers open about 6 each, a live page holds one (at most 20 of those).
MAX_CONNECTIONS = 50
#: From one address: the rest stay for everyone else.
MAX_PER_SOURCE = 20
#: From a connection (or its last answer) to a whole request, head and body
#: (the forms are a few short fields).
REQUEST_SECONDS = 10
#: A connection that sends nothing for this long is closed, so idle ones do
#: not hold the connections above (a live page's request in progress has no
#: idle timeout).
IDLE_SECONDS = 60
#: Requests a connection may send ahead of their answers (pipelined), in a
#: row.  Browsers and HTTP libraries send none; a connection past this is
#: answered 400 and closed, so 64 kB of tiny requests on each connection
#: cannot have the daemon render pages by the thousand.
MAX_AHEAD = 32
#: How long a turned-away connection may take to close before it is cut.
BUSY_SECONDS = 5
#: Turned-away connections waiting for their close at once; past this a
#: connection is cut at once, unanswered.  (Under TLS the answer waits for
#: a handshake a flood never makes: each would hold a descriptor for
#: BUSY_SECONDS.)
MAX_BUSY = 50
#: Connections at once on the commands' socket (C{knocker unlock}/C{revoke}).
MAX_COMMANDS = 8


def _answer(status: bytes, text: bytes) -> bytes:
    """
    A whole HTTP/1.1 answer that closes its connection.
    """
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"x-content-type-options: nosniff\r\n"
            b"content-length: " + str(len(text)).encode() + b"\r\nconnection: close\r\n\r\n"
            + text)


TOO_LARGE = _answer(b"413 Content Too Large",
                    b"request body over %d bytes\n" % MAX_BODY)
NOT_A_FORM = _answer(b"415 Unsupported Media Type",
                     b"the console takes a POST body as " + FORM + b" only\n")
LINE_TOO_LONG = _answer(b"431 Request Header Fields Too Large",
                        b"a request line or header over 16384 bytes\n")
BUSY = _answer(b"503 Service Unavailable", b"too many connections to the console\n")


def _shown(line: bytes, limit: int = 80) -> str:
    """A line of a request as an error may quote it: printable ASCII, cut short."""
    text = "".join(c if " " <= c <= "~" else f"\\x{ord(c):02x}"
                   for c in line.decode("latin-1"))
    return "'" + (text[:limit] + "..." if len(text) > limit else text) + "'"


def bad_request(reason: str) -> bytes:
    """C{400 Bad Request} saying what was wrong, and the connection closes."""
    return _answer(b"400 Bad Request", f"bad request: {reason}\n".encode("ascii", "replace"))


class BoundedRequest(Request):
    """
    A request that twisted.web may read and parse at little cost.  It keeps
    a whole body, then splits the query, a form and the path on the
    reactor, all before the console knows who is asking: a bigger body than
    C{MAX_BODY} is answered 413 and its connection closed as soon as its
    Content-Length or its chunks say so, and is never kept; a query or a
    form of more than C{MAX_FIELDS} fields, or a path of more than
    C{MAX_PATH_PARTS} parts, is answered 400, and a POST body that is not
    a URL-encoded form (a multipart one, say) 415, none of it parsed.
    (50 connections, each with 64 KiB of empty form fields, held the
    reactor 1.6 s a turn, for anyone who could reach the console.)
    """

    refused = False
    _received = 0

    def gotLength(self, length):
        if length is not None and length > MAX_BODY:
            self._refuse()
        self.content = BytesIO()  # never more than MAX_BODY: no temporary file

    def handleContentChunk(self, data):
        if self.refused:
            return
        self._received += len(data)
        if self._received > MAX_BODY:
            self._refuse()
            return
        self.content.write(data)

    def requestReceived(self, command, path, version):
        if self.refused:
            return
        refusal = self._costly(command, path)
        if refusal is not None:
            self._refuse(refusal)
            return
        super().requestReceived(command, path, version)

    def _costly(self, command: bytes, uri: bytes) -> bytes | None:
        """The answer refusing a request too costly to parse, or C{None}."""
        path, _, query = uri.partition(b"?")
        if path.count(b"/") > MAX_PATH_PARTS:
            return bad_request(f"a path of more than {MAX_PATH_PARTS} parts")
        if _fields(query) > MAX_FIELDS:
            return bad_request(f"a query of more than {MAX_FIELDS} fields")
        body = self.content.getvalue()
        kind = self.requestHeaders.getRawHeaders(b"content-type")
        if command == b"POST" and body and kind:  # what twisted.web would parse
            if kind[0].split(b";")[0].strip().lower() != FORM:
                return NOT_A_FORM
            if _fields(body) > MAX_FIELDS:
                return bad_request(f"a form of more than {MAX_FIELDS} fields")
        return None

    def _refuse(self, answer: bytes = TOO_LARGE):
        self.refused = True
        # allHeadersReceived would answer "100 Continue" after the 413
        self.requestHeaders.removeHeader(b"expect")
        self.channel.transport.write(answer)
        self.channel.loseConnection()


def _fields(data: bytes) -> int:
    """How many fields twisted.web's parse_qs would split C{data} into, at most."""
    return data.count(b"&") + data.count(b";") + 1 if data else 0


class ConsoleChannel(HTTPChannel):
    """
    twisted.web's HTTP/1.1 channel, bounded in time and line length: a
    request (its line, headers and body) must be all there within
    C{REQUEST_SECONDS} of the connection or of the previous answer, and an
    over-long line is answered 431 and closed at once.  (Twisted's own
    close of an over-long line waits, under TLS, for the idle timeout.)
    """

    _head_timer = None
    _head_lines = 0  # lines of the request's head read so far
    _line = _header = None  # the line read last, and the header line before it
    _blank_eaten = False  # Twisted eats one empty line before a request, once

    def connectionMade(self):
        super().connectionMade()
        self._await_head()

    def lineReceived(self, line):
        # Twisted reads a header when the line after it arrives: what it
        # refuses then is the header line before this one.
        if not line and self._head_lines == 0 and not self._blank_eaten:
            self._blank_eaten = True  # the empty line some browsers send after a POST
            super().lineReceived(line)
            return
        self._head_lines += 1
        if self._line is not None and self._head_lines > 2 and (
                self._line[:1] not in (b" ", b"\t") or self._header is None):
            self._header = self._line
        self._line = line
        super().lineReceived(line)

    def allHeadersReceived(self):
        self._head_lines, self._line, self._header, self._blank_eaten = 0, None, None, False
        super().allHeadersReceived()

    def _respondToBadRequestAndDisconnect(self):
        # Twisted's own answer is a bare "400 Bad Request"; this one says
        # what it could not read.
        self._answer_and_close(bad_request(self._what_was_wrong()))

    def _answer_and_close(self, answer: bytes) -> None:
        """
        The last answer: nothing more is read, and the connection is cut
        if its close is still waiting (under TLS, for the peer) after
        L{BUSY_SECONDS}.
        """
        self._stop_head_timer()
        self.dataReceived = lambda data: None
        self.transport.write(answer)
        self.loseConnection()
        self._head_timer = self.callLater(BUSY_SECONDS, self.transport.abortConnection)

    def _what_was_wrong(self) -> str:
        if self._receivedHeaderSize > self.totalHeadersSize:
            return f"a request head over {self.totalHeadersSize} bytes"
        if self._receivedHeaderCount > self.maxHeaders:
            return f"more than {self.maxHeaders} headers"
        if self._line is None:
            return "a body that cannot be read (its chunks, or its form)"
        if self._head_lines == 1:
            return f"not an HTTP/1.x request line: {_shown(self._line)}"
        header = self._header if self._header is not None else self._line
        return f"a header that cannot be read: {_shown(header)}"

    def _await_head(self):
        self._stop_head_timer()
        self._head_timer = self.callLater(REQUEST_SECONDS, self._head_too_slow)

    def _stop_head_timer(self):
        if self._head_timer is not None and self._head_timer.active():
            self._head_timer.cancel()
        self._head_timer = None

    def _head_too_slow(self):
        self._head_timer = None
        self.transport.abortConnection()

    def allContentReceived(self):
        self._stop_head_timer()
        super().allContentReceived()

    def requestDone(self, request):
        if not self.persistent:
            super().requestDone(request)
            return
        # Before the channel replays what a client pipelined: a request
        # already there stops the timer again at once.
        self._await_head()
        # What the client sent ahead is read on the reactor's next turn, one
        # request a turn: Twisted would answer it all at once, and 64 kB of
        # pipelined requests (1,300 answers of 0.3 ms) on each of a source's
        # connections held the reactor, and every knock, for seconds.
        self.paused = True  # LineReceiver's loop stops; what came stays buffered
        super().requestDone(request)
        self._networkProducer.pauseProducing()  # and nothing more is read meanwhile
        self._next_request = self.callLater(0, self._read_on)

    _next_request = None
    _read_when_drained = False
    _ahead = 0  # requests in a row that were here before the last one's answer went

    def _read_on(self):
        self._next_request = None
        if self._waitingForTransport:
            # The client is not reading its answers: answer what it sent
            # ahead only once it does (resumeProducing, below).  Else 64 kB
            # of 18-byte requests put 3,600 pages (5 MB) in our write buffer
            # for a peer that reads nothing, on each of its connections.
            self._read_when_drained = True
            return
        if self._buffer:  # (nothing is read between an answer and this call)
            self._ahead += 1
            if self._ahead > MAX_AHEAD:
                self._answer_and_close(bad_request(
                    f"more than {MAX_AHEAD} requests sent ahead of their answers"))
                return
        else:
            self._ahead = 0
        self.paused = False
        self._networkProducer.resumeProducing()
        self.dataReceived(b"")

    def resumeProducing(self):
        super().resumeProducing()
        if self._read_when_drained and self._next_request is None:
            self._read_when_drained = False
            self._networkProducer.pauseProducing()  # until then: _read_on reads on
            self._next_request = self.callLater(0, self._read_on)

    def lineLengthExceeded(self, line):
        self._answer_and_close(LINE_TOO_LONG)

    def connectionLost(self, reason):
        self._stop_head_timer()
        if self._next_request is not None and self._next_request.active():
            self._next_request.cancel()
        super().connectionLost(reason)


class QuietSite(Site):
    """
    No access log: login URLs carry their token in the query.  HTTP/1.1
    only: twisted.web switches to HTTP/2 when the h2 package is installed
    and TLS agrees on it, and its HTTP/2 requests would not pass through
    L{BoundedRequest}'s limit.
    """

    protocol = ConsoleChannel
    requestFactory = BoundedRequest

    def acceptableProtocols(self):
        return [b"http/1.1"]

    def log(self, request):
        pass


class Busy(Protocol):
    """
    A connection past the limit: told so, then closed, and cut after
    C{BUSY_SECONDS} if it has not closed by then (under TLS the answer
    waits for a handshake the client may never finish).  C{gone} is
    called once it has.
    """

    def __init__(self, clock, gone=lambda: None):
        self._clock = clock
        self._cut = None
        self._gone = gone

    def connectionMade(self):
        self._cut = self._clock.callLater(BUSY_SECONDS, self.transport.abortConnection)
        self.transport.write(BUSY)
        self.transport.loseConnection()

    def connectionLost(self, reason):
        if self._cut is not None and self._cut.active():
            self._cut.cancel()
        self._gone()


class Cut(Protocol):
    """A connection past every limit: cut at once, unanswered."""

    def connectionMade(self):
        self.transport.abortConnection()


def _source(host: str) -> str:
    """
    The address a connection counts under, as knocks count it
    (L{knocker.core.sources}): an IPv6 address by its /64, an IPv4 one
    mapped into IPv6 (a console on ::) as itself.
    """
    return _SOURCE_KEYS(normalise_ip(host)) if ":" in host else host


_SOURCE_KEYS = SourceKeys(64)


@implementer(IProtocolNegotiationFactory)
class ConnectionLimit(WrappingFactory):
    """
    C{site} with at most C{limit} connections at once; each holds a file
    descriptor, which the daemon needs for its pool ports and knocks.  A
    wrapped connection is still what it wraps (TLS included), so requests
    over C{ssl:} stay secure.

    When all are taken, the oldest connection that has not shown a session
    or a bearer token (its channel's C{vouched}, set by the console's
    gate) is cut to make room, and when the new one's address holds
    C{per_source}, that address's oldest: anyone can open connections and
    keep them alive with requests to the login page, and the operator's
    browser must still get in.  Only when there is none to cut is a new
    one turned away (L{Busy}), and past C{max_busy} of those, cut
    unanswered.  (An attacker who opens connections faster than the
    operator's browser sends its first request still wins: the commands'
    socket, L{ConsoleService._listen_for_commands}, is the way in then.)
    """

    def __init__(self, site, limit: int = MAX_CONNECTIONS, per_source: int = MAX_PER_SOURCE,
                 max_busy: int = MAX_BUSY):
        super().__init__(site)
        self.limit = limit
        self.per_source = per_source
        self.max_busy = max_busy
        self._sources: dict[str, int] = {}
        self._cut: set = set()  # cut to make room, not gone yet
        self._busy = 0  # turned away, not gone yet
        self._said = None  # when a turned-away connection was last logged

    def acceptableProtocols(self):
        # Twisted's TLS asks the factory it wraps which protocols to agree
        # on (ALPN), and fails the handshake of a client that offers some
        # (every browser does) when the answer is none.
        return self.wrappedFactory.acceptableProtocols()

    def buildProtocol(self, addr):
        source = _source(getattr(addr, "host", ""))
        from_source = self._sources.get(source, 0) - sum(p.source == source for p in self._cut)
        if from_source >= self.per_source:
            # (a console on 127.0.0.1 behind an SSH tunnel: everyone's)
            refused = not self._make_room(source)
        else:
            refused = len(self.protocols) - len(self._cut) >= self.limit and not self._make_room()
        if refused:
            self._turned_away(source)
            if self._busy >= self.max_busy:
                return Cut()
            self._busy += 1
            return Busy(self.wrappedFactory.reactor, self._busy_gone)
        protocol = super().buildProtocol(addr)
        protocol.source = source
        self._sources[source] = self._sources.get(source, 0) + 1
        return protocol

    def _make_room(self, source: str | None = None) -> bool:
        """
        Cut the oldest connection (from C{source}, if given) that has not
        vouched; whether there was one.
        """
        for protocol in self.protocols:  # in the order they came
            if protocol not in self._cut and source in (None, protocol.source) and not getattr(
                    protocol.wrappedProtocol, "vouched", False):
                self._cut.add(protocol)
                protocol.transport.abortConnection()
                return True
        return False

    def _busy_gone(self) -> None:
        self._busy -= 1

    def unregisterProtocol(self, protocol):
        super().unregisterProtocol(protocol)
        self._cut.discard(protocol)
        source = getattr(protocol, "source", None)
        if source in self._sources:
            self._sources[source] -= 1
            if not self._sources[source]:
                del self._sources[source]

    def _turned_away(self, source: str) -> None:
        now = self.wrappedFactory.reactor.seconds()
        if self._said is None or now - self._said >= 60:
            self._said = now
            log.warn("console: turning connections away ({n} open, {m} from {source}); "
                     "logged once a minute", n=len(self.protocols),
                     m=self._sources.get(source, 0), source=source)


class ListenFailed(Exception):
    """An endpoint that did not listen at once; the message says why."""


def _listen_now(endpoint, factory):
    """
    The port C{endpoint} listens on for C{factory}: the daemon's endpoints
    listen at once (their Deferred has fired when listen returns).

    @raise ListenFailed: it failed, or had not listened yet.
    """
    result = []
    endpoint.listen(factory).addBoth(result.append)
    if not result:
        raise ListenFailed("did not listen at once")
    if isinstance(result[0], Failure):
        raise ListenFailed(str(result[0].value))
    return result[0]


class ConsoleService:
    def __init__(self, config, reactor, wall):
        self.config = config
        self._reactor = reactor
        self._wall = wall
        self.bus = EventBus(reactor)
        self.metrics = Metrics(reactor)
        self.activity = Activity(reactor)
        self.credentials = Credentials(config.state_dir)
        self.port = None
        self.commands = None
        self.url = None

    def observe(self, audit) -> ObservedAudit:
        return ObservedAudit(audit, self._wall,
                             (self.metrics.event, self.activity, self.bus.publish),
                             self.metrics.hit)

    def timed(self, runner):
        return self.metrics.timed(runner, self.config)

    def listen(self, server, audit, endpoint=None, privileged=None) -> int:
        """
        Serve the console; return the port.  Raises L{ValueError} naming
        C{admin} when it cannot listen.

        @param endpoint: the C{admin} endpoint, built already (by root,
            whose TLS key it may be); else built here.
        @param privileged: a context manager to bind within (root's, under
            twistd --uid: a port below 1024); the rest, the credentials
            file above all, is done as whoever runs this.
        """
        self.metrics.attach(server)
        console = Console(server, self.config, audit, self._reactor, self._wall,
                          self.credentials, Sessions(self._reactor), self.bus, self.activity,
                          self.metrics, blocking=deferToThread)
        site = QuietSite(console, timeout=IDLE_SECONDS, reactor=self._reactor)
        if endpoint is None:
            endpoint = serverFromString(self._reactor, self.config.admin)
        try:
            with privileged() if privileged is not None else nullcontext():
                self.port = _listen_now(endpoint, ConnectionLimit(site))
        except ListenFailed as failed:
            raise ValueError(f"admin = {self.config.admin}: {failed}") from None
        kind, host, _ = admin_endpoint(self.config.admin)
        port = self.port.getHost().port
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{'https' if kind == 'ssl' else 'http'}://{shown}:{port}/"
        self._listen_for_commands(console)
        console.daemon_token = self.credentials.publish(self.url)
        return port

    def _listen_for_commands(self, console) -> None:
        """
        The same API on a UNIX socket in the state's private console folder
        (mode 0600), for C{knocker unlock} and C{knocker revoke}: only the
        daemon's user and root reach it, and its connections have a budget
        of their own, so that anyone filling the console's TCP limits (any
        local user can, from 127.0.0.1) cannot keep the operator from
        lifting a lockout or revoking a stolen file.  Where it cannot
        listen (a path past the 107 bytes a socket's name may have), the
        commands use the TCP console, and the log says so.
        """
        import os

        from twisted.internet.endpoints import UNIXServerEndpoint

        from knocker.files import ensure_private_dir

        path = self.credentials.command_socket()
        try:
            ensure_private_dir(os.path.dirname(path))
            os.unlink(path)  # one an earlier run left (the state's lock is ours)
        except FileNotFoundError:
            pass
        except OSError as error:
            log.warn("console: no commands socket ({error}); knocker unlock and revoke "
                     "will use {url}", error=error, url=self.url)
            return
        site = QuietSite(console, timeout=IDLE_SECONDS, reactor=self._reactor)
        try:
            self.commands = _listen_now(UNIXServerEndpoint(self._reactor, path, mode=0o600),
                                        ConnectionLimit(site, MAX_COMMANDS, MAX_COMMANDS))
        except ListenFailed as why:
            log.warn("console: no commands socket at {path} ({why}); knocker unlock and "
                     "revoke will use {url}", path=path, why=why, url=self.url)

    def stop(self):
        self.credentials.unpublish()
        ports = [port for port in (self.port, self.commands) if port is not None]
        self.port = self.commands = None
        return gatherResults([maybeDeferred(port.stopListening).addErrback(self._not_removed)
                              for port in ports], consumeErrors=True) if ports else None

    def _not_removed(self, failure):
        # Twisted removes the socket's file as it stops listening, and fails
        # if it is gone already or not ours to remove (made before twistd's
        # --uid took effect); the next start removes what is left.
        failure.trap(FileNotFoundError, PermissionError)
        log.info("console: the commands socket was not removed ({error})",
                 error=failure.value)
