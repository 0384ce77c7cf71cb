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
