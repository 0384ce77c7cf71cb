"""
twistd plugins for knocker; kept to names only so C{twistd --help} stays fast.
"""

from twisted.application.service import ServiceMaker

knockServer = ServiceMaker(
    "knocker server",
    "knocker.daemon.tap",
    "Port-knocking daemon: central port and decoy pool.",
    "knockserver",
)
knockClient = ServiceMaker(
    "knocker client",
    "knocker.client.tap",
    "Knock once on a knocker server, then stop.",
    "knockclient",
)
