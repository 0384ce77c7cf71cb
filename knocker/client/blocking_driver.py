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
from knocker.core import handshake as hs


def plain_tcp(endpoint: str) -> tuple[str, int] | None:
    """
    C{(host, port)} for a plain C{tcp:host=H:port=P} or C{tcp:H:P} client
    endpoint, or C{None} for anything this driver leaves to Twisted.
    """
    if "\\" in endpoint:
        return None
    kind, *fields = endpoint.split(":")
    if kind != "tcp":
        return None
    named = {}
    positional = []
    for field in fields:
        key, sep, value = field.partition("=")
        if sep:
            named[key] = value
        else:
            positional.append(field)
    host = named.pop("host", positional[0] if positional else None)
    port = named.pop("port", positional[1] if len(positional) > 1 else None)
    if named or len(positional) > 2 or not host or not port or not port.isdigit():
        return None
    return host, int(port)


def _addresses(host: str, port: int, seconds: float) -> list[tuple]:
    """
    C{getaddrinfo}'s answer for C{host} within C{seconds}, found without it
    for an address written out (the hits go to the central connection's
    peer address: six resolver calls saved on every knock).
    """
    for family in (_socket.AF_INET, _socket.AF_INET6):
        try:
            _socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        return [(family, _socket.SOCK_STREAM, _socket.IPPROTO_TCP, "", (host, port))]
    # Bytes, not str: a str host would load the idna codec (and re).
    return getaddrinfo_within(host.encode("ascii", "strict"), port, seconds)


def getaddrinfo_within(name, port: int, seconds: float) -> list[tuple]:
    """
    C{getaddrinfo(name, port)} for stream sockets, given C{seconds}: the C
    resolver has no deadline of its own (one that never answers held a knock
    10 s past a 2 s timeout), so it runs in a thread of its own, left to
    finish alone if it is late.  (C{_thread}, not C{threading}: it costs the
    knock nothing to import.)

    @raise TimeoutError: no answer in time.
    """
    import _thread

    answered = _thread.allocate_lock()
    answered.acquire()
    outcome = []

    def resolve():
        try:
            outcome.append(_socket.getaddrinfo(name, port, 0, _socket.SOCK_STREAM))
        except BaseException as failure:  # handed to the caller
            outcome.append(failure)
        finally:
            answered.release()

    _thread.start_new_thread(resolve, ())
    if not answered.acquire(True, max(0.0, seconds)):
        shown = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        raise TimeoutError(f"no answer from the resolver for {shown} within {seconds:.1f}s")
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def _timed_out() -> OSError:
    return TimeoutError("timed out")


class _Connection:
    def __init__(self, sock):
        self._sock = sock
        self._buffer = b""
        self.peer_host = sock.getpeername()[0]

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
        while b"\n" not in self._buffer:
            if len(self._buffer) > hs.MAX_LINE:
                raise over_long_line(self._buffer)
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise _timed_out()
                sock.settimeout(left)
                data = sock.recv(4096)
            except _socket.timeout:
                raise Trouble(f"no reply within {timeout:.1f}s") from None
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

    def __init__(self, verbose: bool = False):
        self._verbose = verbose

    def now(self) -> float:
        return time.monotonic()

    def say(self, message: str) -> None:
        if self._verbose:
            print(f"knocker: {message}", file=sys.stderr)

    def _open(self, host: str, port: int, deadline: float):
        """
        A socket connected to C{host}:C{port} by C{deadline} (monotonic),
        trying each address in turn within it.
        """
        last = None
        for family, kind, proto, _, address in _addresses(host, port,
                                                          deadline - time.monotonic()):
            left = deadline - time.monotonic()
            if left <= 0:  # settimeout(0) would make the socket non-blocking
                raise last or _timed_out()
            sock = _socket.socket(family, kind, proto)
            sock.settimeout(left)
            try:
                sock.connect(address)
                return sock
            except OSError as failure:
                sock.close()
                last = failure
        raise last or OSError(f"no address for {host}")

    async def connect(self, endpoint: str, timeout: float) -> _Connection:
        host, port = plain_tcp(endpoint)
        try:
            sock = self._open(host, port, time.monotonic() + timeout)
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        except OSError as failure:
            raise Unreachable(str(failure) or type(failure).__name__) from None
        except (OverflowError, UnicodeError, ValueError) as failure:
            # a port past 65535, a host name that is not ASCII
            raise Unreachable(f"not a usable endpoint ({failure})") from None
        return _Connection(sock)

    async def hit(self, host: str, port: int, timeout: float) -> None:
        """
        Connect and wait for the server's close, within C{timeout} in all
        (across every C{recv}: a port that drips bytes cannot stretch it).
        """
        deadline = time.monotonic() + timeout
        try:
            sock = self._open(host, port, deadline)
        except OSError as failure:
            raise Trouble(f"knock on port {port}: {failure}") from None
        try:
            while True:  # the server closes at once: wait for it
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _timed_out()
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
