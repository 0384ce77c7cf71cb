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


def run_demo() -> int:
    work = tempfile.mkdtemp(prefix="knocker-demo-")
    os.chdir(work)
    config = parse_server_config()
    print(f"knocker demo in {work}")
    done = generate_client(config, "demo", 1000, 6, "demo.knock")
    print(f"1. generated demo.knock: {done.pool_size}-port pool, keyspace {done.ordered:.3g} ordered")
    daemon_log = open("twistd.log", "wb")
    server = subprocess.Popen(
        # (no console: the tour is the knock, and a daemon already on the
        # admin port must not stop it)
        twistd_command() + ["-n", "--pidfile=", "knockserver", "--admin="],
        stdout=daemon_log, stderr=subprocess.STDOUT,
    )
    try:
        start = wait_for_start(config.audit_path, server)
        print(f"2. knockserver is up: central port {start['central_port']}, "
              f"{start['pool_size']} pool ports on {start['interface']}")
        knock = subprocess.run(
            [sys.executable, "-m", "knocker.main", "knock", "--knock-file", "demo.knock",
             "--log-file", "client.log"],
            capture_output=True, text=True, timeout=60,
        )
        print(f"3. knocker knock exited {knock.returncode}: {(knock.stdout + knock.stderr).strip()}")
        time.sleep(0.2)
        print("4. the audit log:")
        for event in read_audit(config.audit_path):
            print("   " + json.dumps(event))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=15)
        daemon_log.close()
    said = [line for line in open("twistd.log", encoding="utf-8") if "on-success" in line]
    print("5. the daemon log on the success action:")
    for line in said:
        print("   " + line.rstrip())
    print(f"verdict: {'OPEN' if knock.returncode == 0 else 'not opened'}")
    return knock.returncode
