"""
C{knocker enroll CODE --server ENDPOINT [-o FILE]}: the client's side of
an enrolment (docs/protocol.md, "Enrolment"), on the knock's drivers
(blocking sockets for C{tcp:}, Twisted for C{tls:} and the rest).

It writes the portknock file (0600, atomically) and a client
configuration beside it that C{knocker knock --config} reads, and prints
both paths.  Each way it can end has its own exit status (L{OUTCOMES}).
"""

import os

from knocker.core import MAGIC, Record
from knocker.enrol import keys as k


class Outcome(Record):
    __slots__ = ("name", "exit_code", "meaning")


_TABLE = (
    ("ENROLLED", 0, "the portknock file and its configuration are written"),
    ("FILE_ERROR", 1, "the file or the configuration could not be written"),
    ("USAGE", 2, "bad options, a malformed code, or the output or its .conf exists"),
    ("UNREACHABLE", 3, "could not reach the server's central port"),
    ("WRONG_CODE", 4, "the code is wrong (a try of the invitation is spent)"),
    ("LOCKED", 5, "this address is locked out after failed attempts; try later"),
    ("SERVER_ERROR", 12, "the server answered ERROR"),
    ("BAD_SERVER", 13, "the server broke the protocol, failed the key confirmation (not our "
                       "server), or the file did not verify"),
    ("NO_ANSWER", 14, "the connection dropped or the client timed out"),
    ("UNKNOWN", 20, "no open invitation has this number"),
    ("USED", 21, "the invitation was used already"),
    ("EXPIRED", 22, "the invitation expired"),
    ("VOID", 23, "every try of the invitation was spent on wrong codes"),
)
for _name, _code, _meaning in _TABLE:
    setattr(Outcome, _name, Outcome(_name, _code, _meaning))
OUTCOMES = tuple(value for value in vars(Outcome).values() if isinstance(value, Outcome))

_REFUSED = {
    "wrong-code": Outcome.WRONG_CODE, "unknown": Outcome.UNKNOWN, "used": Outcome.USED,
    "expired": Outcome.EXPIRED, "void": Outcome.VOID,
}


class Result(Record):
    __slots__ = ("outcome", "detail", "text")
    _defaults = {"detail": "", "text": None}

    def message(self) -> str:
        text = f"{self.outcome.name}: {self.outcome.meaning}"
        return f"{text} ({self.detail})" if self.detail else text


class _Protocol(Exception):
    pass


async def enroll(io, server: str, slot: int, words: str, timeout: float = 30.0,
                 connect_timeout: float = 5.0) -> Result:
    """
    Run the exchange; the L{Result} carries the file's text when enrolled.
    """
    from knocker.client.knock import Trouble, Unreachable
    from knocker.core.handshake import ProtocolError

    try:
        conn = await io.connect(server, connect_timeout)
    except (Unreachable, Trouble) as failure:
        return Result(Outcome.UNREACHABLE, f"{server}: {failure}")
    except (ValueError, TypeError) as failure:  # an endpoint Twisted cannot parse
        return Result(Outcome.USAGE, f"--server {server}: {failure}")
    spent = []  # "maybe" once CONFIRM is sent, "yes" once the server confirmed
    try:
        result = await _exchange(conn, slot, words, _Deadline(io.now, timeout), spent)
    except Trouble as failure:
        result = Result(Outcome.NO_ANSWER, str(failure))
    except Unreachable as failure:
        result = Result(Outcome.UNREACHABLE, f"{server}: {failure}")
    except (_Protocol, k.VerifyError, ProtocolError) as failure:
        # (ProtocolError: a line longer than the protocol allows, from the
        # driver; a ValueError, which the command would take for a usage
        # mistake)
        result = Result(Outcome.BAD_SERVER, str(failure))
    finally:
        conn.close()
    if spent and result.outcome in (Outcome.NO_ANSWER, Outcome.BAD_SERVER,
                                    Outcome.SERVER_ERROR):
        # The server spends the invitation as it sends ENROLLED and the
        # file (a code works once), so a file lost on the way is not
        # fetched again; a fleet's database that answered too late for an
        # ERROR may still have committed the use.
        result = result.replace(detail=f"{result.detail}; " + (
            "the server had sent ENROLLED, so the invitation is spent: ask for a new one "
            "(knocker invite CLIENT --force)" if spent[-1] == "yes" else
            "the invitation may be spent (the server may have sent ENROLLED): if trying "
            "again says USED, ask for a new one (knocker invite CLIENT --force)"))
    return result


class _Deadline:
    """
    The whole exchange's time, C{timeout} seconds from the connection: a
    server (or a man in the middle of plain TCP) announcing the most DATA
    lines and dripping them one a C{timeout} cannot hold the command.
    """

    def __init__(self, now, timeout: float):
        self._now = now
        self.timeout = timeout
        self._end = now() + timeout
        self._received = 0  # bytes of the file come so far

    def received(self, size: int) -> None:
        """
        C{size} more bytes of the file came: past its first MIN_RATE bytes,
        the deadline moves back by the time they take at MIN_RATE, as the
        server's does.  For what came, not what ENROLLED announced (a count
        no MAC covers): a big file on a slow link is not given up on, its
        invitation already used, and silence after a big count buys nothing.
        """
        from knocker.core.handshake import MIN_RATE

        past = max(0, self._received + size - MIN_RATE) - max(0, self._received - MIN_RATE)
        self._received += size
        self.timeout += past / MIN_RATE
        self._end += past / MIN_RATE

    def left(self) -> float:
        from knocker.client.knock import Trouble

        left = self._end - self._now()
        if left <= 0:
            raise Trouble(f"the enrolment did not finish within {self.timeout:.3g}s")
        return left


async def _exchange(conn, slot: int, words: str, deadline: _Deadline,
                    spent: list | None = None) -> Result:
    pake = k.Pake(slot, words)
    conn.send(f"{MAGIC} ENROLL {slot} {k.b64(pake.message)}\n".encode("ascii"))
    reply = await _read(conn, deadline)
    if reply is None or reply[0] != "ENROLLING" or len(reply) != 2:
        return _final(reply)
    theirs = k.unb64(reply[1])
    keys = pake.finish(pake.message, theirs, theirs)
    conn.send(f"CONFIRM {keys.client_mac()}\n".encode("ascii"))
    if spent is not None:
        spent.append("maybe")
    reply = await _read(conn, deadline)
    if reply is None or reply[0] != "ENROLLED" or len(reply) != 3 or not reply[2].isdigit():
        return _final(reply)
    if not keys.check_server(reply[1]):
        raise _Protocol("the server's key confirmation is wrong: not our server, or tampered")
    if spent is not None:
        spent.append("yes")
    if int(reply[2]) > k.MAX_DATA_LINES:
        raise _Protocol(f"the server announces {reply[2][:20]} DATA lines, more than "
                        f"{k.MAX_DATA_LINES}")
    chunks = []
    for _ in range(int(reply[2])):
        line = await _read(conn, deadline)
        if line is None:
            return Result(Outcome.NO_ANSWER, "the connection closed during the file")
        if line[0] != "DATA" or len(line) != 2:
            raise _Protocol(f"expected DATA, got {line[0][:20]!r}")
        chunks.append(line[1])
        deadline.received(len(line[1]) + 6)  # "DATA " and the newline
    from knocker.core.knockfile import parse_knockfile
    from knocker.enrol.server import file_associated

    sealed = k.unseal(keys.file_key, k.unb64("".join(chunks)), file_associated(keys))
    try:
        text = sealed.decode("utf-8")
        parse_knockfile(text, "the file the server sent")
    except ValueError as failure:  # KnockFileError, UnicodeDecodeError, an int() too long
        # Sealed with the right key, so the server's own fault (a damaged
        # copy, say): a broken protocol, not a mistake of the user's.
        raise _Protocol(f"the file the server sent is not a portknock file: {failure}") from None
    return Result(Outcome.ENROLLED, text=text)


async def _read(conn, deadline: _Deadline) -> list[str] | None:
    line = await conn.readline(deadline.left())
    if line is None:
        return None
    try:
        return line.decode("ascii").removesuffix("\r").split(" ")
    except UnicodeDecodeError:
        raise _Protocol("the server sent a line that is not ASCII") from None


def _final(reply: list[str] | None) -> Result:
    match reply:
        case None:
            return Result(Outcome.NO_ANSWER, "the server closed the connection")
        case ["REFUSED", reason] if reason in _REFUSED:
            return Result(_REFUSED[reason])
        case ["LOCKED", seconds] if seconds.isdigit():
            return Result(Outcome.LOCKED, f"retry after {seconds}s")
        case ["ERROR", reason]:
            # (shown as it came only if printable: an impostor's escape
            # sequences must not reach the user's terminal)
            shown = reason[:64]
            return Result(Outcome.SERVER_ERROR, shown if shown.isprintable() else repr(shown))
    raise _Protocol(f"unexpected reply {' '.join(reply)[:80]!r}")


def run(server: str, slot: int, words: str, timeout: float = 30.0) -> Result:
    """
    L{enroll} with the driver C{knocker knock} would use for C{server}.
    """
    from knocker.client.blocking_driver import BlockingDriver
    from knocker.client.knock import run_blocking
    from knocker.client.tcp import plain_tcp

    if plain_tcp(server) is not None:
        return run_blocking(enroll(BlockingDriver(), server, slot, words, timeout))
    from knocker.client.twisted_driver import run_in_reactor

    return run_in_reactor(lambda driver: enroll(driver, server, slot, words, timeout))


def config_path(output: str) -> str:
    """The client configuration written beside C{output}."""
    return os.path.splitext(output)[0] + ".conf"


def output_paths(output: str) -> tuple[str, str]:
    """
    The two files C{knocker enroll -o OUTPUT} writes: the portknock file
    and its configuration.

    @raise ValueError: they would be one file (C{-o alice.conf}).
    """
    conf = config_path(output)
    if os.path.abspath(conf) == os.path.abspath(output):
        raise ValueError(f"-o {output}: the configuration would be written over the "
                         f"portknock file; name the file e.g. {os.path.splitext(output)[0]}.knock")
    return output, conf


def client_config(server: str, output: str) -> str:
    return (f"# written by knocker enroll\n[client]\nserver = {server}\n"
            f"knock-file = {os.path.basename(output)}\n")


def save(result: Result, server: str, output: str | None) -> tuple[str, str]:
    """
    Write the file (0600, atomically) and its configuration beside it;
    return both paths.

    @raise ValueError: the text is not a valid portknock file.
    """
    from knocker.core.knockfile import parse_knockfile
    from knocker.files import write_private

    kf = parse_knockfile(result.text, "the enrolled file")
    output, conf = output_paths(output or f"{kf.client}.knock")
    write_private(output, result.text)
    write_private(conf, client_config(server, output))
    return output, conf
