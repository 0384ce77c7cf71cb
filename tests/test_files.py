"""
Private files: written 0600 and atomically, refused when others can read
them (docs/spec.md sections 3 and 7).
"""

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time

from twisted.trial.unittest import SynchronousTestCase

from knocker.files import (
    PrivateFileError,
    ensure_private_dir,
    read_private,
    read_private_identified,
    write_private,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tempdir(case) -> str:
    folder = tempfile.mkdtemp(prefix="knocker-test-")
    case.addCleanup(shutil.rmtree, folder, True)
    return folder


def mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


class WritePrivateTests(SynchronousTestCase):
    def setUp(self):
        self.folder = tempdir(self)
        self.path = os.path.join(self.folder, "alice.knock")

    def test_creates_0600(self):
        write_private(self.path, "secret = x\n")
        self.assertEqual(mode(self.path), 0o600)
        with open(self.path, encoding="utf-8") as handle:
            self.assertEqual(handle.read(), "secret = x\n")

    def test_0600_whatever_the_umask(self):
        old = os.umask(0)
        try:
            write_private(self.path, "x")
        finally:
            os.umask(old)
        self.assertEqual(mode(self.path), 0o600)

    def test_writing_loads_no_tempfile_and_leaves_no_temporary(self):
        """
        A first knock writes FILE.checked through here before it exits:
        importing tempfile would cost it 6-12 ms.  And nothing is left
        beside the file.
        """
        code = ("import sys\nfrom knocker.files import write_private\n"
                f"write_private({self.path!r}, 'x')\n"
                "print(sorted(m for m in ('tempfile', 'random', 'shutil') if m in sys.modules))\n")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": ROOT}, timeout=60)
        self.assertEqual(done.stdout, "[]\n", done.stderr)
        self.assertEqual(os.listdir(self.folder), ["alice.knock"])
        self.assertEqual(mode(self.path), 0o600)

    def test_a_missing_folder_is_named_as_asked(self):
        """
        C{knocker generate --out DIR/x} with no DIR: the error names the
        file asked for, not the temporary one it was to be written through.
        """
        path = os.path.join(self.folder, "missing", "alice.knock")
        error = self.assertRaises(OSError, write_private, path, "x")
        self.assertEqual(error.filename, path)
        self.assertEqual(str(error), f"[Errno 2] No such file or directory: {path!r}")

    def test_utf8(self):
        write_private(self.path, "# caf\u00e9\n")
        with open(self.path, "rb") as handle:
            self.assertEqual(handle.read(), "# caf\u00e9\n".encode("utf-8"))

    def test_replaces_open_file_with_private_one(self):
        """
        An existing world-readable file is replaced by a new 0600 file (a
        new inode), not rewritten in place.
        """
        with open(self.path, "w") as handle:
            handle.write("old contents, much longer than the new ones\n")
        os.chmod(self.path, 0o644)
        before = os.stat(self.path).st_ino
        write_private(self.path, "new\n")
        self.assertEqual(mode(self.path), 0o600)
        self.assertNotEqual(os.stat(self.path).st_ino, before)
        with open(self.path) as handle:
            self.assertEqual(handle.read(), "new\n")

    def test_reader_of_old_file_sees_old_contents(self):
        """
        Atomic replacement: a reader that opened the old file keeps reading
        the whole old file.
        """
        write_private(self.path, "old\n")
        with open(self.path) as reader:
            write_private(self.path, "new\n")
            self.assertEqual(reader.read(), "old\n")
        with open(self.path) as handle:
            self.assertEqual(handle.read(), "new\n")

    def test_no_temporary_files_left(self):
        write_private(self.path, "one\n")
        write_private(self.path, "two\n")
        self.assertEqual(os.listdir(self.folder), ["alice.knock"])

    def test_failed_write_keeps_old_file(self):
        """
        A write that fails half way leaves the old file whole and no
        temporary file behind.
        """
        write_private(self.path, "old\n")
        # A lone surrogate cannot be encoded as UTF-8: the write fails.
        self.assertRaises(UnicodeEncodeError, write_private, self.path, "new\n\udc80")
        with open(self.path) as handle:
            self.assertEqual(handle.read(), "old\n")
        self.assertEqual(os.listdir(self.folder), ["alice.knock"])

    def test_relative_path(self):
        cwd = os.getcwd()
        os.chdir(self.folder)
        self.addCleanup(os.chdir, cwd)
        write_private("bob.knock", "x")
        self.assertEqual(mode(os.path.join(self.folder, "bob.knock")), 0o600)

    def test_round_trip(self):
        write_private(self.path, "version = 1\n")
        self.assertEqual(read_private(self.path), "version = 1\n")


class ReadPrivateTests(SynchronousTestCase):
    def setUp(self):
        self.folder = tempdir(self)
        self.path = os.path.join(self.folder, "alice.knock")
        with open(self.path, "w", encoding="utf-8") as handle:
            handle.write("version = 1\nclient = alice\n")

    def test_accepts_0600(self):
        os.chmod(self.path, 0o600)
        self.assertEqual(read_private(self.path), "version = 1\nclient = alice\n")

    def test_accepts_0400(self):
        os.chmod(self.path, 0o400)
        self.assertEqual(read_private(self.path), "version = 1\nclient = alice\n")

    def refused(self, file_mode):
        os.chmod(self.path, file_mode)
        error = self.assertRaises(PrivateFileError, read_private, self.path)
        self.assertIn(self.path, str(error))
        self.assertIn(f"{file_mode:04o}", str(error))

    def test_refuses_0644(self):
        self.refused(0o644)

    def test_refuses_0640(self):
        self.refused(0o640)

    def test_refuses_0604(self):
        self.refused(0o604)

    def test_refuses_group_write_only(self):
        self.refused(0o620)

    def test_refuses_symlink(self):
        """
        A symlink is refused even when it points at a private file.
        """
        os.chmod(self.path, 0o600)
        link = os.path.join(self.folder, "link.knock")
        os.symlink(self.path, link)
        error = self.assertRaises((OSError, PrivateFileError), read_private, link)
        self.assertIn(link, str(error))

    def test_refuses_directory(self):
        folder = os.path.join(self.folder, "dir.knock")
        os.mkdir(folder, 0o700)
        error = self.assertRaises(PrivateFileError, read_private, folder)
        self.assertIn(folder, str(error))

    def test_refused_directory_leaks_no_descriptor(self):
        """
        Refusing a directory closes what was opened (Linux: /proc/self/fd).
        """
        folder = os.path.join(self.folder, "dir.knock")
        os.mkdir(folder, 0o700)
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(5):
            self.assertRaises((OSError, PrivateFileError), read_private, folder)
        self.assertEqual(len(os.listdir("/proc/self/fd")), before)

    def test_refuses_fifo_without_hanging(self):
        """
        A named pipe (no writer) is refused at once, not waited on: a FIFO
        dropped where a portknock file belongs must not freeze the server.
        Run in a child process so a hang fails the test instead of the run.
        """
        fifo = os.path.join(self.folder, "pipe.knock")
        os.mkfifo(fifo, 0o600)
        code = (
            "import sys\n"
            "from knocker.files import PrivateFileError, read_private\n"
            "try:\n"
            "    read_private(sys.argv[1])\n"
            "except PrivateFileError as e:\n"
            "    print(e)\n"
            "    sys.exit(3)\n"
        )
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=root)
        try:
            done = subprocess.run(
                [sys.executable, "-c", code, fifo],
                env=env,
                capture_output=True,
                text=True,
                timeout=10,
            )
        except subprocess.TimeoutExpired:
            self.fail(f"read_private({fifo!r}) still blocked after 10 seconds")
        self.assertEqual(done.returncode, 3, done.stderr)
        self.assertIn(fifo, done.stdout)

    def test_missing(self):
        self.assertRaises(FileNotFoundError, read_private, os.path.join(self.folder, "none"))

    def test_limit(self):
        os.chmod(self.path, 0o600)
        self.assertEqual(read_private(self.path, 11), "version = 1")

    def test_limit_cuts_multibyte_character(self):
        """
        A limit that falls inside a UTF-8 character does not fail.
        """
        write_private(self.path, "# \u00e9t\u00e9\n")
        self.assertEqual(read_private(self.path, 3), "# ")

    def test_not_utf8(self):
        with open(self.path, "wb") as handle:
            handle.write(b"client = \xff\n")
        os.chmod(self.path, 0o600)
        error = self.assertRaises(PrivateFileError, read_private, self.path)
        self.assertIn(self.path, str(error))

    def test_error_is_value_error(self):
        self.assertTrue(issubclass(PrivateFileError, ValueError))


class IdentifiedReadTests(SynchronousTestCase):
    """
    read_private_identified: the text, and an identity only for a file
    that did not change while it was read, nor just before.
    """

    def setUp(self):
        self.path = os.path.join(tempdir(self), "alice.knock")
        write_private(self.path, "version = 1\n")
        self.later = lambda: time.time() + 60

    def test_a_settled_file_has_its_stat_as_identity(self):
        text, identity = read_private_identified(self.path, now=self.later)
        info = os.stat(self.path)
        self.assertEqual(text, "version = 1\n")
        self.assertEqual(identity, f"file {info.st_dev} {info.st_ino} {info.st_size} "
                                   f"{info.st_mtime_ns} {info.st_ctime_ns}")

    def test_a_file_just_written_has_none(self):
        self.assertIsNone(read_private_identified(self.path)[1])

    def test_a_file_changed_while_it_is_read_has_none(self):
        """
        The identity must be that of the text read: a write between the
        check of the file and its read gives none, not the one before.
        """
        from knocker import files

        real = files._open_private

        def opened_then_written(path):
            opened = real(path)
            time.sleep(0.05)  # past the tick of the file system's clock
            with open(path, "r+") as handle:
                handle.write("version = 2\n")
            return opened

        self.patch(files, "_open_private", opened_then_written)
        text, identity = read_private_identified(self.path, now=self.later)
        self.assertEqual(text, "version = 2\n")
        self.assertIsNone(identity)

    def test_refused_as_read_private_refuses(self):
        os.chmod(self.path, 0o644)
        self.assertRaises(PrivateFileError, read_private_identified, self.path)


class PrivateDirTests(SynchronousTestCase):
    def test_creates_0700_with_parents(self):
        path = os.path.join(tempdir(self), "a", "b")
        ensure_private_dir(path)
        self.assertTrue(os.path.isdir(path))
        self.assertEqual(mode(path), 0o700)

    def test_existing(self):
        path = tempdir(self)
        ensure_private_dir(path)
        self.assertTrue(os.path.isdir(path))
