"""The built-in corpus: a small procedural world, so pretraining runs with no download.

A seeded generator invents one world of 10 towns (each on a fixed river, in a fixed region, with a fixed
market day and trade) and 600 people (each with a home town, a trade, an age, a pet with a name and a
colour, a favourite food, a sibling). Documents are short English texts about one person or one town,
one sentence per line in BERT's format; the corpus seed picks and words the documents, the world stays
the same, so a corpus of another seed is a held-out set about the same people. Facts are consistent within a document (the pet introduced as "a grey owl
called Mipo" is still the grey owl later on) and across the world (a baker always bakes bread in an oven;
a town's river never changes), and each document follows a loose narrative order (introduction, daily
work, an outing in time order, the evening). So masked words are predictable from context, a random
"next" sentence visibly belongs to another person, and swapped sentences break the order: MLM, NSP and
SOP losses fall within a few hundred steps of a tiny model. The text is generated, not copied; the same
seed gives the same bytes.
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from typing import Callable

from bert_jax.data.shards import atomic_directory

DEFAULT_NUM_DOCS = 6000  # about 3.5 MB of text
DEFAULT_VOCAB_SIZE = 4096
DOCS_PER_FILE = 1000
WORLD_PEOPLE = 600  # small on purpose: every fact recurs, so a tiny model learns it in a few hundred steps

_ONSETS = "b br c ch d dr f g gr h j k l m n p pr r s sh st t th tr v w z".split()
_VOWELS = "a e i o u ai ea oo ou".split()
_CODAS = ["", "", "", "n", "r", "l", "s", "m", "th", "nd", "rk"]
_TOWN_ENDS = "ton by ford ham dale wick mouth stead brook field".split()
_REGIONS = ["north", "south", "east", "west", "hills", "marshes", "coast", "valley"]
_DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
_COLOURS = "red blue green yellow black white brown grey golden spotted".split()
_FOODS = "apples cheese soup honey plums pie porridge beans eggs pears".split()
_SIBLINGS = ["brother", "sister", "cousin"]
_SIZES = ["small", "quiet", "busy", "large", "old"]
# trade: (worker, tool, product, place of work, verb phrase)
_TRADES = [
    ("baker", "oven", "bread", "bakery", "bakes bread"),
    ("smith", "hammer", "nails", "forge", "hammers iron"),
    ("farmer", "plough", "wheat", "field", "ploughs the land"),
    ("fisher", "net", "fish", "harbour", "casts nets"),
    ("weaver", "loom", "cloth", "workshop", "weaves cloth"),
    ("potter", "wheel", "pots", "kiln house", "shapes clay"),
    ("miller", "millstone", "flour", "mill", "grinds grain"),
    ("carpenter", "saw", "chairs", "timber yard", "cuts wood"),
    ("healer", "mortar", "medicine", "clinic", "mixes herbs"),
    ("teacher", "chalk", "lessons", "school", "teaches children"),
    ("merchant", "scales", "spices", "shop", "counts coins"),
    ("shepherd", "crook", "wool", "meadow", "watches the sheep"),
]
# pet: (animal, sound verb, food, favourite place)
_PETS = [
    ("dog", "barks", "bones", "the porch"),
    ("cat", "purrs", "milk", "the windowsill"),
    ("horse", "neighs", "hay", "the stable"),
    ("goat", "bleats", "turnips", "the garden"),
    ("owl", "hoots", "mice", "the rafters"),
    ("parrot", "squawks", "seeds", "a perch"),
    ("rabbit", "thumps", "carrots", "a hutch"),
    ("duck", "quacks", "bread crumbs", "the pond"),
]


@dataclass(frozen=True)
class Town:
    name: str
    river: str
    region: str
    market_day: str
    trade: int
    size: str


@dataclass(frozen=True)
class Person:
    first: str
    family: str
    town: int
    trade: int
    age: int
    pet: int
    pet_name: str
    pet_colour: str
    food: str
    sibling: str
    sibling_name: str


def _word(rnd: random.Random, syllables: int) -> str:
    return "".join(rnd.choice(_ONSETS) + rnd.choice(_VOWELS) + rnd.choice(_CODAS) for _ in range(syllables)).capitalize()


def _unique_words(rnd: random.Random, n: int, make: Callable[[], str]) -> list[str]:
    seen: dict[str, None] = {}
    while len(seen) < n:
        seen.setdefault(make(), None)
    return list(seen)


def make_world(num_people: int, rnd: random.Random) -> tuple[list[Town], list[Person]]:
    num_towns = max(8, num_people // 60)
    town_names = _unique_words(rnd, num_towns, lambda: _word(rnd, rnd.randint(1, 2)) + rnd.choice(_TOWN_ENDS))
    rivers = _unique_words(rnd, max(4, num_towns // 3), lambda: _word(rnd, 2))
    towns = [Town(name, rnd.choice(rivers), rnd.choice(_REGIONS), rnd.choice(_DAYS), rnd.randrange(len(_TRADES)),
                  rnd.choice(_SIZES)) for name in town_names]
    firsts = _unique_words(rnd, max(50, num_people // 10), lambda: _word(rnd, rnd.randint(1, 2)))
    families = _unique_words(rnd, max(30, num_people // 20), lambda: _word(rnd, 2))
    pet_names = _unique_words(rnd, 80, lambda: _word(rnd, rnd.randint(1, 2)))
    people = []
    for _ in range(num_people):
        t = rnd.randrange(num_towns)
        trade = towns[t].trade if rnd.random() < 0.4 else rnd.randrange(len(_TRADES))
        people.append(Person(rnd.choice(firsts), rnd.choice(families), t, trade, rnd.randint(18, 80),
                             rnd.randrange(len(_PETS)), rnd.choice(pet_names), rnd.choice(_COLOURS),
                             rnd.choice(_FOODS), rnd.choice(_SIBLINGS), rnd.choice(firsts)))
    return towns, people


def person_document(p: Person, towns: list[Town], rnd: random.Random) -> list[str]:
    town = towns[p.town]
    worker, tool, product, workplace, doing = _TRADES[p.trade]
    animal, sound, pet_food, pet_place = _PETS[p.pet]
    name, full = p.first, f"{p.first} {p.family}"
    intro = rnd.choice([f"{full} lives in {town.name}.", f"{full} is a {worker} from {town.name}.",
                        f"This is the story of {full} of {town.name}."])
    facts = [
        f"{town.name} lies on the {town.river} river in the {town.region}.",
        f"{name} is {p.age} years old and works as a {worker}.",
        f"Every day {name} {doing} at the {workplace}.",
        f"A {worker} needs a good {tool} to make {product}.",
    ]
    rnd.shuffle(facts[1:])  # the town fact stays next to the introduction
    pet = [
        f"{name} has a {p.pet_colour} {animal} called {p.pet_name}.",
        f"{p.pet_name} {sound} whenever a stranger comes near.",
        f"The {p.pet_colour} {animal} likes to sit on {pet_place}.",
    ]
    outing = [
        f"On {town.market_day} {name} gets up early.",
        f"First {name} packs the {product} into a basket.",
        f"Then {name} walks along the {town.river} to the market of {town.name}.",
        f"After that {name} sells the {product} and buys {p.food}.",
        f"Finally {name} comes home to {p.pet_name} before dark.",
    ]
    family = [f"{name} has a {p.sibling} called {p.sibling_name}.",
              f"{p.sibling_name} visits {town.name} when the market is held on {town.market_day}."]
    evening = [f"In the evening {p.pet_name} eats {pet_food} and {name} eats {p.food}.",
               f"At night the {p.pet_colour} {animal} sleeps near the fire."]
    doc = [intro, *facts[: rnd.randint(2, 4)], *pet[: rnd.randint(1, 3)]]
    doc += outing if rnd.random() < 0.7 else outing[:2]
    if rnd.random() < 0.6:
        doc += family
    doc += evening[: rnd.randint(1, 2)]
    return doc


def town_document(t: Town, residents: list[Person], rnd: random.Random) -> list[str]:
    worker, tool, product, workplace, _ = _TRADES[t.trade]
    doc = [
        rnd.choice([f"{t.name} is a {t.size} town in the {t.region}.", f"The town of {t.name} is in the {t.region}."]),
        f"The {t.river} river flows past {t.name}.",
        f"The market of {t.name} is held every {t.market_day}.",
        f"Many people in {t.name} work as a {worker}, so the town is known for its {product}.",
        f"Each {worker} in {t.name} keeps a {tool} at the {workplace}.",
    ]
    for p in rnd.sample(residents, min(4, len(residents))):
        doc.append(f"{p.first} {p.family} lives in {t.name} and works as a {_TRADES[p.trade][0]}.")
    doc.append(rnd.choice([f"Visitors to {t.name} often buy {product} on {t.market_day}.",
                           f"On {t.market_day} the road to {t.name} is full of carts."]))
    return doc


def generate_documents(num_docs: int, seed: int, world_seed: int = 0) -> list[list[str]]:
    """`num_docs` documents (lists of sentences): 80% about a person, 20% about a town.

    The world depends only on `world_seed`, the choice and wording of documents on `seed`: corpora of
    different seeds are new documents about the same people and towns (a held-out set with the same facts)."""
    towns, people = make_world(WORLD_PEOPLE, random.Random(world_seed))
    residents: dict[int, list[Person]] = {}
    for p in people:
        residents.setdefault(p.town, []).append(p)
    rnd = random.Random(seed)
    docs = []
    for _ in range(num_docs):
        if rnd.random() < 0.8:
            docs.append(person_document(rnd.choice(people), towns, rnd))
        else:
            t = rnd.randrange(len(towns))
            docs.append(town_document(towns[t], residents.get(t, []), rnd))
    return docs


def write_builtin_corpus(out_dir: str, num_docs: int = DEFAULT_NUM_DOCS, seed: int = 0) -> list[str]:
    """Write the corpus in BERT format (sentence per line, blank line between documents); cached.

    Returns the file paths. The directory appears only when complete (written aside, then renamed)."""
    marker = os.path.join(out_dir, "corpus.json")
    if not os.path.isfile(marker):
        with atomic_directory(out_dir, "corpus") as tmp:
            docs = generate_documents(num_docs, seed)
            for f, lo in enumerate(range(0, num_docs, DOCS_PER_FILE)):
                with open(os.path.join(tmp, f"builtin-{f:05d}.txt"), "w", encoding="utf-8") as out:
                    out.write("\n".join("\n".join(doc) + "\n" for doc in docs[lo:lo + DOCS_PER_FILE]))
            with open(os.path.join(tmp, "corpus.json"), "w") as out:
                json.dump({"num_docs": num_docs, "seed": seed}, out)
    return sorted(os.path.join(out_dir, n) for n in os.listdir(out_dir) if n.endswith(".txt"))
