"""
The server's half of the central-port handshake (docs/spec.md section 4),
free of I/O: the requests it parses, the replies it writes, and
L{ServerHandshake}, the state machine of one central connection.

Apart from L{knocker.core.handshake} (the messages and the client's half),
which every C{knocker knock} loads: the client has no use for these.
"""

from knocker.core import MAGIC, Record
from knocker.core.handshake import (
    Busy,
    Challenge,
    Denied,
    Error,
    Exhausted,
    Fail,
    Grant,
    Locked,
    Open,
    ProtocolError,
    Reply,
    line_words,
)
from knocker.core.knockfile import is_hex64, valid_client_id


class Hello(Record):
    __slots__ = ("client",)


class Proof(Record):
    __slots__ = ("mac",)


def parse_request(line: bytes) -> Hello | Proof:
    words = line_words(line)
    if len(words) == 3 and words[:2] == [MAGIC, "HELLO"]:
        if not valid_client_id(words[2]):
            raise ProtocolError("bad-client-id")
        return Hello(words[2])
    if len(words) == 2 and words[0] == "PROOF":
        if not is_hex64(words[1]):
            raise ProtocolError("bad-proof")
        return Proof(words[1])
    raise ProtocolError("malformed")


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
