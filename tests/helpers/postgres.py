"""
A throwaway PostgreSQL cluster for tests: Debian's C{postgresql} package,
C{initdb} and C{pg_ctl} run as the C{postgres} user (which they require),
data directory and unix socket in a temporary directory, no TCP.

One cluster per test class is enough (about a second to start); each test
gets its own database (L{Cluster.new_database}), dropped by the caller's
clean-up.  L{skip_reason} says why none can be had (not root, package
absent), for C{skip}.
"""

import glob
import os
import shutil
import subprocess
import tempfile
import uuid


def _bin() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "a throwaway PostgreSQL cluster needs root (initdb runs as postgres)"
    if _bin() is None:
        return "Debian's postgresql package is not installed (tests/run.sh installs it)"
    if shutil.which("runuser") is None:
        return "runuser (util-linux) is missing"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install '.[postgresql]')"
    return None


def _as_postgres(*argv, check=True, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=check,
                          capture_output=True, text=True, timeout=timeout)


class Cluster:
    """
    A cluster in its own temporary directory; L{start}, L{stop}, L{destroy}.
    """

    def __init__(self, fsync: bool = False, tcp_port: int | None = None):
        self.fsync = fsync  # tests need no durability; a benchmark does
        self.tcp_port = tcp_port  # also listen on 127.0.0.1 at this port
        self.bin = _bin()
        self.root = tempfile.mkdtemp(prefix="knocker-pg-")
        os.chmod(self.root, 0o755)
        self.data = os.path.join(self.root, "data")
        self.socket_dir = os.path.join(self.root, "run")
        os.mkdir(self.socket_dir)
        shutil.chown(self.socket_dir, "postgres", "postgres")
        os.chmod(self.socket_dir, 0o777)
        os.mkdir(self.data, 0o700)
        shutil.chown(self.data, "postgres", "postgres")
        self.log = os.path.join(self.socket_dir, "server.log")
        _as_postgres(os.path.join(self.bin, "initdb"), "-D", self.data, "-A", "trust",
                     "-U", "postgres", "--no-sync", "-E", "UTF8")

    def start(self) -> None:
        _as_postgres(
            os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-l", self.log, "-w",
            "-o", f"-c listen_addresses='{'127.0.0.1' if self.tcp_port else ''}' "
                  f"-c port={self.tcp_port or 5432} -c unix_socket_directories={self.socket_dir} "
                  f"-c fsync={'on' if self.fsync else 'off'} -c max_connections=200",
            "start")

    def stop(self, mode: str = "fast") -> None:
        _as_postgres(os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-m", mode, "-w",
                     "stop", check=False)

    def uri(self, database: str = "postgres") -> str:
        return (f"postgresql:///{database}?host={self.socket_dir}&user=postgres"
                f"&port={self.tcp_port or 5432}")

    def tcp_uri(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.tcp_port}/{database}"

    def new_database(self) -> str:
        name = "t_" + uuid.uuid4().hex[:12]
        self.psql("postgres", f"CREATE DATABASE {name}")
        return name

    def drop_database(self, name: str) -> None:
        self.psql("postgres", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", check=False)

    def psql(self, database: str, sql: str, check=True) -> str:
        return _as_postgres(os.path.join(self.bin, "psql"), "-h", self.socket_dir, "-U",
                            "postgres", "-d", database, "-Atc", sql, check=check).stdout

    def dump(self, database: str) -> str:
        return _as_postgres(os.path.join(self.bin, "pg_dump"), "-h", self.socket_dir, "-U",
                            "postgres", database).stdout

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


_shared: Cluster | None = None


def shared_cluster() -> Cluster:
    """
    One cluster for the whole test run (started at first use, destroyed
    at exit): tests that only need a database of their own share it.
    """
    global _shared
    if _shared is None:
        import atexit

        _shared = Cluster()
        _shared.start()
        atexit.register(_shared.destroy)
    return _shared


def database_for(test) -> str:
    """
    A new database on the shared cluster for C{test} (a trial TestCase),
    dropped at its clean-up; returns its URI.
    """
    cluster = shared_cluster()
    name = cluster.new_database()
    test.addCleanup(cluster.drop_database, name)
    return cluster.uri(name)
