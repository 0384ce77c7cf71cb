"""
C{knocker demo}: one real knock on this machine, to see the whole thing work.

In a fresh temporary folder it generates a client, starts the daemon as a
separate process with the embedded defaults (C{twistd -n knockserver}, no
configuration: 127.0.0.1, ./knocker-state, the log-only success action),
knocks with C{knocker knock} as another process, and prints the verdict, the
audit log and what the success action said.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from knocker.admin.clients import generate_client
from knocker.core.serverconfig import parse_server_config
from knocker.daemon.audit import read_audit


def twistd_command() -> list[str]:
    """
    How to run twistd with this Python (a venv's twistd script if there is one).
    """
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def wait_for_start(audit_path: str, process, seconds: float = 20.0) -> dict:
    """
    The daemon's C{start} audit event, once it is listening.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the daemon exited with status {process.returncode}")
        if os.path.exists(audit_path):
            for event in read_audit(audit_path):
                if event["event"] == "start":
                    return event
        time.sleep(0.05)
    raise RuntimeError(f"the daemon did not start within {seconds:g}s")


def _free(port: int) -> bool:
    """Whether C{port} on 127.0.0.1 can be listened on now."""
    import socket

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _tail(path: str, lines: int = 8) -> str:
    with open(path, encoding="utf-8", errors="replace") as handle:
        return "".join(handle.readlines()[-lines:])


def run_demo() -> int:
    work = tempfile.mkdtemp(prefix="knocker-demo-")
    os.chdir(work)
    config = parse_server_config()
    print(f"knocker demo in {work} (its files stay there: remove it when done)")
    done = generate_client(config, "demo", 1000, 6, "demo.knock")
    print(f"1. generated demo.knock: {done.pool_size}-port pool, keyspace {done.ordered:.3g} ordered")
    # (no console: the tour is the knock, and a daemon already on the admin
    # port must not stop it; nor one on the default central port, say a
    # real knockserver on this machine: then any free port)
    options = ["--admin="]
    default_port = int(config.central.split(":")[1])
    if not _free(default_port):
        print(f"   (port {default_port} is taken here: the demo's daemon takes a free one)")
        options += ["--central", "tcp:0:interface=127.0.0.1"]
    daemon_log = open("twistd.log", "wb")
    server = subprocess.Popen(
        twistd_command() + ["-n", "--pidfile=", "knockserver", *options],
        stdout=daemon_log, stderr=subprocess.STDOUT,
    )
    try:
        try:
            start = wait_for_start(config.audit_path, server)
        except RuntimeError as why:
            print(f"knocker demo: {why}; its log ({work}/twistd.log) ends:\n"
                  f"{_tail('twistd.log')}", file=sys.stderr)
            return 1
        print(f"2. knockserver is up: central port {start['central_port']}, "
              f"{start['pool_size']} pool ports on {start['interface']}")
        knock = subprocess.run(
            [sys.executable, "-m", "knocker.main", "knock", "--knock-file", "demo.knock",
             "--log-file", "client.log",
             "--server", f"tcp:host=127.0.0.1:port={start['central_port']}"],
            capture_output=True, text=True, timeout=60,
        )
        print(f"3. knocker knock exited {knock.returncode}: {(knock.stdout + knock.stderr).strip()}")
        time.sleep(0.2)
        print("4. the audit log:")
        for event in read_audit(config.audit_path):
            print("   " + json.dumps(event))
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=15)
        daemon_log.close()
    said = [line for line in open("twistd.log", encoding="utf-8") if "on-success" in line]
    print("5. the daemon log on the success action:")
    for line in said:
        print("   " + line.rstrip())
    print(f"verdict: {'OPEN' if knock.returncode == 0 else 'not opened'}")
    return knock.returncode
