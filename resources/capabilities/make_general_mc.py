"""Write ``general_mc.jsonl``: an offline four-way multiple-choice check of general capability.

Why this file exists, and why about 1,200 items: table5 asks whether fine-tuning changes a
model's general capability by less than 2 accuracy points. Both models answer the same items, so
the question is about a *paired* difference: its 95% interval is about ``1.96 * sqrt(d / n)``
points (times 100), with ``d`` the share of items whose correctness differs between the two
models (the discordant items) and ``n`` the number of items. A fine-tune that leaves the model
mostly alone flips perhaps one item in ten (``d`` around 0.1), so the half-width is
``1.96 * sqrt(0.1 / n)``: 9.8 points at the 40 items of ``multiple_choice.jsonl``, 2.0 points at
n = 1,000 and 1.8 at n = 1,200. So at least 1,200 items (we write about 1,400, which leaves room
for a category to be dropped).

Everything here is our own: hand-written fact lists (well-known facts are not copyrightable) and
templates; no benchmark's text is copied. No network, no third-party package. Each category has
its own ``random.Random`` seeded from ``SEED`` and the category's name (string seeds are hashed
with SHA-512, not Python's per-process hash), so a change to one category leaves the others as
they are, and running this script twice writes the same bytes::

    python resources/capabilities/make_general_mc.py            # rewrites general_mc.jsonl
    python resources/capabilities/make_general_mc.py --check    # exit 1 if the file is stale

Decisions:

- Distractors come from the same category (other capitals for a capital, other animal classes,
  nearby numbers, wrong but plausible plural or past-tense forms), so an item cannot be answered
  by spotting the odd one out.
- No distractor repeats a word or number of the question (the asked day or letter, the verb whose
  past is asked, the terms of a sequence, the operands of a sum): under log-likelihood scoring a
  copied word draws the model to it whatever it knows (the embedded SmolLM2-135M chose the copied
  verb for 16 of 30 past-tense items when it was offered, 4% accuracy on the category). The
  exceptions are by construction: an unchanged plural ("sheep") and the numbers of a comparison.
- The correct answer's slot is balanced over the whole file (each of the four slots holds the
  answer for a quarter of the items, within one item): a model that prefers one slot gains
  nothing. (With lm-eval's log-likelihood scoring the slot does not matter anyway; it matters for
  a prompt that lists the choices.)
- The items are shuffled across categories before they are numbered, so lm-eval's ``--limit N``
  (the first N documents) is a mixed sample rather than the first category alone.
- Questions are unique (a duplicate is an error here, not silently dropped), and no category holds
  more than 25% of the items (checked before writing).
- Plain ASCII only (city names without accents), so the text is the same whatever the tokenizer's
  normalisation.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from pathlib import Path

SEED = 20260524
OUT = Path(__file__).with_name("general_mc.jsonl")
MAX_CATEGORY_SHARE = 0.25

# ---- hand-written fact lists --------------------------------------------------------------------

# (country as written in a sentence, country as a choice, capital)
CAPITALS = [
    ("France", "France", "Paris"),
    ("Germany", "Germany", "Berlin"),
    ("Italy", "Italy", "Rome"),
    ("Spain", "Spain", "Madrid"),
    ("Portugal", "Portugal", "Lisbon"),
    ("the United Kingdom", "United Kingdom", "London"),
    ("Ireland", "Ireland", "Dublin"),
    ("the Netherlands", "Netherlands", "Amsterdam"),
    ("Belgium", "Belgium", "Brussels"),
    ("Austria", "Austria", "Vienna"),
    ("Switzerland", "Switzerland", "Bern"),
    ("Poland", "Poland", "Warsaw"),
    ("the Czech Republic", "Czech Republic", "Prague"),
    ("Hungary", "Hungary", "Budapest"),
    ("Greece", "Greece", "Athens"),
    ("Sweden", "Sweden", "Stockholm"),
    ("Norway", "Norway", "Oslo"),
    ("Denmark", "Denmark", "Copenhagen"),
    ("Finland", "Finland", "Helsinki"),
    ("Iceland", "Iceland", "Reykjavik"),
    ("Russia", "Russia", "Moscow"),
    ("Ukraine", "Ukraine", "Kyiv"),
    ("Romania", "Romania", "Bucharest"),
    ("Bulgaria", "Bulgaria", "Sofia"),
    ("Serbia", "Serbia", "Belgrade"),
    ("Croatia", "Croatia", "Zagreb"),
    ("Slovakia", "Slovakia", "Bratislava"),
    ("Slovenia", "Slovenia", "Ljubljana"),
    ("Estonia", "Estonia", "Tallinn"),
    ("Latvia", "Latvia", "Riga"),
    ("Lithuania", "Lithuania", "Vilnius"),
    ("Malta", "Malta", "Valletta"),
    ("Cyprus", "Cyprus", "Nicosia"),
    ("Turkey", "Turkey", "Ankara"),
    ("the country Georgia", "Georgia", "Tbilisi"),
    ("Armenia", "Armenia", "Yerevan"),
    ("Azerbaijan", "Azerbaijan", "Baku"),
    ("Egypt", "Egypt", "Cairo"),
    ("Kenya", "Kenya", "Nairobi"),
    ("Nigeria", "Nigeria", "Abuja"),
    ("Ethiopia", "Ethiopia", "Addis Ababa"),
    ("Morocco", "Morocco", "Rabat"),
    ("Ghana", "Ghana", "Accra"),
    ("Algeria", "Algeria", "Algiers"),
    ("Tunisia", "Tunisia", "Tunis"),
    ("Senegal", "Senegal", "Dakar"),
    ("Uganda", "Uganda", "Kampala"),
    ("Zimbabwe", "Zimbabwe", "Harare"),
    ("Japan", "Japan", "Tokyo"),
    ("China", "China", "Beijing"),
    ("South Korea", "South Korea", "Seoul"),
    ("India", "India", "New Delhi"),
    ("Pakistan", "Pakistan", "Islamabad"),
    ("Bangladesh", "Bangladesh", "Dhaka"),
    ("Thailand", "Thailand", "Bangkok"),
    ("Vietnam", "Vietnam", "Hanoi"),
    ("the Philippines", "Philippines", "Manila"),
    ("Malaysia", "Malaysia", "Kuala Lumpur"),
    ("Nepal", "Nepal", "Kathmandu"),
    ("Mongolia", "Mongolia", "Ulaanbaatar"),
    ("Cambodia", "Cambodia", "Phnom Penh"),
    ("Iran", "Iran", "Tehran"),
    ("Iraq", "Iraq", "Baghdad"),
    ("Saudi Arabia", "Saudi Arabia", "Riyadh"),
    ("Afghanistan", "Afghanistan", "Kabul"),
    ("Jordan", "Jordan", "Amman"),
    ("Lebanon", "Lebanon", "Beirut"),
    ("Syria", "Syria", "Damascus"),
    ("Qatar", "Qatar", "Doha"),
    ("Australia", "Australia", "Canberra"),
    ("New Zealand", "New Zealand", "Wellington"),
    ("Canada", "Canada", "Ottawa"),
    ("the United States", "United States", "Washington, D.C."),
    ("Mexico", "Mexico", "Mexico City"),
    ("Cuba", "Cuba", "Havana"),
    ("Jamaica", "Jamaica", "Kingston"),
    ("Argentina", "Argentina", "Buenos Aires"),
    ("Brazil", "Brazil", "Brasilia"),
    ("Chile", "Chile", "Santiago"),
    ("Peru", "Peru", "Lima"),
    ("Colombia", "Colombia", "Bogota"),
    ("Venezuela", "Venezuela", "Caracas"),
    ("Ecuador", "Ecuador", "Quito"),
    ("Uruguay", "Uruguay", "Montevideo"),
]

_ANIMALS = {
    "mammal": "dog cat horse cow sheep pig goat lion tiger elephant giraffe zebra bear wolf fox rabbit "
    "mouse squirrel deer camel kangaroo koala bat whale dolphin gorilla hippopotamus otter hedgehog "
    "beaver badger panda donkey leopard cheetah",
    "bird": "eagle owl sparrow robin parrot penguin ostrich swan duck goose pigeon crow hawk flamingo "
    "peacock pelican woodpecker seagull heron falcon emu",
    "fish": "salmon trout cod tuna shark goldfish carp herring mackerel sardine pike haddock",
    "reptile": "snake lizard crocodile alligator tortoise iguana gecko chameleon cobra",
    "amphibian": "frog toad newt salamander axolotl",
    "insect": "ant bee wasp butterfly moth beetle mosquito grasshopper ladybird dragonfly termite flea "
    "cockroach",
    "arachnid": "spider scorpion tick",
}
ANIMAL_CLASSES = {cls: names.split() for cls, names in _ANIMALS.items()}

# (word, its opposite); asked in this direction only, so a word with two opposites is listed once.
OPPOSITES = [
    ("hot", "cold"), ("cold", "hot"), ("up", "down"), ("down", "up"), ("fast", "slow"),
    ("slow", "fast"), ("early", "late"), ("late", "early"), ("full", "empty"), ("empty", "full"),
    ("wet", "dry"), ("dry", "wet"), ("open", "closed"), ("closed", "open"), ("heavy", "light"),
    ("tall", "short"), ("wide", "narrow"), ("narrow", "wide"), ("thick", "thin"), ("deep", "shallow"),
    ("shallow", "deep"), ("rich", "poor"), ("poor", "rich"), ("strong", "weak"), ("weak", "strong"),
    ("loud", "quiet"), ("quiet", "loud"), ("clean", "dirty"), ("dirty", "clean"), ("cheap", "expensive"),
    ("expensive", "cheap"), ("asleep", "awake"), ("awake", "asleep"), ("inside", "outside"),
    ("outside", "inside"), ("above", "below"), ("below", "above"), ("before", "after"), ("after", "before"),
    ("first", "last"), ("last", "first"), ("win", "lose"), ("lose", "win"), ("buy", "sell"), ("sell", "buy"),
    ("push", "pull"), ("pull", "push"), ("give", "take"), ("arrive", "leave"), ("begin", "end"),
    ("accept", "refuse"), ("remember", "forget"), ("forget", "remember"), ("question", "answer"),
    ("day", "night"), ("night", "day"), ("summer", "winter"), ("winter", "summer"), ("north", "south"),
    ("south", "north"), ("east", "west"), ("west", "east"), ("left", "right"), ("top", "bottom"),
    ("bottom", "top"), ("front", "back"), ("entrance", "exit"), ("exit", "entrance"), ("always", "never"),
    ("never", "always"), ("everything", "nothing"), ("nothing", "everything"), ("sweet", "sour"),
    ("rough", "smooth"), ("smooth", "rough"), ("sharp", "blunt"), ("blunt", "sharp"), ("tight", "loose"),
    ("loose", "tight"), ("near", "far"), ("far", "near"), ("true", "false"), ("false", "true"),
    ("safe", "dangerous"), ("dangerous", "safe"), ("easy", "difficult"), ("difficult", "easy"),
    ("ancient", "modern"), ("modern", "ancient"), ("maximum", "minimum"), ("minimum", "maximum"),
    ("increase", "decrease"), ("decrease", "increase"), ("float", "sink"), ("sink", "float"),
    ("import", "export"), ("export", "import"), ("visible", "invisible"), ("invisible", "visible"),
    ("possible", "impossible"), ("impossible", "possible"), ("solid", "liquid"), ("liquid", "solid"),
    ("shut", "open"),
]  # fmt: skip

# (singular, plural)
PLURALS = [
    ("cat", "cats"), ("box", "boxes"), ("baby", "babies"), ("child", "children"), ("mouse", "mice"),
    ("tooth", "teeth"), ("foot", "feet"), ("goose", "geese"), ("leaf", "leaves"),
    ("knife", "knives"), ("wolf", "wolves"), ("city", "cities"), ("dish", "dishes"),
    ("church", "churches"), ("potato", "potatoes"), ("tomato", "tomatoes"), ("sheep", "sheep"),
    ("deer", "deer"), ("ox", "oxen"), ("life", "lives"), ("half", "halves"), ("shelf", "shelves"),
    ("loaf", "loaves"), ("calf", "calves"), ("party", "parties"), ("story", "stories"), ("key", "keys"),
    ("day", "days"), ("toy", "toys"), ("glass", "glasses"), ("fox", "foxes"), ("watch", "watches"),
    ("brush", "brushes"), ("hero", "heroes"), ("echo", "echoes"), ("piano", "pianos"), ("photo", "photos"),
    ("radio", "radios"), ("thief", "thieves"), ("crisis", "crises"),
    ("analysis", "analyses"), ("phenomenon", "phenomena"), ("country", "countries"),
    ("family", "families"), ("monkey", "monkeys"), ("valley", "valleys"), ("book", "books"),
    ("apple", "apples"), ("tree", "trees"), ("house", "houses"), ("kiss", "kisses"), ("bench", "benches"),
    ("wish", "wishes"), ("tax", "taxes"), ("quiz", "quizzes"), ("cherry", "cherries"), ("puppy", "puppies"),
    ("fly", "flies"), ("sky", "skies"), ("berry", "berries"), ("elf", "elves"), ("series", "series"),
    ("species", "species"), ("aircraft", "aircraft"), ("chair", "chairs"), ("spoon", "spoons"),
]  # fmt: skip

# (verb, simple past)
PAST_TENSE = [
    ("go", "went"), ("eat", "ate"), ("see", "saw"), ("run", "ran"), ("swim", "swam"), ("write", "wrote"),
    ("take", "took"), ("give", "gave"), ("come", "came"), ("drink", "drank"), ("sing", "sang"),
    ("begin", "began"), ("fly", "flew"), ("know", "knew"), ("grow", "grew"), ("throw", "threw"),
    ("draw", "drew"), ("drive", "drove"), ("ride", "rode"), ("speak", "spoke"), ("break", "broke"),
    ("choose", "chose"), ("freeze", "froze"), ("sleep", "slept"), ("keep", "kept"), ("leave", "left"),
    ("meet", "met"), ("buy", "bought"), ("bring", "brought"), ("think", "thought"), ("teach", "taught"),
    ("catch", "caught"), ("fight", "fought"), ("sell", "sold"), ("tell", "told"), ("find", "found"),
    ("stand", "stood"), ("understand", "understood"), ("sit", "sat"), ("forget", "forgot"),
    ("make", "made"), ("say", "said"), ("pay", "paid"), ("build", "built"), ("send", "sent"),
    ("spend", "spent"), ("lose", "lost"), ("hold", "held"), ("win", "won"), ("hear", "heard"),
    ("wear", "wore"), ("bite", "bit"), ("hide", "hid"), ("shake", "shook"), ("fall", "fell"),
    ("steal", "stole"), ("blow", "blew"), ("dig", "dug"), ("feed", "fed"), ("walk", "walked"),
    ("play", "played"), ("jump", "jumped"), ("cry", "cried"), ("stop", "stopped"), ("plan", "planned"),
    ("carry", "carried"), ("dance", "danced"), ("study", "studied"), ("cook", "cooked"), ("try", "tried"),
    ("open", "opened"), ("clean", "cleaned"), ("visit", "visited"), ("bake", "baked"), ("paint", "painted"),
]  # fmt: skip

# (quantity asked for, unit it is counted in, how many of the first make one of the second)
UNITS = [
    ("minutes", "hour", 60),
    ("seconds", "minute", 60),
    ("hours", "day", 24),
    ("days", "week", 7),
    ("months", "year", 12),
    ("weeks", "fortnight", 2),
    ("centimetres", "metre", 100),
    ("millimetres", "centimetre", 10),
    ("metres", "kilometre", 1000),
    ("grams", "kilogram", 1000),
    ("millilitres", "litre", 1000),
    ("years", "decade", 10),
    ("years", "century", 100),
    ("cents", "dollar", 100),
    ("pence", "pound", 100),
    ("eggs", "dozen", 12),
]

# (question, answer, three distractors): counts of everyday things.
COUNTS = [
    ("How many sides does a triangle have?", "3", ["4", "5", "6"]),
    ("How many sides does a square have?", "4", ["3", "5", "6"]),
    ("How many sides does a pentagon have?", "5", ["4", "6", "8"]),
    ("How many sides does a hexagon have?", "6", ["5", "7", "8"]),
    ("How many sides does an octagon have?", "8", ["6", "7", "10"]),
    ("How many sides does a decagon have?", "10", ["8", "12", "9"]),
    ("How many corners does a rectangle have?", "4", ["3", "5", "6"]),
    ("How many faces does a cube have?", "6", ["4", "8", "12"]),
    ("How many edges does a cube have?", "12", ["6", "8", "10"]),
    ("How many corners does a cube have?", "8", ["6", "4", "12"]),
    ("How many legs does a spider have?", "8", ["6", "4", "10"]),
    ("How many legs does an insect have?", "6", ["4", "8", "10"]),
    ("How many legs does a dog have?", "4", ["2", "6", "8"]),
    ("How many legs does a chicken have?", "2", ["4", "3", "6"]),
    ("How many arms does an octopus have?", "8", ["6", "10", "4"]),
    ("How many wheels does a bicycle have?", "2", ["3", "4", "1"]),
    ("How many wheels does a tricycle have?", "3", ["2", "4", "5"]),
    ("How many wheels does an ordinary car have?", "4", ["2", "3", "6"]),
    ("How many days are there in a year that is not a leap year?", "365", ["360", "364", "366"]),
    ("How many days are there in a leap year?", "366", ["365", "364", "367"]),
    ("How many days does February have in a leap year?", "29", ["28", "30", "31"]),
    ("How many days does February have in a year that is not a leap year?", "28", ["29", "30", "27"]),
    ("How many days are there in the month of April?", "30", ["31", "28", "29"]),
    ("How many days are there in the month of July?", "31", ["30", "29", "28"]),
    ("How many months of the year have 31 days?", "7", ["6", "5", "8"]),
    ("How many planets are there in our solar system?", "8", ["7", "9", "10"]),
    ("How many cards are in a standard deck without jokers?", "52", ["48", "50", "54"]),
    ("How many squares are on a chessboard?", "64", ["48", "72", "81"]),
    ("How many pieces does each player have at the start of a game of chess?", "16", ["12", "14", "18"]),
    ("How many strings does a standard guitar have?", "6", ["4", "5", "7"]),
    ("How many hours are marked on an ordinary clock face?", "12", ["10", "24", "6"]),
    ("How many letters are there in the English alphabet?", "26", ["24", "25", "28"]),
    ("How many vowels are there in the English alphabet, not counting y?", "5", ["4", "6", "7"]),
    ("How many sides does a coin have?", "2", ["1", "3", "4"]),
    ("How many zeros are there in one million?", "6", ["5", "7", "9"]),
    ("How many zeros are there in one thousand?", "3", ["2", "4", "5"]),
    ("How many zeros are there in one hundred?", "2", ["1", "3", "4"]),
    ("How many sides does a stop sign usually have?", "8", ["6", "5", "10"]),
    ("How many legs does a tripod have?", "3", ["2", "4", "5"]),
    ("How many players are on the pitch for one team in a game of football?", "11", ["9", "10", "12"]),
    ("How many digits are there in the number 1000?", "4", ["3", "5", "2"]),
    ("How many right angles does a square have?", "4", ["2", "3", "1"]),
    ("How many eyes does a person usually have?", "2", ["1", "3", "4"]),
    ("How many thumbs are there on one hand?", "1", ["2", "3", "0"]),
    ("How many fingers and thumbs are there on two hands together?", "10", ["8", "12", "5"]),
    ("How many seasons are there in a year in most temperate countries?", "4", ["2", "3", "5"]),
]

# (question, answer, three distractors): basic science.
SCIENCE = [
    ("Which gas do plants take in from the air to make their food?", "carbon dioxide",
     ["oxygen", "nitrogen", "helium"]),
    ("Which gas do people need to breathe in to stay alive?", "oxygen", ["carbon dioxide", "helium", "neon"]),
    ("What is the chemical formula of water?", "H2O", ["CO2", "O2", "NaCl"]),
    ("What is the chemical symbol for gold?", "Au", ["Ag", "Gd", "Go"]),
    ("What is the chemical symbol for iron?", "Fe", ["Ir", "In", "F"]),
    ("What is the chemical symbol for sodium?", "Na", ["So", "S", "Sd"]),
    ("What is the chemical symbol for oxygen?", "O", ["Ox", "Og", "Os"]),
    ("Which is the lightest chemical element?", "hydrogen", ["helium", "oxygen", "carbon"]),
    ("What is common table salt made of?", "sodium chloride", ["calcium carbonate", "sodium bicarbonate",
                                                               "potassium nitrate"]),
    ("At what temperature in degrees Celsius does pure water freeze at sea level?", "0", ["10", "-10", "4"]),
    ("At what temperature in degrees Celsius does pure water boil at sea level?", "100",
     ["90", "80", "120"]),
    ("Which planet is closest to the Sun?", "Mercury", ["Venus", "Earth", "Mars"]),
    ("Which planet is the largest in our solar system?", "Jupiter", ["Saturn", "Neptune", "Earth"]),
    ("Which planet is known as the red planet?", "Mars", ["Venus", "Jupiter", "Mercury"]),
    ("Which planet has the most famous rings?", "Saturn", ["Mars", "Mercury", "Venus"]),
    ("What is the name of the star at the centre of our solar system?", "the Sun",
     ["the Moon", "Polaris", "Sirius"]),
    ("What natural object orbits the Earth about once a month?", "the Moon", ["the Sun", "Mars", "a comet"]),
    ("How long does the Earth take to go once around the Sun?", "about a year",
     ["about a day", "about a month", "about a week"]),
    ("How long does the Earth take to spin once on its axis?", "about a day",
     ["about a year", "about a month", "about an hour"]),
    ("What force pulls objects towards the ground?", "gravity", ["magnetism", "friction", "static"]),
    ("What force slows down a sliding box on a rough floor?", "friction", ["gravity", "buoyancy", "lift"]),
    ("What do we call water in its solid form?", "ice", ["steam", "vapour", "mist"]),
    ("What do we call water in the form of a gas?", "water vapour", ["ice", "frost", "sleet"]),
    ("What is the process called when liquid water turns into a gas?", "evaporation",
     ["condensation", "freezing", "melting"]),
    ("What is the process called when water vapour turns into liquid drops?", "condensation",
     ["evaporation", "melting", "erosion"]),
    ("What is the process by which plants use sunlight to make food?", "photosynthesis",
     ["respiration", "digestion", "fermentation"]),
    ("Which part of a plant takes up water from the soil?", "the roots", ["the petals", "the flowers",
                                                                          "the seeds"]),
    ("Which part of a plant usually makes most of its food?", "the leaves", ["the roots", "the bark",
                                                                             "the seeds"]),
    ("Which organ pumps blood around the human body?", "the heart", ["the lungs", "the liver",
                                                                     "the kidneys"]),
    ("Which organs do people use to breathe?", "the lungs", ["the kidneys", "the stomach", "the liver"]),
    ("Which organ controls thinking and memory?", "the brain", ["the heart", "the stomach", "the lungs"]),
    ("What is the hard tissue that makes up the skeleton?", "bone", ["muscle", "skin", "fat"]),
    ("Which blood cells carry oxygen around the body?", "red blood cells",
     ["white blood cells", "platelets", "nerve cells"]),
    ("How many bones are in the body of an adult human?", "206", ["106", "306", "150"]),
    ("What is the largest organ of the human body?", "the skin", ["the liver", "the heart", "the brain"]),
    ("Which sense do people use their ears for?", "hearing", ["smell", "taste", "sight"]),
    ("Which sense do people use their nose for?", "smell", ["hearing", "sight", "touch"]),
    ("What does a thermometer measure?", "temperature", ["weight", "length", "speed"]),
    ("What does a barometer measure?", "air pressure", ["rainfall", "wind direction", "temperature"]),
    ("What does a compass needle point towards?", "north", ["east", "west", "the sun"]),
    ("What is the speed of light closest to?", "300,000 kilometres per second",
     ["300 kilometres per second", "3,000 kilometres per second", "30 kilometres per second"]),
    ("What travels faster, light or sound?", "light", ["sound", "they travel equally fast",
                                                       "it depends on the colour"]),
    ("What kind of energy does a moving car have?", "kinetic energy", ["nuclear energy",
                                                                       "chemical energy only",
                                                                       "no energy"]),
    ("Which metal is liquid at room temperature?", "mercury", ["iron", "copper", "aluminium"]),
    ("Which material is a good conductor of electricity?", "copper", ["rubber", "wood", "glass"]),
    ("Which material is a good electrical insulator?", "rubber", ["copper", "silver", "iron"]),
    ("What do magnets attract?", "iron", ["wood", "plastic", "glass"]),
    ("What is the centre of an atom called?", "the nucleus", ["the electron", "the shell", "the orbit"]),
    ("Which particle in an atom has a negative charge?", "the electron", ["the proton", "the neutron",
                                                                          "the nucleus"]),
    ("What is the main gas in the air we breathe?", "nitrogen", ["oxygen", "carbon dioxide", "hydrogen"]),
    ("What colour is the sky on a clear day?", "blue", ["green", "red", "yellow"]),
    ("Which colours of light are in a rainbow?", "all the colours of the spectrum",
     ["only red and blue", "only yellow", "only green and violet"]),
    ("What is the hottest planet in our solar system?", "Venus", ["Mercury", "Mars", "Jupiter"]),
    ("What is the boiling point of water in degrees Fahrenheit at sea level?", "212", ["100", "180", "32"]),
    ("What is the freezing point of water in degrees Fahrenheit?", "32", ["0", "12", "100"]),
    ("What kind of rock forms when lava cools?", "igneous rock", ["sedimentary rock",
                                                                  "metamorphic rock", "chalk"]),
    ("What do bees collect from flowers to make honey?", "nectar", ["pollen only", "sap", "dew"]),
    ("What do caterpillars turn into?", "butterflies or moths", ["beetles", "spiders", "bees"]),
    ("What do tadpoles grow into?", "frogs", ["fish", "snails", "lizards"]),
    ("What is the young of a frog called?", "a tadpole", ["a cub", "a foal", "a chick"]),
    ("What does the heart pump around the body?", "blood", ["air", "water", "food"]),
    ("What happens to most metals when they are heated?", "they expand", ["they shrink",
                                                                          "they turn to gas",
                                                                          "they become magnetic"]),
    ("What is the name of the layer of gas that surrounds the Earth?", "the atmosphere",
     ["the crust", "the mantle", "the core"]),
    ("What is the outer layer of the Earth called?", "the crust", ["the core", "the mantle",
                                                                   "the atmosphere"]),
    ("What causes day and night on Earth?", "the Earth spinning on its axis",
     ["the Moon blocking the Sun", "the Earth moving around the Sun", "clouds covering the sky"]),
    ("What causes the tides in the sea?", "mainly the pull of the Moon", ["the wind", "rivers",
                                                                          "earthquakes"]),
    ("What is a baby cat called?", "a kitten", ["a puppy", "a calf", "a foal"]),
    ("What is a baby dog called?", "a puppy", ["a kitten", "a lamb", "a cub"]),
    ("What is a baby sheep called?", "a lamb", ["a calf", "a kid", "a foal"]),
    ("What is a baby horse called?", "a foal", ["a lamb", "a piglet", "a cub"]),
    ("What do herbivores eat?", "plants", ["meat only", "insects only", "fish only"]),
    ("What do carnivores mainly eat?", "meat", ["grass", "fruit", "seeds"]),
    ("Which vitamin does the skin make in sunlight?", "vitamin D", ["vitamin C", "vitamin A", "vitamin K"]),
    ("What is the name of the tiny units that all living things are made of?", "cells",
     ["fibres", "crystals", "grains"]),
]  # fmt: skip

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = [
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
]  # fmt: skip
ORDINALS = [
    "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth",
    "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth", "seventeenth",
    "eighteenth", "nineteenth", "twentieth", "twenty-first", "twenty-second", "twenty-third",
    "twenty-fourth", "twenty-fifth", "twenty-sixth",
]  # fmt: skip
LETTERS = [chr(c) for c in range(ord("A"), ord("Z") + 1)]


# ---- helpers ----------------------------------------------------------------------------------------


def _pick(rng: random.Random, pool: list[str], answer: str, k: int = 3, exclude=()) -> list[str]:
    """``k`` distinct distractors from ``pool`` (not the answer, nor anything in ``exclude``)."""
    cands = sorted({p for p in pool if p != answer and p not in exclude})
    if len(cands) < k:
        raise ValueError(f"only {len(cands)} distractors for {answer!r} (need {k})")
    return rng.sample(cands, k)


def _near_numbers(
    rng: random.Random, answer: int, steps: list[int], k: int = 3, floor: int = 0, exclude=()
) -> list[str]:
    """``k`` distinct numbers near ``answer`` (answer + or - a step), none below ``floor``.

    ``exclude``: the numbers written in the question. A number copied from the question draws
    log-likelihood scoring to it whatever the model knows (the embedded model picks copied words
    far above chance), so no distractor repeats one. When the steps leave fewer than ``k`` (a small
    answer under a countdown whose terms are excluded), larger whole steps are added one by one."""
    steps, banned = list(steps), set(exclude)

    def usable() -> list[int]:
        cands = sorted({answer + s for s in steps} | {answer - s for s in steps})
        return [c for c in cands if c != answer and c >= floor and c not in banned]

    while len(usable()) < k:
        if len(steps) > 1000:
            raise ValueError(f"no {k} numeric distractors for {answer} (excluded: {sorted(banned)})")
        steps.append(max(steps) + 1)
    return [str(c) for c in rng.sample(usable(), k)]


def _item(category: str, question: str, answer: str, distractors: list[str]) -> dict:
    return {"category": category, "question": question, "answer_text": answer, "distractors": distractors}


# ---- categories -------------------------------------------------------------------------------------


def addition(rng: random.Random) -> list[dict]:
    pairs = sorted({(a, b) for a in range(2, 60) for b in range(2, 60)})
    out = []
    for a, b in rng.sample(pairs, 100):
        ans = a + b
        out.append(
            _item(
                "addition",
                f"What is {a} plus {b}?",
                str(ans),
                _near_numbers(rng, ans, [1, 2, 10, 11], exclude={a, b}),
            )
        )
    return out


def subtraction(rng: random.Random) -> list[dict]:
    pairs = sorted({(a, b) for a in range(10, 100) for b in range(2, 60) if b < a})
    out = []
    for a, b in rng.sample(pairs, 100):
        ans = a - b
        dis = _near_numbers(rng, ans, [1, 2, 10, 11], floor=0, exclude={a, b})
        out.append(_item("subtraction", f"What is {a} minus {b}?", str(ans), dis))
    return out


def multiplication(rng: random.Random) -> list[dict]:
    pairs = sorted({(a, b) for a in range(2, 13) for b in range(2, 13)})
    out = []
    for a, b in rng.sample(pairs, 100):
        ans = a * b
        cands = {(a + 1) * b, (a - 1) * b, a * (b + 1), a * (b - 1), ans + 1, ans - 1, ans + 10}
        dis = _pick(rng, [str(c) for c in cands if c > 0], str(ans), exclude={str(a), str(b)})
        out.append(_item("multiplication", f"What is {a} times {b}?", str(ans), dis))
    return out


def comparison(rng: random.Random) -> list[dict]:
    out, seen = [], set()
    while len(out) < 100:
        hi = rng.choice([50, 100, 1000])
        nums = rng.sample(range(1, hi), 4)
        if rng.random() < 0.35:  # a digit swap (47 / 74) makes the comparison less of a glance
            a = rng.randrange(12, 99)
            swapped = int(str(a)[::-1])
            if swapped != a and swapped > 9 and swapped not in nums and a not in nums:
                nums[:2] = [a, swapped]
        if len(set(nums)) < 4:
            continue
        largest = rng.random() < 0.5
        ans = max(nums) if largest else min(nums)
        listed = ", ".join(str(n) for n in nums[:3]) + f" or {nums[3]}"
        q = f"Which is the {'largest' if largest else 'smallest'} number: {listed}?"
        if q in seen:
            continue
        seen.add(q)
        out.append(_item("comparison", q, str(ans), [str(n) for n in nums if n != ans]))
    return out


def sequences(rng: random.Random) -> list[dict]:
    out, seen = [], set()
    while len(out) < 100:
        kind = rng.choice(["up", "up", "down", "double"])
        if kind == "up":
            step, start = rng.randint(1, 12), rng.randint(0, 40)
            terms = [start + i * step for i in range(5)]
        elif kind == "down":
            step = rng.randint(1, 9)
            start = rng.randint(5 * step, 5 * step + 50)
            terms = [start - i * step for i in range(5)]
        else:
            start = rng.randint(1, 6)
            terms = [start * 2**i for i in range(5)]
            step = terms[3] - terms[2]
        shown, ans = terms[:4], terms[4]
        q = f"What number comes next in the sequence {', '.join(map(str, shown))}, ...?"
        if q in seen:
            continue
        seen.add(q)
        dis = _near_numbers(rng, ans, sorted({1, 2, 3, abs(step), abs(step) + 1}), floor=0, exclude=shown)
        out.append(_item("sequence", q, str(ans), dis))
    return out


def calendar(rng: random.Random) -> list[dict]:
    out = []
    for names, unit in ((DAYS, "day"), (MONTHS, "month")):
        n = len(names)
        for i, name in enumerate(names):
            for shift, how in (
                (1, f"comes after {name}"),
                (-1, f"comes before {name}"),
                (2, f"is two {unit}s after {name}"),
                (-2, f"is two {unit}s before {name}"),
            ):
                ans = names[(i + shift) % n]
                # same-category distractors: the nearby names (the likeliest slips), not the one asked
                # about (a word copied from the question draws log-likelihood scoring to it)
                near = [names[(i + s) % n] for s in (-3, -2, -1, 1, 2, 3)]
                dis = _pick(rng, near, ans)
                q = f"Which {unit} {how}?" if unit == "day" else f"Which month of the year {how}?"
                out.append(_item("calendar", q, ans, dis))
    for i, month in enumerate(MONTHS):
        q = f"Which is the {ORDINALS[i]} month of the year?"
        out.append(
            _item("calendar", q, month, _pick(rng, [MONTHS[(i + s) % 12] for s in (-2, -1, 1, 2)], month))
        )
    return out


def capitals(rng: random.Random) -> list[dict]:
    out = []
    all_capitals = [c for _, _, c in CAPITALS]
    all_countries = [c for _, c, _ in CAPITALS]
    for in_sentence, country, capital in CAPITALS:
        out.append(
            _item(
                "capital",
                f"What is the capital city of {in_sentence}?",
                capital,
                _pick(rng, all_capitals, capital),
            )
        )
        q = f"{capital} is the capital city of which country?"
        out.append(_item("capital", q, country, _pick(rng, all_countries, country)))
    return out


def animals(rng: random.Random) -> list[dict]:
    out = []
    classes = sorted(ANIMAL_CLASSES)
    for cls, names in ANIMAL_CLASSES.items():
        for name in names:
            q = f"Which group of animals does the {name} belong to?"
            out.append(_item("animal_class", q, cls, _pick(rng, classes, cls)))
    return out


# Distractors that would also be a fair opposite of the question's word (kept out of its choices).
ALSO_OPPOSITE = {"false": {"right"}, "shut": {"closed"}, "first": {"end"}, "begin": {"last"}}


def opposites(rng: random.Random) -> list[dict]:
    answers = [b for _, b in OPPOSITES]
    return [
        _item(
            "opposite",
            f'What is the opposite of the word "{a}"?',
            b,
            _pick(rng, answers, b, exclude={a} | ALSO_OPPOSITE.get(a, set())),
        )
        for a, b in OPPOSITES
    ]


def _wrong_plurals(word: str) -> list[str]:
    """Plural forms a learner might guess (the right one among them is removed by the caller).

    The singular itself is not among them (unless it is the plural, "sheep"): a word copied from the
    question draws log-likelihood scoring to it whatever the model knows. No ``-sses`` form:
    "busses" is an accepted spelling, so a rule-made form can be right."""
    forms = {word + "s", word + "es", word + "en", word + "i"}
    if word.endswith("y"):
        forms.add(word[:-1] + "ies")
    if word.endswith("f"):
        forms.add(word[:-1] + "ves")
    if word.endswith("fe"):
        forms.add(word[:-2] + "ves")
    if "oo" in word:
        forms.add(word.replace("oo", "ee"))
    if word.endswith("is"):
        forms.add(word[:-2] + "es")
    return sorted(forms)


def plurals(rng: random.Random) -> list[dict]:
    return [
        _item("plural", f'What is the plural of the word "{w}"?', p, _pick(rng, _wrong_plurals(w), p))
        for w, p in PLURALS
    ]


def _wrong_pasts(verb: str) -> list[str]:
    """Past forms a learner might guess: the regular ending, the present, the -ing form, an -en form.

    Not the verb itself (a word copied from the question draws log-likelihood scoring to it: the
    embedded model chose it for 16 of 30 items when it was offered), and no doubled consonant
    ("digged" is an old but real past of "dig")."""
    ing = verb[:-1] + "ing" if verb.endswith("e") and not verb.endswith("ee") else verb + "ing"
    forms = {verb + ("d" if verb.endswith("e") else "ed"), verb + "s", ing}
    if verb.endswith("y"):
        forms.add(verb[:-1] + "ied")
    if len(forms) < 4:  # a regular verb: its -ed form is the answer, so add a wrong participle-like form
        forms.add((verb[:-1] if verb.endswith("e") else verb) + "en")
    return sorted(forms)


def past_tense(rng: random.Random) -> list[dict]:
    return [
        _item(
            "past_tense",
            f'What is the simple past tense of the verb "{v}"?',
            p,
            _pick(rng, _wrong_pasts(v), p),
        )
        for v, p in PAST_TENSE
    ]


def alphabet(rng: random.Random) -> list[dict]:
    out = []
    for i, letter in enumerate(LETTERS):
        near = [LETTERS[j] for j in range(max(0, i - 4), min(26, i + 5)) if j != i]  # not the asked letter
        if i + 1 < 26:
            q = f"Which letter comes straight after {letter} in the English alphabet?"
            out.append(_item("alphabet", q, LETTERS[i + 1], _pick(rng, near, LETTERS[i + 1])))
        if i > 0:
            q = f"Which letter comes straight before {letter} in the English alphabet?"
            out.append(_item("alphabet", q, LETTERS[i - 1], _pick(rng, near, LETTERS[i - 1])))
        q = f"Which is the {ORDINALS[i]} letter of the English alphabet?"
        out.append(_item("alphabet", q, letter, _pick(rng, near, letter)))
    return out


UNIT_PLURAL = {"century": "centuries", "dozen": "dozen"}


def units(rng: random.Random) -> list[dict]:
    out = []
    for small, big, per in UNITS:
        for k in (1, 2, 3, 4, 5, 6):
            article = "an" if big[0] in "aeiou" or big == "hour" else "a"
            what = f"{article} {big}" if k == 1 else f"{k} {UNIT_PLURAL.get(big, big + 's')}"
            ans = per * k
            steps = sorted({per, k, 1, 2, 10 if per >= 10 else 3})
            dis = _near_numbers(rng, ans, steps, floor=1, exclude={k, per})
            out.append(_item("units", f"How many {small} are there in {what}?", str(ans), dis))
    return out


def counts(rng: random.Random) -> list[dict]:
    return [_item("counting", q, a, list(d)) for q, a, d in COUNTS]


def science(rng: random.Random) -> list[dict]:
    return [_item("science", q, a, list(d)) for q, a, d in SCIENCE]


CATEGORIES = [
    addition, subtraction, multiplication, comparison, sequences, calendar, capitals, animals,
    opposites, plurals, past_tense, alphabet, units, counts, science,
]  # fmt: skip


# ---- assembly ---------------------------------------------------------------------------------------


def build_items(seed: int = SEED) -> list[dict]:
    """All items, validated, shuffled and numbered, with the answer slot balanced over the file."""
    raw: list[dict] = []
    for make in CATEGORIES:
        raw += make(random.Random(f"{seed}:{make.__name__}"))
    rng = random.Random(f"{seed}:assemble")
    rng.shuffle(raw)
    slots = [i % 4 for i in range(len(raw))]
    rng.shuffle(slots)
    items, seen = [], {}
    for n, (it, slot) in enumerate(zip(raw, slots, strict=True)):
        q = it["question"]
        if q in seen:
            raise ValueError(f"duplicate question in category {it['category']!r}: {q!r}")
        seen[q] = it["category"]
        choices = list(it["distractors"])
        rng.shuffle(choices)
        choices.insert(slot, it["answer_text"])
        if len(choices) != 4 or len(set(choices)) != 4:
            raise ValueError(f"{q!r}: choices must be 4 distinct strings, got {choices}")
        items.append(
            {
                "id": f"gmc-{n:04d}",
                "category": it["category"],
                "question": q,
                "choices": choices,
                "answer": slot,
            }
        )
    counts = Counter(i["category"] for i in items)
    too_big = {c: k for c, k in counts.items() if k > MAX_CATEGORY_SHARE * len(items)}
    if too_big:
        raise ValueError(f"categories above {MAX_CATEGORY_SHARE:.0%} of {len(items)} items: {too_big}")
    return items


def render(items: list[dict]) -> str:
    """The JSONL text (one object per line, ASCII, keys in a fixed order, a final newline)."""
    return "".join(json.dumps(i, ensure_ascii=True) + "\n" for i in items)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out", type=Path, default=OUT, help=f"output file (default: {OUT.name} beside this script)"
    )
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 if the file differs")
    args = ap.parse_args(argv)
    items = build_items()
    text = render(items)
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else None
        if current != text:
            print(f"{args.out} is stale: rerun {Path(__file__).name}", file=sys.stderr)
            return 1
        print(f"{args.out}: up to date ({len(items)} items)")
        return 0
    args.out.write_bytes(text.encode("ascii"))
    by_cat = Counter(i["category"] for i in items)
    print(
        f"wrote {len(items)} items to {args.out}: " + ", ".join(f"{c} {k}" for c, k in sorted(by_cat.items()))
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
