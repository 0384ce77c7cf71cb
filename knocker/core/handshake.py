"""
The central-port protocol (docs/spec.md section 4), free of I/O.

Lines in, lines out: L{parse_request} and L{parse_reply} turn a line into a
message or raise L{ProtocolError}; the C{format_*} helpers do the opposite;
L{hello_message} and L{grant_message} are what the two HMACs cover.
L{ClientHandshake} is the client's side as a small state machine, shared by
every client driver; it computes its HMACs with L{knocker.core.mac}, which starts
faster than the C{hmac} module the server uses.
"""

from knocker.core.hello import MAGIC, format_hello
from knocker.core.knockfile import KnockFile, is_digits, is_hex64, valid_client_id
from knocker.core.record import Record

MAX_LINE = 512
_REASON_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


class ProtocolError(ValueError):
    """
    A line that is not part of the protocol; the message says why.
    """


def hello_message(client: str, nonce: str) -> bytes:
    """
    What PROOF's HMAC covers.
    """
    return f"knocker/1|hello|{client}|{nonce}".encode("ascii")


def grant_message(client: str, nonce: str, index: int) -> bytes:
    """
    What GRANT's HMAC covers.
    """
    return f"knocker/1|grant|{client}|{nonce}|{index}".encode("ascii")


# The client's MACs (the server computes its own with the hmac module).
# Their module loads a C extension, SHA-256's: L{ClientHandshake.hello}
# leaves it to L{ClientHandshake.prepare}, which a knock calls once HELLO is
# sent, so the loading overlaps the server's answer.


def hello_mac(secret: bytes, client: str, nonce: str) -> str:
    from knocker.core.mac import hmac_sha256

    return hmac_sha256(secret, hello_message(client, nonce)).hex()


def grant_mac(secret: bytes, client: str, nonce: str, index: int) -> str:
    from knocker.core.mac import hmac_sha256

    return hmac_sha256(secret, grant_message(client, nonce, index)).hex()


# Requests (client to server).


class Hello(Record):
    __slots__ = ("client",)


class Proof(Record):
    __slots__ = ("mac",)


def parse_request(line: bytes) -> Hello | Proof:
    words = _words(line)
    if len(words) == 3 and words[:2] == [MAGIC, "HELLO"]:
        if not valid_client_id(words[2]):
            raise ProtocolError("bad-client-id")
        return Hello(words[2])
    if len(words) == 2 and words[0] == "PROOF":
        if not is_hex64(words[1]):
            raise ProtocolError("bad-proof")
        return Proof(words[1])
    raise ProtocolError("malformed")


def format_proof(mac: str) -> bytes:
    return f"PROOF {mac}\n".encode("ascii")


# Replies (server to client).


class Challenge(Record):
    __slots__ = ("nonce",)


class Grant(Record):
    __slots__ = ("index", "window", "mac")


class Busy(Record):
    __slots__ = ("retry_after",)


class Locked(Record):
    __slots__ = ("retry_after",)


class Denied(Record):
    __slots__ = ()


class Exhausted(Record):
    __slots__ = ()


class Error(Record):
    __slots__ = ("reason",)


class Open(Record):
    __slots__ = ()


class Fail(Record):
    __slots__ = ("reason",)


Reply = Challenge | Grant | Busy | Locked | Denied | Exhausted | Error | Open | Fail


def format_reply(reply: Reply) -> bytes:
    match reply:
        case Challenge(nonce):
            text = f"CHALLENGE {nonce}"
        case Grant(index, window, mac):
            text = f"GRANT {index} {window} {mac}"
        case Busy(seconds):
            text = f"BUSY {seconds}"
        case Locked(seconds):
            text = f"LOCKED {seconds}"
        case Denied():
            text = "DENIED"
        case Exhausted():
            text = "EXHAUSTED"
        case Error(reason):
            text = f"ERROR {reason}"
        case Open():
            text = "OPEN"
        case Fail(reason):
            text = f"FAIL {reason}"
    return (text + "\n").encode("ascii")


def parse_reply(line: bytes) -> Reply:
    words = _words(line)
    match words:
        case ["CHALLENGE", nonce] if is_hex64(nonce):
            return Challenge(nonce)
        case ["GRANT", index, window, mac] if (
            is_digits(index, 9) and is_digits(window, 9) and is_hex64(mac)
        ):
            return Grant(int(index), int(window), mac)
        case ["BUSY", seconds] if is_digits(seconds, 9):
            return Busy(int(seconds))
        case ["LOCKED", seconds] if is_digits(seconds, 9):
            return Locked(int(seconds))
        case ["DENIED"]:
            return Denied()
        case ["EXHAUSTED"]:
            return Exhausted()
        case ["ERROR", reason] if _is_reason(reason):
            return Error(reason)
        case ["OPEN"]:
            return Open()
        case ["FAIL", reason] if _is_reason(reason):
            return Fail(reason)
    raise ProtocolError(f"unexpected reply {line[:80]!r}")


def _is_reason(text: str) -> bool:
    return 0 < len(text) <= 64 and text[0] != "-" and all(c in _REASON_CHARS for c in text)


def _words(line: bytes) -> list[str]:
    if len(line) > MAX_LINE:
        raise ProtocolError("line-too-long")
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("malformed") from None
    text = text.removesuffix("\r")
    if not text.isprintable():
        raise ProtocolError("malformed")
    words = text.split(" ")
    if "" in words:
        raise ProtocolError("malformed")
    return words


# The client's side.


class SendLine(Record):
    """
    The driver should write C{line} to the central connection.
    """

    __slots__ = ("line",)


class KnockPorts(Record):
    """
    The server granted knock C{index}: connect to C{ports} in order, each
    after the server closed the previous one, within C{window} seconds.
    """

    __slots__ = ("index", "ports", "window")


class Finished(Record):
    """
    The exchange is over; C{reply} is the server's last word.
    """

    __slots__ = ("reply",)


class ClientHandshake:
    """
    The client's half of the exchange, as a state machine: feed it each line
    from the server with L{receive}; it answers with what to do next.
    """

    def __init__(self, knockfile: KnockFile):
        self._kf = knockfile
        self._nonce: str | None = None
        self._granted = False
        self.granted_index: int | None = None  # once a GRANT's HMAC checks out
        self._finished = False

    def hello(self) -> SendLine:
        return SendLine(format_hello(self._kf.client))

    def prepare(self) -> None:
        """
        Load what the server's next line will need, while it is on its way
        (the time is spent waiting for the server anyway): the MAC once
        HELLO is sent, the comparison of the GRANT's MAC once PROOF is.
        """
        if self._nonce is None:
            import knocker.core.mac  # noqa: F401
        else:
            from knocker.core.mac import prepare_comparison

            prepare_comparison()

    @property
    def nonce(self) -> str | None:
        """The server's CHALLENGE, once it came (a renewal's key binds it)."""
        return self._nonce

    def receive(self, line: bytes) -> SendLine | KnockPorts | Finished:
        """
        @raise ProtocolError: the server said something out of turn, or its
            GRANT does not carry the right HMAC (a server that does not hold
            our secret, or a tampered line).
        @raise KnockFileError: the granted knock's line in our file is
            missing or malformed.
        """
        if self._finished:
            raise ProtocolError("a line after the server's last word")
        reply = parse_reply(line)
        if self._nonce is None:
            if not isinstance(reply, Challenge):
                return self._final(reply, before=(Error, Locked, Busy))
            self._nonce = reply.nonce
            return SendLine(format_proof(hello_mac(self._kf.secret, self._kf.client, reply.nonce)))
        if not self._granted:
            if isinstance(reply, Grant):
                return self._grant(reply)
            return self._final(reply, before=(Busy, Locked, Denied, Exhausted, Error))
        return self._final(reply, before=(Open, Fail, Error))

    def _grant(self, grant: Grant) -> KnockPorts:
        from knocker.core.mac import digests_equal

        expected = grant_mac(self._kf.secret, self._kf.client, self._nonce, grant.index)
        if not digests_equal(expected, grant.mac):
            raise ProtocolError("the GRANT's HMAC is wrong: not our server, or tampered")
        if grant.index < 1:
            raise ProtocolError("granted knock 0, but knocks are numbered from 1")
        # The server proved it holds our secret, so a knock missing from our
        # copy means the file is damaged: KnockFileError, not ProtocolError.
        self.granted_index = grant.index
        ports = self._kf.knock(grant.index)
        self._granted = True
        return KnockPorts(grant.index, ports, grant.window)

    def _final(self, reply: Reply, before: tuple[type, ...]) -> Finished:
        if not isinstance(reply, before):
            raise ProtocolError(f"reply {type(reply).__name__.upper()} out of turn")
        self._finished = True
        return Finished(reply)


# The server's side.


class Respond(Record):
    """
    The adapter should write C{reply}, then close if C{close}.  C{fault} is
    set when the reply is an C{ERROR} for a peer that broke the protocol
    (logged, but not a failed attempt: it proves nothing).
    """

    __slots__ = ("reply", "close", "fault")
    _defaults = {"close": False, "fault": False}


class Judge(Record):
    """
    The handshake is complete: the coordinator must decide the reply to
    C{client}'s C{proof} of C{nonce}, then hand it to L{ServerHandshake.judged}.
    """

    __slots__ = ("client", "nonce", "proof")


class ServerHandshake:
    """
    The server's half of one central connection, as a state machine: lines
    in (L{receive}), what to send out; the verdict itself is the
    coordinator's (L{Judge}).  C{new_nonce} makes the CHALLENGE.
    """

    def __init__(self, new_nonce):
        self._new_nonce = new_nonce
        self.client: str | None = None
        self._nonce: str | None = None
        self.judging = False   # a PROOF is with the coordinator
        self.granted = False
        self.answered = False  # the last word of a granted knock was sent
        self.done = False

    def receive(self, line: bytes) -> Respond | Judge | None:
        """
        One line from the peer; C{None} once the exchange is over (late
        lines are ignored).
        """
        if self.done:
            return None
        try:
            request = parse_request(line)
        except ProtocolError as error:
            return self.fault(str(error))
        if self.granted:
            return self.fault("unexpected-line")
        if self.judging:
            # One PROOF a connection: a store that answers later must not be
            # asked again (each answer would burn a number or cost a lookup).
            return self.fault("out-of-turn")
        if isinstance(request, Hello) and self._nonce is None:
            self.client = request.client
            self._nonce = self._new_nonce()
            return Respond(Challenge(self._nonce))
        if isinstance(request, Proof) and self._nonce is not None:
            self.judging = True
            return Judge(self.client, self._nonce, request.mac)
        return self.fault("out-of-turn")

    def judged(self, reply: Reply) -> Respond | None:
        """
        The coordinator's answer to L{Judge}: a GRANT keeps the connection
        open for the verdict, anything else ends it.  C{None} when the
        exchange already ended meanwhile (the peer broke the protocol): a
        GRANT then is the caller's to give up.
        """
        self.judging = False
        if isinstance(reply, Grant) and not self.done:
            self.granted = True
            return Respond(reply)
        return self.verdict(reply)

    def verdict(self, reply: Reply) -> Respond | None:
        """
        The last word (OPEN, FAIL, or a refusal), sent once.
        """
        if self.done:
            return None
        self.done = True
        self.answered = True
        return Respond(reply, close=True)

    @property
    def knocking(self) -> bool:
        """
        Granted, and no last word sent: a connection that ends now leaves
        its knock unfinished (a fault after GRANT is no verdict).
        """
        return self.granted and not self.answered

    def fault(self, reason: str) -> Respond | None:
        """
        The peer broke the protocol (or let the handshake time out, or sent
        an over-long line): C{ERROR <reason>} and close.
        """
        if self.done:
            return None
        self.done = True
        return Respond(Error(reason), close=True, fault=True)
