"""
The protocol's version tag and its first line, HELLO (docs/spec.md section 4).

Apart from L{knocker.core.handshake} so that C{knocker knock} can say HELLO
before it loads the rest of the protocol: the server's answer then travels
while the client imports (see L{knocker.client.tcp.EarlyHello}).
"""

MAGIC = "KNOCKER/1"


def format_hello(client: str) -> bytes:
    return f"{MAGIC} HELLO {client}\n".encode("ascii")
