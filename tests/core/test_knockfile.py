"""
The portknock file (docs/spec.md section 3): generate, format, parse, and every
refusal named with the file and the line.
"""

from datetime import datetime, timedelta, timezone
from random import Random

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from knocker.core.knockfile import (
    HEADER_LIMIT,
    KnockFile,
    KnockFileError,
    KnockFileText,
    knock_section,
    knocks_at_a_glance,
    parse_header,
    parse_knockfile,
)
from knocker.core.knockgen import format_knockfile, generate
from knocker.core.pool import choose_pool

NAME = "/etc/knocker/alice.knock"
SECRET = bytes(range(32))
SECRET_HEX = SECRET.hex()
NOW = datetime(2026, 11, 25, 10, 0, 0, tzinfo=timezone.utc)
POOL = tuple(range(10000, 10100))

# Lines 1-5 are the header; line 6 is blank; knocks start on line 7.
HEADER = [
    "version = 1",
    "client = alice",
    f"secret = {SECRET_HEX}",
    "ports-per-knock = 3",
    "created = 2026-11-25T10:00:00Z",
    "",
]
KNOCKS = [
    "1 10001,10002,10003",
    "2 10004,10005,10006",
    "3 10007,10008,10009",
]


def text(header=None, knocks=None, ending="\n"):
    lines = (HEADER if header is None else header) + (KNOCKS if knocks is None else knocks)
    return ending.join(lines) + ending


def make(seed=1, knocks=50, ports=6, client="alice"):
    return generate(client, POOL, knocks, ports, Random(seed), SECRET, NOW)


class GenerateTests(SynchronousTestCase):
    def test_round_trip(self):
        """
        A generated file, written out and read back, is the same file.
        """
        kf = make()
        formatted = format_knockfile(kf)
        self.assertEqual(parse_knockfile(formatted, NAME), kf)

    def test_round_trip_many_seeds(self):
        for seed in range(20):
            kf = make(seed=seed, knocks=5, ports=1 + seed % 8)
            self.assertEqual(parse_knockfile(format_knockfile(kf), NAME), kf)

    def test_generated_content(self):
        kf = make(knocks=40, ports=6)
        self.assertEqual(kf.client, "alice")
        self.assertEqual(kf.secret, SECRET)
        self.assertEqual(kf.ports_per_knock, 6)
        self.assertEqual(kf.created, "2026-11-25T10:00:00Z")
        self.assertEqual(len(kf.knocks), 40)
        for ports in kf.knocks:
            self.assertEqual(len(ports), 6)
            self.assertEqual(len(set(ports)), 6)
            self.assertTrue(set(ports) <= set(POOL))

    def test_created_is_utc(self):
        """
        A time given in another zone is written as UTC with a Z.
        """
        plus2 = timezone(timedelta(hours=2))
        kf = generate("alice", POOL, 1, 3, Random(1), SECRET, datetime(2026, 1, 1, 12, tzinfo=plus2))
        self.assertEqual(kf.created, "2026-01-01T10:00:00Z")

    def test_same_seed_same_file(self):
        self.assertEqual(make(seed=7), make(seed=7))
        self.assertNotEqual(make(seed=7).knocks, make(seed=8).knocks)

    def test_knock_numbering(self):
        """
        knock(i) is the i-th knock line, numbered from 1.
        """
        kf = make(knocks=3)
        formatted = format_knockfile(kf)
        knock_lines = [line for line in formatted.splitlines() if line[:1].isdigit()]
        self.assertEqual(
            knock_lines, [f"{i} {','.join(map(str, kf.knock(i)))}" for i in (1, 2, 3)]
        )

    def test_file_format(self):
        """
        The header lines of docs/spec.md section 3, with the secret as lowercase hex.
        """
        formatted = format_knockfile(make())
        lines = formatted.splitlines()
        self.assertIn("version = 1", lines)
        self.assertIn("client = alice", lines)
        self.assertIn(f"secret = {SECRET_HEX}", lines)
        self.assertIn("ports-per-knock = 6", lines)
        self.assertIn("created = 2026-11-25T10:00:00Z", lines)
        self.assertTrue(formatted.endswith("\n"))

    def test_real_pool(self):
        pool = choose_pool(100, 10000, 32000, Random(3))
        kf = generate("bob.example_1-x", pool, 1000, 6, Random(4), SECRET, NOW)
        self.assertEqual(parse_knockfile(format_knockfile(kf), NAME), kf)

    def test_generate_refuses(self):
        for args in [
            ("Alice", POOL, 1, 6, SECRET),  # bad client id
            ("alice", POOL, 1, 6, SECRET[:31]),  # short secret
            ("alice", POOL, 0, 6, SECRET),  # no knocks
            ("alice", POOL, 1, 0, SECRET),  # no ports
            ("alice", POOL[:5], 1, 6, SECRET),  # more ports than the pool
        ]:
            client, pool, knocks, ports, secret = args
            with self.assertRaises(ValueError, msg=repr(args)):
                generate(client, pool, knocks, ports, Random(1), secret, NOW)


class ParseTests(SynchronousTestCase):
    def test_parse(self):
        kf = parse_knockfile(text(), NAME)
        self.assertEqual(
            kf,
            KnockFile(
                client="alice",
                secret=SECRET,
                ports_per_knock=3,
                created="2026-11-25T10:00:00Z",
                knocks=((10001, 10002, 10003), (10004, 10005, 10006), (10007, 10008, 10009)),
            ),
        )
        self.assertEqual(kf.knock(2), (10004, 10005, 10006))

    def test_crlf(self):
        self.assertEqual(parse_knockfile(text(ending="\r\n"), NAME), parse_knockfile(text(), NAME))

    def test_no_final_newline(self):
        self.assertEqual(
            parse_knockfile(text().rstrip("\n"), NAME), parse_knockfile(text(), NAME)
        )

    def test_comments_and_blank_lines(self):
        header = ["# knocker portknock file", "", "# secret below"] + HEADER[:3] + [
            "",
            "   ",
            "# more",
        ] + HEADER[3:]
        knocks = [KNOCKS[0], "", "# between knocks", KNOCKS[1], "", KNOCKS[2], "# end", ""]
        self.assertEqual(
            parse_knockfile(text(header, knocks), NAME), parse_knockfile(text(), NAME)
        )

    def test_spaces_around_equals(self):
        header = ["version=1", "client  =  alice"] + HEADER[2:]
        self.assertEqual(parse_knockfile(text(header), NAME).client, "alice")

    def test_header_order_free(self):
        header = list(reversed(HEADER[:5])) + [""]
        self.assertEqual(parse_knockfile(text(header), NAME), parse_knockfile(text(), NAME))


class HeaderOnlyTests(SynchronousTestCase):
    def test_parse_header(self):
        kf = parse_header(text(), NAME)
        self.assertEqual(kf.client, "alice")
        self.assertEqual(kf.secret, SECRET)
        self.assertEqual(kf.ports_per_knock, 3)
        self.assertEqual(kf.created, "2026-11-25T10:00:00Z")
        self.assertEqual(kf.knocks, ())

    def test_knocks_not_read(self):
        """
        parse_header stops at the first knock: a damaged knock further down
        does not matter to it (the whole-file parse catches it).
        """
        broken = text(knocks=[KNOCKS[0], "2 1,2"])
        self.assertEqual(parse_header(broken, NAME).secret, SECRET)
        self.assertRaises(KnockFileError, parse_knockfile, broken, NAME)

    def test_header_without_knocks(self):
        """
        A text holding only the header (say, the first bytes of a file)
        still gives the secret and the knock size.
        """
        kf = parse_header(text(knocks=[]), NAME)
        self.assertEqual(kf.secret, SECRET)
        self.assertEqual(kf.ports_per_knock, 3)

    def test_bad_header_refused(self):
        header = HEADER[:]
        header[2] = "secret = abc"
        error = self.assertRaises(KnockFileError, parse_header, text(header), NAME)
        self.assertIn(NAME, str(error))
        self.assertIn("line 3", str(error))

    def test_missing_key_refused(self):
        header = HEADER[:2] + HEADER[3:]  # no secret; first knock on line 6
        error = self.assertRaises(KnockFileError, parse_header, text(header), NAME)
        self.assertIn(NAME, str(error))
        self.assertIn("secret", str(error))


    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.sampled_from(HEADER + KNOCKS + [
        "# a comment", "   ", "\r", "secret = abc", "client = bob", "version = 2",
        "colour = red", "1 10001,10002", "ports-per-knock = 3\r", "",
    ]), max_size=14), st.sampled_from(["\n", "\r\n", ""]))
    def test_same_header_as_the_whole_parse(self, lines, ending):
        """
        The header read alone (split only as far as the first knock) says
        what the whole parse says of it: the same header, or the same
        refusal when the header is at fault.
        """
        content = ending.join(lines) + ending
        try:
            whole = parse_knockfile(content, NAME)
        except KnockFileError as error:
            whole = error
        try:
            alone = parse_header(content, NAME)
        except KnockFileError as error:
            self.assertIsInstance(whole, KnockFileError)
            self.assertEqual(str(error), str(whole))
            return
        if isinstance(whole, KnockFile):
            self.assertEqual(alone, whole.replace(knocks=()))
        else:  # the knocks are at fault, or missing: only the whole parse reads them
            self.assertTrue("line" in str(whole) or "no knocks" in str(whole), str(whole))


def padded(size, filler="x", comment_first=False):
    """
    A good file whose first knock line begins at byte C{size}: a comment
    of C{filler} characters fills the header out, after the header's keys
    or before them.
    """
    head = "\n".join(HEADER) + "\n"
    room = size - len(head.encode()) - len("# \n")
    unit = len(filler.encode())
    comment = "# " + filler * (room // unit) + "x" * (room % unit) + "\n"
    content = (comment + head if comment_first else head + comment) + "\n".join(KNOCKS) + "\n"
    assert content.encode().index(KNOCKS[0].encode()) == size
    return content


class HeaderLimitTests(SynchronousTestCase):
    """
    The knocks begin within the first HEADER_LIMIT bytes: the daemon reads
    no more than that to index a client, and every reader holds a file to
    the same rule, naming it.
    """

    def test_last_byte_that_may_begin_the_knocks(self):
        content = padded(HEADER_LIMIT - 1)
        self.assertEqual(len(parse_knockfile(content, NAME).knocks), 3)
        self.assertEqual(parse_header(content, NAME).secret, SECRET)

    def test_knocks_beginning_at_the_limit_refused(self):
        content = padded(HEADER_LIMIT)
        for parse in (parse_knockfile, parse_header):
            error = self.assertRaises(KnockFileError, parse, content, NAME)
            self.assertIn(NAME, str(error))
            self.assertIn(f"within the first {HEADER_LIMIT} bytes", str(error))
            self.assertIn("line 8", str(error))

    def test_keys_after_a_long_comment(self):
        """
        A long comment before the keys: the daemon's read of the first
        HEADER_LIMIT bytes holds no key, and says why, not that keys are
        missing from a file that has them all.
        """
        start = padded(HEADER_LIMIT + 500, comment_first=True).encode()[:HEADER_LIMIT]
        error = self.assertRaises(KnockFileError, parse_header, start.decode(), NAME)
        self.assertIn(f"within the first {HEADER_LIMIT} bytes", str(error))

    @settings(max_examples=300, deadline=None)
    @given(st.integers(HEADER_LIMIT - 12, HEADER_LIMIT + 12),
           st.sampled_from(["x", "\u00e9", "\u20ac", "\U0001f511"]), st.booleans())
    def test_the_daemons_read_agrees_with_the_whole_parse(self, size, filler, comment_first):
        """
        The header parsed from the file's first HEADER_LIMIT bytes (decoded
        leaving out a character cut in two, as the daemon reads it) is
        refused exactly when the whole file is, whatever the comments hold
        and wherever they are.
        """
        content = padded(size, filler, comment_first)
        try:
            whole = parse_knockfile(content, NAME)
        except KnockFileError as error:
            whole = error
        start = content.encode()[:HEADER_LIMIT].decode("utf-8", "ignore")
        try:
            alone = parse_header(start, NAME)
        except KnockFileError as error:
            self.assertIsInstance(whole, KnockFileError)
            self.assertIn(f"within the first {HEADER_LIMIT} bytes", str(error))
            return
        self.assertIsInstance(whole, KnockFile, f"first knock at byte {size}")
        self.assertEqual(alone, whole.replace(knocks=()))


class GlanceTests(SynchronousTestCase):
    """
    L{knocks_at_a_glance}, the client's fast whole-file check, must never
    pass a file the line-by-line parser refuses.
    """

    def section(self, kf):
        return knock_section(format_knockfile(kf))

    def test_every_generated_file_passes(self):
        for seed, ports in [(1, 6), (2, 1), (3, 64), (4, 2)]:
            kf = generate("alice", tuple(range(10000, 10200)), 300, ports, Random(seed),
                          SECRET, NOW)
            self.assertTrue(knocks_at_a_glance(self.section(kf), ports), (seed, ports))

    def test_each_rule_broken(self):
        good = "1 10001,10002,10003\n2 10004,10005,10006\n3 10007,10008,10009\n"
        self.assertTrue(knocks_at_a_glance(good, 3))
        for broken in [
            good.replace("10002", "10001"),            # repeated port
            good.replace("10002", "010001"),           # the same, with a leading zero
            good.replace("10002", "0"),                # port 0
            good.replace("10002", "65536"),            # port too high
            good.replace("2 ", "4 "),                  # numbers not consecutive
            good.replace("\n2 ", "\n1 "),              # a number repeated
            good.replace(",10003", ""),                # too few ports
            good.replace("10003", "10003,10010"),      # too many
            good.replace("10003\n2 ", "10003,2 "),     # two knocks run together
            good.replace(",10006", ",,10006"),         # an empty port
            good.replace("10006\n", "10006\n\n"),     # a blank line (valid, but not canonical)
            good.replace("\n", "\r\n"),               # CRLF (likewise)
            good[:-1],                                 # no final newline
            good.replace("10001", "10O01"),            # a letter
            good.replace("10002", "1" * 5000),         # past int()'s 4,300 digits
            "",
        ]:
            self.assertFalse(knocks_at_a_glance(broken, 3), broken)

    @settings(max_examples=500, deadline=None)
    @given(st.lists(st.tuples(st.integers(0, 300), st.sampled_from(
        ["", "0", "1", "9", ",", " ", "\n", "\r", "#", "=", " #", "65536", "10001", "x"])),
        min_size=1, max_size=4))
    def test_never_passes_what_the_parser_refuses(self, edits):
        """
        Random edits anywhere (the header too, where the knocks' start is
        found): whenever the header parses and the fast check passes, the
        line-by-line parser accepts the file.
        """
        content = text(knocks=KNOCKS + ["4 10011,10012,10013"])
        for position, insert in edits:
            position = min(position, len(content))
            content = content[:position] + insert + content[position + 1:]
        try:
            size = parse_header(content, NAME).ports_per_knock
        except KnockFileError:
            return
        if knocks_at_a_glance(knock_section(content), size):
            parse_knockfile(content, NAME)  # must not raise

    def test_an_indented_hash_line_is_not_a_comment(self):
        content = text(header=HEADER[:5] + ["  # not a comment to the parser"])
        self.assertRaises(KnockFileError, parse_knockfile, content, NAME)
        self.assertFalse(knocks_at_a_glance(knock_section(content), 3))


class RefusalTests(SynchronousTestCase):
    """
    Each broken file is refused, naming the file and the offending line.
    """

    def refused(self, content, line, *words):
        error = self.assertRaises(KnockFileError, parse_knockfile, content, NAME)
        message = str(error)
        self.assertIn(NAME, message)
        if line is not None:
            self.assertIn(f"line {line}:", message)
        for word in words:
            self.assertIn(word, message)
        # The client's check before knocking refuses it with the same words.
        client = self.assertRaises(KnockFileError, lambda: KnockFileText(content, NAME).check())
        self.assertEqual(str(client), message)
        return message

    def with_header_line(self, number, replacement):
        header = HEADER[:]
        header[number - 1] = replacement
        return text(header)

    def with_knock_line(self, number, replacement):
        """
        Replace knock line C{number} (1-3, on file lines 7-9).
        """
        knocks = KNOCKS[:]
        knocks[number - 1] = replacement
        return text(knocks=knocks)

    def test_error_is_value_error(self):
        self.assertTrue(issubclass(KnockFileError, ValueError))

    def test_unknown_key(self):
        self.refused(self.with_header_line(4, "ports-per-nock = 3"), 4, "ports-per-nock")

    def test_duplicate_key(self):
        header = HEADER[:5] + ["client = bob", ""]
        self.refused(text(header), 6, "client")

    def test_missing_key(self):
        header = HEADER[:1] + HEADER[2:]  # no client: knocks begin on line 6
        self.refused(text(header), 6, "client")

    def test_each_key_missing(self):
        for drop in range(5):
            header = HEADER[:drop] + HEADER[drop + 1 :]
            key = HEADER[drop].split(" =")[0]
            self.refused(text(header), 6, key)

    def test_only_header(self):
        self.refused(text(knocks=[]), None, "no knocks")

    def test_empty_file(self):
        self.refused("", None)

    def test_only_comments(self):
        self.refused("# nothing here\n\n", None)

    def test_bad_version(self):
        self.refused(self.with_header_line(1, "version = 2"), 1, "version")

    def test_bad_version_text(self):
        self.refused(self.with_header_line(1, "version = one"), 1, "version")

    def test_bad_client_id(self):
        for bad in ["Alice", "-alice", "al ice", "", "a" * 65, "alice!", "ålice"]:
            self.refused(self.with_header_line(2, f"client = {bad}"), 2, "client")

    def test_good_client_ids(self):
        for good in ["a", "0", "a" * 64, "bob.example_1-x"]:
            kf = parse_knockfile(self.with_header_line(2, f"client = {good}"), NAME)
            self.assertEqual(kf.client, good)

    def test_short_secret(self):
        self.refused(self.with_header_line(3, f"secret = {SECRET_HEX[:62]}"), 3, "secret")

    def test_long_secret(self):
        self.refused(self.with_header_line(3, f"secret = {SECRET_HEX}00"), 3, "secret")

    def test_uppercase_secret(self):
        self.refused(self.with_header_line(3, f"secret = {SECRET_HEX.upper()}"), 3, "secret")

    def test_non_hex_secret(self):
        self.refused(self.with_header_line(3, "secret = " + "g" * 64), 3, "secret")

    def test_bad_ports_per_knock(self):
        for bad in ["0", "-1", "x", "65", "3.0", ""]:
            self.refused(self.with_header_line(4, f"ports-per-knock = {bad}"), 4, "ports-per-knock")

    def test_bad_created(self):
        self.refused(self.with_header_line(5, "created = yesterday"), 5, "created")

    def test_header_after_knocks(self):
        knocks = KNOCKS[:2] + ["client = bob"] + KNOCKS[2:]
        self.refused(text(knocks=knocks), 9, "header")

    def test_too_few_ports(self):
        self.refused(self.with_knock_line(2, "2 10004,10005"), 8, "ports-per-knock")

    def test_too_many_ports(self):
        self.refused(self.with_knock_line(3, "3 10007,10008,10009,10010"), 9, "ports-per-knock")

    def test_repeated_port(self):
        self.refused(self.with_knock_line(2, "2 10004,10005,10004"), 8, "repeated")

    def test_port_zero(self):
        self.refused(self.with_knock_line(1, "1 0,10002,10003"), 7, "'0'")

    def test_port_65536(self):
        self.refused(self.with_knock_line(2, "2 10004,65536,10006"), 8, "65536")

    def test_port_65535_and_1_accepted(self):
        kf = parse_knockfile(self.with_knock_line(2, "2 1,65535,10006"), NAME)
        self.assertEqual(kf.knock(2), (1, 65535, 10006))

    def test_port_not_a_number(self):
        self.refused(self.with_knock_line(3, "3 10007,http,10009"), 9, "http")

    def test_port_negative(self):
        self.refused(self.with_knock_line(1, "1 10001,-10002,10003"), 7, "-10002")

    def test_port_empty(self):
        self.refused(self.with_knock_line(1, "1 10001,,10003"), 7)

    def test_port_with_leading_zeros_past_five_digits_still_parses(self):
        # As it always has, and as the client's fast glance takes it.
        content = self.with_knock_line(1, "1 00010001,10002,10003")
        self.assertEqual(parse_knockfile(content, NAME).knock(1), (10001, 10002, 10003))
        self.assertTrue(knocks_at_a_glance(knock_section(content), 3))

    def test_port_of_thousands_of_digits(self):
        # Past Python's limit for int() (4,300 digits): still the file's error.
        self.refused(self.with_knock_line(1, "1 10001," + "9" * 5000 + ",10003"), 7)

    def test_port_with_spaces(self):
        self.refused(self.with_knock_line(1, "1 10001, 10002,10003"), 7)

    def test_port_non_ascii_digits(self):
        self.refused(self.with_knock_line(1, "1 10001,\u0661\u0662,10003"), 7)

    def test_missing_knock_number(self):
        knocks = [KNOCKS[0], KNOCKS[2]]  # 1 then 3
        self.refused(text(knocks=knocks), 8, "3", "2")

    def test_out_of_order_knock_numbers(self):
        knocks = [KNOCKS[1], KNOCKS[0], KNOCKS[2]]
        self.refused(text(knocks=knocks), 7, "2", "1")

    def test_repeated_knock_number(self):
        knocks = [KNOCKS[0], KNOCKS[0]]
        self.refused(text(knocks=knocks), 8)

    def test_numbers_start_at_one(self):
        knocks = ["0 10001,10002,10003"]
        self.refused(text(knocks=knocks), 7)

    def test_knock_number_not_a_number(self):
        self.refused(self.with_knock_line(2, "two 10004,10005,10006"), 8)

    def test_knock_without_ports(self):
        self.refused(self.with_knock_line(2, "2"), 8)

    def test_line_numbers_count_crlf_comments_and_blanks(self):
        """
        Line numbers are those an editor shows, whatever the line endings
        and however many comments come first.
        """
        header = ["# a comment", ""] + HEADER  # knocks on lines 9-11
        knocks = KNOCKS[:2] + ["3 10007,10008,10007"]
        self.refused(text(header, knocks, ending="\r\n"), 11, "repeated")


class GenerateBoundsTests(SynchronousTestCase):
    def test_generate_refuses_what_parse_would_refuse(self):
        import random
        from datetime import datetime, timezone

        from knocker.core.knockgen import generate

        pool = tuple(range(1000, 1200))
        now = datetime(2026, 11, 25, tzinfo=timezone.utc)
        for ports, knocks in ((65, 10), (0, 10), (6, 0), (6, 1_000_001)):
            self.assertRaises(ValueError, generate, "alice", pool, knocks, ports,
                              random.Random(1), b"s" * 32, now)
        generate("alice", pool, 3, 64, random.Random(1), b"s" * 32, now)
