"""
C{knocker knock} without a reactor: the knock coroutine on blocking sockets.

Importing Twisted's reactor takes longer than a whole knock on a LAN, so for
plain C{tcp:} endpoints the command drives L{knocker.client.knock.knock} with
L{BlockingDriver}, which uses the C socket module directly; any other endpoint
(C{tls:} above all) goes to the Twisted driver.  The protocol is written
once, in L{knocker.core.handshake}; only the I/O differs.
"""

import _socket
import sys
import time

from knocker.client.knock import Trouble, Unreachable, knock, run_blocking
from knocker.core import handshake as hs

USAGE = "usage: knocker knock [--config FILE] [--server ENDPOINT] [--knock-file FILE] [--KEY VALUE ...]"
USAGE_ERROR = 2


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
        sock = self._sock
        sock.settimeout(timeout)
        while b"\n" not in self._buffer:
            if len(self._buffer) > hs.MAX_LINE:
                return b"ERROR line-too-long"
            try:
                data = sock.recv(4096)
            except _socket.timeout:
                raise Trouble(f"no reply within {timeout:.1f}s") from None
            except OSError as failure:
                raise Trouble(f"central connection: {failure}") from None
            if not data:
                return None
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
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

    def _open(self, host: str, port: int, timeout: float):
        last = None
        # Bytes, not str: a str host would load the idna codec (and re).
        for family, kind, proto, _, address in _socket.getaddrinfo(
            host.encode("ascii", "strict"), port, 0, _socket.SOCK_STREAM
        ):
            sock = _socket.socket(family, kind, proto)
            sock.settimeout(timeout)
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
            sock = self._open(host, port, timeout)
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        except OSError as failure:
            raise Unreachable(str(failure) or type(failure).__name__) from None
        return _Connection(sock)

    async def hit(self, host: str, port: int, timeout: float) -> None:
        try:
            sock = self._open(host, port, timeout)
        except OSError as failure:
            raise Trouble(f"knock on port {port}: {failure}") from None
        try:
            while sock.recv(512):  # the server closes at once: wait for it
                pass
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


def run_knock(config, knockfile, verbose: bool = False):
    """
    Knock once with the fastest driver that handles C{config.server}.
    """
    if plain_tcp(config.server) is not None:
        return run_blocking(knock(BlockingDriver(verbose), config, knockfile))
    from twisted.internet.task import react

    from knocker.client.twisted_driver import knock as twisted_knock

    results = []

    def main(reactor):
        return twisted_knock(reactor, config, knockfile).addCallback(results.append)

    try:
        react(main)
    except SystemExit as done:
        if done.code:
            raise
    return results[0]


def parse_knock_args(argv: list[str]) -> tuple[str | None, dict[str, str], bool]:
    """
    C{--KEY VALUE} and C{--KEY=VALUE} for C{--config} and every client key.

    @raise ValueError: an unknown option or a missing value.
    """
    from knocker.core.config import CLIENT_KEYS

    config, overrides, verbose = None, {}, False
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-v", "--verbose"):
            verbose = True
            continue
        name, sep, value = arg.partition("=")
        key = name[2:] if name.startswith("--") else None
        if key != "config" and key not in CLIENT_KEYS:
            raise ValueError(f"unknown option {arg!r}\n{USAGE}")
        if not sep:
            if not args:
                raise ValueError(f"option {name} needs a value\n{USAGE}")
            value = args.pop(0)
        if key == "config":
            config = value
        else:
            overrides[key] = value
    return config, overrides, verbose


def knock_command(argv: list[str]) -> int:
    """
    C{knocker knock ...}: print the outcome, return its exit status.
    """
    from knocker.client.knock import load_knockfile
    from knocker.core.config import ConfigError, load_client_config

    try:
        path, overrides, verbose = parse_knock_args(argv)
        config = load_client_config(path, overrides)
        knockfile = load_knockfile(config)
    except (ConfigError, ValueError) as error:
        print(f"knocker knock: {error}", file=sys.stderr)
        return USAGE_ERROR
    result = run_knock(config, knockfile, verbose)
    stream = sys.stdout if result.outcome.exit_code == 0 else sys.stderr
    where = f"knock {result.index}" if result.index else "no knock granted"
    print(f"knocker: {result.message()} [{where}, {config.server}]", file=stream)
    return result.outcome.exit_code
