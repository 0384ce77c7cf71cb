"""
C{knocker connect [--config FILE] [--KEY VALUE ...] [-v] HOST PORT}: knock
exactly as C{knocker knock} does, then connect to C{HOST:PORT} and relay
standard input to the connection and the connection to standard output, so
that ssh can knock unaided::

    Host door
        HostName door.example.org
        ProxyCommand knocker connect --config ~/.config/knocker/door.conf %h %p

Standard output belongs to whoever reads the relay (ssh): nothing but the
remote side's bytes is ever written to it; every message goes to standard
error.  The knock takes the same path as C{knocker knock} (the same option
parser, configuration, drivers and exit statuses; no reactor, no argparse
for a plain C{tcp:} server), and the relay is plain blocking sockets: one
thread carries standard input up, the main thread carries the connection
down.

Exit status: the status C{knocker knock} gives for a knock that is not
OPEN; otherwise 0 once the remote side has closed the connection,
L{UNREACHABLE_TARGET} when C{HOST} does not resolve (nothing is knocked
then) or no connection to C{HOST:PORT} could be made within
L{CONNECT_WINDOW} seconds of the OPEN, L{RELAY_FAILED} when the
connection or a standard stream failed once connected, and 130 after
Ctrl-C.
"""

import _socket
import gc
import os
import sys
import time

USAGE = "usage: knocker connect [--config FILE] [--KEY VALUE ...] [-v] HOST PORT"
USAGE_ERROR = 2

#: The relay failed once connected: the connection was reset, or standard
#: input or output failed.
RELAY_FAILED = 1
#: The knock was OPEN but no TCP connection to HOST:PORT was made within
#: CONNECT_WINDOW seconds, or HOST does not resolve (then nothing is knocked).
UNREACHABLE_TARGET = 15
#: How long after OPEN connecting to HOST:PORT is retried: the server says
#: OPEN once its on-success program has exited, but a firewall elsewhere
#: may take a moment to follow.
CONNECT_WINDOW = 2.0
#: Pauses between rounds of attempts after a refusal, doubling up to the cap.
RETRY_PAUSE = 0.1
RETRY_PAUSE_CAP = 0.5

CHUNK = 65536


def help_text() -> str:
    from knocker.client.knock import OUTCOMES
    from knocker.core.config import CLIENT_TABLE

    lines = [
        USAGE, "",
        "Knock once as `knocker knock` does, then connect to HOST:PORT and relay standard",
        "input and output across it (for ssh: ProxyCommand knocker connect --config FILE %h %p).",
        "Any key of the [client] section may be given as --KEY VALUE:",
    ]
    lines += [f"  --{key.name:<16} {key.allowed} (default {key.default})" for key in CLIENT_TABLE]
    lines += ["", "Exit status:",
              "   0  the knock was OPEN and the remote side closed the connection",
              f"  {RELAY_FAILED:>2}  the connection or a standard stream failed once connected"]
    lines += [f"  {outcome.exit_code:>2}  {outcome.name}: {outcome.meaning}"
              for outcome in OUTCOMES if outcome.exit_code]
    lines += [f"  {UNREACHABLE_TARGET:>2}  UNREACHABLE_TARGET: HOST does not resolve (nothing "
              f"knocked), or no connection to HOST:PORT within {CONNECT_WINDOW:g}s of OPEN"]
    return "\n".join(lines)


def split_target(argv: list[str]) -> tuple[list[str], str, int]:
    """
    The knock's options, C{HOST} and C{PORT}: the last two arguments.

    @raise ValueError: fewer than two arguments, a C{HOST} that looks like
        an option, or a C{PORT} that is not a number from 1 to 65535.
    """
    if len(argv) < 2:
        raise ValueError(f"HOST and PORT are needed, as the last two arguments\n{USAGE}")
    *options, host, port = argv
    if not host or host.startswith("-"):
        raise ValueError(f"bad HOST {host!r}: HOST and PORT come last\n{USAGE}")
    number = int(port) if port.isascii() and port.isdigit() else 0
    if not 0 < number < 65536:
        raise ValueError(f"bad PORT {port!r}: a TCP port number from 1 to 65535 is needed\n{USAGE}")
    return options, host, number


def resolve(host: str, port: int, seconds: float = 5.0) -> list[tuple]:
    """
    C{(family, type, proto, address)} for each address of C{host}, within
    C{seconds}.

    @raise OSError: the name does not resolve (in time).
    """
    from knocker.client.tcp import getaddrinfo_within

    try:
        name = host.encode("ascii")  # bytes: a str would load the idna codec
    except UnicodeEncodeError:
        name = host
    try:
        answers = getaddrinfo_within(name, port, seconds)
    except (UnicodeError, ValueError) as failure:  # the idna codec refusing a name
        raise OSError(f"not a usable host name ({failure})") from None
    found = []
    for family, kind, proto, _, address in answers:
        if (family, kind, proto, address) not in found:
            found.append((family, kind, proto, address))
    if not found:
        raise OSError(f"no address for {host}")
    return found


def open_target(addresses, window: float = CONNECT_WINDOW, clock=time.monotonic,
                sleep=time.sleep):
    """
    A blocking socket connected to one of C{addresses} (from L{resolve}),
    trying them in turn, round after round, until C{window} seconds have
    passed.  Within a round each address gets an equal share of what is
    left, so a dropped SYN to one address (another family than the knock
    opened) cannot use up the whole window.

    @raise OSError: the last failure, once the window has passed.
    """
    deadline = clock() + window
    pause = RETRY_PAUSE
    last = None
    while True:
        for position, (family, kind, proto, address) in enumerate(addresses):
            left = deadline - clock()
            if left <= 0:
                raise last or TimeoutError("timed out")
            try:
                # (a family this host lacks, IPv6 turned off: the next address)
                sock = _socket.socket(family, kind, proto)
            except OSError as failure:
                last = failure
                continue
            # never settimeout(0): that would make the socket non-blocking
            sock.settimeout(max(left / (len(addresses) - position), 0.05))
            try:
                sock.connect(address)
            except OSError as failure:
                sock.close()
                last = failure
                continue
            sock.settimeout(None)
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            return sock
        left = deadline - clock()
        if left <= 0:
            raise last or TimeoutError("timed out")
        sleep(min(pause, left))
        pause = min(pause * 2, RETRY_PAUSE_CAP)


def _describe(failure: OSError) -> str:
    if isinstance(failure, TimeoutError) or type(failure).__name__ == "timeout":
        return "no answer (timed out)"
    return failure.strerror or str(failure) or type(failure).__name__


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:  # a non-blocking descriptor, inherited
            import select

            select.select([], [fd], [])


def _read(fd: int) -> bytes:
    while True:
        try:
            return os.read(fd, CHUNK)
        except BlockingIOError:
            import select

            select.select([fd], [], [])


class _Up:
    """
    Standard input to the socket, in a thread of its own: at end of input,
    C{shutdown(SHUT_WR)} (the remote side reads end of file and may still
    answer).  A send that fails is kept in C{failure}, under C{sending}:
    when it takes a reset's error, the main thread's C{recv} sees only an
    end of file, and asks here.
    """

    def __init__(self, sock, stdin: int):
        import threading

        self.sock = sock
        self.stdin = stdin
        self.failure: OSError | None = None
        self.input_failed = False  # reading standard input failed: status 1
        self.sending = threading.Lock()

    def run(self) -> None:
        import errno

        try:
            while True:
                try:
                    data = _read(self.stdin)
                except OSError as failure:
                    if failure.errno != errno.EBADF:  # EBADF: no standard input at all
                        _say(f"standard input: {_describe(failure)}; sending end of file")
                        self.input_failed = True
                    data = b""
                if not data:
                    break
                with self.sending:
                    try:
                        self.sock.sendall(data)
                    except OSError as failure:
                        self.failure = failure
                        return
            self.sock.shutdown(_socket.SHUT_WR)
        except OSError as failure:
            self.failure = failure


def relay(sock, stdin: int = 0, stdout: int = 1, name: str = "") -> int:
    """
    Carry C{stdin} to C{sock} and C{sock} to C{stdout} until the remote side
    closes; C{stdin}'s end of file half-closes the connection.

    @return: 0 when the remote side closed the connection,
        L{RELAY_FAILED} when it or C{stdout} failed (said on standard error).
    """
    import threading

    up = _Up(sock, stdin)
    threading.Thread(target=up.run, name="knocker-connect-up", daemon=True).start()
    try:
        while True:
            try:
                data = sock.recv(CHUNK)
            except OSError as failure:
                _say(f"{name}: the connection failed: {_describe(failure)}")
                return RELAY_FAILED
            if not data:
                failure = _reset_behind_end_of_file(sock, up)
                if failure is not None:
                    _say(f"{name}: the connection failed: {_describe(failure)}")
                    return RELAY_FAILED
                # What was sent may have been cut short by that read error.
                return RELAY_FAILED if up.input_failed else 0
            try:
                _write_all(stdout, data)
            except OSError as failure:
                _say(f"standard output: {_describe(failure)}")
                return RELAY_FAILED
    finally:
        sock.close()


def _reset_behind_end_of_file(sock, up: _Up) -> OSError | None:
    """
    The reset behind the end of file C{recv} just read, if it was one.
    Linux answers C{recv} with the end of file once a reset's error has
    been taken, by the upload thread's C{sendall} (kept in C{up.failure})
    or not at all yet (C{SO_ERROR}).  Only a reset counts: the remote side
    that closed in order and then refused what we sent after (C{EPIPE})
    closed, as far as the relay goes.
    """
    import errno

    # A send under way finishes first, and keeps its error (not for long:
    # one blocked on a peer that stopped reading is left to itself).
    if up.sending.acquire(timeout=0.5):
        up.sending.release()
    try:
        pending = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)
    except OSError:
        pending = 0
    if pending == errno.ECONNRESET:
        return ConnectionResetError(pending, os.strerror(pending))
    if isinstance(up.failure, ConnectionResetError):
        return up.failure
    return None


def reserve_standard_streams() -> None:
    """
    Put C{/dev/null} on standard input, output or error if one is closed,
    before any socket is made: the relay's connection would otherwise take
    the lowest free descriptor, 0 or 1, and be read or written as a
    standard stream (the remote side's bytes sent back to it).
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def _say(message: str) -> None:
    print(f"knocker connect: {message}", file=sys.stderr)


def connect_command(argv: list[str]) -> int:
    """
    C{knocker connect ...}: knock, then relay; return the exit status.
    """
    if {"-h", "--help"} & set(argv):
        print(help_text())
        return 0
    reserve_standard_streams()
    real_stdout, sys.stdout = sys.stdout, sys.stderr  # stdout is the relay's alone
    try:
        return _connect(argv)
    except KeyboardInterrupt:  # ^C before ssh puts the terminal in raw mode
        return 130
    finally:
        sys.stdout = real_stdout


def _connect(argv: list[str]) -> int:
    from knocker.client.command import USAGE as KNOCK_USAGE
    from knocker.client.command import check_servers, load_knockfile, parse_knock_args, run_knock
    from knocker.core.config import ConfigError, load_client_config

    try:
        options, host, port = split_target(argv)
        path, overrides, verbose = parse_knock_args(options)
        config = check_servers(load_client_config(path, overrides))
        knockfile = load_knockfile(config)
    except (ConfigError, ValueError) as error:
        _say(str(error).replace(KNOCK_USAGE, USAGE))
        return USAGE_ERROR
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        addresses = resolve(host, port, config.connect_timeout)
    except OSError as failure:
        _say(f"{host}: cannot resolve: {_describe(failure)}; nothing was knocked")
        return UNREACHABLE_TARGET
    result = run_knock(config, knockfile, verbose)
    where = f"knock {result.index}" if result.index else "no knock granted"
    line = f"knocker: {result.message()} [{where}, {result.server or config.server}]"
    if result.outcome.exit_code != 0:
        print(line, file=sys.stderr)
        return result.outcome.exit_code
    if verbose or result.detail:  # the detail: a renewal taken, or why not
        print(line, file=sys.stderr)
    try:
        sock = open_target(addresses)
    except OSError as failure:
        _say(f"the knock was OPEN but {target} could not be reached within "
             f"{CONNECT_WINDOW:g}s: {_describe(failure)}")
        return UNREACHABLE_TARGET
    if verbose:
        _say(f"connected to {target}; relaying")
    # The knocker command (knocker.command_line) knocks with the cycle
    # collector off; a relay can last as long as the SSH session it carries.
    gc.enable()
    return relay(sock, name=target)
