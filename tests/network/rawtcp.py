"""
Raw TCP segments, run inside the test namespaces: forge SYNs with someone
else's source address, and watch what comes and goes on an interface.

    python rawtcp.py spoof IFACE DST_MAC SRC DST SPORT PORT[,PORT...]
        Send one SYN per PORT, from SRC:SPORT, SRC:SPORT+1, ... to DST:PORT,
        as Ethernet frames on IFACE addressed to DST_MAC (scapy).  SRC is
        not ours: the answer goes to whoever really holds SRC.  Prints
        {"sent": [[sport, port], ...]} and exits.

    python rawtcp.py sniff IFACE SPORT_LOW SPORT_HIGH SECONDS
        Open a packet socket on IFACE, print "ready", then record every
        TCP segment (IPv4 or IPv6) that has a port in SPORT_LOW..SPORT_HIGH
        on either side, until a line or end of file on stdin, or SECONDS.
        Prints a JSON list of {"src", "dst", "sport", "dport", "flags"}
        (flags as letters: S, A, R, F, P) and exits.

The sniffer needs no libpcap (a plain AF_PACKET socket, no filter
program); the spoofer needs scapy.  Nothing else from knocker or the tests.
"""

import ipaddress
import json
import random
import select
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
_FLAGS = (("F", 0x01), ("S", 0x02), ("R", 0x04), ("P", 0x08), ("A", 0x10))


def spoof(iface, dst_mac, src, dst, sport, ports):
    from scapy.config import conf

    conf.verb = 0
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    from scapy.sendrecv import sendp

    network = IPv6 if ipaddress.ip_address(src).version == 6 else IP
    frames, sent = [], []
    for offset, port in enumerate(ports):
        frames.append(
            Ether(dst=dst_mac)
            / network(src=src, dst=dst)
            / TCP(sport=sport + offset, dport=port, flags="S",
                  seq=random.getrandbits(32), window=64240)
        )
        sent.append([sport + offset, port])
    sendp(frames, iface=iface, verbose=False)
    print(json.dumps({"sent": sent}), flush=True)


def parse(frame):
    """
    (src, dst, sport, dport, flags) of a TCP segment in an Ethernet frame,
    or None.
    """
    if len(frame) < 14:
        return None
    kind = struct.unpack("!H", frame[12:14])[0]
    if kind == 0x0800 and len(frame) >= 34:
        header = (frame[14] & 0x0F) * 4
        if frame[23] != 6:
            return None
        src, dst = frame[26:30], frame[30:34]
        tcp = 14 + header
    elif kind == 0x86DD and len(frame) >= 54:
        if frame[20] != 6:  # no extension headers in these tests
            return None
        src, dst = frame[22:38], frame[38:54]
        tcp = 54
    else:
        return None
    if len(frame) < tcp + 14:
        return None
    sport, dport = struct.unpack("!HH", frame[tcp:tcp + 4])
    bits = frame[tcp + 13]
    flags = "".join(letter for letter, bit in _FLAGS if bits & bit)
    return (str(ipaddress.ip_address(src)), str(ipaddress.ip_address(dst)), sport, dport, flags)


def sniff(iface, low, high, seconds):
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((iface, 0))
    print("ready", flush=True)
    seen = []
    deadline = time.monotonic() + seconds
    stdin = sys.stdin.fileno()
    watching = [sock, stdin]
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        readable, _, _ = select.select(watching, [], [], left)
        if stdin in readable:
            break
        if sock in readable:
            segment = parse(sock.recv(65535))
            if segment and (low <= segment[2] <= high or low <= segment[3] <= high):
                src, dst, sport, dport, flags = segment
                seen.append({"src": src, "dst": dst, "sport": sport, "dport": dport,
                             "flags": flags})
    sock.close()
    print(json.dumps(seen), flush=True)


def main(argv):
    if len(argv) == 7 and argv[0] == "spoof":
        iface, dst_mac, src, dst, sport, ports = argv[1:]
        spoof(iface, dst_mac, src, dst, int(sport), [int(p) for p in ports.split(",")])
        return 0
    if len(argv) == 5 and argv[0] == "sniff":
        sniff(argv[1], int(argv[2]), int(argv[3]), float(argv[4]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
