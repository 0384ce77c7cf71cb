"""
The blocking driver: the knock coroutine on plain blocking sockets, for
C{knocker knock} without a reactor.

Importing Twisted's reactor takes longer than a whole knock on a LAN, so for
plain C{tcp:} endpoints the command drives L{knocker.client.knock.knock} with
L{BlockingDriver}, which uses the C socket module directly; any other endpoint
(C{tls:} above all) goes to the Twisted driver.  The protocol is written
once, in L{knocker.core.handshake}; only the I/O differs.
"""

import _socket
import sys
import time

from knocker.client.knock import Trouble, Unreachable, over_long_line
from knocker.client.tcp import connect_central, connect_within, timed_out
from knocker.core import handshake as hs


class _Connection:
    def __init__(self, sock, peer_host: str | None = None, greeted: bytes | None = None,
                 answered=None, unread: bytes = b"", failure: OSError | None = None,
                 waited: float = 0.0):
        self._sock = sock
        self._buffer = unread
        self._failure = failure  # met before the knock took it: its next read raises it
        self._waited = waited  # for the first line, before the knock took it
        self.peer_host = sock.getpeername()[0] if peer_host is None else peer_host
        self.greeted = greeted  # the line said on it before the knock took it
        self.answered = answered  # the handshake, if its CHALLENGE was answered then

    def send(self, line: bytes) -> None:
        try:
            self._sock.sendall(line)
        except OSError as failure:
            raise Trouble(f"central connection: {failure}") from None

    async def readline(self, timeout: float):
        """
        The next line, within C{timeout} in all: the deadline holds across
        every C{recv}, so a server dripping a byte at a time cannot stretch
        it.

        @raise hs.ProtocolError: a line longer than the protocol allows.
        """
        sock = self._sock
        deadline = time.monotonic() + timeout
        shown, self._waited = timeout + self._waited, 0.0  # the whole wait, in a message
        while b"\n" not in self._buffer:
            if len(self._buffer) > hs.MAX_LINE:
                raise over_long_line(self._buffer)
            left = deadline - time.monotonic()
            try:
                if self._failure is not None:
                    failure, self._failure = self._failure, None
                    raise failure
                if left <= 0:
                    raise timed_out()
                sock.settimeout(left)
                data = sock.recv(4096)
            except _socket.timeout:
                raise Trouble(f"no reply within {shown:.1f}s") from None
            except OSError as failure:
                raise Trouble(f"central connection: {failure}") from None
            if not data:
                return None
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        if len(line) > hs.MAX_LINE:
            raise over_long_line(line)
        return line

    def close(self) -> None:
        self._sock.close()


class BlockingDriver:
    """
    The knock driver on blocking sockets; its awaits never suspend.
    """

    def __init__(self, verbose: bool = False, early=None):
        self._verbose = verbose
        self._early = early  # a knocker.client.tcp.EarlyHello, or None

    def now(self) -> float:
        return time.monotonic()

    def say(self, message: str) -> None:
        if self._verbose:
            print(f"knocker: {message}", file=sys.stderr)

    async def connect(self, endpoint: str, timeout: float) -> _Connection:
        peer_host, handed = None, {}
        try:
            taken = self._early.take(endpoint) if self._early is not None else None
            if taken is not None:
                sock, peer_host, handed = taken
            else:
                sock = connect_central(endpoint, timeout)
            try:  # a server that resets at once leaves no peer to name
                return _Connection(sock, peer_host, **handed)
            except OSError:
                sock.close()
                raise
        except OSError as failure:
            raise Unreachable(str(failure) or type(failure).__name__) from None
        except (OverflowError, UnicodeError, ValueError) as failure:
            # a port past 65535, a host name that is not ASCII
            raise Unreachable(f"not a usable endpoint ({failure})") from None

    async def hit(self, host: str, port: int, timeout: float) -> None:
        """
        Connect and wait for the server's close, within C{timeout} in all
        (across every C{recv}: a port that drips bytes cannot stretch it).
        """
        deadline = time.monotonic() + timeout
        try:
            sock = connect_within(host, port, deadline)
        except OSError as failure:
            raise Trouble(f"knock on port {port}: {failure}") from None
        try:
            while True:  # the server closes at once: wait for it
                left = deadline - time.monotonic()
                if left <= 0:
                    raise timed_out()
                sock.settimeout(left)
                if not sock.recv(512):
                    break
        except ConnectionResetError:
            pass  # closed, abruptly: still closed
        except _socket.timeout:
            # Knocking the next port before the server saw this one could
            # reorder them: give up instead.
            raise Trouble(f"knock on port {port}: the server did not close it") from None
        except OSError as failure:
            raise Trouble(f"knock on port {port}: {failure}") from None
        finally:
            sock.close()

    async def sleep(self, seconds: float) -> None:
        time.sleep(seconds)
