"""
Run the real programs as separate processes: C{twistd knockserver},
C{knocker}.  The repository comes first on PYTHONPATH so the code under
test is this tree's, installed or not.
"""

import os
import signal
import subprocess
import sys
import time

from knocker.audit import read_audit
from knocker.demo import twistd_command

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    with open(path, "w") as handle:
        handle.write(f"[{section}]\n")
        for key, value in keys.items():
            handle.write(f"{key.replace('_', '-')} = {value}\n")
    return path


class Daemon:
    """
    C{twistd -n knockserver --config CONFIG} as a child process.
    """

    def __init__(self, config: str, audit_log: str, cwd: str, *extra: str):
        self.audit_log = audit_log
        self.log_path = os.path.join(cwd, "twistd.log")
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            twistd_command() + ["-n", "--pidfile=", "knockserver", "--config", config, *extra],
            cwd=cwd, env=environment(), stdout=self._log, stderr=subprocess.STDOUT,
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
