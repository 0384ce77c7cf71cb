"""
The enrolment's key schedule: SPAKE2 keyed by the invitation code, then
HKDF over its shared key and the transcript for two key-confirmation MAC
keys and one AEAD key (ChaCha20-Poly1305) that carries the portknock file.

No home-made primitives: SPAKE2 from the C{spake2} package (as
magic-wormhole uses it: the symmetric variant, the slot in its identity),
HKDF, HMAC and the AEAD from C{cryptography}, comparisons with
L{hmac.compare_digest}, randomness from the AEAD's own nonce via
L{secrets}.
"""

import base64
import hashlib
import hmac
import secrets

from attrs import frozen
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from spake2 import SPAKE2_Symmetric
from spake2.ed25519_basic import NotOnCurve
from spake2.spake2 import SPAKEError

NONCE_BYTES = 12

#: Most DATA lines an enrolment or a renewal may announce (CHUNK = 400
#: base64 characters each: about 19 MB of file).  A client reads no more, so
#: a hostile server cannot make it hold an endless stream; the default file
#: (1000 knocks of 6 ports, about 40 kB) takes about 135 lines.
MAX_DATA_LINES = 1 << 16


class VerifyError(ValueError):
    """
    A message that does not verify: a wrong code, a tampered line, or an
    attacker's guess.  The message says which check failed.
    """


def identity(slot: int) -> bytes:
    return f"knocker/1 enrol {slot}".encode("ascii")


def password(slot: int, words: str) -> bytes:
    return f"{slot}-{words}".encode("ascii")


class Pake:
    """
    One side's SPAKE2 for invitation C{slot} with code C{words}.
    """

    def __init__(self, slot: int, words: str):
        self.slot = slot
        self._spake = SPAKE2_Symmetric(password(slot, words), idSymmetric=identity(slot))
        self.message = self._spake.start()

    def finish(self, client_message: bytes, server_message: bytes, theirs: bytes) -> "Keys":
        """
        The keys, from the peer's message C{theirs}; C{client_message} and
        C{server_message} make the transcript both sides bind.

        @raise VerifyError: the peer's message is not a SPAKE2 element.
        """
        try:
            shared = self._spake.finish(theirs)
        except (SPAKEError, NotOnCurve, ValueError, TypeError, AssertionError) as error:
            raise VerifyError(f"not a SPAKE2 message: {error}") from None
        return derive(shared, transcript(self.slot, client_message, server_message))


def transcript(slot: int, client_message: bytes, server_message: bytes) -> bytes:
    return hashlib.sha256(
        b"knocker/1|enrol|%d|" % slot + client_message + b"|" + server_message).digest()


@frozen
class Keys:
    client_confirm: bytes
    server_confirm: bytes
    file_key: bytes
    transcript: bytes

    def client_mac(self) -> str:
        return _mac(self.client_confirm, b"client", self.transcript)

    def server_mac(self) -> str:
        return _mac(self.server_confirm, b"server", self.transcript)

    def check_client(self, mac: str) -> bool:
        return hmac.compare_digest(self.client_mac(), mac)

    def check_server(self, mac: str) -> bool:
        return hmac.compare_digest(self.server_mac(), mac)


def derive(shared: bytes, transcript_hash: bytes, info: bytes = b"knocker/1 enrol keys") -> Keys:
    """
    Three independent 32-byte keys from C{shared}, salted with the
    transcript so both SPAKE2 messages are bound to them.
    """
    okm = HKDF(algorithm=hashes.SHA256(), length=96, salt=transcript_hash, info=info).derive(shared)
    return Keys(okm[:32], okm[32:64], okm[64:], transcript_hash)


def _mac(key: bytes, who: bytes, transcript_hash: bytes) -> str:
    return hmac.digest(key, b"knocker/1|confirm|" + who + b"|" + transcript_hash, "sha256").hex()


def seal(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """
    ChaCha20-Poly1305 under C{key}: a fresh random nonce, then the
    ciphertext and tag.
    """
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, associated)


def unseal(key: bytes, sealed: bytes, associated: bytes) -> bytes:
    """
    @raise VerifyError: the box was tampered with, or sealed under another key.
    """
    if len(sealed) < NONCE_BYTES + 16:
        raise VerifyError("the sealed file is too short")
    try:
        return ChaCha20Poly1305(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated)
    except InvalidTag:
        raise VerifyError("the sealed file does not verify: tampered, or not for this key") from None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    """
    @raise VerifyError: not canonical base64.
    """
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise VerifyError("not base64") from None
    if b64(data) != text:
        raise VerifyError("not canonical base64")
    return data
