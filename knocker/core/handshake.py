"""
The central-port protocol (docs/spec.md section 4), free of I/O: its
messages, and the client's half.

Lines in, lines out: L{parse_reply} turns a line into a message or raises
L{ProtocolError}; the C{format_*} helpers do the opposite (the HELLO line's
is L{knocker.core.format_hello}, the server's in L{knocker.core.serverhandshake});
L{hello_message} and L{grant_message} are what the two HMACs cover.
L{ClientHandshake} is the client's side as a small state machine, shared by
every client driver; it computes its HMACs with L{hmac_sha256}, which starts
faster than the C{hmac} module the server uses.  (They were a module of
their own; one module fewer is 0.07-0.1 ms less of every knock.)
"""

import sys

from knocker.core import Record, format_hello
from knocker.core.knockfile import KnockFile, is_digits, is_hex64

try:  # the module's name is asked for once: a miss searches all of sys.path
    if sys.version_info >= (3, 12):  # every SHA-2 in one built-in module
        from _sha2 import sha256
    else:
        from _sha256 import sha256
except ImportError:  # an interpreter built without it: OpenSSL it is
    from hashlib import sha256

MAX_LINE = 512
#: The slowest (bytes a second, 512 kbit/s) a client may take a file's DATA
#: lines (an enrolment, a renewal): both sides give the lines this long.
MIN_RATE = 64 * 1024
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


# The client's MACs, without loading OpenSSL (the server computes its own
# with the hmac module).  The standard hmac module imports _hashlib, which
# loads libcrypto and reads the OpenSSL configuration: 2-3 ms before the
# first byte of a MAC, paid by every knocker knock, in the middle of the
# handshake.  The interpreter has its own SHA-256 built in; hmac_sha256
# runs the RFC 2104 construction on it.  The tests check it against the
# hmac module and the RFC 4231 test vectors, and every knock checks it
# against the other side's.  On plain TCP this module is loaded once HELLO
# is sent, so SHA-256's C extension loads while the server answers.

BLOCK = 64  # SHA-256 block size, bytes
_IPAD = int.from_bytes(b"\x36" * BLOCK, "big")
_OPAD = int.from_bytes(b"\x5c" * BLOCK, "big")


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    """
    The HMAC-SHA256 of C{message} under C{key} (RFC 2104).
    """
    if len(key) > BLOCK:
        key = sha256(key).digest()
    padded = int.from_bytes(key.ljust(BLOCK, b"\0"), "big")
    inner = sha256((padded ^ _IPAD).to_bytes(BLOCK, "big") + message).digest()
    return sha256((padded ^ _OPAD).to_bytes(BLOCK, "big") + inner).digest()


def digests_equal(a: bytes | str, b: bytes | str) -> bool:
    """
    Whether two MACs are equal, in time that does not depend on where they
    differ.  Both bytes, or both ASCII text.  The standard library's own
    constant-time function: the one C{hmac.compare_digest} is.
    """
    from _operator import _compare_digest

    return _compare_digest(a, b)


def hello_mac(secret: bytes, client: str, nonce: str) -> str:
    return hmac_sha256(secret, hello_message(client, nonce)).hex()


def grant_mac(secret: bytes, client: str, nonce: str, index: int) -> str:
    return hmac_sha256(secret, grant_message(client, nonce, index)).hex()


# Requests (client to server).


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


def parse_reply(line: bytes) -> Reply:
    words = line_words(line)
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


def line_words(line: bytes) -> list[str]:
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
        (the time is spent waiting for the server anyway): the comparison
        of the GRANT's MAC once PROOF is sent.
        """
        if self._nonce is not None:
            import _operator  # noqa: F401

    def proof_for(self, line: bytes) -> bytes | None:
        """
        The PROOF line for C{line} if it is the CHALLENGE this exchange
        waits for first, which it then takes as L{receive} would;
        otherwise C{None}, and nothing has changed (the line is for
        L{receive}, as any other).  A driver can so answer the CHALLENGE
        before it has loaded the rest of the client.
        """
        if self._nonce is not None or self._finished:
            return None
        try:
            reply = parse_reply(line)
        except ProtocolError:
            return None
        if not isinstance(reply, Challenge):
            return None
        return self.receive(line).line

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
