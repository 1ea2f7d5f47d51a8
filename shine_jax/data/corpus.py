"""A bundled, deterministic corpus of fictional biographies for training and evaluating SHINE on a CPU.

SHINE turns a document into LoRA weights so that the language model can answer questions about the document
without seeing it. To measure that honestly the corpus is built so that shortcuts do not work:

* Every person is invented (invented names, cities, organisations and schools), so a pretrained model cannot
  know the answers, and every attribute has 40-100 possible values, so guessing by prior is weak.
* People are split between train / validation / test, so a test person never occurs in training text.
* A document holds one to four people whose bios state overlapping kinds of facts with *different* values
  (co-occurring people never share a value), and questions always use the full name: the model must bind the
  name to the facts instead of returning "the only job mentioned".
* Some fact phrasings and question phrasings are reserved for the test split (``split="test_only"``), so the
  test split also measures generalisation to unseen wording.
* ``add_distractors`` pads a document with unrelated bios to test retrieval among irrelevant text.

Records use the project's JSON Lines format::

    {"id": str, "context": str, "qa": [{"question": str, "answers": [str, ...]}, ...]}

Everything is a pure function of its seed: string seeds such as ``f"{seed}/people"`` are fed to private
``random.Random`` instances (string seeding is hashed with SHA-512, so it is stable across processes and does not
depend on ``PYTHONHASHSEED``), and the same seed gives byte-identical JSONL.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import random
import re
import string
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shine_jax.errors import InputError
from shine_jax.fileutil import atomic_text_file

# ---------------------------------------------------------------------------------------------------------------
# Data tables
# ---------------------------------------------------------------------------------------------------------------

SPLITS = ("train", "validation", "test")
ATTRIBUTES = ("birth_date", "birth_city", "residence", "job", "employer", "school", "hobby")

FIRST_NAMES = (
    "Abelin", "Adrisa", "Aelwen", "Alisande", "Amarel", "Anvira", "Arlowen", "Astrel", "Avelin", "Azurine",
    "Baldric", "Bastrel", "Belisa", "Benrik", "Berelle", "Brisell", "Brovan", "Caelith", "Calvaro", "Camrin",
    "Carisse", "Cedrow", "Celvane", "Corvian", "Dailen", "Darisa", "Davorin", "Delvira", "Demira", "Desmar",
    "Dorwen", "Edrin", "Elvane", "Emrin", "Enora", "Eskel", "Estrid", "Evrin", "Faelan", "Falrik",
    "Fenna", "Feodra", "Florin", "Gaelis", "Galwen", "Garrick", "Gerrow", "Gilvane", "Halden", "Harlise",
    "Helvar", "Hesper", "Idrelle", "Ilvani", "Imrah", "Isaro", "Ivena", "Jarel", "Jessaly", "Joriel",
    "Jovana", "Kaelen", "Kasimir", "Kelvra", "Kestra", "Korin", "Lanric", "Larisel", "Leoric", "Liravel",
    "Lisenne", "Lorcan", "Lucaro", "Maelis", "Malvora", "Marisel", "Merrin", "Mirelle", "Morvan", "Nadrel",
    "Nalise", "Nerys", "Nicasio", "Noriel", "Odalric", "Olenna", "Orvelle", "Osric", "Pavlen", "Pelagia",
    "Perrin", "Quilla", "Quorin", "Rafaelo", "Ravella", "Renwick", "Rhosyn", "Rolisse", "Ruveen", "Sabrel",
    "Salvina", "Serafin", "Sevrin", "Sidonie", "Solenne", "Stellan", "Tamsin", "Tavish", "Teodric", "Thessaly",
    "Tirzah", "Torvald", "Ulric", "Undine", "Urielle", "Valdis", "Varina", "Velisse", "Venric", "Verena",
    "Vidar", "Wendric", "Wilhelmine", "Wrenna", "Xanthe", "Xavero", "Yselde", "Yvaine", "Zadie", "Zarek",
    "Zelina", "Zephyrin", "Zorvan", "Aurelio", "Briona", "Cassivel", "Dariel", "Elowen", "Fiorel", "Gwendal",
    "Hadria", "Ismene", "Jaspar", "Kallan", "Leontyne", "Mathis", "Nimue", "Oriana", "Petrel", "Rosmer",
)

LAST_NAMES = (
    "Ashgrove", "Arkwell", "Balthorne", "Barrowick", "Belcourt", "Brennick", "Brightmore", "Carvell", "Castelow",
    "Crestfield", "Dalgrave", "Darrowby", "Delacourt", "Drummelow", "Eastwick", "Edevane", "Ellery", "Elsworth",
    "Everhart", "Fairclough", "Farrandel", "Fenwright", "Follet", "Fontaine", "Garroway", "Glenhart", "Goldwyn",
    "Grayling", "Greaves", "Halloran", "Harrowell", "Hartigan", "Haverford", "Hawksley", "Holloway", "Ingleby",
    "Ironside", "Jarrow", "Kellerman", "Kettering", "Kilbride", "Langmere", "Larkin", "Lindqvist", "Lockhart",
    "Lorimer", "Maddox", "Malvern", "Marchetti", "Merriweather", "Mockridge", "Montague", "Morrow", "Nettleford",
    "Northcott", "Oakenfold", "Orwell", "Osterberg", "Padgett", "Pemberton", "Penrose", "Quarrington", "Quenell",
    "Radcliffe", "Ravenscroft", "Redfern", "Rosswell", "Rutherford", "Salisbrook", "Sandoval", "Selwyn",
    "Shackleton", "Silvermane", "Sinclair", "Stavros", "Stroud", "Sutterby", "Talbot", "Tamberlane", "Thackeray",
    "Thornquist", "Tillman", "Trevanion", "Truscott", "Underhill", "Upjohn", "Valcourt", "Vandermeer", "Vantreese",
    "Varga", "Vasquell", "Wainwright", "Walcott", "Wexford", "Whitcombe", "Wickersham", "Winterbourne",
    "Wolvercote", "Wrayburn", "Yardwell", "Yelverton", "Zellweger", "Zimmerlin", "Abbotsley", "Ackroyd", "Bellamy",
    "Blackthorne", "Brackenbury", "Cadogan", "Carrowmore", "Challoner", "Cheverell", "Corbishley", "Culpepper",
    "Dabrowski", "Dunleavy", "Ebberly", "Fitzmorrow", "Gallowglass", "Hargreave", "Heathcote", "Ivesdale",
    "Kavanagh", "Kinsella", "Lathbury", "Loxley", "Mallender", "Marlowe", "Nightingale", "Ormerod", "Pendragon",
    "Pilkington", "Quillfeather", "Rathbone", "Rookwood", "Saltonstall", "Sorensby", "Tarrant", "Treloar",
    "Umfreville", "Venables", "Warrender", "Westerholt", "Whitlow", "Wyndham", "Yarborough", "Zouche", "Calloran",
    "Dreyfell", "Esterbrook",
)

# Birth city and residence share this list on purpose: "born in X" vs "lives in X" must be told apart by relation.
CITIES = (
    "Velmora", "Ostrevik", "Caldris", "Thornvale", "Brindlemoor", "Quellport", "Asharra", "Dunmere", "Eskarth",
    "Falloway", "Glenrath", "Harwen", "Ilsbury", "Jorvane", "Kestrel Bay", "Lunmarch", "Marrowick", "Norvale",
    "Oakhollow", "Pellinor", "Quarrin", "Rovenna", "Saltmere", "Tarwick", "Ulverstad", "Vantora", "Wexholm",
    "Yarrowby", "Zelhaven", "Brackwater", "Corvallen", "Drelmouth", "Elsinmoor", "Fenwharf", "Gildenport",
    "Hollowmere", "Istrava", "Kallisford", "Lorrinvale", "Moravind", "Nyrholt", "Orlesk", "Palvere", "Quintara",
    "Redmarsh", "Sorrowby", "Tellicane", "Umberlin", "Varnholt", "Westerlock", "Ysmere", "Zarnow", "Abervale",
    "Belcastle", "Cindervale", "Dornwick", "Emberlyn", "Farrowdeep", "Greymantle", "Hessenport", "Ivorsand",
    "Jessamine Falls", "Kinloweth", "Larkspire", "Mooncrest", "Northwatch", "Oldenreach", "Pinehallow",
    "Riverlynn", "Stonecaster", "Tidewell", "Uthermoor", "Valecrest", "Willowmere", "Xandria", "Yewbridge",
    "Zephyr Cove", "Ambermouth", "Bellrock Harbor", "Port Sevrine",
)

SCHOOL_ROOTS = (
    "Aldenmoor", "Ashcombe", "Bellweather", "Briarwood", "Carrowford", "Castellane", "Dovecote", "Dunhallow",
    "Eldermere", "Everleigh", "Foxhollow", "Glassbrook", "Greystone", "Hawthorne", "Highmoor", "Ironwell",
    "Ivelmoor", "Kestwick", "Kingsmere", "Lanterne", "Lindenwald", "Marchbank", "Merriton", "Northgrove",
    "Oakmarsh", "Orrinwood", "Pemberly", "Penhallow", "Quartzfield", "Quillon", "Ravensholt", "Rosemarch",
    "Silverlake", "Tamsworth", "Thistledown", "Umbrel", "Upwater", "Verdance", "Vesperine", "Whitlock",
    "Wyrmhall", "Yarlington", "Zennory", "Amberleigh", "Brookhaven", "Coldharbour", "Druidstone", "Evenmoor",
    "Fernhill", "Gallowmere",
)
# No "University of X": it would need a "the" in "graduated from ...", and answers are quoted verbatim.
SCHOOL_PATTERNS = (
    "{} University", "{} College", "{} State University", "{} Institute of Technology", "{} Polytechnic", "{} Academy",
)

EMPLOYER_ROOTS = (
    "Korvath", "Brightwell", "Halvern", "Lumeris", "Stravane", "Quenby", "Tessalon", "Orvane", "Pallister",
    "Drumlin", "Altavon", "Bramblecot", "Cobaltis", "Dawnrise", "Evergleam", "Fulcrum", "Goldleaf", "Harbinger",
    "Ironbark", "Juniper", "Kelpworth", "Lodestar", "Meridane", "Nimbus", "Oxbow", "Polaris", "Quayside", "Redwing",
    "Saltire", "Tidemark", "Umbra", "Vireo", "Waymark", "Xylen", "Yellowfin", "Zenthor", "Arclight", "Bluefern",
    "Copperline", "Driftwood", "Emberstone", "Foxglove", "Granitex", "Helion", "Indigo", "Jadeport", "Keystone",
    "Lanternfly", "Mossbank", "Northstar", "Obsidian", "Pinecrest", "Quillmark", "Riverbend", "Sunfield",
    "Thornbury", "Uplands", "Vantage", "Whitecap", "Zephyrex",
)
EMPLOYER_PATTERNS = (
    "{} Analytics", "{} Shipping", "{} Foods", "{} Robotics", "{} Textiles", "{} Pharmaceuticals", "{} Energy",
    "{} Media", "{} Logistics", "{} Insurance", "{} Publishing", "{} Biotech",
)

# Jobs must not start with a vowel letter that sounds like a consonant ("university ..."): see _with_article.
JOBS = (
    "accountant", "architect", "baker", "bookbinder", "botanist", "carpenter", "cartographer", "chemist",
    "civil engineer", "dentist", "dietitian", "electrician", "economist", "film editor", "firefighter", "florist",
    "geologist", "glassblower", "graphic designer", "hydrologist", "interpreter", "jeweler", "journalist",
    "landscape gardener", "librarian", "locksmith", "marine biologist", "mathematician", "midwife", "museum curator",
    "nurse", "optician", "orthodontist", "paramedic", "pharmacist", "photographer", "physiotherapist", "piano tuner",
    "airline pilot", "plumber", "radiologist", "sculptor", "software developer", "sommelier", "speech therapist",
    "statistician", "surveyor", "tailor", "translator", "veterinarian", "violin maker", "welder", "zoologist",
    "archivist", "auditor", "chef", "court stenographer", "ferry captain", "lighthouse keeper", "urban planner",
)

# Hobbies are gerund phrases so that "enjoys X", "spends weekends X" and "passionate about X" all read well.
HOBBIES = (
    "birdwatching", "rock climbing", "playing the cello", "playing chess", "knitting", "baking sourdough bread",
    "restoring old clocks", "sailing", "fencing", "practicing archery", "stargazing", "growing orchids",
    "writing poetry",
    "collecting stamps", "painting watercolors", "hiking", "cycling", "kayaking", "trail running", "playing the harp",
    "woodcarving", "folding origami", "juggling", "scuba diving", "gardening", "fly fishing",
    "practicing calligraphy", "making pottery", "playing the trombone", "composing music", "bouldering",
    "ice skating", "ballroom dancing", "building model ships", "solving crossword puzzles", "playing the accordion",
    "foraging for mushrooms", "keeping bees", "brewing beer", "making cheese", "photographing birds",
    "cross-country skiing", "swimming", "rowing", "playing table tennis", "playing squash", "learning languages",
    "reading mystery novels", "quilting", "embroidering", "geocaching", "surfing", "practicing yoga",
    "mountain biking", "snorkeling", "canoeing", "playing the bagpipes", "restoring vintage motorcycles",
    "crocheting", "singing in a choir",
)

# Spelled out rather than taken from ``calendar.month_name``, which follows the process locale.
MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)
BIRTH_YEARS = (1940, 2003)  # inclusive

# (pronoun, weight): mostly she/he, some singular they, which exercises the plural verb agreement below.
PRONOUN_WEIGHTS = (("she", 45), ("he", 45), ("they", 10))
PRONOUN_FORMS = {
    "she": {"subj": "she", "obj": "her", "poss": "her"},
    "he": {"subj": "he", "obj": "him", "poss": "his"},
    "they": {"subj": "they", "obj": "them", "poss": "their"},
}
# Verb agreement markers used in fact templates; they agree with the referent that fills {name}.
SINGULAR_AGREEMENT = {"s": "s", "is": "is", "was": "was", "has": "has"}
PLURAL_AGREEMENT = {"s": "", "is": "are", "was": "were", "has": "have"}

# How a person is referred to after the first sentence of their bio (which always uses the full name).
REFERENT_WEIGHTS = (("pronoun", 5), ("first", 3), ("full", 2))

# Fact templates. Placeholders: {name} subject referent, {obj} object referent, {Poss} possessive referent
# ("Abelin Ashgrove's" / "Abelin's" / "her"), {pposs} possessive pronoun, {a_job} job with its article, the
# attribute names for values, and the agreement markers {s} {is} {was} {has}. A template never *starts* with a
# lowercase value, because the first letter of each sentence is capitalised and the answer must stay verbatim.
FACT_PHRASINGS: dict[str, dict[str, tuple[str, ...]]] = {
    "birth_date": {
        "train": (
            "{name} {was} born on {birth_date}.",
            "{Poss} birthday is {birth_date}.",
            "{name} came into the world on {birth_date}.",
            "{Poss} life began on {birth_date}.",
        ),
        "test_only": (
            "{Poss} date of birth is {birth_date}.",
            "On {birth_date}, {name} {was} born.",
        ),
    },
    "birth_city": {
        "train": (
            "{name} {was} born in {birth_city}.",
            "{name} {is} originally from {birth_city}.",
            "{Poss} birthplace is {birth_city}.",
            "{name} {was} born and raised in {birth_city}.",
        ),
        "test_only": (
            "{birth_city} is where {name} {was} born.",
            "{name} first saw the light of day in {birth_city}.",
        ),
    },
    "residence": {
        "train": (
            "{name} live{s} in {residence}.",
            "{name} currently reside{s} in {residence}.",
            "{Poss} home is in {residence}.",
            "These days, {name} make{s} {pposs} home in {residence}.",
        ),
        "test_only": (
            "{name} {has} settled in {residence}.",
            "{residence} is where {name} live{s} now.",
        ),
    },
    "job": {
        "train": (
            "{name} work{s} as {a_job}.",
            "{name} {is} {a_job} by profession.",
            "By trade, {name} {is} {a_job}.",
            "{name} {has} built a career as {a_job}.",
        ),
        "test_only": (
            "{name} earn{s} a living as {a_job}.",
            "{Poss} profession is that of {a_job}.",
        ),
    },
    "employer": {
        "train": (
            "{name} work{s} for {employer}.",
            "{name} {is} employed by {employer}.",
            "{Poss} employer is {employer}.",
            "{name} {is} on the staff of {employer}.",
        ),
        "test_only": (
            "{name} {has} a position at {employer}.",
            "{employer} employs {obj}.",
        ),
    },
    "school": {
        "train": (
            "{name} graduated from {school}.",
            "{name} studied at {school}.",
            "{name} {is} a graduate of {school}.",
            "{Poss} alma mater is {school}.",
        ),
        "test_only": (
            "{name} earned {pposs} degree at {school}.",
            "{school} is where {name} studied.",
        ),
    },
    "hobby": {
        "train": (
            "{name} enjoy{s} {hobby}.",
            "In {pposs} free time, {name} enjoy{s} {hobby}.",
            "{Poss} favorite pastime is {hobby}.",
            "{name} spend{s} {pposs} weekends {hobby}.",
        ),
        "test_only": (
            "{name} {is} passionate about {hobby}.",
            "When not working, {name} love{s} {hobby}.",
        ),
    },
}

# Question templates always use the full name ({name}), so in a multi-person document the name is the only cue.
QUESTION_PHRASINGS: dict[str, dict[str, tuple[str, ...]]] = {
    "birth_date": {
        "train": ("When was {name} born?", "What is {name}'s date of birth?", "On what date was {name} born?"),
        "test_only": ("What is the birthday of {name}?", "On which day was {name} born?"),
    },
    "birth_city": {
        "train": ("Where was {name} born?", "In which city was {name} born?", "What is {name}'s birthplace?"),
        "test_only": ("Which city is {name} originally from?", "Which town was {name} born in?"),
    },
    "residence": {
        "train": ("Where does {name} live?", "In which city does {name} currently live?", "Where does {name} reside?"),
        "test_only": ("What city is {name} living in now?", "Where is {name}'s home?"),
    },
    "job": {
        "train": ("What does {name} do for a living?", "What is {name}'s job?", "What is {name}'s profession?"),
        "test_only": ("What kind of work does {name} do?", "What is {name}'s occupation?"),
    },
    "employer": {
        "train": ("Where does {name} work?", "Which organization employs {name}?", "Who is {name}'s employer?"),
        "test_only": ("For which company does {name} work?", "What organization is {name} employed by?"),
    },
    "school": {
        "train": ("Where did {name} study?", "Which school did {name} graduate from?", "What is {name}'s alma mater?"),
        "test_only": ("At which institution did {name} study?", "Which school did {name} attend?"),
    },
    "hobby": {
        "train": (
            "What is {name}'s hobby?",
            "What does {name} enjoy doing in their free time?",
            "What does {name} like to do for fun?",
        ),
        "test_only": ("What pastime does {name} enjoy?", "How does {name} like to spend free time?"),
    },
}

DEFAULT_NUM_PEOPLE = 10_000
DEFAULT_SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
DEFAULT_DOCS_PER_SPLIT = {"train": 20_000, "validation": 1_000, "test": 1_000}

_REFERENT_FIELDS = ("name", "obj", "Poss")


def _compose(roots: Sequence[str], patterns: Sequence[str]) -> tuple[str, ...]:
    """One value per root, cycling through the patterns, so no two values share a root word."""
    return tuple(patterns[i % len(patterns)].format(root) for i, root in enumerate(roots))


SCHOOLS = _compose(SCHOOL_ROOTS, SCHOOL_PATTERNS)
EMPLOYERS = _compose(EMPLOYER_ROOTS, EMPLOYER_PATTERNS)

# Value pools for the attributes drawn from a list (birth_date is generated).
VALUE_POOLS: dict[str, tuple[str, ...]] = {
    "birth_city": CITIES,
    "residence": CITIES,
    "job": JOBS,
    "employer": EMPLOYERS,
    "school": SCHOOLS,
    "hobby": HOBBIES,
}


# ---------------------------------------------------------------------------------------------------------------
# Templates
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    """One phrasing. ``split`` is ``"train"`` (usable everywhere), ``"test_only"`` (test documents only) or
    ``"family2"`` (the second test family only)."""

    attribute: str
    text: str
    split: str

    @property
    def can_open(self) -> bool:
        """Whether the template may be a bio's first sentence: the person must be named before any pronoun."""
        fields = [field for _, field, _, _ in string.Formatter().parse(self.text) if field]
        first_referent = min((fields.index(f) for f in _REFERENT_FIELDS if f in fields), default=None)
        if first_referent is None:
            return False
        return "pposs" not in fields[:first_referent]


def _templates(phrasings: Mapping[str, Mapping[str, Sequence[str]]]) -> tuple[Template, ...]:
    return tuple(
        Template(attribute, text, split)
        for attribute in ATTRIBUTES
        for split in ("train", "test_only")
        for text in phrasings[attribute][split]
    )


FACT_TEMPLATES = _templates(FACT_PHRASINGS)
QUESTION_TEMPLATES = _templates(QUESTION_PHRASINGS)


@functools.cache
def _allowed(kind: str, attribute: str, split: str, opening: bool = False) -> tuple[Template, ...]:
    """Fact or question templates (``kind``) a document of ``split`` may use; test documents mix in the
    test-only phrasings. ``opening`` keeps only templates that may start a bio. Cached: called per sentence."""
    _check_split(split)
    templates = FACT_TEMPLATES if kind == "fact" else QUESTION_TEMPLATES
    return tuple(
        t
        for t in templates
        if t.attribute == attribute and (split == "test" or t.split == "train") and (t.can_open or not opening)
    )


@functools.cache
def template_pattern(text: str) -> re.Pattern[str]:
    """A regex that fully matches any sentence rendered from template ``text``.

    Lets evaluation code (and the tests) tell which phrasing produced a sentence or question, e.g. to report
    accuracy on held-out phrasings separately.
    """
    agreement = {key: (SINGULAR_AGREEMENT[key], PLURAL_AGREEMENT[key]) for key in SINGULAR_AGREEMENT}
    parts = []
    for literal, field, _, _ in string.Formatter().parse(text):
        parts.append(re.escape(literal))
        if field is None:
            continue
        if field in agreement:
            parts.append("(?:" + "|".join(re.escape(form) for form in agreement[field]) + ")")
        else:
            parts.append("(.+?)")
    return re.compile("".join(parts))


# ---------------------------------------------------------------------------------------------------------------
# People
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Person:
    """A fictional person. All attributes are short strings that appear verbatim in the texts about them."""

    first_name: str
    last_name: str
    pronoun: str  # "she" | "he" | "they"
    birth_date: str
    birth_city: str
    residence: str
    job: str
    employer: str
    school: str
    hobby: str

    @property
    def full_name(self) -> str:
        return f"{self.first_name} {self.last_name}"

    def attribute(self, name: str) -> str:
        if name not in ATTRIBUTES:
            raise KeyError(f"unknown attribute {name!r}; expected one of {ATTRIBUTES}")
        return getattr(self, name)


@functools.cache
def _cumulative(table: tuple[tuple[str, int], ...]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    values, weights = zip(*table)
    return values, tuple(itertools.accumulate(weights))


def _weighted(rng: random.Random, table: tuple[tuple[str, int], ...]) -> str:
    values, cum_weights = _cumulative(table)
    return rng.choices(values, cum_weights=cum_weights)[0]


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _random_date(rng: random.Random) -> str:
    year = rng.randint(*BIRTH_YEARS)
    month = rng.randrange(12)
    days = (31, 29 if _is_leap(year) else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)[month]
    return f"{MONTHS[month]} {rng.randint(1, days)}, {year}"


def make_people(n: int = DEFAULT_NUM_PEOPLE, seed: int = 0) -> list[Person]:
    """``n`` people with unique full names and random attributes (birth city and residence always differ)."""
    capacity = len(FIRST_NAMES) * len(LAST_NAMES)
    if not 0 <= n <= capacity:
        raise InputError(f"n must be in [0, {capacity}] (unique full names), got {n}")
    rng = random.Random(f"{seed}/people")
    people = []
    for code in rng.sample(range(capacity), n):
        first, last = divmod(code, len(LAST_NAMES))
        birth_city, residence = rng.sample(CITIES, 2)
        people.append(
            Person(
                first_name=FIRST_NAMES[first],
                last_name=LAST_NAMES[last],
                pronoun=_weighted(rng, PRONOUN_WEIGHTS),
                birth_date=_random_date(rng),
                birth_city=birth_city,
                residence=residence,
                job=rng.choice(JOBS),
                employer=rng.choice(EMPLOYERS),
                school=rng.choice(SCHOOLS),
                hobby=rng.choice(HOBBIES),
            )
        )
    return people


def split_people(
    people: Sequence[Person], seed: int = 0, fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS
) -> dict[str, list[Person]]:
    """Partition people into train / validation / test, so no person's facts leak across splits.

    Each split keeps the input order. Sizes are ``round(n * fraction)`` for train and validation; test gets the rest.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
        raise InputError(f"fractions must be three non-negative numbers summing to 1, got {tuple(fractions)}")
    order = list(range(len(people)))
    random.Random(f"{seed}/split").shuffle(order)
    n_train = round(len(people) * fractions[0])
    n_val = round(len(people) * fractions[1])
    bounds = {"train": (0, n_train), "validation": (n_train, n_train + n_val), "test": (n_train + n_val, len(order))}
    return {name: [people[i] for i in sorted(order[lo:hi])] for name, (lo, hi) in bounds.items()}


# ---------------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------------


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise InputError(f"split must be one of {SPLITS}, got {split!r}")


def _with_article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _referent_fields(person: Person, kind: str) -> dict[str, str]:
    """How {name}/{obj}/{Poss} and the verb agreement are filled when the person is referred to as ``kind``."""
    if kind == "pronoun":
        forms = PRONOUN_FORMS[person.pronoun]
        agreement = PLURAL_AGREEMENT if person.pronoun == "they" else SINGULAR_AGREEMENT
        return {"name": forms["subj"], "obj": forms["obj"], "Poss": forms["poss"], **agreement}
    name = person.full_name if kind == "full" else person.first_name
    return {"name": name, "obj": name, "Poss": f"{name}'s", **SINGULAR_AGREEMENT}


def render_fact(template: Template, person: Person, referent: str = "full") -> str:
    """Render one fact sentence; ``referent`` is ``"full"``, ``"first"`` or ``"pronoun"``."""
    fields: dict[str, str] = {attr: getattr(person, attr) for attr in ATTRIBUTES}
    fields["a_job"] = _with_article(person.job)
    fields["pposs"] = PRONOUN_FORMS[person.pronoun]["poss"]
    fields.update(_referent_fields(person, referent))
    sentence = template.text.format_map(fields)
    return sentence[0].upper() + sentence[1:]


def render_question(template: Template, person: Person) -> str:
    """Questions always name the person in full: in a multi-person document the name is the only cue."""
    return template.text.format(name=person.full_name)


def _bio(person: Person, attributes: Sequence[str], rng: random.Random, split: str) -> str:
    """One paragraph stating ``attributes`` in the given order; the first sentence carries the full name."""
    sentences = []
    for i, attribute in enumerate(attributes):
        template = rng.choice(_allowed("fact", attribute, split, opening=i == 0))
        referent = "full" if i == 0 else _weighted(rng, REFERENT_WEIGHTS)
        sentences.append(render_fact(template, person, referent))
    return " ".join(sentences)


def bio_text(
    person: Person, rng: random.Random, split: str = "train", attributes: Sequence[str] | None = None
) -> str:
    """A bio paragraph for LM pretraining: all attributes (or ``attributes``) in random order and phrasing.

    Each call draws new order and phrasings from ``rng``, so repeated calls give an endless stream of varied text
    about a fixed set of facts.
    """
    _check_split(split)
    chosen = list(ATTRIBUTES if attributes is None else attributes)
    rng.shuffle(chosen)
    return _bio(person, chosen, rng, split)


def stream_bio_text(people: Sequence[Person], seed: int = 0, split: str = "train") -> Iterator[str]:
    """Endless deterministic stream of bios of ``people`` (pass only one split's people to avoid leakage)."""
    _check_split(split)
    if not people:
        raise InputError("people is empty")
    rng = random.Random(f"{seed}/{split}/stream")
    while True:
        yield bio_text(people[rng.randrange(len(people))], rng, split)


# ---------------------------------------------------------------------------------------------------------------
# Documents
# ---------------------------------------------------------------------------------------------------------------


def _compatible(a: Person, b: Person) -> bool:
    """People may share a document only if neither the first name nor any attribute value is shared.

    Distinct first names keep short references ("Abelin works ...") unambiguous; distinct values make every
    answer identify exactly one person, so a question can only be answered by binding the name.
    """
    return a.first_name != b.first_name and all(getattr(a, x) != getattr(b, x) for x in ATTRIBUTES)


def _pick_group(people: Sequence[Person], n: int, rng: random.Random, max_tries: int = 1000) -> list[Person]:
    group: list[Person] = []
    failures = 0
    while len(group) < n:
        candidate = people[rng.randrange(len(people))]
        if all(_compatible(candidate, other) for other in group):
            group.append(candidate)
        else:
            failures += 1
            if failures > max_tries:
                raise InputError(f"could not find {n} compatible people among {len(people)}; pass more people")
    return group


def make_documents(
    people: Sequence[Person],
    seed: int,
    split: str,
    num_docs: int = 1000,
    *,
    min_people: int = 1,
    max_people: int = 4,
    min_facts: int = 4,
    max_facts: int = 7,
) -> list[dict[str, Any]]:
    """``num_docs`` multi-QA records, each about ``min_people..max_people`` people drawn from ``people``.

    Each person gets a paragraph of ``min_facts..max_facts`` facts in random order; the QA list asks one question
    per stated fact (never about unstated ones), shuffled across people. ``people`` should be one split's people.
    """
    _check_split(split)
    if not 1 <= min_people <= max_people:
        raise InputError(f"need 1 <= min_people <= max_people, got {min_people}, {max_people}")
    if not 1 <= min_facts <= max_facts <= len(ATTRIBUTES):
        raise InputError(f"need 1 <= min_facts <= max_facts <= {len(ATTRIBUTES)}, got {min_facts}, {max_facts}")
    if len(people) < max_people:
        raise InputError(f"need at least max_people={max_people} people, got {len(people)}")
    rng = random.Random(f"{seed}/{split}/documents")
    records = []
    for index in range(num_docs):
        group = _pick_group(people, rng.randint(min_people, max_people), rng)
        paragraphs, qa = [], []
        for person in group:
            attributes = rng.sample(ATTRIBUTES, rng.randint(min_facts, max_facts))  # random order
            paragraphs.append(_bio(person, attributes, rng, split))
            for attribute in attributes:
                template = rng.choice(_allowed("question", attribute, split))
                qa.append({"question": render_question(template, person), "answers": [getattr(person, attribute)]})
        rng.shuffle(qa)
        records.append({"id": f"{split}-{index:06d}", "context": "\n\n".join(paragraphs), "qa": qa})
    return records


_FULL_NAME_RE = re.compile(
    r"\b(?:{}) (?:{})\b".format(
        "|".join(sorted(FIRST_NAMES, key=len, reverse=True)), "|".join(sorted(LAST_NAMES, key=len, reverse=True))
    )
)


def find_full_names(text: str) -> list[str]:
    """Full names of corpus people occurring in ``text``, in order of first occurrence."""
    return list(dict.fromkeys(_FULL_NAME_RE.findall(text)))


def _paragraphs(item: Mapping[str, Any] | str) -> list[str]:
    return item["context"].split("\n\n") if isinstance(item, Mapping) else [item]


def add_distractors(
    record: Mapping[str, Any], pool: Sequence[Mapping[str, Any] | str], k: int, rng: random.Random
) -> dict[str, Any]:
    """Pad a document with ``k`` unrelated bios, inserted at random paragraph boundaries; QA is unchanged.

    ``pool`` holds records (any of their paragraphs may be used) or bare bio strings, from the *same split* as
    ``record`` (the caller's duty: this keeps test people out of training text). A bio is only used if its person
    shares no first name with anyone already in the document, so questions stay unambiguous.
    """
    if k < 0:
        raise InputError(f"k must be >= 0, got {k}")
    paragraphs = record["context"].split("\n\n")
    taken = {name.split()[0] for name in find_full_names(record["context"])}
    chosen: list[str] = []
    for _ in range(100 + 50 * k):
        if len(chosen) == k or not pool:
            break
        paragraph = rng.choice(_paragraphs(pool[rng.randrange(len(pool))]))
        firsts = {name.split()[0] for name in find_full_names(paragraph)}
        if firsts and not firsts & taken:
            chosen.append(paragraph)
            taken |= firsts
    if len(chosen) < k:
        raise InputError(f"found only {len(chosen)} of {k} usable distractor bios in a pool of {len(pool)}")
    for paragraph in chosen:
        paragraphs.insert(rng.randint(0, len(paragraphs)), paragraph)
    return {
        "id": f"{record['id']}+d{k}",
        "context": "\n\n".join(paragraphs),
        "qa": [{"question": q["question"], "answers": list(q["answers"])} for q in record["qa"]],
    }


def to_single_qa(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One record per question (same context), for models or metrics that take one question per document."""
    return [
        {
            "id": f"{record['id']}-q{j}",
            "context": record["context"],
            "qa": [{"question": q["question"], "answers": list(q["answers"])}],
        }
        for record in records
        for j, q in enumerate(record["qa"])
    ]


def build_corpus(
    seed: int = 0,
    num_people: int = DEFAULT_NUM_PEOPLE,
    docs_per_split: Mapping[str, int] | None = None,
    *,
    min_people: int = 1,
    max_people: int = 4,
) -> dict[str, list[dict[str, Any]]]:
    """The whole corpus: people -> person-disjoint splits -> documents for each split.

    ``docs_per_split`` overrides :data:`DEFAULT_DOCS_PER_SPLIT` per split (missing splits keep the default).
    """
    counts = dict(DEFAULT_DOCS_PER_SPLIT)
    if docs_per_split is not None:
        unknown = set(docs_per_split) - set(SPLITS)
        if unknown:
            raise InputError(f"unknown splits {sorted(unknown)}; expected {SPLITS}")
        counts.update(docs_per_split)
    by_split = split_people(make_people(num_people, seed), seed)
    return {
        split: make_documents(
            by_split[split], seed, split, counts[split], min_people=min_people, max_people=max_people
        )
        for split in SPLITS
    }


# ---------------------------------------------------------------------------------------------------------------
# JSON Lines
# ---------------------------------------------------------------------------------------------------------------


def write_jsonl(records: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> int:
    """Write one JSON object per line (UTF-8, ``\\n`` endings), atomically; returns the number of records."""
    with atomic_text_file(path) as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return len(records)


def _record_problem(record: Any, need_qa: bool = True) -> str | None:
    """Why ``record`` is not a valid corpus record (or, without ``need_qa``, a document record), or None."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    if not isinstance(record.get("context"), str):
        return "missing string field 'context'"
    if not record["context"].strip():
        return "the 'context' is empty"
    if not need_qa and "qa" not in record:
        return None
    if not isinstance(record.get("qa"), list):
        return "missing list field 'qa'"
    for j, item in enumerate(record["qa"]):
        if not isinstance(item, dict):
            return f"qa[{j}] is not an object"
        if not isinstance(item.get("question"), str):
            return f"qa[{j}] has no string 'question'"
        answers = item.get("answers")
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            return f"qa[{j}] has no list of strings 'answers'"
    return None


def read_jsonl(path: str | os.PathLike[str], *, skip_bad_lines: bool = False,
               need_qa: bool = True) -> list[dict[str, Any]]:
    """Read and validate a corpus JSONL file (with ``need_qa=False``, documents whose ``qa`` may be absent).

    A malformed line (not UTF-8, not JSON, a missing field, an empty context) raises ``InputError`` naming the file
    and its 1-based line number; with ``skip_bad_lines=True`` it is skipped with a warning instead. Blank lines are
    ignored. Lines are split on
    ``\\n`` only, because JSON strings written with ``ensure_ascii=False`` may contain U+2028 and friends, which
    ``str.splitlines`` would treat as line breaks.
    """
    with open(path, "rb") as f:
        raw = f.read()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if not raw.strip():
        raise InputError(f"{os.fspath(path)} is empty")
    records = []
    for lineno, raw_line in enumerate(raw.split(b"\n"), start=1):  # decoded line by line: one bad line is one line
        try:
            line = raw_line.decode("utf-8")
        except UnicodeDecodeError as e:
            line, problem = "", f"not UTF-8 (invalid byte at column {e.start + 1})"
        else:
            problem = None
        if problem is None and not line.strip():
            continue
        if problem is None:
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                problem = f"invalid JSON ({e.msg} at column {e.colno})"
            else:
                problem = _record_problem(record, need_qa)
        if problem is None:
            records.append(record)
            continue
        message = f"{os.fspath(path)}, line {lineno}: {problem}"
        if not skip_bad_lines:
            raise InputError(message)
        warnings.warn(f"{message}; skipping the line", stacklevel=2)
    return records


# ---------------------------------------------------------------------------------------------------------------
# Generated people: a reading curriculum nobody can recall, and a second test family
# ---------------------------------------------------------------------------------------------------------------

# Syllables of generated names and values. The base model's pretraining reads documents about freshly generated
# people (``fresh_document``): names and most values are new strings every time, so no answer can be recalled from
# the corpus and the only way to lower the answer loss is to copy from the prompt. The second test family
# (``make_family2_documents``) draws its names from FAMILY2_SYLLABLES, which share no syllable with the training
# ones, and states and asks facts with phrasings no training text uses.
TRAIN_SYLLABLES = (
    "ba", "bel", "bo", "cal", "cor", "da", "dar", "del", "di", "dor", "e", "el", "en", "fa", "fel", "fen", "ga",
    "gar", "gil", "ha", "hal", "hel", "i", "in", "is", "ja", "jor", "ka", "kas", "kel", "la", "lan", "le", "li",
    "lis", "lo", "lor", "ma", "mar", "me", "mi", "mir", "mo", "mor", "na", "nel", "ni", "no", "nor", "o", "or",
    "pa", "pel", "ra", "ral", "ren", "ri", "ro", "ros", "sa", "sel", "si", "so", "sor", "ta", "tal", "tan", "te",
    "ti", "to", "tor", "ul", "va", "var", "vel", "ven", "vi", "vo", "wen", "wyn", "zel",
)
FAMILY2_SYLLABLES = (
    "zu", "qua", "xo", "phy", "tsu", "gwy", "dzi", "khu", "yph", "ux", "oq", "bry", "kyo", "pya", "ruh", "shu",
    "thy", "ngo", "mbe", "vuk", "jex", "fyr", "oph", "yss", "eck", "uba", "wix", "gno", "hyu", "azz",
)
FRESH_VALUE_SHARE = 0.5  # fresh people: share of cities, employer and school roots generated instead of drawn

FAMILY2_FACT_PHRASINGS: dict[str, tuple[str, ...]] = {
    "birth_date": ("The birth of {name} took place on {birth_date}.", "{Poss} birth was recorded on {birth_date}."),
    "birth_city": ("{name} {is} a native of {birth_city}.", "{Poss} place of birth is the town of {birth_city}."),
    "residence": ("At present {name} reside{s} in the city of {residence}.", "{name} rent{s} a flat in {residence}."),
    "job": ("{name} {has} worked for years as {a_job}.", "{Poss} occupation is {a_job}."),
    "employer": ("{name} draw{s} a salary from {employer}.", "{name} {is} currently with {employer}."),
    "school": ("{name} {was} educated at {school}.", "{name} completed {pposs} studies at {school}."),
    "hobby": ("{name} often spend{s} {pposs} evenings {hobby}.", "{Poss} favourite way to relax is {hobby}."),
}
FAMILY2_QUESTION_PHRASINGS: dict[str, tuple[str, ...]] = {
    "birth_date": ("What was the birth date of {name}?", "Which date was {name} born on?"),
    "birth_city": ("What is the native town of {name}?", "In what place was {name} born?"),
    "residence": ("Where is {name} living at present?", "Which city does {name} reside in?"),
    "job": ("What line of work is {name} in?", "What does {name} work as?"),
    "employer": ("Which company is {name} working for?", "Who pays the salary of {name}?"),
    "school": ("Where was {name} educated?", "Which institution did {name} complete studies at?"),
    "hobby": ("Which pastime does {name} pursue?", "What does {name} do to relax?"),
}
FAMILY2_FACT_TEMPLATES = tuple(
    Template(a, text, "family2") for a in ATTRIBUTES for text in FAMILY2_FACT_PHRASINGS[a])
FAMILY2_QUESTION_TEMPLATES = tuple(
    Template(a, text, "family2") for a in ATTRIBUTES for text in FAMILY2_QUESTION_PHRASINGS[a])


def generated_word(rng: random.Random, syllables: Sequence[str], lo: int = 2, hi: int = 3) -> str:
    """A capitalised word of ``lo..hi`` syllables."""
    return "".join(rng.choice(syllables) for _ in range(rng.randint(lo, hi))).capitalize()


def generated_person(rng: random.Random, syllables: Sequence[str] = TRAIN_SYLLABLES,
                     value_share: float = FRESH_VALUE_SHARE) -> Person:
    """A person with a generated name; each city, employer and school root is generated with probability
    ``value_share`` (else drawn from the bundled pools); jobs, hobbies and dates come from their usual sources."""

    def place() -> str:
        return generated_word(rng, syllables) if rng.random() < value_share else rng.choice(CITIES)

    def organisation(pool: Sequence[str], patterns: Sequence[str]) -> str:
        if rng.random() < value_share:
            return rng.choice(patterns).format(generated_word(rng, syllables))
        return rng.choice(pool)

    birth_city = place()
    residence = place()
    while residence == birth_city:
        residence = place()
    return Person(
        first_name=generated_word(rng, syllables), last_name=generated_word(rng, syllables, 2, 4),
        pronoun=_weighted(rng, PRONOUN_WEIGHTS), birth_date=_random_date(rng), birth_city=birth_city,
        residence=residence, job=rng.choice(JOBS), employer=organisation(EMPLOYERS, EMPLOYER_PATTERNS),
        school=organisation(SCHOOLS, SCHOOL_PATTERNS), hobby=rng.choice(HOBBIES),
    )


def _generated_group(rng: random.Random, n: int, syllables: Sequence[str], value_share: float) -> list[Person]:
    group: list[Person] = []
    while len(group) < n:
        candidate = generated_person(rng, syllables, value_share)
        if all(_compatible(candidate, other) for other in group):
            group.append(candidate)
    return group


def _document(group: Sequence[Person], rng: random.Random, facts: tuple[int, int], bio, question) -> dict:
    """Paragraphs of ``bio(person, attributes)`` and one ``question(attribute, person)`` per stated fact, shuffled."""
    paragraphs, qa = [], []
    for person in group:
        attributes = rng.sample(ATTRIBUTES, rng.randint(*facts))
        paragraphs.append(bio(person, attributes))
        qa.extend({"question": question(a, person), "answers": [getattr(person, a)]} for a in attributes)
    rng.shuffle(qa)
    return {"context": "\n\n".join(paragraphs), "qa": qa}


def fresh_document(rng: random.Random, min_people: int = 1, max_people: int = 4,
                   min_facts: int = 4, max_facts: int = 7) -> dict[str, Any]:
    """A training document about freshly generated people (train phrasings only), for the base model's reading
    curriculum: its answers cannot be recalled from any other text, only read from this one."""
    group = _generated_group(rng, rng.randint(min_people, max_people), TRAIN_SYLLABLES, FRESH_VALUE_SHARE)
    record = _document(
        group, rng, (min_facts, max_facts),
        lambda person, attributes: _bio(person, attributes, rng, "train"),
        lambda a, person: render_question(rng.choice(_allowed("question", a, "train")), person),
    )
    return {"id": "fresh", **record}


def _family2_bio(person: Person, attributes: Sequence[str], rng: random.Random) -> str:
    sentences = []
    for i, attribute in enumerate(attributes):
        options = [t for t in FAMILY2_FACT_TEMPLATES if t.attribute == attribute and (t.can_open or i > 0)]
        referent = "full" if i == 0 else _weighted(rng, REFERENT_WEIGHTS)
        sentences.append(render_fact(rng.choice(options), person, referent))
    return " ".join(sentences)


def make_family2_documents(num_docs: int, seed: int = 0, *, min_people: int = 1, max_people: int = 1,
                           min_facts: int = 4, max_facts: int = 7) -> list[dict[str, Any]]:
    """The second test family, never used in training: people named from FAMILY2_SYLLABLES (values from the
    bundled pools or, half of the time, generated from the same syllables), facts stated with
    FAMILY2_FACT_PHRASINGS and asked with FAMILY2_QUESTION_PHRASINGS. Measures whether a model reads the prompt
    rather than recalls the corpus's names and wording."""
    if num_docs < 0:
        raise InputError(f"num_docs must be >= 0, got {num_docs}")
    if not 1 <= min_people <= max_people:
        raise InputError(f"need 1 <= min_people <= max_people, got {min_people}, {max_people}")
    if not 1 <= min_facts <= max_facts <= len(ATTRIBUTES):
        raise InputError(f"need 1 <= min_facts <= max_facts <= {len(ATTRIBUTES)}, got {min_facts}, {max_facts}")
    rng = random.Random(f"{seed}/family2/documents")
    records = []
    for index in range(num_docs):
        group = _generated_group(rng, rng.randint(min_people, max_people), FAMILY2_SYLLABLES, FRESH_VALUE_SHARE)
        record = _document(
            group, rng, (min_facts, max_facts),
            lambda person, attributes: _family2_bio(person, attributes, rng),
            lambda a, person: render_question(
                rng.choice([t for t in FAMILY2_QUESTION_TEMPLATES if t.attribute == a]), person),
        )
        records.append({"id": f"family2-{index:06d}", **record})
    return records


# ---------------------------------------------------------------------------------------------------------------
# Broad reading: documents whose only regularity is "a key of a person, then its value"
# ---------------------------------------------------------------------------------------------------------------

# The fresh documents teach reading with the bundled phrasings and TRAIN_SYLLABLES names, and a base trained on them
# reads only text like that (family2 icl F1 0.049). Broad documents vary what a reader must not depend on: names and
# values are letter strings of any consonant-vowel shape (none containing a FAMILY2 syllable), and half of the facts
# are stated in plain key-value frames whose key is an attribute noun or an invented word, so the one cue left is
# the key shared by question and statement. None of these frames or nouns is a family2 phrasing or its key word.
BROAD_ONSETS = ("", "b", "br", "c", "ch", "d", "dr", "f", "fl", "g", "gr", "h", "j", "k", "kl", "l", "m", "n", "p",
                "pl", "r", "s", "sk", "st", "t", "tr", "v", "w", "z")
BROAD_VOWELS = ("a", "e", "i", "o", "u", "ai", "au", "ea", "ie", "oa")
BROAD_CODAS = ("", "", "", "l", "m", "n", "r", "s", "t", "nd", "rk", "st")
BROAD_KEY_NOUNS: dict[str, tuple[str, ...]] = {
    "birth_date": ("birthday", "date of birth"),
    "birth_city": ("birthplace", "home town", "city of birth"),
    "residence": ("home city", "current city", "city of residence"),
    "job": ("job", "profession", "trade"),
    "employer": ("employer", "firm", "workplace"),
    "school": ("alma mater", "university", "school"),
    "hobby": ("hobby", "favourite activity", "free-time activity"),
}
BROAD_FACT_FRAMES = (
    "{name}'s {key} is {value}.", "The {key} of {name} is {value}.", "For {name}, the {key} is {value}.",
    "{name} gives {value} as the {key}.", "{name} - {key}: {value}.", "Asked about the {key}, {name} said {value}.",
)
BROAD_QUESTION_FRAMES = (
    "What is the {key} of {name}?", "What is {name}'s {key}?", "Tell me the {key} of {name}.",
    "{name}: which {key}?", "Which {key} did {name} give?",
)
_FAMILY2_PIECES = tuple(s.lower() for s in FAMILY2_SYLLABLES)


def broad_word(rng: random.Random, lo: int = 1, hi: int = 3) -> str:
    """A capitalised letter string of ``lo..hi`` onset-vowel-coda syllables containing no FAMILY2 syllable."""
    while True:
        word = "".join(rng.choice(BROAD_ONSETS) + rng.choice(BROAD_VOWELS) + rng.choice(BROAD_CODAS)
                       for _ in range(rng.randint(lo, hi)))
        if len(word) >= 3 and not any(piece in word for piece in _FAMILY2_PIECES):
            return word.capitalize()


def broad_person(rng: random.Random) -> Person:
    """A person named by ``broad_word``s; places and the roots of employers and schools are broad words half of the
    time (else drawn from the bundled pools)."""

    def place() -> str:
        return broad_word(rng, 2, 3) if rng.random() < FRESH_VALUE_SHARE else rng.choice(CITIES)

    def organisation(pool: Sequence[str], patterns: Sequence[str]) -> str:
        return rng.choice(patterns).format(broad_word(rng, 2, 3)) if rng.random() < FRESH_VALUE_SHARE \
            else rng.choice(pool)

    birth_city, residence = place(), place()
    while residence == birth_city:
        residence = place()
    return Person(
        first_name=broad_word(rng), last_name=broad_word(rng, 2, 4), pronoun=_weighted(rng, PRONOUN_WEIGHTS),
        birth_date=_random_date(rng), birth_city=birth_city, residence=residence, job=rng.choice(JOBS),
        employer=organisation(EMPLOYERS, EMPLOYER_PATTERNS), school=organisation(SCHOOLS, SCHOOL_PATTERNS),
        hobby=rng.choice(HOBBIES),
    )


def _broad_paragraph(person: Person, rng: random.Random, num_facts: int) -> tuple[str, list[dict[str, Any]]]:
    """``num_facts`` facts of ``person``: each an attribute (in a train phrasing or a key-value frame) or an invented
    key with a broad-word value, always in a key-value frame. Keys and values are distinct within the paragraph."""
    attributes = rng.sample(ATTRIBUTES, min(num_facts, len(ATTRIBUTES)))
    sentences, qa, used_keys = [], [], set()
    for attribute in attributes:
        if rng.random() < 0.3:  # an invented key: only the key word ties the question to its statement
            key, value = broad_word(rng, 2, 3).lower(), broad_word(rng, 1, 3)
        else:
            key, value = rng.choice(BROAD_KEY_NOUNS[attribute]), person.attribute(attribute)
        if key in used_keys or any(value == q["answers"][0] for q in qa):
            continue
        used_keys.add(key)
        if key in BROAD_KEY_NOUNS[attribute] and rng.random() < 0.5:
            sentence = render_fact(rng.choice(_allowed("fact", attribute, "train", opening=not sentences)), person)
        else:
            sentence = rng.choice(BROAD_FACT_FRAMES).format(name=person.full_name, key=key, value=value)
        sentences.append(sentence[0].upper() + sentence[1:])
        question = rng.choice(BROAD_QUESTION_FRAMES).format(name=person.full_name, key=key)
        qa.append({"question": question, "answers": [value]})
    return " ".join(sentences), qa


def _broad_group(rng: random.Random, min_people: int, max_people: int) -> list[Person]:
    """Compatible ``broad_person``s; the size is drawn anew before each addition (as the recorded broad and
    relation runs drew it), which favours small groups over a uniform draw in ``min_people..max_people``."""
    group: list[Person] = []
    while len(group) < rng.randint(min_people, max_people):
        candidate = broad_person(rng)
        if all(_compatible(candidate, other) for other in group):
            group.append(candidate)
    return group


def broad_document(rng: random.Random, min_people: int = 1, max_people: int = 2,
                   min_facts: int = 3, max_facts: int = 6) -> dict[str, Any]:
    """A training document about ``broad_person``s (see BROAD_KEY_NOUNS): answers can only be read, and the
    question's key is the cue to the sentence that states it."""
    group = _broad_group(rng, min_people, max_people)
    paragraphs, qa = [], []
    for person in group:
        paragraph, questions = _broad_paragraph(person, rng, rng.randint(min_facts, max_facts))
        paragraphs.append(paragraph)
        qa.extend(questions)
    rng.shuffle(qa)
    return {"id": "broad", "context": "\n\n".join(paragraphs), "qa": qa}


# Relation documents: every fact is stated by an invented relation (one or two generated words, value last, after a
# filler such as "in" or "the city of") and asked with the same relation word in a question frame of its own, and
# the values are of the same kinds as the attributes', so neither the wording nor the kind of value tells the facts
# apart: only the relation word shared by question and statement does. This is reading as lexical matching, the
# skill a reader of unseen phrasings (family2) needs.
RELATION_FACT_FRAMES = (
    "{name} {r} {filler}{value}.", "{name} {r} {r2} {filler}{value}.", "{Poss} {r} is {value}.",
    "{Poss} {r} {r2} is {value}.", "For {r}, {name} has {value}.", "{name}, when it comes to {r}: {value}.",
)
RELATION_QUESTION_FRAMES = (
    "What does {name} {r}?", "Which {r} does {name} have?", "What is {name}'s {r}?", "{name} {r} what?",
    "Where or what is the {r} of {name}?", "Which {r} is {name}'s?",
)
RELATION_FILLERS = ("", "", "in ", "at ", "as ", "from ", "with ", "on ", "the ", "a ")


def relation_document(rng: random.Random, min_people: int = 1, max_people: int = 2,
                      min_facts: int = 3, max_facts: int = 6) -> dict[str, Any]:
    """A training document of ``broad_person``s whose facts are all stated and asked by invented relations."""
    group = _broad_group(rng, min_people, max_people)
    paragraphs, qa = [], []
    for person in group:
        sentences, used = [], set()
        for attribute in rng.sample(ATTRIBUTES, rng.randint(min_facts, max_facts)):
            r, r2 = broad_word(rng, 1, 2).lower(), broad_word(rng, 1, 2).lower()
            value = person.attribute(attribute)
            if r in used or any(value == q["answers"][0] for q in qa):
                continue
            used.add(r)
            sentence = rng.choice(RELATION_FACT_FRAMES).format(
                name=person.full_name, Poss=f"{person.full_name}'s", r=r, r2=r2, filler=rng.choice(RELATION_FILLERS),
                value=value)
            sentences.append(sentence)
            qa.append({"question": rng.choice(RELATION_QUESTION_FRAMES).format(name=person.full_name, r=r),
                       "answers": [value]})
        paragraphs.append(" ".join(sentences))
    rng.shuffle(qa)
    return {"id": "relation", "context": "\n\n".join(paragraphs), "qa": qa}
