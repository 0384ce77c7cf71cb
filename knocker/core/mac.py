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

from _operator import _compare_digest

try:  # Python 3.12 and later keep every SHA-2 in one built-in module
    from _sha2 import sha256
except ImportError:
    try:
        from _sha256 import sha256
    except ImportError:  # an interpreter built without it: OpenSSL it is
        from hashlib import sha256

BLOCK = 64  # SHA-256 block size, bytes
_INNER = bytes(x ^ 0x36 for x in range(256))
_OUTER = bytes(x ^ 0x5C for x in range(256))


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    """
    The HMAC-SHA256 of C{message} under C{key} (RFC 2104).
    """
    if len(key) > BLOCK:
        key = sha256(key).digest()
    key = key.ljust(BLOCK, b"\0")
    inner = sha256(key.translate(_INNER) + message).digest()
    return sha256(key.translate(_OUTER) + inner).digest()


def digests_equal(a: bytes | str, b: bytes | str) -> bool:
    """
    Whether two MACs are equal, in time that does not depend on where they
    differ.  Both bytes, or both ASCII text.
    """
    return _compare_digest(a, b)
