"""
A pool port: a listening socket that, for each connection, accepts, closes
at once, and reports the hit.  The daemon's pool ports are watched by the
pool's own poller (L{knocker.daemon.poolpoller}), not one by one by the
reactor.

This is the daemon's hot path (a scan or a flood is thousands of hits a
second), so it does not build a Twisted protocol and transport per
connection, which costs several times the accept itself: it takes the raw
descriptor from C{accept}, closes it, and calls C{on_hit(ip, src_port,
port)}.  Every pool port behaves the same, whoever connects.
"""

import errno
import os
import socket

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()

_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
# With no spare to give back, a port stops watching its socket this long
# (the connection waits in the kernel's queue), rather than wake at once
# for an accept that fails again.
_PAUSE_SECONDS = 0.1
# At most one "out of file descriptors" line this often, for all ports.
_WARN_EVERY = 10.0


class SpareDescriptor:
    """
    One descriptor held in reserve for all pool ports: when the process runs
    out, a port gives it back for a moment to accept (and record) the
    waiting connection instead of spinning on it.
    """

    def __init__(self):
        self._fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self._closed = False
        self._warned_at = None
        self._unwarned = 0

    @property
    def held(self) -> bool:
        return self._fd is not None

    def shortage(self, now: float, prefix: str) -> None:
        """
        Note that a port ran out of descriptors: logged once per
        L{_WARN_EVERY} seconds with the count since, for a process out of
        descriptors wakes for every connection of a flood.
        """
        self._unwarned += 1
        if self._warned_at is None or now - self._warned_at >= _WARN_EVERY:
            log.warn("{prefix}: out of file descriptors (accepts that met it since the "
                     "last such line, this one included: {count})", prefix=prefix,
                     count=self._unwarned)
            self._warned_at, self._unwarned = now, 0

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def restore(self) -> None:
        if self._fd is None and not self._closed:
            try:
                self._fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                pass  # still out of descriptors; try again next time

    def close(self) -> None:
        """Let the spare go for good: a port woken later takes none again."""
        self._closed = True
        self.release()


@implementer(IReadDescriptor)
class PoolPort:
    def __init__(self, reactor, port: int, interface: str, on_hit, spare: SpareDescriptor,
                 backlog: int = 1024, watcher=None):
        self._reactor = reactor
        # what watches the socket: the reactor, or the pool's own poller
        self._watcher = reactor if watcher is None else watcher
        self._on_hit = on_hit
        family = socket.AF_INET6 if ":" in interface else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setblocking(False)
            sock.bind((interface, port))
            sock.listen(backlog)
        except OSError as error:
            sock.close()
            raise CannotListenError(interface, port, error) from None
        self._socket = sock
        self._accept = sock._accept  # (descriptor, address), no socket object
        self._family = family
        self._interface = interface
        self.port = sock.getsockname()[1]
        self._spare = spare
        self._paused = None  # the call that watches the socket again

    def startListening(self) -> None:
        self._watcher.addReader(self)

    def stopListening(self) -> None:
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None
        if self._socket is not None:
            self._watcher.removeReader(self)
            self._socket.close()
            self._socket = None

    def getHost(self):
        kind = IPv6Address if self._family == socket.AF_INET6 else IPv4Address
        return kind("TCP", self._interface, self.port)

    # IReadDescriptor

    def fileno(self) -> int:
        return self._socket.fileno() if self._socket is not None else -1

    def logPrefix(self) -> str:
        return f"pool port {self.port}"

    def doRead(self):
        """
        One connection a wake.  The poller is level-triggered, so a port
        with more waiting is ready again at once, and taken after the other
        ready ports have had theirs; not asking again
        until the queue is empty spares each wake a failed accept and its
        exception.  At 10,000 hits a second, where most wakes hold one
        connection, that took the CPU a hit from 13.8 to 12.3 µs here; at
        a flood's maximum rate, where a wake could take several, it costs
        about 1 µs a hit more (10.2 to 11.3), still under 2x the C floor.
        """
        try:
            fd, address = self._accept()
        except BlockingIOError:
            fd = None
        except OSError as error:
            if error.errno in _OUT_OF_DESCRIPTORS:
                self._accept_without_descriptors()
            return
        if fd is not None:
            os.close(fd)
        # A spare lost in a shortage is taken back before the hit is
        # recorded (recording may open descriptors: a program's pipes).
        if not self._spare.held:
            self._spare.restore()
        if fd is not None:
            try:
                self._on_hit(address[0], address[1], self.port)
            except Exception:
                # Never let one hit's failure (a full disk under the state,
                # say) escape: the reactor would close this port for good.
                log.failure("recording a hit on {prefix}", prefix=self.logPrefix())

    def _accept_without_descriptors(self):
        """
        Out of descriptors: give back the spare so the waiting connection
        can be taken (and recorded) rather than spin the reactor, and take
        the spare again before the hit is recorded (recording may open
        descriptors: a program's pipes, a database file).  With no spare
        to give (another took it), stop watching for a moment.
        """
        self._spare.shortage(self._reactor.seconds(), self.logPrefix())
        self._spare.release()
        try:
            fd, address = self._accept()
        except OSError as error:  # (EAGAIN: the connection went meanwhile)
            self._spare.restore()
            if error.errno in _OUT_OF_DESCRIPTORS:
                self._pause()
            return
        os.close(fd)
        self._spare.restore()
        try:
            self._on_hit(address[0], address[1], self.port)
        except Exception:
            log.failure("recording a hit on {prefix}", prefix=self.logPrefix())

    def _pause(self):
        if self._paused is None and self._socket is not None:
            self._watcher.removeReader(self)
            self._paused = self._reactor.callLater(_PAUSE_SECONDS, self._resume)

    def _resume(self):
        self._paused = None
        if self._socket is not None:
            self._watcher.addReader(self)

    def connectionLost(self, reason):
        self.stopListening()
