"""
The invitation code: its word list and its format.
"""

from unittest import TestCase

from knocker.enrol.words import WORDS, CodeError, format_code, new_words, parse_code


class WordListTests(TestCase):
    def test_a_few_hundred_plain_words(self):
        self.assertGreaterEqual(len(WORDS), 256)
        self.assertEqual(len(set(WORDS)), len(WORDS), "no word twice")
        for word in WORDS:
            self.assertTrue(word.isascii() and word.isalpha() and word.islower(), word)
            self.assertTrue(3 <= len(word) <= 9, word)

    def test_new_words_are_from_the_list(self):
        seen = set()
        for _ in range(200):
            words = new_words()
            drawn = words.split("-")
            self.assertEqual(len(drawn), 3, "three words: 260^3, about 24 bits")
            for word in drawn:
                self.assertIn(word, WORDS)
            seen.add(words)
        self.assertGreater(len(seen), 190, "drawn at random")


class CodeTests(TestCase):
    def test_round_trip(self):
        self.assertEqual(format_code(7, "crossover-clockwork-lantern"),
                         "7-crossover-clockwork-lantern")
        self.assertEqual(parse_code("7-crossover-clockwork-lantern"),
                         (7, "crossover-clockwork-lantern"))

    def test_a_two_word_code_of_an_older_invite_still_parses(self):
        # An invitation made before codes had three words can still be used.
        self.assertEqual(parse_code("7-crossover-clockwork"), (7, "crossover-clockwork"))

    def test_forgiving_of_how_a_person_types(self):
        self.assertEqual(parse_code("  7 Crossover CLOCKWORK lantern\n"),
                         (7, "crossover-clockwork-lantern"))

    def test_spaces_in_a_row_are_one(self):
        self.assertEqual(parse_code("7  crossover \t clockwork   lantern"),
                         (7, "crossover-clockwork-lantern"))

    def test_a_word_missing_or_added_is_said_before_any_try(self):
        for code in ("7-crossover", "7-crossover-clockwork-lantern-lantern"):
            with self.subTest(code=code):
                with self.assertRaises(CodeError) as caught:
                    parse_code(code)
                self.assertIn("3 words after its number", str(caught.exception))

    def test_a_number_past_int_limits_is_the_codes_error(self):
        for slot in ("9" * 5000, "\u00b2", "\u0661\u0662"):
            with self.subTest(slot=slot[:10]):
                with self.assertRaises(CodeError) as caught:
                    parse_code(slot + "-crossover-clockwork")
                self.assertIn("starts with its number", str(caught.exception))

    def test_refused(self):
        for code in ("", "7", "7-", "crossover-clockwork", "0-crossover-clockwork",
                     "07-crossover-clockwork", "7-crossover-clockworks", "7--crossover",
                     "-7-crossover-clockwork", "1234567-crossover-clockwork", "x-crossover"):
            with self.subTest(code=code):
                self.assertRaises(CodeError, parse_code, code)

    def test_error_is_a_value_error(self):
        self.assertTrue(issubclass(CodeError, ValueError), "the CLI's usage error, exit 2")
