"""
The central-port protocol (SPEC section 4), free of I/O.

Lines in, lines out: L{parse_request} and L{parse_reply} turn a line into a
message or raise L{ProtocolError}; the C{format_*} helpers do the opposite;
L{hello_mac} and L{grant_mac} are the two HMACs.  L{ClientHandshake} is the
client's side as a small state machine, shared by every client driver.
"""

import hashlib
import hmac
import re

from attrs import frozen

from knocker.knockfile import KnockFile, valid_client_id

MAX_LINE = 512
MAGIC = "KNOCKER/1"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_NUMBER = re.compile(r"[0-9]{1,9}")
_REASON = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
FAIL_REASONS = ("wrong-port", "timeout", "locked-out", "action-failed")


class ProtocolError(ValueError):
    """
    A line that is not part of the protocol; the message says why.
    """


def hello_mac(secret: bytes, client: str, nonce: str) -> str:
    message = f"knocker/1|hello|{client}|{nonce}".encode("ascii")
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def grant_mac(secret: bytes, client: str, nonce: str, index: int) -> str:
    message = f"knocker/1|grant|{client}|{nonce}|{index}".encode("ascii")
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def macs_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("ascii"), b.encode("ascii"))


# Requests (client to server).


@frozen
class Hello:
    client: str


@frozen
class Proof:
    mac: str


def parse_request(line: bytes) -> Hello | Proof:
    words = _words(line)
    if len(words) == 3 and words[:2] == [MAGIC, "HELLO"]:
        if not valid_client_id(words[2]):
            raise ProtocolError("bad-client-id")
        return Hello(words[2])
    if len(words) == 2 and words[0] == "PROOF":
        if not _HEX64.fullmatch(words[1]):
            raise ProtocolError("bad-proof")
        return Proof(words[1])
    raise ProtocolError("malformed")


def format_hello(client: str) -> bytes:
    return f"{MAGIC} HELLO {client}\n".encode("ascii")


def format_proof(mac: str) -> bytes:
    return f"PROOF {mac}\n".encode("ascii")


# Replies (server to client).


@frozen
class Challenge:
    nonce: str


@frozen
class Grant:
    index: int
    window: int
    mac: str


@frozen
class Busy:
    retry_after: int


@frozen
class Locked:
    retry_after: int


@frozen
class Denied:
    pass


@frozen
class Exhausted:
    pass


@frozen
class Error:
    reason: str


@frozen
class Open:
    pass


@frozen
class Fail:
    reason: str


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
        case ["CHALLENGE", nonce] if _HEX64.fullmatch(nonce):
            return Challenge(nonce)
        case ["GRANT", index, window, mac] if (
            _NUMBER.fullmatch(index) and _NUMBER.fullmatch(window) and _HEX64.fullmatch(mac)
        ):
            return Grant(int(index), int(window), mac)
        case ["BUSY", seconds] if _NUMBER.fullmatch(seconds):
            return Busy(int(seconds))
        case ["LOCKED", seconds] if _NUMBER.fullmatch(seconds):
            return Locked(int(seconds))
        case ["DENIED"]:
            return Denied()
        case ["EXHAUSTED"]:
            return Exhausted()
        case ["ERROR", reason] if _REASON.fullmatch(reason):
            return Error(reason)
        case ["OPEN"]:
            return Open()
        case ["FAIL", reason] if _REASON.fullmatch(reason):
            return Fail(reason)
    raise ProtocolError(f"unexpected reply {line[:80]!r}")


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


@frozen
class SendLine:
    """
    The driver should write C{line} to the central connection.
    """

    line: bytes


@frozen
class KnockPorts:
    """
    The server granted knock C{index}: connect to C{ports} in order, each
    after the server closed the previous one, within C{window} seconds.
    """

    index: int
    ports: tuple[int, ...]
    window: int


@frozen
class Finished:
    """
    The exchange is over; C{reply} is the server's last word.
    """

    reply: Reply


class ClientHandshake:
    """
    The client's half of the exchange, as a state machine: feed it each line
    from the server with L{receive}; it answers with what to do next.
    """

    def __init__(self, knockfile: KnockFile):
        self._kf = knockfile
        self._nonce: str | None = None
        self._granted = False

    def hello(self) -> SendLine:
        return SendLine(format_hello(self._kf.client))

    def receive(self, line: bytes) -> SendLine | KnockPorts | Finished:
        """
        @raise ProtocolError: the server said something out of turn, or its
            GRANT does not carry the right HMAC (a server that does not hold
            our secret, or a tampered line).
        """
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
        expected = grant_mac(self._kf.secret, self._kf.client, self._nonce, grant.index)
        if not macs_equal(expected, grant.mac):
            raise ProtocolError("the GRANT's HMAC is wrong: not our server, or tampered")
        if not 1 <= grant.index <= len(self._kf.knocks):
            raise ProtocolError(
                f"granted knock {grant.index}, but the file holds 1-{len(self._kf.knocks)}"
            )
        self._granted = True
        return KnockPorts(grant.index, self._kf.knock(grant.index), grant.window)

    def _final(self, reply: Reply, before: tuple[type, ...]) -> Finished:
        if not isinstance(reply, before):
            raise ProtocolError(f"reply {type(reply).__name__.upper()} out of turn")
        return Finished(reply)
