"""
Renewal (docs/spec.md section 10, docs/protocol.md "Renewal"): after OPEN,
on the same central connection, a client whose knocks left have fallen to
C{renew-at} is offered a new portknock file (new secret, new knocks, same
pool).  It travels sealed (ChaCha20-Poly1305) under a key from HKDF over a
fresh X25519 agreement (ephemeral keys on both sides) together with the
client's current secret and the connection's nonce: an eavesdropper who
stole the current file cannot read it, and neither can an active attacker
without that file.

The server's side is L{RenewServer} (lines in, lines out) and
L{prepare_offer} (which generation to offer: the pending one if there is
one, so repeated offers resend the same file).  The client's side is
L{take_offer}, which C{knocker knock} loads only when an OFFER arrives.
"""

import hashlib
import os

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from knocker.enrol import keys as k
from knocker.enrol.server import CHUNK, Send, words_of

PREVIOUS_SUFFIX = ".prev"

REVOKED = "revoked"
"""What C{promote} returns when the client was revoked since the offer: the
renewed file is never promoted, and the CONFIRM gets C{REFUSED revoked}."""

_REFUSED_REVOKED = b"REFUSED " + REVOKED.encode("ascii")


class Refused(ValueError):
    """The server refused the renewal at CONFIRM: it is not taken."""


def _raw(public) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def renewal_key(shared: bytes, old_secret: bytes, client: str, nonce: str, server_public: bytes,
                client_public: bytes) -> bytes:
    """
    The sealing key: HKDF over the X25519 agreement and the current secret,
    salted with everything this exchange is about.
    """
    salt = hashlib.sha256(b"|".join([b"knocker/1|renew", client.encode("ascii"),
                                     nonce.encode("ascii"), server_public,
                                     client_public])).digest()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt,
                info=b"knocker/1 renew key").derive(shared + old_secret)


def associated(client: str) -> bytes:
    return b"knocker/1|renew-file|" + client.encode("ascii")


def _agree(private, theirs: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(theirs))
    except ValueError as error:
        raise k.VerifyError(f"not an X25519 public key: {error}") from None


def confirm_mac(new_secret: bytes, client: str, nonce: str) -> str:
    """
    The client's explicit confirmation: it holds the new file (HMAC with
    the new secret over this connection's nonce).
    """
    import hmac

    message = f"knocker/1|renewed|{client}|{nonce}".encode("ascii")
    return hmac.digest(new_secret, message, "sha256").hex()


class RenewServer:
    """
    The server's side of one offer: L{start} is the OFFER line; the
    client's ACCEPT brings the sealed file; its CONFIRM, made with the new
    secret, promotes the new file at once (C{promote(secret id)}, which
    says whether it did, or L{REVOKED}) and ends the exchange with
    CONFIRMED.
    """

    def __init__(self, client: str, old_secret: bytes, nonce: str, text: str, promote=None):
        from knocker.core.knockfile import parse_header

        self._client = client
        self._old_secret = old_secret
        self._nonce = nonce
        self._text = text
        self._new_secret = parse_header(text, "the renewed file").secret
        self._promote = promote or (lambda wanted_id: False)
        self._private = X25519PrivateKey.generate()
        self._public = _raw(self._private.public_key())
        self._sent = False
        self.done = False

    def start(self) -> list[Send]:
        return [Send(b"OFFER " + k.b64(self._public).encode("ascii") + b"\n")]

    def receive(self, line: bytes) -> list[Send]:
        if self.done:
            return []
        words = words_of(line)
        if self._sent:
            return self._confirm(words)
        self.done = True
        if not words or len(words) != 2 or words[0] != "ACCEPT":
            return [Send(b"ERROR unexpected-line\n", close=True, fault="unexpected-line")]
        try:
            theirs = k.unb64(words[1])
            shared = _agree(self._private, theirs)
        except k.VerifyError:
            return [Send(b"ERROR malformed\n", close=True, fault="malformed")]
        key = renewal_key(shared, self._old_secret, self._client, self._nonce, self._public,
                          theirs)
        sealed = k.b64(k.seal(key, self._text.encode("utf-8"), associated(self._client)))
        chunks = [sealed[i:i + CHUNK] for i in range(0, len(sealed), CHUNK)]
        if len(chunks) > k.MAX_DATA_LINES:  # no client would take it: the old file stays
            return [Send(b"ERROR server-error\n", close=True)]
        out = [Send(f"RENEWAL {len(chunks)}\n".encode("ascii"))]
        out += [Send(f"DATA {chunk}\n".encode("ascii")) for chunk in chunks]
        self._sent = True
        self.done = False  # the client's CONFIRM may follow
        return out

    def _confirm(self, words) -> list[Send]:
        import hmac

        self.done = True
        if not words or len(words) != 2 or words[0] != "CONFIRM":
            return [Send(b"ERROR unexpected-line\n", close=True, fault="unexpected-line")]
        expected = confirm_mac(self._new_secret, self._client, self._nonce)
        if not hmac.compare_digest(expected, words[1]):
            return [Send(b"ERROR bad-proof\n", close=True, fault="bad-proof")]
        from knocker.state.interface import secret_id, then

        # CONFIRMED once the state has answered (a fleet's, later), and only
        # if it promoted the new file; if not, the client's next handshake
        # with the new file proves it.
        return then(self._promote(secret_id(self._new_secret)), _confirmed_or_not)


def _confirmed_or_not(promoted) -> list[Send]:
    if promoted == REVOKED:
        return [Send(_REFUSED_REVOKED + b"\n", close=True)]
    return [Send(b"CONFIRMED\n" if promoted is True else b"ERROR server-error\n", close=True)]


def prepare_offer(store, book, client: str, now, rng=None) -> tuple[str, bool] | None:
    """
    The text of the file to offer C{client}: its pending generation's, or a
    new one (kept as pending first: its server copy, then the state).
    Returns C{(text, new)}, or C{None} when the client's file was replaced
    meanwhile.  In one go: a fleet's database threads call it; a lone
    daemon draws on the reactor in slices (L{knocker.daemon.renewals}).
    """
    import secrets
    from datetime import datetime, timezone

    from knocker.core.knockgen import generate
    from knocker.state.interface import secret_id

    text = pending_offer(store, book, client)
    if text is not None:
        return text, False
    state = store.client(client)
    kf = generate(client, store.pool(), state.knocks, book.ports_per_knock(client),
                  rng or secrets.SystemRandom(), secrets.token_bytes(32),
                  datetime.fromtimestamp(now, timezone.utc))
    text = book.add_pending(kf, current_id=state.secret_id)
    if text is None:
        return None  # a fleet's: generated again or revoked meanwhile
    if book.pending_id(text) != secret_id(kf.secret):
        return text, False  # another gateway of a fleet drew one first: that one
    if getattr(book, "KEEPS_PENDING_COUNTER", False):
        return text, True  # a fleet's book counted it with its copy, under lock
    return keep_pending(store, book, state, kf.secret, text)


def keep_pending(store, book, state, secret: bytes, text: str) -> tuple[str, bool] | None:
    """
    Count a new generation drawn for C{state}'s file, whose copy C{text}
    is written: C{(text, True)} to offer, or C{None} (its copy removed) if
    that file is no longer the client's (generated again, or revoked,
    while the new one was drawn).
    """
    if not store.set_pending(state.client, state.knocks, secret, current_id=state.secret_id):
        book.drop_pending(state.client, text)
        return None
    return text, True


def pending_offer(store, book, client: str) -> str | None:
    """
    The text of C{client}'s pending generation, if there is one and its
    copy is intact: repeated offers send the same file.
    """
    pending = store.pending(client)
    if pending is None:
        return None
    text = book.pending_text(client)
    try:
        if text is not None and book.pending_id(text) == pending.secret_id:
            return text
    except ValueError:
        pass  # a damaged copy: draw a new generation
    return None


async def take_offer(conn, offer: bytes, config, knockfile, nonce: str, timeout: float,
                     clock=None) -> str:
    """
    The client's side: answer the OFFER, receive and open the new file,
    keep the current one as C{FILE.prev}, write the new one atomically
    (0600).  Returns what happened, for the knock's detail; raises
    L{k.VerifyError} or L{ValueError} when the offer cannot be taken (the
    current file is then untouched and still works), except L{Refused}:
    the server refused at CONFIRM (the client was revoked meanwhile), when
    the new file is written already and stays (docs/protocol.md).

    The whole renewal ends within C{timeout} seconds on C{clock} (default
    L{time.monotonic}): what is left of the knock's one deadline bounds
    every read, so a server that drips lines cannot hold the knock.
    """
    from knocker.core.knockfile import parse_knockfile
    from knocker.files import read_private, write_private

    read = _reader(conn, timeout, clock)
    words = offer.decode("ascii", "replace").split(" ")
    if len(words) != 2:
        raise k.VerifyError("malformed OFFER")
    server_public = k.unb64(words[1])
    private = X25519PrivateKey.generate()
    public = _raw(private.public_key())
    shared = _agree(private, server_public)
    conn.send(b"ACCEPT " + k.b64(public).encode("ascii") + b"\n")
    line = await read()
    words = (line or b"").decode("ascii", "replace").split(" ")
    if len(words) != 2 or words[0] != "RENEWAL" or not words[1].isdigit():
        raise k.VerifyError(f"expected RENEWAL, got {(line or b'(end)')[:40]!r}")
    if int(words[1]) > k.MAX_DATA_LINES:
        raise k.VerifyError(f"the renewal announces {words[1][:20]} DATA lines, more than "
                            f"{k.MAX_DATA_LINES}")
    chunks = []
    for _ in range(int(words[1])):
        line = await read()
        if line is None or not line.startswith(b"DATA "):
            raise k.VerifyError("the renewal was cut short")
        chunks.append(line[5:].decode("ascii", "replace"))
    key = renewal_key(shared, knockfile.secret, knockfile.client, nonce, server_public, public)
    text = k.unseal(key, k.unb64("".join(chunks)), associated(knockfile.client)).decode("utf-8")
    new = parse_knockfile(text, "the renewed file")
    if new.client != knockfile.client or new.secret == knockfile.secret:
        raise k.VerifyError("the renewed file is not a new file for this client")
    path = config.knock_file
    current = read_private(path)
    if parse_knockfile(current, path, header_only=True).secret != knockfile.secret:
        raise ValueError(f"{path} changed during the knock; the renewal is left for next time")
    write_private(path + PREVIOUS_SUFFIX, current)
    write_private(path, text)
    note = (f"renewed: new file in {os.path.basename(path)}, the old one kept as "
            f"{os.path.basename(path)}{PREVIOUS_SUFFIX}")
    # Written: confirm at once, so the old secret stops working now; if this
    # is lost, the next handshake with the new file confirms it.
    try:
        conn.send(f"CONFIRM {confirm_mac(new.secret, new.client, nonce)}\n".encode("ascii"))
        answer = await read()
    except Exception:  # noqa: BLE001 - the file is written; the next knock confirms
        answer = None
    if answer == _REFUSED_REVOKED:
        # Both files are left as they are: a refusal forged on a plain
        # connection must not cost the client the file the server may hold.
        raise Refused(f"the server refused it at CONFIRM (this client is revoked); "
                      f"{os.path.basename(path)} holds the refused file, "
                      f"{os.path.basename(path)}{PREVIOUS_SUFFIX} the one knocked with")
    return note + ("; confirmed" if answer == b"CONFIRMED" else "; to be confirmed by the next knock")


def _reader(conn, timeout: float, clock):
    """C{conn.readline}, each call bounded by what is left of C{timeout}."""
    if clock is None:
        from time import monotonic as clock
    end = clock() + timeout

    async def read():
        left = end - clock()
        if left <= 0:
            raise ValueError(f"the knock's timeout passed during the renewal "
                             f"({timeout:.1f}s were left for it)")
        return await conn.readline(left)

    return read
