"""
A tiny TCP listener and connector, run inside the test namespaces.

    python probe.py listen PORT
        Listen on PORT on every IPv4 and IPv6 address; print "listening" once
        ready (or "error: ..." and exit 1). Each connection gets the line
        "knocker-probe\\n", then whatever it sends is echoed back until it
        closes (or is idle for 10 s). Runs until killed.

    python probe.py connect HOST PORT TIMEOUT
        One connection attempt, TIMEOUT seconds at most for the connect and
        as much again for the line. Prints one word and exits 0: ok (connected
        and read the line), refused, timeout, or "error: ...".

    python probe.py session HOST PORT TIMEOUT
        Connect as above and print the result; if it is ok, wait for a line
        on stdin, send "ping\\n" and print "echo ok" if it comes back (else
        "echo timeout" or "echo error: ..."). Shows that an established
        connection keeps working after the firewall changed.

Standard library only; imports nothing from knocker or the tests.
"""

import socket
import sys
import threading

BANNER = b"knocker-probe\n"


def listen(port):
    try:
        server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("::", port))
        server.listen(16)
    except OSError as e:
        print(f"error: {e}", flush=True)
        return 1
    print("listening", flush=True)
    while True:
        connection, _ = server.accept()
        threading.Thread(target=serve, args=(connection,), daemon=True).start()


def serve(connection):
    try:
        connection.settimeout(10)
        connection.sendall(BANNER)
        while True:
            data = connection.recv(4096)
            if not data:
                break
            connection.sendall(data)
    except OSError:
        pass
    finally:
        connection.close()


def open_connection(host, port, timeout):
    """
    Connect and read the banner: (socket or None, outcome word).
    """
    try:
        connection = socket.create_connection((host, port), timeout=timeout)
    except ConnectionRefusedError:
        return None, "refused"
    except (socket.timeout, TimeoutError):
        return None, "timeout"
    except OSError as e:
        return None, f"error: {e}"
    try:
        line = read_line(connection)
    except (socket.timeout, TimeoutError):
        connection.close()
        return None, "error: connected, but no line came"
    except OSError as e:
        connection.close()
        return None, f"error: connected, then {e}"
    if line != BANNER:
        connection.close()
        return None, f"error: connected, read {line!r}"
    return connection, "ok"


def read_line(connection):
    data = b""
    while not data.endswith(b"\n") and len(data) < 100:
        chunk = connection.recv(100)
        if not chunk:
            break
        data += chunk
    return data


def connect(host, port, timeout):
    connection, outcome = open_connection(host, port, timeout)
    if connection is not None:
        connection.close()
    return outcome


def session(host, port, timeout):
    connection, outcome = open_connection(host, port, timeout)
    print(outcome, flush=True)
    if connection is None:
        return
    with connection:
        sys.stdin.readline()
        try:
            connection.sendall(b"ping\n")
            line = read_line(connection)
        except (socket.timeout, TimeoutError):
            print("echo timeout", flush=True)
            return
        except OSError as e:
            print(f"echo error: {e}", flush=True)
            return
        print("echo ok" if line == b"ping\n" else f"echo error: read {line!r}", flush=True)


def main(argv):
    if len(argv) == 2 and argv[0] == "listen":
        return listen(int(argv[1]))
    if len(argv) == 4 and argv[0] == "connect":
        print(connect(argv[1], int(argv[2]), float(argv[3])), flush=True)
        return 0
    if len(argv) == 4 and argv[0] == "session":
        session(argv[1], int(argv[2]), float(argv[3]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
