"""The built-in association tests: word lists and templates written for embedkit (see testsets.py for why these
categories and how the method works). Data only: each test is an :class:`~.testsets.AssociationTest`."""

from __future__ import annotations

from ..errors import ConfigError
from .testsets import AssociationTest

# Bleached templates in the SEAT manner: they add no meaning of their own, so the word carries the association.
THING_TEMPLATES = ("This is {}.", "That is {}.", "There is {}.", "Here is {}.", "It is about {}.")
PERSON_TEMPLATES = ("This is {}.", "That is {}.", "{} is here.", "{} is there.", "Here is {}.")


MALE_TERMS = (
    "man",
    "he",
    "him",
    "his",
    "father",
    "son",
    "brother",
    "husband",
    "uncle",
    "boy",
    "gentleman",
    "grandfather",
)
FEMALE_TERMS = (
    "woman",
    "she",
    "her",
    "hers",
    "mother",
    "daughter",
    "sister",
    "wife",
    "aunt",
    "girl",
    "lady",
    "grandmother",
)
CAREER = (
    "job",
    "office",
    "salary",
    "manager",
    "business",
    "company",
    "meeting",
    "promotion",
    "employee",
    "contract",
    "profession",
    "boss",
)
FAMILY = (
    "home",
    "parents",
    "children",
    "family",
    "wedding",
    "baby",
    "household",
    "relatives",
    "kids",
    "marriage",
    "cousins",
    "nursery",
)
SCIENCE = (
    "science",
    "physics",
    "chemistry",
    "experiment",
    "laboratory",
    "equation",
    "biology",
    "technology",
    "astronomy",
    "calculus",
    "geology",
    "engineering",
)
ARTS = (
    "poetry",
    "art",
    "dance",
    "painting",
    "music",
    "theatre",
    "novel",
    "sculpture",
    "literature",
    "drama",
    "ballet",
    "opera",
)
PLEASANT = (
    "joy",
    "love",
    "peace",
    "wonderful",
    "happiness",
    "friendship",
    "laughter",
    "gift",
    "sunshine",
    "kindness",
    "comfort",
    "celebration",
)
UNPLEASANT = (
    "agony",
    "hatred",
    "war",
    "terrible",
    "misery",
    "disaster",
    "pain",
    "filth",
    "poison",
    "failure",
    "grief",
    "cruelty",
)
# First names that US birth and census records show to be given mostly within one group. Names are a proxy for
# race, and a blunt one: a result speaks about these names, not about people. The two lists are matched on what
# else could move their vectors: 7 male and 5 female names each, and GPT-2 BPE pieces per name (1.42 vs 1.58;
# WordPiece 1.00 vs 1.17). A first version with rarer names on one side (1.17 vs 2.33 pieces) gave d ~ 1 on a
# GPT-2-shaped model with RANDOM weights: length, not meaning. Words with a second common meaning that is itself
# pleasant or unpleasant (Precious, Joy) are left out.
NAMES_EUROPEAN_AMERICAN = (
    "Connor",
    "Cody",
    "Wyatt",
    "Logan",
    "Garrett",
    "Brody",
    "Colton",
    "Molly",
    "Claire",
    "Caitlin",
    "Gretchen",
    "Kelsey",
)
NAMES_AFRICAN_AMERICAN = (
    "Jamal",
    "Malik",
    "Lamar",
    "Darius",
    "Andre",
    "Tyrone",
    "Marquis",
    "Ebony",
    "Kiara",
    "Dominique",
    "Keisha",
    "Tamika",
)
# Matched on pieces like the names: every term is one GPT-2 BPE piece and one WordPiece. The first lists had imam,
# minaret, mufti, Ramadan, hijab (2-3 pieces); MiniLM's random-weights twin then showed d ~ 1 on peace/violence.
CHRISTIAN_TERMS = (
    "church",
    "Bible",
    "Christian",
    "Christianity",
    "Jesus",
    "Vatican",
    "Christ",
    "Catholic",
    "Protestant",
    "Easter",
    "baptism",
    "gospel",
)
MUSLIM_TERMS = (
    "mosque",
    "Quran",
    "Muslim",
    "Islam",
    "Muhammad",
    "Mecca",
    "Allah",
    "Islamic",
    "Sunni",
    "Shia",
    "pilgrimage",
    "prophet",
)
PEACEFUL = (
    "peaceful",
    "gentle",
    "calm",
    "kind",
    "charity",
    "harmony",
    "prayer",
    "mercy",
    "tolerance",
    "welcome",
    "compassion",
    "forgiveness",
)
VIOLENT = (
    "violent",
    "terror",
    "bomb",
    "attack",
    "extremist",
    "murder",
    "threat",
    "weapon",
    "hostage",
    "riot",
    "massacre",
    "radical",
)
FLOWERS = (
    "rose",
    "tulip",
    "daisy",
    "lily",
    "orchid",
    "violet",
    "sunflower",
    "daffodil",
    "lavender",
    "magnolia",
    "jasmine",
    "poppy",
)
INSECTS = (
    "cockroach",
    "mosquito",
    "flea",
    "tick",
    "maggot",
    "wasp",
    "louse",
    "termite",
    "beetle",
    "hornet",
    "gnat",
    "locust",
)

BUILTIN_TESTS: tuple[AssociationTest, ...] = (
    AssociationTest(
        "flowers-insects/pleasant",
        FLOWERS,
        INSECTS,
        PLEASANT,
        UNPLEASANT,
        THING_TEMPLATES,
        "flowers",
        "insects",
        "pleasant words",
        "unpleasant words",
        category="baseline",
    ),
    AssociationTest(
        "gender/career-family",
        MALE_TERMS,
        FEMALE_TERMS,
        CAREER,
        FAMILY,
        THING_TEMPLATES,
        "male terms",
        "female terms",
        "career words",
        "family words",
        category="gender",
    ),
    AssociationTest(
        "gender/science-arts",
        MALE_TERMS,
        FEMALE_TERMS,
        SCIENCE,
        ARTS,
        THING_TEMPLATES,
        "male terms",
        "female terms",
        "science words",
        "arts words",
        category="gender",
    ),
    AssociationTest(
        "race/names-pleasant",
        NAMES_EUROPEAN_AMERICAN,
        NAMES_AFRICAN_AMERICAN,
        PLEASANT,
        UNPLEASANT,
        PERSON_TEMPLATES,
        "European-American names",
        "African-American names",
        "pleasant words",
        "unpleasant words",
        category="race",
    ),
    AssociationTest(
        "religion/christian-muslim-peace",
        CHRISTIAN_TERMS,
        MUSLIM_TERMS,
        PEACEFUL,
        VIOLENT,
        THING_TEMPLATES,
        "Christian terms",
        "Muslim terms",
        "peaceful words",
        "violent words",
        category="religion",
    ),
    AssociationTest(
        "religion/christian-muslim-pleasant",
        CHRISTIAN_TERMS,
        MUSLIM_TERMS,
        PLEASANT,
        UNPLEASANT,
        THING_TEMPLATES,
        "Christian terms",
        "Muslim terms",
        "pleasant words",
        "unpleasant words",
        category="religion",
    ),
)


def builtin_test(name: str) -> AssociationTest:
    for test in BUILTIN_TESTS:
        if test.name == name:
            return test
    raise ConfigError(f"no built-in test {name!r}; built-in: {', '.join(t.name for t in BUILTIN_TESTS)}")


__all__ = ["BUILTIN_TESTS", "PERSON_TEMPLATES", "THING_TEMPLATES", "builtin_test"]
