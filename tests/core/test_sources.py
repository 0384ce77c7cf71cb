"""
Which source an address counts under (docs/spec.md section 5).
"""

import ipaddress
import socket

from hypothesis import example, given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from knocker.core.sources import Networks, SourceKeys, normalise_ip


class SourceKeyTests(SynchronousTestCase):
    def test_ipv4_is_its_own_source(self):
        self.assertEqual(SourceKeys(64)("192.0.2.7"), "192.0.2.7")

    def test_ipv6_counts_by_prefix(self):
        keys = SourceKeys(64)
        self.assertEqual(keys("2001:db8:1:2:ffff::9"), "2001:db8:1:2::/64")
        self.assertEqual(keys("2001:db8:1:2::1"), keys("2001:db8:1:2:aaaa:bbbb:cccc:dddd"))
        self.assertNotEqual(keys("2001:db8:1:2::1"), keys("2001:db8:1:3::1"))

    def test_prefix_128_is_the_address(self):
        self.assertEqual(SourceKeys(128)("2001:db8::1"), "2001:db8::1")

    @given(address=st.integers(min_value=0, max_value=(1 << 128) - 1),
           prefix=st.integers(min_value=1, max_value=127))
    def test_agrees_with_the_ipaddress_module(self, address, prefix):
        ip = str(ipaddress.IPv6Address(address))
        expected = ipaddress.IPv6Network((ip, prefix), strict=False)
        # The same network (inet_ntop writes ::/96 addresses in dotted form).
        self.assertEqual(ipaddress.IPv6Network(SourceKeys(prefix)(ip)), expected)


class NetworksTests(SynchronousTestCase):
    def test_membership(self):
        never = Networks(("192.0.2.0/28", "2001:db8:cafe::/48"))
        self.assertIn("192.0.2.15", never)
        self.assertNotIn("192.0.2.16", never)
        self.assertIn("2001:db8:cafe:1::9", never)
        self.assertNotIn("not an address", never)
        self.assertFalse(Networks())

    def test_ipv4_mapped_networks_are_their_ipv4_networks(self):
        """
        The daemon asks about an IPv4 client as IPv4 (a dual-stack socket's
        ::ffff:192.0.2.1 is normalised first): a never-lock entry written
        in the mapped form must still match it.
        """
        never = Networks(("::ffff:192.0.2.0/120", "::ffff:198.51.100.7"))
        self.assertIn("192.0.2.200", never)
        self.assertIn("198.51.100.7", never)
        self.assertIn("::ffff:192.0.2.1", never)
        self.assertNotIn("198.51.100.8", never)
        self.assertNotIn("::ffff:c000:0201:1", never)


def _by_ipaddress(host: str) -> str:
    """normalise_ip as it was, through the ipaddress module alone."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    return str(getattr(address, "ipv4_mapped", None) or address)


class NormaliseTests(SynchronousTestCase):
    """
    normalise_ip passes a colon-free string through untouched; it must
    give what the ipaddress module gives for every input.
    """

    @given(address=st.integers(min_value=0, max_value=(1 << 32) - 1))
    def test_ipv4_as_the_kernel_writes_it(self, address):
        host = socket.inet_ntoa(address.to_bytes(4, "big"))
        self.assertEqual(normalise_ip(host), _by_ipaddress(host))

    @given(address=st.integers(min_value=0, max_value=(1 << 128) - 1),
           scope=st.sampled_from(["", "%eth0", "%2"]))
    def test_ipv6_and_mapped(self, address, scope):
        host = str(ipaddress.IPv6Address(address)) + scope
        self.assertEqual(normalise_ip(host), _by_ipaddress(host))

    @given(host=st.text(alphabet="0123456789.:%abcdefx ", max_size=45))
    @example(host="192.0.2.1%eth0")  # a scope on an IPv4 address is dropped too
    @example(host="010.0.0.1")
    def test_anything_else(self, host):
        self.assertEqual(normalise_ip(host), _by_ipaddress(host))
