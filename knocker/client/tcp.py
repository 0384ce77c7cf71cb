"""
Plain TCP for C{knocker knock}: endpoints, addresses, a connection within a
deadline, and the knock's first line said early.

Only C{_socket} is imported here (not C{socket}, which loads enum and
selectors): the command loads this module, reads its configuration and
portknock file, and says HELLO (L{EarlyHello}) before it loads the protocol's
code, so that the server's CHALLENGE comes back while the client imports.
"""

import _socket
import time


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
    if named or len(positional) > 2 or not host or not port or not (port.isascii()
                                                                      and port.isdigit()):
        return None
    return host, int(port)


def addresses(host: str, port: int, seconds: float) -> list[tuple]:
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


def timed_out() -> OSError:
    return TimeoutError("timed out")


def connect_within(host: str, port: int, deadline: float):
    """
    A blocking socket connected to C{host}:C{port} by C{deadline}
    (monotonic), trying each address in turn, each with an equal share of
    the time left: one whose SYNs are dropped (an IPv6 address in front of
    a server on IPv4 alone) cannot take the time of those after it.
    """
    last = None
    found = addresses(host, port, deadline - time.monotonic())
    for position, (family, kind, proto, _, address) in enumerate(found):
        left = deadline - time.monotonic()
        if left <= 0:  # settimeout(0) would make the socket non-blocking
            raise last or timed_out()
        try:
            sock = _socket.socket(family, kind, proto)  # (a family turned off: the next)
        except OSError as failure:
            last = failure
            continue
        sock.settimeout(left / (len(found) - position))
        try:
            sock.connect(address)
            return sock
        except OSError as failure:
            sock.close()
            last = failure
    raise last or OSError(f"no address for {host}")


def connect_central(endpoint: str, timeout: float):
    """
    A socket connected to the central port at C{endpoint} (plain TCP) within
    C{timeout}, Nagle off: each line of the exchange goes out at once.

    @raise OSError: not reached in time, refused, no address.
    @raise OverflowError, UnicodeError, ValueError: a port past 65535, a
        host name that is not ASCII.
    """
    host, port = plain_tcp(endpoint)
    sock = connect_within(host, port, time.monotonic() + timeout)
    try:
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
    except OSError:
        sock.close()
        raise
    return sock


class EarlyHello:
    """
    The first server of a knock, connected and greeted with C{line} (its
    HELLO) as soon as the command knows them, before the protocol's code is
    loaded; then, once the handshake's code is (L{answer}), its CHALLENGE
    answered before the knock's driver and coroutine are: they load while
    the server checks the PROOF and burns the knock.  The driver hands the
    connection to the knock's first attempt as if it had just opened it
    (L{take}); whatever failed here is raised then, as the driver's own
    connect, read or send would have raised it.  Nothing is decided here:
    the handshake makes the PROOF, and any other first line is left for the
    knock to read.
    """

    def __init__(self, endpoint: str, line: bytes, timeout: float):
        self.endpoint = endpoint
        self.line = line
        self.began = time.monotonic()  # the blocking driver's clock
        self.sock = None
        self.peer_host = None
        self.failure = None
        self.said = False
        self.answered = None  # the handshake, past its CHALLENGE, PROOF said
        self.unread = b""  # what came after the CHALLENGE (or a first line left unread)
        self.read_failure = None  # an OSError met reading, or saying the PROOF
        self.waited = 0.0  # seconds spent waiting for the first line
        try:
            self.sock = connect_central(endpoint, timeout)
            # Now: a server that turns us away (a full central port) may
            # have closed by the time the knock takes the connection.
            self.peer_host = self.sock.getpeername()[0]
        except (OSError, OverflowError, UnicodeError, ValueError) as failure:
            if self.sock is not None:
                self.sock.close()
                self.sock = None
            self.failure = failure
            return
        try:
            self.sock.sendall(line)
            self.said = True
        except OSError:
            pass  # the knock's own send of HELLO meets the failure and reports it

    def answer(self, machine, max_line: int, seconds: float, send_timeout: float) -> None:
        """
        Read the server's first line, within C{seconds}, and if
        C{machine.proof_for(line)} (L{knocker.core.handshake.ClientHandshake})
        gives a PROOF, say it at once (within C{send_timeout}).  Whatever
        else happens (another line, a part line, an over-long one, the time
        passing, the end of the connection, an error) is left as it is for
        the knock's own reads, which meet it as they would have.  A PROOF
        that cannot be said hands over no machine: the knock's first read
        raises the failure, as its own send would have, and nothing read
        after the CHALLENGE is judged.
        """
        sock = self.sock
        if sock is None or not self.said:
            return
        began = time.monotonic()
        deadline = began + seconds
        data = b""
        try:
            while b"\n" not in data and len(data) <= max_line:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                sock.settimeout(left)
                more = sock.recv(4096)
                if not more:
                    break
                data += more
        except _socket.timeout:
            pass
        except OSError as failure:
            self.read_failure = failure
        self.unread, self.waited = data, time.monotonic() - began
        line, newline, rest = data.partition(b"\n")
        if self.read_failure is not None or not newline or len(line) > max_line:
            return
        proof = machine.proof_for(line)
        if proof is None:
            return
        try:
            sock.settimeout(max(send_timeout, 0.001))  # (0 would make it non-blocking)
            sock.sendall(proof)
        except OSError as failure:
            self.unread, self.read_failure = b"", failure
            return
        self.answered, self.unread = machine, rest

    def take(self, endpoint: str):
        """
        C{(socket, peer address, what else the driver's connection is
        given)} for the knock's first connection if it goes to this server,
        once; C{None} otherwise.  The last is a dict: C{greeted}, the line
        said on it (or C{None}); C{answered}, the handshake past its
        CHALLENGE (or C{None}); C{unread}, bytes read and not yet taken;
        C{failure}, an error the knock's next read raises (or C{None});
        C{waited}, the seconds L{answer} waited for the first line.

        @raise: what connecting raised.
        """
        if endpoint != self.endpoint or (self.sock is None and self.failure is None):
            return None
        sock, failure, self.sock, self.failure = self.sock, self.failure, None, None
        if failure is not None:
            raise failure
        return sock, self.peer_host, {
            "greeted": self.line if self.said else None, "answered": self.answered,
            "unread": self.unread, "failure": self.read_failure, "waited": self.waited}

    def close(self) -> None:
        """Hang up a connection no knock took."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
