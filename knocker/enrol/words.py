"""
The invitation code's word list and the code's format:
C{SLOT-WORD-WORD-WORD}, e.g. C{417-crossover-clockwork-lantern}, easy to read
aloud over the phone.

260 plain English words of 3 to 9 lowercase letters; three words give
260^3 (about 17.6 million, 24 bits), and an invitation allows 3 guesses
before it is void, so an online guesser wins with odds of about 1 in 5.9
million (see docs/protocol.md).  The slot adds little: it is a small
number, guessable when few invitations are open.
"""

import secrets

WORDS = tuple("""
acorn admiral almond amber anchor antler apple apricot arcade arrow aspen
atlas attic autumn avocado badger bagel bakery balcony bamboo banjo barley
basket beacon beaver bicycle biscuit blanket blossom bluebell bonfire
bramble breeze brick bridge bronze bubble bucket buffalo butter cabin
cactus camera canal candle canoe canyon caramel carpet carrot castle
cedar cellar chalk cherry chimney cider cinnamon circus clockwork clover
cobalt coconut comet compass copper coral cotton cowboy coyote crayon
cricket crossover crystal cupboard curtain cypress daisy dancer harvest
delta desert diamond dolphin domino donkey dragon drum eagle echo
eclipse elbow ember emerald engine falcon feather fern ferry fiddle
firefly flannel flute forest fossil fountain fox galaxy garden garlic
gazelle geyser ginger glacier goblet granite grape gravel guitar gypsum
hammock harbor hazel hedgehog helmet heron hickory honey horizon hornet
iceberg igloo indigo island ivory jacket jaguar jasmine jelly jigsaw
journey juniper kayak kettle kiwi ladder lagoon lantern lava lemon
lettuce lily limestone linen lobster locket lotus lumber magnet mango
maple marble meadow melon meteor mint mirror mitten molasses monsoon
mosaic muffin mustard napkin nectar needle nutmeg oasis oatmeal ocean
olive onion orbit orchard orchid otter oyster paddle pancake panda
paper parrot pebble pelican pepper piano pickle pigeon pillow pine
pirate planet plum pocket pony poppy potato pretzel puffin pumpkin
quartz quilt rabbit radish rainbow raven ribbon river rocket saddle
saffron salmon sandal satchel scarf seagull sesame shadow shovel silver
sparrow spinach sponge squirrel stable sunset swan teapot thimble thistle
thunder tiger timber tomato topaz tortoise trumpet tulip tunnel turnip
umbrella valley velvet violet volcano walnut walrus wagon willow window
""".split())

MAX_SLOT = 999_999


class CodeError(ValueError):
    """
    Not an invitation code: the message says what is wrong.
    """


#: Words in a new code.  Two (about 16 bits) gave a guesser with 3 tries
#: 1 chance in 22,500 per invitation, and a patient one spending the tries
#: of every invitation an administrator makes over the years does better;
#: a third word makes it 1 in 5.9 million, at the cost of one more word to
#: read out.
WORD_COUNT = 3
#: What older codes had, still taken from an invitation made before.
OLDER_WORD_COUNTS = (2,)


def new_words(count: int = WORD_COUNT) -> str:
    """
    C{count} words drawn with L{secrets}, joined by dashes.
    """
    return "-".join(secrets.choice(WORDS) for _ in range(count))


def format_code(slot: int, words: str) -> str:
    return f"{slot}-{words}"


def parse_code(code: str) -> tuple[int, str]:
    """
    C{(slot, words)} of a code as a person typed it (case and surrounding
    blanks forgiven, spaces taken as dashes).

    @raise CodeError: no slot number, or a word not in the list.
    """
    text = "-".join(code.lower().split())  # any run of blanks is one dash
    slot, _, words = text.partition("-")
    # (the length first: int() of thousands of digits raises)
    if not (slot.isascii() and slot.isdigit() and len(slot) <= len(str(MAX_SLOT))
            and 1 <= int(slot) <= MAX_SLOT and slot == str(int(slot))):
        raise CodeError(f"{code!r}: an invitation code starts with its number, e.g. 417-crossover-clockwork-lantern")
    parts = words.split("-")
    unknown = [word for word in parts if word not in _WORD_SET]
    if not words or unknown:
        raise CodeError(f"{code!r}: not words of an invitation code: {' '.join(unknown) or '(none)'}")
    if len(parts) not in (WORD_COUNT, *OLDER_WORD_COUNTS):
        # Said before anything is sent: a word left out or repeated would
        # otherwise spend one of the invitation's tries, and lock out this address.
        raise CodeError(f"{code!r}: an invitation code has {WORD_COUNT} words after its "
                        f"number, not {len(parts)}")
    return int(slot), "-".join(parts)


_WORD_SET = frozenset(WORDS)
