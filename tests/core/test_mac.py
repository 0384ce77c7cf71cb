"""
The client's HMAC-SHA256 (L{knocker.core.handshake.hmac_sha256}) against
RFC 4231's test vectors and against the standard hmac module the server
uses.
"""

import hmac

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from knocker.core.handshake import digests_equal, hmac_sha256

# RFC 4231, section 4: (key, data, HMAC-SHA-256).  Case 5 tests truncated
# output, which the protocol does not use.
RFC4231 = [
    (b"\x0b" * 20, b"Hi There",
     "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (b"Jefe", b"what do ya want for nothing?",
     "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    (b"\xaa" * 20, b"\xdd" * 50,
     "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
    (bytes(range(1, 26)), b"\xcd" * 50,
     "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
    (b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First",
     "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
    (b"\xaa" * 131,
     b"This is a test using a larger than block-size key and a larger than "
     b"block-size data. The key needs to be hashed before being used by the "
     b"HMAC algorithm.",
     "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"),
]


class HmacSha256Tests(SynchronousTestCase):
    def test_rfc4231_vectors(self):
        for key, data, expected in RFC4231:
            self.assertEqual(hmac_sha256(key, data).hex(), expected, (key, data))

    @given(st.binary(max_size=200), st.binary(max_size=300))
    def test_same_as_the_hmac_module(self, key, message):
        """
        Keys shorter than, equal to and longer than the 64-byte block.
        """
        self.assertEqual(hmac_sha256(key, message), hmac.digest(key, message, "sha256"))

    def test_block_size_edges(self):
        for size in (0, 1, 63, 64, 65, 128):
            key = bytes(i % 256 for i in range(size))
            self.assertEqual(hmac_sha256(key, b"m"), hmac.digest(key, b"m", "sha256"), size)

    def test_key_and_message_both_matter(self):
        base = hmac_sha256(b"k" * 32, b"message")
        self.assertNotEqual(base, hmac_sha256(b"k" * 31 + b"K", b"message"))
        self.assertNotEqual(base, hmac_sha256(b"k" * 32, b"messagf"))


class DigestsEqualTests(SynchronousTestCase):
    @given(st.binary(min_size=0, max_size=40), st.binary(min_size=0, max_size=40))
    def test_agrees_with_hmac_compare_digest(self, a, b):
        self.assertEqual(digests_equal(a, b), hmac.compare_digest(a, b))
        self.assertEqual(digests_equal(a.hex(), b.hex()), a == b)

    def test_one_differing_character(self):
        mac = hmac_sha256(b"k", b"m").hex()
        for position in (0, 31, 63):
            other = mac[:position] + ("0" if mac[position] != "0" else "1") + mac[position + 1:]
            self.assertFalse(digests_equal(mac, other))
        self.assertTrue(digests_equal(mac, str(mac)))
