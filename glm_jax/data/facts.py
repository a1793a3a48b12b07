"""A small world of one-sentence facts: the quickstart's corpus, on which blank infilling can be checked.

The embedded documentation corpus teaches a tiny model the look of English but no fact it can recall in a few
minutes, so a filled blank there cannot be told right from wrong. Here every document is one sentence stating a
fact of a closed world (the order of days, months and numbers, capitals, colours, opposites) in one of several
phrasings; a few hundred distinct sentences in all, so a tiny model learns them in minutes, and a blank over the
fact's answer has one right fill (`fill_is_correct`). The train and validation documents are drawn with different
seeds from the same sentences: validation loss and a `quiz` (blanked answers) measure recall, not generalization.
"""

from __future__ import annotations

import dataclasses
import random
import re

DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = (
  "January", "February", "March", "April", "May", "June",
  "July", "August", "September", "October", "November", "December",
)  # fmt: skip
NUMBERS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")
CAPITALS = (
  ("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"), ("Japan", "Tokyo"),
  ("Egypt", "Cairo"), ("Russia", "Moscow"), ("China", "Beijing"), ("Greece", "Athens"), ("Portugal", "Lisbon"),
  ("Austria", "Vienna"), ("Poland", "Warsaw"), ("Norway", "Oslo"), ("Ireland", "Dublin"), ("Peru", "Lima"),
  ("Cuba", "Havana"),
)  # fmt: skip
COLOURS = (
  ("the sky", "blue"), ("grass", "green"), ("snow", "white"), ("coal", "black"), ("blood", "red"),
  ("a banana", "yellow"), ("an orange", "orange"), ("a plum", "purple"), ("chocolate", "brown"), ("ash", "grey"),
)  # fmt: skip
OPPOSITES = (
  ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("light", "dark"), ("open", "closed"), ("wet", "dry"),
  ("happy", "sad"), ("up", "down"), ("old", "young"), ("early", "late"), ("full", "empty"), ("high", "low"),
)  # fmt: skip

# Phrasings of each relation: {a} is the subject, {b} the answer.
_TEMPLATES = {
  "next": ("After {a} comes {b}.", "The day after {a} is {b}.", "{b} comes after {a}."),
  "next_month": ("After {a} comes {b}.", "The month after {a} is {b}.", "{b} follows {a}."),
  "successor": ("After {a} comes {b}.", "{a} plus one is {b}.", "The number after {a} is {b}."),
  "capital": ("The capital of {a} is {b}.", "{b} is the capital of {a}.", "{a} has its capital in {b}."),
  "colour": ("The colour of {a} is {b}.", "{a} is {b}."),
  "opposite": ("The opposite of {a} is {b}.", "{b} is the opposite of {a}."),
}  # fmt: skip


def _pairs() -> dict[str, list[tuple[str, str]]]:
  cycle = lambda names: [(names[i], names[(i + 1) % len(names)]) for i in range(len(names))]  # noqa: E731
  return {
    "next": cycle(DAYS),
    "next_month": cycle(MONTHS),
    "successor": [(NUMBERS[i], NUMBERS[i + 1]) for i in range(len(NUMBERS) - 1)],
    "capital": list(CAPITALS),
    "colour": list(COLOURS),
    # both directions: the opposite of cold is hot, too
    "opposite": [*OPPOSITES, *((b, a) for a, b in OPPOSITES)],
  }


def _capitalized(text: str) -> str:
  return text[:1].upper() + text[1:]


@dataclasses.dataclass(frozen=True)
class Sentence:
  """One fact in one phrasing: `text` and the `answer` word, which the blank of `masked()` covers."""

  template: str
  subject: str
  answer: str

  @property
  def _answer_at_start(self) -> bool:
    return self.template.startswith("{b}")

  @property
  def text(self) -> str:
    answer = _capitalized(self.answer) if self._answer_at_start else self.answer
    return _capitalized(self.template.format(a=self.subject, b=answer))

  @property
  def shown_answer(self) -> str:
    """The answer as it is written in `text` (capitalized at the start of the sentence)."""
    return _capitalized(self.answer) if self._answer_at_start else self.answer

  def masked(self, mask: str = "[MASK]") -> str:
    """`text` with the answer replaced by `mask`: "The capital of France is [MASK]."."""
    subject = self.subject if not self.template.startswith("{a}") else _capitalized(self.subject)
    return self.template.format(a=subject, b=mask)


def sentences() -> list[Sentence]:
  """Every sentence of the world, in a fixed order (a few hundred)."""
  out = []
  for relation, pairs in _pairs().items():
    out += [Sentence(template, a, b) for template in _TEMPLATES[relation] for a, b in pairs]
  return out


SEEDS = {"train": 0, "validation": 1}
SIZES = {"train": 40_000, "validation": 1_000}


def documents(split: str) -> list[str]:
  """The documents of a split: SIZES[split] sentences drawn uniformly (with replacement) with SEEDS[split]."""
  if split not in SEEDS:
    raise ValueError(f"the facts corpus has splits {sorted(SEEDS)}; got {split!r}")
  world = sentences()
  rng = random.Random(SEEDS[split])
  return [rng.choice(world).text for _ in range(SIZES[split])]


def quiz(n: int, seed: int = 2) -> list[Sentence]:
  """`n` distinct sentences (n at most len(sentences())), drawn with `seed`, to blank with `Sentence.masked()`."""
  world = sentences()
  if not 0 < n <= len(world):
    raise ValueError(f"quiz takes 1..{len(world)} sentences; got n={n}")
  return random.Random(seed).sample(world, n)


def fill_is_correct(span: str, sentence: Sentence) -> bool:
  """Whether a blank's fill is the sentence's answer: its first word, without punctuation, case-insensitively."""
  words = re.findall(r"[A-Za-z]+", span)
  return bool(words) and words[0].lower() == sentence.answer.lower()
