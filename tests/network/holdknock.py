"""
A client that drives the handshake itself (knocker.core.handshake.ClientHandshake
over a plain socket) and holds the central connection after GRANT, so a
test can act while the slot is open.  Run inside a namespace:

    python holdknock.py HOST PORT KNOCKFILE

Prints one JSON line: {"grant": i, "ports": [...], "window": w}, or
{"reply": "LINE"} when the server did not grant (then exits 1).  Then it
obeys one line on stdin:

    knock   connect to each granted port in order (waiting for the server
            to close each one), then read the verdict
    wait    read the verdict (say, after someone else ended the slot)

and prints {"verdict": "LINE"} ({"verdict": null} if the connection closed
or nothing came within 30 s) and exits.  End of file on stdin: hang up.
"""

import json
import socket
import sys

from knocker.core import handshake as hs
from knocker.core.knockfile import parse_knockfile
from knocker.files import read_private

TIMEOUT = 30.0


def readline(conn, buffer):
    while b"\n" not in buffer[0]:
        try:
            data = conn.recv(4096)
        except (socket.timeout, OSError):
            return None
        if not data:
            return None
        buffer[0] += data
    line, _, buffer[0] = buffer[0].partition(b"\n")
    return line


def hit(host, port):
    with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
        try:
            while sock.recv(512):
                pass
        except ConnectionResetError:
            pass


def say(message):
    print(json.dumps(message), flush=True)


def main(host, port, path):
    knockfile = parse_knockfile(read_private(path), path)
    machine = hs.ClientHandshake(knockfile)
    conn = socket.create_connection((host, int(port)), timeout=TIMEOUT)
    buffer = [b""]
    conn.sendall(machine.hello().line)
    line = readline(conn, buffer) or b""
    action = machine.receive(line)
    if isinstance(action, hs.SendLine):
        conn.sendall(action.line)
        line = readline(conn, buffer) or b""
        action = machine.receive(line)
    if not isinstance(action, hs.KnockPorts):
        say({"reply": line.decode("ascii", "replace")})
        return 1
    say({"grant": action.index, "ports": list(action.ports), "window": action.window})
    command = sys.stdin.readline().strip()
    if command == "knock":
        for port in action.ports:
            hit(conn.getpeername()[0], port)
    elif command != "wait":
        conn.close()
        return 0
    line = readline(conn, buffer)
    say({"verdict": None if line is None else line.decode("ascii", "replace")})
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
