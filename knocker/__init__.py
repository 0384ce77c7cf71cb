"""
knocker: port knocking with one-time knocks, an HMAC handshake on a central
port and a pool of decoy ports, on Twisted.
"""

__version__ = "0.1.0"
