"""
Who a source is: the key under which hits, handshakes and lockouts of one
address count (docs/spec.md section 5).
"""

import ipaddress
from socket import AF_INET6, inet_ntop, inet_pton


def normalise_ip(host: str) -> str:
    """
    The address a hit or a handshake counts under: IPv4-mapped IPv6
    addresses count as the IPv4 address, a scope id is dropped.
    """
    if ":" not in host and "%" not in host:
        # IPv4 as the kernel writes it is its own canonical form, and
        # anything else without a colon or a scope is no address: returned
        # as it is, either way (ipaddress took about 10 µs a connection).
        return host
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


class SourceKeys:
    """
    The key a source counts under for lockouts and connection bounds: an
    IPv4 address itself, an IPv6 address by its C{prefix6} network (one
    attacker's /64 is one source), written as C{2001:db8:1:2::/64}.  An
    attacker can send every hit from a fresh IPv6 address, so the network
    is computed with the C{socket} module's packing (about a microsecond),
    not the C{ipaddress} module's (about ten).
    """

    def __init__(self, prefix6: int = 64):
        self._prefix6 = prefix6
        self._suffix = f"/{prefix6}"
        self._mask = ((1 << 128) - 1) ^ ((1 << (128 - prefix6)) - 1)

    def __call__(self, ip: str) -> str:
        if ":" not in ip or self._prefix6 == 128:
            return ip
        try:
            packed = inet_pton(AF_INET6, ip)
        except OSError:
            return ip
        network = int.from_bytes(packed, "big") & self._mask
        return inet_ntop(AF_INET6, network.to_bytes(16, "big")) + self._suffix


class Networks:
    """
    A list of addresses and networks (C{never-lock}), asked whether an
    address is in one of them.
    """

    def __init__(self, networks=()):
        self._networks = tuple(_as_ipv4(ipaddress.ip_network(net, strict=False))
                               for net in networks)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def __contains__(self, ip: str) -> bool:
        if not self._networks:
            return False
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        address = getattr(address, "ipv4_mapped", None) or address
        return any(address in network for network in self._networks)


_MAPPED = ipaddress.ip_network("::ffff:0:0/96")


def _as_ipv4(network):
    """
    An IPv4-mapped network (C{::ffff:192.0.2.0/120}) as the IPv4 network it
    maps: addresses are asked about as IPv4 (L{normalise_ip}), so the
    mapped form would match nothing.
    """
    if network.version == 6 and network.subnet_of(_MAPPED):
        return ipaddress.ip_network((network.network_address.ipv4_mapped,
                                     network.prefixlen - 96))
    return network
