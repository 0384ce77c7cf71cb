"""
Run the real programs as separate processes: C{twistd knockserver},
C{knocker}.  The repository comes first on PYTHONPATH so the code under
test is this tree's, installed or not.
"""

import json
import os
import signal
import stat
import subprocess
import sys
import time

from twisted.trial.unittest import TestCase

from knocker.admin.demo import twistd_command
from knocker.daemon.audit import read_audit

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def knocker(*args, cwd=None, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "knocker.main", *args],
        cwd=cwd, env=environment(), capture_output=True, text=True, timeout=timeout,
    )


def write_config(path: str, section: str, **keys) -> str:
    if section == "server":
        # The console off unless a test asks for it: daemons started at the
        # same time would otherwise all want the default admin port.
        keys.setdefault("admin", "")
    with open(path, "w") as handle:
        handle.write(f"[{section}]\n")
        for key, value in keys.items():
            handle.write(f"{key.replace('_', '-')} = {value}\n")
    return path


class Daemon:
    """
    C{twistd -n knockserver --config CONFIG} as a child process.
    """

    def __init__(self, config: str, audit_log: str, cwd: str, *extra: str,
                 env: dict[str, str] | None = None, wrapper: tuple[str, ...] = ()):
        self.audit_log = audit_log
        self.log_path = os.path.join(cwd, "twistd.log")
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [*wrapper, *twistd_command(), "-n", "--pidfile=", "knockserver", "--config", config,
             *extra],
            cwd=cwd, env={**environment(), **(env or {})}, stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._starts = self._count_starts()

    def _count_starts(self) -> int:
        if not os.path.exists(self.audit_log):
            return 0
        return sum(1 for e in read_audit(self.audit_log) if e["event"] == "start")

    def wait_ready(self, seconds: float = 30) -> dict:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"daemon exited {self.process.returncode}: {self.log()}")
            if os.path.exists(self.audit_log):
                starts = [e for e in read_audit(self.audit_log) if e["event"] == "start"]
                if len(starts) > self._starts:
                    return starts[-1]
            time.sleep(0.05)
        raise RuntimeError(f"daemon not ready in {seconds}s: {self.log()}")

    def wait_exit(self, seconds: float = 30) -> int:
        return self.process.wait(timeout=seconds)

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def kill9(self) -> None:
        self.process.kill()
        self.process.wait()
        self._log.close()


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that was free a moment ago (for a daemon whose
    central port must stay the same across restarts).
    """
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def connect_refused(port: int, host: str = "127.0.0.1") -> bool:
    """
    Whether a TCP connection to C{host}:C{port} is refused (nothing listens).
    """
    import socket

    try:
        socket.create_connection((host, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


class DaemonCase(TestCase):
    """
    A test with a real C{twistd -n knockserver} on 127.0.0.1 in a temporary
    folder: L{configure}, L{generate}, L{start}, then L{knock} with the real
    C{knocker knock}.  The daemon is stopped (SIGTERM, then SIGKILL) at the
    end whatever happens.
    """

    timeout = 120

    def setUp(self):
        import shutil
        import tempfile

        # not self.mktemp(): under pytest that lands in the working directory
        self.dir = tempfile.mkdtemp(prefix="knocker-daemon-")
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.audit = os.path.join(self.dir, "audit.log")
        self.daemon = None
        self.addCleanup(self._stop_daemon)

    def _stop_daemon(self):
        if self.daemon is not None:
            self.daemon.stop()

    def configure(self, **keys) -> str:
        """
        Write server.conf: the defaults here, C{keys} on top (underscores
        for dashes; C{None} leaves a key out).
        """
        self.success, self.success_out = write_recorder(self.dir, "on-success")
        values = dict(
            central="tcp:0:interface=127.0.0.1", state_dir="state", pool_size=20,
            pool_range="3000-9999", on_success=self.success, audit_log="audit.log",
            knock_window=5, lockout=2,
        )
        values.update(keys)
        self.server_conf = write_config(
            os.path.join(self.dir, "server.conf"), "server",
            **{key: value for key, value in values.items() if value is not None},
        )
        return self.server_conf

    def generate(self, client="alice", knocks=20, ports=4) -> str:
        out = os.path.join(self.dir, client + ".knock")
        done = knocker("generate", client, "--config", self.server_conf, "--knocks", str(knocks),
                       "--ports", str(ports), "-o", out)
        self.assertEqual(done.returncode, 0, done.stderr)
        return out

    def start(self, *extra, env=None) -> Daemon:
        self.daemon = Daemon(self.server_conf, self.audit, self.dir, *extra, env=env)
        self.port = self.daemon.wait_ready()["central_port"]
        return self.daemon

    def knock(self, knock_file, *extra, server=None) -> subprocess.CompletedProcess:
        return knocker("knock", "--server", server or f"tcp:host=127.0.0.1:port={self.port}",
                       "--knock-file", knock_file, "--log-file",
                       os.path.join(self.dir, "client.log"), *extra)

    def assertOpens(self, knock_file, **kwargs) -> None:
        result = self.knock(knock_file, **kwargs)
        self.assertEqual(result.returncode, 0,
                         f"{result.stdout}{result.stderr}\ndaemon:\n{self.daemon.log()[-3000:]}")
        self.assertIn("OPEN", result.stdout)

    def events(self, event=None) -> list[dict]:
        events = read_audit(self.audit) if os.path.exists(self.audit) else []
        return events if event is None else [e for e in events if e["event"] == event]

    def status(self) -> dict:
        import json

        done = knocker("status", "--config", self.server_conf, "--json")
        self.assertEqual(done.returncode, 0, done.stderr)
        return json.loads(done.stdout)


RECORDER = """#!{python}
import json, os, sys
with open({out!r}, "a") as f:
    f.write(json.dumps({{"argv": sys.argv,
        "env": {{k: v for k, v in os.environ.items() if k.startswith("KNOCKER_")}}}}) + "\\n")
sys.exit(int(os.environ.get("RECORDER_EXIT", "0")))
"""


def write_recorder(directory: str, name: str) -> tuple[str, str]:
    script = os.path.join(directory, name)
    out = script + ".jsonl"
    with open(script, "w") as handle:
        handle.write(RECORDER.format(python=sys.executable, out=out))
    os.chmod(script, stat.S_IRWXU)
    return script, out


def read_lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle]
