"""
One knock, as a coroutine shared by every client.

The protocol decisions live in L{knocker.core.handshake.ClientHandshake};
the I/O is a driver passed in, which keeps to
L{knocker.client.driver.IKnockDriver}: the
L{knocker.client.twisted_driver.TwistedDriver} (C{twistd knockclient},
TLS, anything in a reactor) or the
L{knocker.client.blocking_driver.BlockingDriver} (plain blocking sockets,
so C{knocker knock} opens the door before a reactor could even be
imported).  Driver failures after connecting raise L{Trouble}.  This module
imports nothing slow.
"""

import os
import time

from knocker.core import Record
from knocker.core import handshake as hs
from knocker.core.knockfile import KnockFileError

BUSY_WAIT_CAP = 30.0
BUSY_POLL = 1.0


class Unreachable(Exception):
    """
    The central port could not be reached (refused, timed out, TLS failed).
    """


class Trouble(Exception):
    """
    A connection failed or timed out after the central port was reached.
    """


class Outcome(Record):
    """
    One way a knock can end, with the exit status C{knocker knock} gives.
    """

    __slots__ = ("name", "exit_code", "meaning")


Outcome.OPEN = Outcome("OPEN", 0, "the server opened for us")
Outcome.BAD_FILE = Outcome("BAD_FILE", 2, "the portknock file breaks the format; nothing was knocked")
Outcome.UNREACHABLE = Outcome("UNREACHABLE", 3, "could not reach the server's central port")
Outcome.DENIED = Outcome("DENIED", 4, "the server denied the handshake (unknown client or wrong secret)")
Outcome.LOCKED = Outcome("LOCKED", 5, "this address, or the whole server, is locked out after a failed attempt; try later")
Outcome.BUSY = Outcome("BUSY", 6, "the server stayed busy with another knock; try later")
Outcome.EXHAUSTED = Outcome("EXHAUSTED", 7, "every knock in the portknock file is used; generate a new file")
Outcome.WRONG_PORT = Outcome("WRONG_PORT", 8, "the server saw a wrong port (another party's hit, or a lost connection)")
Outcome.TIMEOUT = Outcome("TIMEOUT", 9, "the knock did not finish within the server's window")
Outcome.LOCKED_OUT = Outcome("LOCKED_OUT", 10, "a failed attempt by someone else locked the server out mid-knock")
Outcome.ACTION_FAILED = Outcome("ACTION_FAILED", 11, "the knock was right but the server's on-success program failed")
Outcome.SERVER_ERROR = Outcome("SERVER_ERROR", 12, "the server answered ERROR")
Outcome.BAD_SERVER = Outcome("BAD_SERVER", 13, "the server broke the protocol or failed the GRANT check")
Outcome.NO_VERDICT = Outcome("NO_VERDICT", 14, "no verdict: the connection dropped or the client timed out")
OUTCOMES = tuple(value for value in vars(Outcome).values() if isinstance(value, Outcome))

_FAILS = {
    "wrong-port": Outcome.WRONG_PORT,
    "timeout": Outcome.TIMEOUT,
    "locked-out": Outcome.LOCKED_OUT,
    "action-failed": Outcome.ACTION_FAILED,
    "revoked": Outcome.DENIED,  # revoked between GRANT and the verdict
}


class KnockResult(Record):
    """
    How a knock ended; C{server}, the endpoint that answered last (a fleet's
    gateway), or C{None} when none did.
    """

    __slots__ = ("outcome", "detail", "index", "ports", "attempts", "retry_after", "server")
    _defaults = {"detail": "", "index": None, "ports": (), "attempts": 1, "retry_after": None,
                 "server": None}

    def message(self) -> str:
        text = f"{self.outcome.name}: {self.outcome.meaning}"
        return f"{text} ({self.detail})" if self.detail else text


async def knock(io, config, knockfile, uniform=None, began=None) -> KnockResult:
    """
    Knock once, retrying BUSY up to C{config.busy_retries} times with a
    growing, jittered pause; log the attempt to C{config.log_file}.

    The whole knock, retries included, ends within C{config.timeout}: one
    deadline, taken from C{io.now()}, bounds every connection, line,
    knock and pause; a wait that would pass it ends the knock as
    L{Outcome.NO_VERDICT}.

    @param uniform: C{uniform(a, b)} for the jitter (default: L{random}).
    @param began: C{io.now()} when the knock began, if before this call (a
        driver that said HELLO early); the deadline counts from then.
    """
    started = time.time()
    if began is not None:
        started -= max(0.0, io.now() - began)
    deadline = _Deadline(io, config.timeout, began)
    attempts, busy_at, reread = 0, None, False
    while True:
        attempts += 1
        result = (await _attempt(io, config, knockfile, deadline, first=attempts == 1,
                                 start=busy_at)).replace(attempts=attempts)
        busy_at = result.server
        if result.outcome is Outcome.DENIED and not reread and not deadline.passed():
            # Another knock of ours may have renewed the file since it was
            # read (two at once): the server denies the replaced one, and
            # the new one is on disk.  Once, with that one.
            reread = True
            renewed = renewed_meanwhile(config, knockfile)
            if renewed is not None:
                io.say("the portknock file was renewed meanwhile; knocking with the new one")
                knockfile = renewed
                continue
        if result.outcome is not Outcome.BUSY or attempts > config.busy_retries:
            break
        if uniform is None:
            from random import uniform
        # BUSY's seconds are what is left of the other knock's window, but a
        # knock rarely takes more than a fraction of a second: poll sooner.
        wait = min(BUSY_WAIT_CAP, result.retry_after, BUSY_POLL * attempts) * uniform(1.0, 1.5)
        if wait >= deadline.remaining():
            result = KnockResult(
                Outcome.NO_VERDICT,
                deadline.passed_message(f"before the retry in {wait:.1f}s ({result.detail})",
                                        would=True),
                attempts=attempts, retry_after=result.retry_after,
            )
            break
        io.say(f"server busy; retrying in {wait:.1f}s")
        await io.sleep(wait)
    log_attempt(config, knockfile.client, started, result)
    if knockfile.checked_now and knockfile.identity is not None and config.knock_file is not None:
        remember_checked(config, knockfile.identity)
        knockfile.checked_now = False  # remembered: once per file is enough
    return result


class _Deadline:
    """
    The end of the client's C{timeout}, on the driver's clock.
    """

    # A driver's timer may fire a hair before the deadline as this clock
    # reads it (float rounding): that close counts as reached.
    SLACK = 0.01

    def __init__(self, io, seconds: float, began: float | None = None):
        self._io = io
        self.seconds = seconds
        self._end = (io.now() if began is None else began) + seconds

    def remaining(self) -> float:
        return self._end - self._io.now()

    def passed(self) -> bool:
        return self.remaining() <= self.SLACK

    def bound(self, seconds: float) -> float:
        """
        C{seconds}, or less if the deadline comes first.
        """
        return max(0.0, min(seconds, self.remaining()))

    def passed_message(self, doing: str, would: bool = False) -> str:
        verb = "would pass" if would else "passed"
        return f"the client's timeout of {self.seconds:g}s {verb} {doing}"


async def _attempt(io, config, knockfile, deadline, first: bool = True,
                   start: str | None = None) -> KnockResult:
    # A retry's pause can end at the deadline.  (A first attempt's cannot
    # have passed it, unless a HELLO said early took it all: the connect
    # below then names the server and why.)
    if not first and deadline.passed():
        return KnockResult(Outcome.NO_VERDICT, deadline.passed_message("before connecting"))
    # A fleet's gateways, in the order given: the first whose central port
    # answers is the one knocked (its peer_host gets the hits).  One that
    # answers ERROR before any GRANT (its database out of reach, say) hands
    # the knock to the next: it granted no number.  A retry after BUSY
    # starts at C{start}, the gateway that said it, and goes on round the
    # list: those before it were just found out of reach, and each could
    # hold the retry for a connect-timeout.
    endpoints = config.server.split()
    if start in endpoints:
        at = endpoints.index(start)
        endpoints = endpoints[at:] + endpoints[:at]
    refused = None
    for n, endpoint in enumerate(endpoints):
        try:
            conn = await io.connect(endpoint, deadline.bound(config.connect_timeout))
        except (Unreachable, Trouble) as failure:
            if deadline.passed():  # cut short by the deadline, not refused
                return KnockResult(Outcome.NO_VERDICT, deadline.passed_message(
                    f"while connecting to {endpoint} ({failure})"))
            io.say(f"{endpoint}: {failure}")
            unreachable = failure
            continue
        # With another gateway left, one that takes a connection but says
        # nothing (its daemon stopped or stuck) has connect-timeout to say
        # its first line, not the whole knock's time.
        first_wait = config.connect_timeout if n + 1 < len(endpoints) else config.timeout
        result = (await _exchange(io, conn, config, knockfile, deadline, first_wait)).replace(
            server=endpoint)
        # No number granted, and no answer but a failure (ERROR, a TLS
        # handshake refused, a close before any reply): the next gateway.
        unanswered = result.index is None and result.outcome in (
            Outcome.SERVER_ERROR, Outcome.UNREACHABLE, Outcome.NO_VERDICT)
        if not unanswered or n + 1 == len(endpoints) or deadline.passed():
            return result
        io.say(f"{endpoint}: {result.message()}; trying the next")
        refused = result
    return refused or KnockResult(Outcome.UNREACHABLE, f"{config.server}: {unreachable}")


async def _exchange(io, conn, config, knockfile, deadline, first_wait) -> KnockResult:
    """
    The knock on one central connection, from HELLO to its verdict; the
    server's first line within C{first_wait}.
    """
    # A driver may have said HELLO, and answered the CHALLENGE, before the
    # knock took the connection (knocker.client.tcp.EarlyHello).
    machine = getattr(conn, "answered", None)
    wait = config.timeout if machine is not None else first_wait  # for the first line
    index, ports = None, ()
    granted_before = 0
    doing = "while waiting for the server's reply"
    try:
        if machine is None:
            machine = hs.ClientHandshake(knockfile)
            hello = machine.hello().line
            if getattr(conn, "greeted", None) != hello:
                conn.send(hello)
        else:
            knockfile.check(read_checked(config))  # as after any PROOF, below
            granted_before = read_granted(config, knockfile)
        machine.prepare()
        while True:
            line = await conn.readline(deadline.bound(wait))
            wait = config.timeout
            if line is None:
                return KnockResult(Outcome.NO_VERDICT, "connection closed", index, ports)
            action = machine.receive(line)
            if isinstance(action, hs.SendLine):
                conn.send(action.line)
                # The whole file, while the server decides (FILE.checked is
                # read only now, off the way to HELLO).
                knockfile.check(read_checked(config))
                granted_before = read_granted(config, knockfile)
                machine.prepare()
            elif isinstance(action, hs.KnockPorts):
                index, ports = action.index, action.ports
                if index <= granted_before:
                    return KnockResult(Outcome.BAD_SERVER, replayed(index, granted_before),
                                       index, ())
                io.say(f"granted knock {index}: knocking {conn.peer_host} ports {ports}")
                for port in ports:
                    doing = f"while knocking port {port}"
                    await io.hit(conn.peer_host, port, deadline.bound(config.connect_timeout))
                doing = "while waiting for the server's verdict"
                remember_granted(config, knockfile, index)  # while the server decides
            else:
                result = _result(action.reply, index, ports)
                if result.outcome is Outcome.OPEN and config.knock_file is not None:
                    result = await _renewal(io, conn, config, knockfile, machine, deadline, result)
                return result
    except hs.ProtocolError as failure:
        return KnockResult(Outcome.BAD_SERVER, str(failure), index, ports)
    except Trouble as failure:
        if deadline.passed():
            detail = deadline.passed_message(f"{doing} ({failure})")
            return KnockResult(Outcome.NO_VERDICT, detail, index, ports)
        return KnockResult(Outcome.NO_VERDICT, str(failure), index, ports)
    except Unreachable as failure:
        return KnockResult(Outcome.UNREACHABLE, f"{config.server}: {failure}")
    except KnockFileError as failure:
        # A number granted for our PROOF is wasted; the file must be
        # regenerated anyway.
        return KnockResult(Outcome.BAD_FILE, str(failure), machine.granted_index)
    finally:
        conn.close()


async def _renewal(io, conn, config, knockfile, machine, deadline, result) -> KnockResult:
    """
    After OPEN the server closes, or offers a renewed file (docs/spec.md
    section 10), which is taken unasked; only then are the modules that
    handle it imported.  Whatever goes wrong leaves the current file, and
    the OPEN stands.  The renewal has what is left of the knock's one
    deadline, for all its reads together.
    """
    try:
        line = await conn.readline(deadline.bound(config.connect_timeout))
        if line is None or not line.startswith(b"OFFER "):
            return result
        from knocker.enrol.renewal import take_offer

        note = await take_offer(conn, line, config, knockfile, machine.nonce,
                                deadline.remaining(), io.now)
    except Exception as failure:  # noqa: BLE001 - the knock is done; the file stays
        if deadline.passed():
            failure = deadline.passed_message(f"during the renewal ({failure})")
        note = f"renewal not taken: {failure}"
    io.say(note)
    return result.replace(detail=note)


def over_long_line(data: bytes) -> hs.ProtocolError:
    """
    What a driver raises for a line from the server longer than the protocol
    allows (C{data}: the line, or what has come without a newline so far):
    the server broke the protocol (L{Outcome.BAD_SERVER}), it did not answer
    C{ERROR}.
    """
    return hs.ProtocolError(
        f"the server sent an over-long line: more than {hs.MAX_LINE} bytes without a newline "
        f"({len(data)} received; it began {bytes(data[:24])!r})"
    )


def _result(reply, index, ports) -> KnockResult:
    match reply:
        case hs.Open():
            return KnockResult(Outcome.OPEN, "", index, ports)
        case hs.Fail(reason):
            return KnockResult(_FAILS.get(reason, Outcome.BAD_SERVER), reason, index, ports)
        case hs.Busy(seconds):
            return KnockResult(Outcome.BUSY, f"retry after {seconds}s", retry_after=seconds)
        case hs.Locked(seconds):
            return KnockResult(Outcome.LOCKED, f"retry after {seconds}s", retry_after=seconds)
        case hs.Denied():
            return KnockResult(Outcome.DENIED)
        case hs.Exhausted():
            return KnockResult(Outcome.EXHAUSTED)
        case hs.Error("too-many-connections") if index is None:
            # The central port is full (a flood, most likely): as good as
            # BUSY.  Not after a GRANT, where no server of ours says it: a
            # retry would take (and knock) another number of the file.
            return KnockResult(Outcome.BUSY, "central port full", retry_after=1)
        case hs.Error(reason):
            return KnockResult(Outcome.SERVER_ERROR, reason, index, ports)
    return KnockResult(Outcome.BAD_SERVER, repr(reply), index, ports)


def _json_text(text: str) -> str:
    """
    C{text} as a JSON string: quotes, backslashes and control characters
    escaped; anything else is valid JSON as it is (UTF-8).
    """
    return '"' + text.translate(_JSON_ESCAPES) + '"'


_JSON_ESCAPES = {**{code: f"\\u{code:04x}" for code in range(32)},
                 ord('"'): '\\"', ord("\\"): "\\\\"}


def log_attempt(config, client: str, started: float, result: KnockResult) -> None:
    """
    Append the attempt to the client log (JSON lines, file 0600).  The line
    is written by hand: importing json and datetime would cost every knock
    about 3 ms (tests hold the line to json.loads).
    """
    whole = int(started)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    index = "null" if result.index is None else str(int(result.index))
    line = (
        f'{{"time": "{stamp}.{int((started - whole) * 1e6):06d}Z", '
        f'"server": {_json_text(result.server or config.server)}, '
        f'"client": {_json_text(client)}, '
        f'"index": {index}, "ports": [{", ".join(str(int(p)) for p in result.ports)}], '
        f'"verdict": "{result.outcome.name.lower()}", "detail": {_json_text(result.detail)}, '
        f'"attempts": {int(result.attempts)}, "seconds": {round(time.time() - started, 4)!r}}}\n'
    )
    path = os.path.expanduser(config.log_file)
    # Not through a link: someone else's link in a shared folder must not
    # make a client run by root append where the link points.
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        try:
            fd = os.open(path, flags, 0o600)
        except FileNotFoundError:  # its folder first (makedirs costs every knock 0.05 ms)
            from knocker.files import ensure_private_dir

            ensure_private_dir(os.path.dirname(os.path.abspath(path)))
            fd = os.open(path, flags, 0o600)
        try:
            os.write(fd, line.encode("utf-8", "backslashreplace"))
        finally:
            os.close(fd)
    except OSError as failure:
        import sys

        print(f"knocker: cannot write the client log {path}: {failure}", file=sys.stderr)


# A portknock file that passed the whole-file check leaves its identity
# (device, inode, size, times: knocker.files.read_private_identified) in
# FILE.checked (0600, beside it): the check costs 1-2 ms, most of a knock's
# own time, and the file does not change from one knock to the next.  A
# changed or replaced file has another identity and is checked again.
CHECKED_SUFFIX = ".checked"


def renewed_meanwhile(config, knockfile):
    """
    C{config.knock_file} read again, if it now holds another secret than
    C{knockfile} (renewed since it was read); otherwise C{None}.
    """
    from knocker.client.command import load_knockfile

    try:
        fresh = load_knockfile(config)
    except ValueError:  # none set, unreadable, unsafe or malformed: the DENIED stands
        return None
    return fresh if fresh.secret != knockfile.secret else None


# The highest knock number a server granted this file, in FILE.granted
# (0600, beside it): a GRANT's MAC covers only the server's own nonce, so
# an impostor that recorded an exchange could replay it whole, GRANT and
# OPEN, to a client that kept no memory of it.  A real server's numbers
# only grow.
GRANTED_SUFFIX = ".granted"


def replayed(index: int, before: int) -> str:
    return (f"the server granted knock {index}, but knock {before} of this file was "
            f"granted before: a replayed exchange (an impostor at the server's address), "
            f"or a server whose state went back; nothing was knocked")


_GRANTED_TAGS: dict[bytes, str] = {}  # made once a knock: read, then written


def _granted_tag(knockfile) -> str:
    """Which file a record is about: a tag keyed by its secret (it tells nothing of it)."""
    tag = _GRANTED_TAGS.get(knockfile.secret)
    if tag is None:
        tag = _GRANTED_TAGS[knockfile.secret] = hs.hmac_sha256(
            knockfile.secret, b"knocker FILE.granted").hex()[:32]
    return tag


def read_granted(config, knockfile) -> int:
    """
    The highest knock number recorded as granted to C{knockfile} (0 if
    none is, or the record is missing, unreadable, or about another file).
    """
    from knocker.files import PrivateFileError, read_private

    if config.knock_file is None:
        return 0
    try:
        tag, number = read_private(config.knock_file + GRANTED_SUFFIX, limit=200).split()
    except (OSError, PrivateFileError, ValueError):
        return 0
    if tag != _granted_tag(knockfile) or not (number.isascii() and number.isdigit()
                                               and len(number) <= 9):
        return 0
    return int(number)


def remember_granted(config, knockfile, index: int) -> None:
    """
    Record C{index} as granted (while the server decides; not synced: a
    record lost to a crash only leaves the next knock less guarded).
    """
    if config.knock_file is None:
        return
    try:
        fd = os.open(config.knock_file + GRANTED_SUFFIX,
                     os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        return
    try:
        os.fchmod(fd, 0o600)  # O_TRUNC keeps a mode it finds, and a loose one is never read
        os.write(fd, f"{_granted_tag(knockfile)} {index}\n".encode("ascii"))
    except OSError:
        pass
    finally:
        os.close(fd)


def read_checked(config) -> tuple[str, ...]:
    """
    The identity recorded for C{config.knock_file}, if any; none if the
    record is missing, unsafe, unreadable or not one (the file is then
    checked again, which is only slower).
    """
    from knocker.files import PrivateFileError, is_identity, read_private

    if config.knock_file is None:
        return ()
    try:
        recorded = read_private(config.knock_file + CHECKED_SUFFIX, limit=200).strip()
    except (OSError, PrivateFileError):
        return ()
    return (recorded,) if is_identity(recorded) else ()


def remember_checked(config, identity: str) -> None:
    """
    Record C{identity} for the next knock (after the verdict, off the
    knock's path); where it cannot be written, the next knock checks again.
    """
    from knocker.files import write_private

    try:
        write_private(config.knock_file + CHECKED_SUFFIX, identity + "\n")
    except OSError:
        pass


def run_blocking(coroutine):
    """
    Run a coroutine whose awaits never suspend (a blocking driver's).
    """
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("a blocking driver suspended")
