"""
The Twisted driver for the knock coroutine (L{knocker.client.knock}): used by
C{twistd knockclient}, by C{knocker knock} for endpoints other than plain
TCP (TLS above all), and by anything that already runs a reactor.
"""

import os

from twisted.internet import defer, endpoints, error, protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from knocker.client.knock import KnockResult, Outcome, Trouble, Unreachable, over_long_line
from knocker.client.knock import knock as _knock
from knocker.core import handshake as hs

log = Logger()

__all__ = ["knock", "TwistedDriver", "KnockResult", "Outcome"]


#: Lines queued before the connection is no longer read (until the knock
#: has taken half of them): the coroutine reads nothing while it knocks,
#: and a server (or a man in the middle of plain TCP) that floods lines
#: meanwhile must not fill the client's memory.  A renewal's DATA lines
#: come at the pace the coroutine takes them.
QUEUED_LINES = 256


class _Lines(LineOnlyReceiver):
    """
    Central-port lines into a queue the coroutine awaits.
    """

    delimiter = b"\n"
    MAX_LENGTH = hs.MAX_LINE

    def __init__(self):
        self.lines = defer.DeferredQueue()
        self.closed = defer.Deferred()
        self.received = False
        self.tls_failure = None
        self._paused = False

    def lineReceived(self, line):
        self.received = True
        self.lines.put(line)
        if not self._paused and len(self.lines.pending) >= QUEUED_LINES:
            self._paused = True
            self.transport.pauseProducing()

    def taken(self) -> None:
        """A line was taken from the queue: read on once half of it is free."""
        if self._paused and len(self.lines.pending) <= QUEUED_LINES // 2:
            self._paused = False
            self.transport.resumeProducing()

    def lineLengthExceeded(self, line):
        # The server broke the protocol: readline raises this, before the
        # None that the close puts after it.
        self.lines.put(over_long_line(line))
        self.transport.loseConnection()

    def connectionLost(self, reason):
        from OpenSSL.SSL import Error as TLSError
        from service_identity import VerificationError

        if not self.received and reason.check(TLSError, VerificationError):
            # The TLS handshake failed (untrusted certificate, wrong name):
            # the server was never really reached.
            self.tls_failure = reason.value
        self.lines.put(None)
        self.closed.callback(None)


class _Connection:
    def __init__(self, reactor, lines: _Lines):
        self._reactor = reactor
        self._lines = lines
        self.peer_host = lines.transport.getPeer().host

    def send(self, line: bytes) -> None:
        self._lines.transport.write(line)

    async def readline(self, timeout: float):
        waiting = self._lines.lines.get()
        waiting.addTimeout(timeout, self._reactor)
        try:
            line = await waiting
        except defer.TimeoutError:
            raise Trouble(f"no reply within {timeout:.1f}s") from None
        self._lines.taken()
        if isinstance(line, hs.ProtocolError):
            raise line
        if line is None and self._lines.tls_failure is not None:
            raise Unreachable(f"TLS handshake failed: {_describe(self._lines.tls_failure)}")
        return line

    def close(self) -> None:
        self._lines.transport.loseConnection()


def _timed_out(result, seconds: float):
    """
    What a connect cut short by its timeout says.  Twisted reports a host
    name whose lookup was cut short as one it could not find: not what
    happened.
    """
    if isinstance(result, Failure):
        if result.check(error.DNSLookupError):
            raise Unreachable(f"no answer from the resolver within {seconds:.1f}s")
        # (a host name's connection attempts cut short say the first;
        # neither is a ConnectError, which the caller turns into Unreachable)
        if result.check(error.ConnectingCancelledError, defer.CancelledError):
            raise defer.TimeoutError(f"no connection within {seconds:.1f}s")
    return result


def _describe(failure) -> str:
    """
    OpenSSL's error list, shortened to what a person needs to read.
    """
    from service_identity import VerificationError

    if isinstance(failure, VerificationError):
        return f"the certificate is not for this name ({failure.errors[0]})"
    details = [part for entry in getattr(failure, "args", [[]])[0] or [] for part in entry[-1:]]
    return "; ".join(str(d) for d in details) or str(failure)


class _Hit(protocol.Protocol):
    """
    One knock connection, made with connectTCP directly (an endpoint's
    wrapping costs more than the connection on loopback): C{done} fires
    when the server has closed it, or fails if it could not be made.
    """

    def __init__(self):
        self.done = defer.Deferred()

    def connectionLost(self, reason):
        if not self.done.called:  # not after a timeout
            self.done.callback(None)


class _HitFactory(protocol.ClientFactory):
    noisy = False

    def __init__(self, hit: _Hit):
        self._hit = hit

    def buildProtocol(self, addr):
        return self._hit

    def clientConnectionFailed(self, connector, reason):
        if not self._hit.done.called:
            self._hit.done.errback(reason)


class _Given(protocol.Factory):
    """
    A factory for one given protocol; quiet, unlike connectProtocol's, which
    logs starting and stopping for every knock connection.
    """

    noisy = False

    def __init__(self, proto):
        self._proto = proto

    def buildProtocol(self, addr):
        return self._proto


def _connect(endpoint, proto):
    return endpoint.connect(_Given(proto))


class TwistedDriver:
    def __init__(self, reactor, verbose: bool = False):
        self._reactor = reactor
        self._verbose = verbose  # the command's -v: on standard error, as the blocking driver
        self._bind = None  # where the hits come from: see connect

    def now(self) -> float:
        return self._reactor.seconds()

    def say(self, message: str) -> None:
        if self._verbose:
            import sys

            print(f"knocker: {message}", file=sys.stderr)
        else:
            log.info("{message}", message=message)

    async def connect(self, endpoint: str, timeout: float) -> _Connection:
        lines = _Lines()
        try:
            described = endpoints.clientFromString(self._reactor, endpoint)
        except Exception as failure:  # an unknown kind or option, a bad certificate, ...
            raise Unreachable(f"not a usable endpoint ({failure})") from None
        try:
            connecting = _connect(described, lines)
            connecting.addTimeout(timeout, self._reactor, onTimeoutCancel=_timed_out)
            await connecting
        except (error.ConnectError, error.DNSLookupError, defer.TimeoutError, OSError) as failure:
            raise Unreachable(str(failure)) from None
        # An endpoint with bindAddress says where the central connection
        # comes from: the hits must come from there too, or the server sees
        # another source, times the knock out, and may lock everyone out.
        self._bind = ((lines.transport.getHost().host, 0)
                      if "bindAddress=" in endpoint else None)
        return _Connection(self._reactor, lines)

    async def hit(self, host: str, port: int, timeout: float) -> None:
        hit = _Hit()
        # connectTCP takes IPv6 literals too; the timeout covers the connect,
        # addTimeout the wait for the server's close.
        connector = self._reactor.connectTCP(host, port, _HitFactory(hit), timeout=timeout,
                                             bindAddress=self._bind)
        hit.done.addTimeout(timeout, self._reactor)
        try:
            await hit.done
        except defer.TimeoutError:
            connector.disconnect()
            raise Trouble(f"knock on port {port}: not closed within {timeout:.1f}s") from None
        except (error.ConnectError, OSError) as failure:
            connector.disconnect()
            raise Trouble(f"knock on port {port}: {failure}") from None

    async def sleep(self, seconds: float) -> None:
        await deferLater(self._reactor, seconds)


def knock(reactor, config, knockfile) -> defer.Deferred:
    """
    Knock once in C{reactor}; a L{Deferred} firing with a L{KnockResult}.
    """
    return defer.ensureDeferred(_knock(TwistedDriver(reactor), config, knockfile))


def run_in_reactor(coroutine_for, verbose: bool = False):
    """
    Run C{coroutine_for(TwistedDriver(reactor, verbose))} in a reactor
    started for it, and return its result (C{knocker knock} and C{knocker
    enroll} on endpoints other than plain TCP).
    """
    import signal

    from twisted.internet.task import react

    results = []
    stopped_by = []
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}

    def halt():
        try:
            reactor.stop()
        except error.ReactorNotRunning:
            pass  # a second signal, or the knock's own end, came first

    def stop(number, _frame):
        stopped_by.append(number)
        reactor.callFromThread(halt)

    def ours():
        # In place of the reactor's own handlers, which it never takes back
        # (the relay of `knocker connect` that follows would ignore ^C), and
        # which stop it without a word: the caller is told of the signal.
        # A signal ignored (a background job's SIGINT) stays ignored.
        for number, before in handlers.items():
            signal.signal(number, signal.SIG_IGN if before == signal.SIG_IGN else stop)

    def main(running):
        nonlocal reactor
        reactor = running
        from knocker.client.resolver import DetachedResolver

        # Its lookups are not joined as the reactor stops (see the module).
        running.installNameResolver(DetachedResolver(running))
        ours()  # (main runs before the reactor does, and installs its own:)
        reactor.callWhenRunning(ours)
        d = defer.ensureDeferred(coroutine_for(TwistedDriver(reactor, verbose)))
        return d.addCallback(results.append)

    reactor = None
    try:
        react(main)
    except SystemExit as done:
        if done.code and not stopped_by:
            raise
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
    if stopped_by and not results:  # (a result already had: it stands)
        if stopped_by[0] == signal.SIGINT:
            raise KeyboardInterrupt
        os.kill(os.getpid(), stopped_by[0])  # to the handler before ours
        raise SystemExit(128 + stopped_by[0])  # if that one let the process live
    return results[0]
