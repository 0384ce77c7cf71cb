"""
Who a source is: the key under which hits, handshakes and lockouts of one
address count (docs/spec.md section 5).
"""

import ipaddress


def normalise_ip(host: str) -> str:
    """
    The address a hit or a handshake counts under: IPv4-mapped IPv6
    addresses count as the IPv4 address, a scope id is dropped.
    """
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
    attacker's /64 is one source).  Recently seen IPv6 keys are cached,
    since a source usually sends many hits.
    """

    CACHE = 4096

    def __init__(self, prefix6: int = 64):
        self._prefix6 = prefix6
        self._cache: dict[str, str] = {}

    def __call__(self, ip: str) -> str:
        if ":" not in ip:
            return ip
        key = self._cache.get(ip)
        if key is None:
            if len(self._cache) >= self.CACHE:
                self._cache.clear()
            try:
                network = ipaddress.IPv6Network((ip, self._prefix6), strict=False)
                key = network.with_prefixlen if self._prefix6 < 128 else ip
            except ValueError:
                key = ip
            self._cache[ip] = key
        return key


class Networks:
    """
    A list of addresses and networks (C{never-lock}), asked whether an
    address is in one of them.
    """

    def __init__(self, networks=()):
        self._networks = tuple(ipaddress.ip_network(net, strict=False) for net in networks)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def __contains__(self, ip: str) -> bool:
        if not self._networks:
            return False
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in network for network in self._networks)
