"""
HMAC-SHA256 for the handshake, without loading OpenSSL.

The standard C{hmac} module imports C{_hashlib}, which loads libcrypto and
reads the OpenSSL configuration: 2-3 ms before the first byte of a MAC, paid
by every C{knocker knock}, in the middle of the handshake.  The interpreter
has its own SHA-256 built in; this module runs the RFC 2104 construction on
it.  The tests check it against the C{hmac} module and the RFC 4231 test
vectors, and every knock checks it against the other side's.

Comparison is the standard library's own constant-time function: the one
C{hmac.compare_digest} is when OpenSSL is absent.
"""

import sys

try:  # the module's name is asked for once: a miss searches all of sys.path
    if sys.version_info >= (3, 12):  # every SHA-2 in one built-in module
        from _sha2 import sha256
    else:
        from _sha256 import sha256
except ImportError:  # an interpreter built without it: OpenSSL it is
    from hashlib import sha256

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


def prepare_comparison() -> None:
    """
    Load L{digests_equal}'s function, while the client waits for its GRANT.
    """
    import _operator  # noqa: F401


def digests_equal(a: bytes | str, b: bytes | str) -> bool:
    """
    Whether two MACs are equal, in time that does not depend on where they
    differ.  Both bytes, or both ASCII text.
    """
    from _operator import _compare_digest

    return _compare_digest(a, b)
