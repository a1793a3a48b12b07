"""SuperGLUE (and SST-2) as cloze filling: the THUDM reference's patterns and verbalizers (tasks/superglue/pvp.py).

A pattern turns one example (glm_jax.data.superglue_sources.SuperGlueExample: text_a, text_b, label, meta as the
reference's processors fill them) into a `Cloze`: text parts with exactly one blank, the candidates that can fill it
(verbalizers, or the answers of COPA, ReCoRD and WSC) and the index of the right one. Parts are tokenized one by one,
as the reference encodes each part alone (so `" Question:"` keeps its leading space in a BPE vocabulary), and a part
may be shortenable: when the row is too short, `part_a_ids` removes tokens from the end of the last shortenable part
of whichever side (parts A or parts B) has more shortenable tokens, one at a time (the reference's `PVP.truncate`).

Part A is `[CLS]`, the tokens of parts A then parts B, and `[eos]` (the reference's
`build_input_from_ids(add_cls=True, add_eos=True)`); the blank is `[MASK]`. The reference's continuous-prompt slots
(`None` parts) are left out: glm-jax has no prompt tuning.

Patterns (the reference's pattern ids; `PATTERNS` lists them per task; the reference's fine-tuning scripts pick
BoolQ 4, CB 3, COPA 0, MultiRC 0, ReCoRD 0, RTE 0, WiC 1, WSC 2: `DEFAULT_PATTERNS`):
  boolq   0-5  passage + question, answer " No"/" Yes" (0, 2, 4) or " false"/" true" (1, 3, 5)
  cb      0-4  RTE's patterns 0-3 with " No"/" Yes"/" Maybe"; 4: "... true, false or neither? answer:"
  copa    0-1  the two choices, the premise, " because" / ", so", the blank: candidates are the choices
  multirc 0-4  passage, question, candidate answer: " No"/" Yes" (3: " False"/" True")
  record  0    passage, the query with its @placeholder as the blank: candidates are the passage's entities
  rte     0-4  hypothesis "?", the blank, premise: " No"/" Yes" (4: " true"/" false")
  wic     0-2  the two sentences and the word: " No"/" Yes" (2: "2"/"b")
  wsc     0-2  the text with *pronoun*, "... refers to" the blank: candidates are span1 and the negative candidates
  sst2    0-1  "{sentence} It was" the blank ".": " terrible"/" great" (1: " bad"/" good")
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Callable, Sequence

from glm_jax.data.example import SpecialIds
from glm_jax.data.superglue_sources import LABELS

BLANK = "[MASK]"  # the text of the blank's part


@dataclasses.dataclass(frozen=True)
class RegisteredTask:
  """A seqio Task of cloze questions (tasks/superglue.py registers them): the SuperGLUE task it renders, its examples
  per split, and its current (pattern id, multi_token) settings, so evaluation renders them as training does."""

  task: str
  examples: Callable[[str], list]
  settings: Callable[[], tuple[int, bool]]


REGISTERED: dict[str, RegisteredTask] = {}  # seqio Task name -> what it renders


@dataclasses.dataclass(frozen=True)
class Part:
  """One piece of a filled pattern: its text (tokenized alone) and whether truncation may cut it."""

  text: str
  shortenable: bool = False


@dataclasses.dataclass(frozen=True)
class Cloze:
  """One example as a cloze question: parts A and B (one of them holds the blank), the candidate fills (text, with the
  reference's leading spaces), the index of the right candidate (None when unlabelled), and whether candidates are
  scored as multi-token spans (COPA, ReCoRD, WSC always; the others when asked)."""

  parts_a: tuple[Part, ...]
  parts_b: tuple[Part, ...]
  candidates: tuple[str, ...]
  label: int | None
  multi_token: bool

  def __post_init__(self):
    blanks = sum(part.text == BLANK for part in self.parts_a + self.parts_b)
    if blanks != 1:
      raise ValueError(f"a cloze pattern needs exactly one blank; got {blanks} in {self.text()!r}")
    if not self.candidates:
      raise ValueError(f"a cloze question needs candidates; got none for {self.text()!r}")

  def text(self) -> str:
    """The filled pattern as one string, the blank as [MASK] (parts are joined as the reference joins their ids)."""
    return "".join(part.text for part in self.parts_a + self.parts_b)


def _short(text: str) -> Part:
  return Part(text, True)


def _fixed(text: str) -> Part:
  return Part(text, False)


def _no_final_punctuation(text: str) -> str:
  return text.rstrip(string.punctuation)


def _lowercase_first(text: str) -> str:
  return text[:1].lower() + text[1:]


def _parts(*items) -> tuple[Part, ...]:
  return tuple(item if isinstance(item, Part) else _fixed(item) for item in items)


_BLANK = _fixed(BLANK)
NO_YES = (" No", " Yes")


def _label_index(labels: Sequence, label) -> int | None:
  if label is None:
    return None
  if label not in labels:
    raise ValueError(f"label {label!r} is not one of {list(labels)}")
  return list(labels).index(label)


# ---------------------------------------------------------------------------------------------------------
# The tasks. Each returns (parts A, parts B, candidates, label index).


def _rte_parts(text_a: str, text_b: str, pattern: int):
  hypothesis = text_b.rstrip(string.punctuation)
  if pattern == 0:
    return _parts('"', _short(hypothesis), '" ?'), _parts(_BLANK, ",", ' "', _short(text_a), '"')
  if pattern == 1:
    return _parts(_short(hypothesis), "?"), _parts(_BLANK, ",", _short(" " + text_a))
  if pattern == 2:
    return _parts('"', _short(hypothesis), '" ?'), _parts(_BLANK, '. "', _short(text_a), '"')
  if pattern == 3:
    return _parts(_short(hypothesis), "?"), _parts(_BLANK, ".", _short(" " + text_a))
  raise ValueError(pattern)


def _rte(ex, pattern):
  labels = LABELS["rte"]
  if pattern == 4:
    parts = _parts(_short(ex.text_a), " question:", _short(" " + ex.text_b), " True or False?", " answer:", _BLANK)
    return parts, (), (" true", " false"), _label_index(labels, ex.label)
  parts_a, parts_b = _rte_parts(ex.text_a, ex.text_b, pattern)
  return parts_a, parts_b, (" Yes", " No"), _label_index(labels, ex.label)


def _cb(ex, pattern):
  labels = LABELS["cb"]
  if pattern == 4:
    parts = _parts(
      _short(ex.text_a), " question:", _short(" " + ex.text_b), " true, false or neither?", " answer:", _BLANK
    )
    return parts, (), (" true", " false", " neither"), _label_index(labels, ex.label)
  parts_a, parts_b = _rte_parts(ex.text_a, ex.text_b, pattern)
  return parts_a, parts_b, (" Yes", " No", " Maybe"), _label_index(labels, ex.label)


def _boolq(ex, pattern):
  passage, question = ex.text_a, ex.text_b
  if pattern < 2:
    parts = _parts(_short(passage), " Question:", _short(" " + question), "? Answer:", _BLANK, ".")
  elif pattern < 4:
    parts = _parts(_short(passage), " Based on the previous passage,", _short(" " + question), "?", _BLANK, ".")
  else:
    parts = _parts("Based on the following passage", _short(" " + question), "?", _BLANK, ".", _short(" " + passage))
  candidates = NO_YES if pattern % 2 == 0 else (" false", " true")
  return parts, (), candidates, _label_index(LABELS["boolq"], ex.label)


def _multirc(ex, pattern):
  passage = _no_final_punctuation(ex.text_a.rstrip())
  question = _no_final_punctuation(ex.text_b.rstrip())
  answer = ex.meta["answer"]
  if pattern == 0:
    parts = _parts(_short(passage), ".", " Question:", " " + question + "?", " Is it", " " + answer, "?", _BLANK, ".")
  elif pattern == 1:
    parts = _parts(
      _short(passage), ".", " Question:", " " + question, "?", ' Is the correct answer "', answer, '"?', _BLANK, "."
    )
  elif pattern == 2:
    parts = _parts(
      _short(passage), ". Based on the previous passage,", " " + question, "?", ' Is "', answer,
      '" a correct answer?', _BLANK, ".",
    )  # fmt: skip
  elif pattern == 3:
    parts = _parts(_short(passage), " " + question, "- [", _BLANK, "]", answer)
  else:
    parts = _parts(_short(passage), ".", " Question:", " " + question, "?", " " + answer, "?", _BLANK, ".")
  candidates = (" False", " True") if pattern == 3 else NO_YES
  return parts, (), candidates, _label_index(LABELS["multirc"], ex.label)


def _wic(ex, pattern):
  word = ex.meta["word"]
  if pattern == 0:
    parts = _parts(
      _short('"' + ex.text_a + '" / "' + ex.text_b + '"'), ' Similar sense of "' + word + '"?', _BLANK, "."
    )
  elif pattern == 1:
    parts = _parts(
      _short(ex.text_a), _short(" " + ex.text_b), " Does " + word + " have the same meaning in both sentences?", _BLANK
    )
  else:
    parts = _parts(word, " .", ' Sense (1) (a) "', _short(ex.text_a), '"', " (", _BLANK, ') "', ex.text_b, '"')
  candidates = ("2", "b") if pattern == 2 else NO_YES
  return parts, (), candidates, _label_index(LABELS["wic"], ex.label)


def _copa(ex, pattern):
  premise = _no_final_punctuation(" " + ex.text_a)
  choices = [_no_final_punctuation(_lowercase_first(ex.meta[key])) for key in ("choice1", "choice2")]
  question = ex.meta["question"]
  if question not in ("cause", "effect"):
    raise ValueError(f"COPA question {question!r} is neither 'cause' nor 'effect'")
  joiner = " because" if question == "cause" else ", so"
  if pattern == 0:
    parts = _parts('"', choices[0], '" or "', choices[1], '"?', _short(premise), joiner, _BLANK, ".")
  else:
    parts = _parts(choices[0], " or", " " + choices[1], "?", _short(premise), joiner, _BLANK, ".")
  return parts, (), tuple(" " + choice for choice in choices), _label_index(LABELS["copa"], ex.label)


def _wsc(ex, pattern):
  pronoun, index = ex.meta["span2_text"], int(ex.meta["span2_index"])
  words = ex.text_a.split()
  words[index] = "*" + words[index] + "*"
  text = _short(" ".join(words))
  if pattern == 0:
    parts = _parts(text, " The pronoun '*" + pronoun + "*' refers to", _BLANK, ".")
  elif pattern == 1:
    parts = _parts(text, " In the previous sentence, the pronoun '*" + pronoun + "*' refers to", _BLANK, ".")
  else:
    question = " Question: In the passage above, what does the pronoun '*" + pronoun + "*' refer to?"
    parts = _parts(text, question, " Answer:", _BLANK, ".")
  # The referent first, then the negative candidates where the data has them (the reference's wsc-negative files):
  # a "True" example's right fill is candidate 0. A "False" one (span1 is not the referent) has no right candidate.
  candidates = (" " + ex.meta["span1_text"], *(" " + c for c in ex.meta.get("candidates", ())))
  return parts, (), candidates, 0 if ex.label == "True" else None


def _record(ex, pattern):
  del pattern
  if ex.text_b.count("@placeholder") != 1:
    raise ValueError(f"a ReCoRD query needs one @placeholder; got {ex.text_b!r}")
  before, after = ex.text_b.split("@placeholder")
  parts = _parts(_short(ex.text_a), " " + before.rstrip(), _BLANK, after)
  candidates = tuple(" " + c for c in ex.meta["candidates"])
  # Training examples put their one answer first (label "0"); evaluation ones (label "1") are scored against
  # meta["answers"], any of which is right.
  return parts, (), candidates, 0 if ex.label == "0" else None


def _sst2(ex, pattern):
  parts = _parts(_short(ex.text_a), " It was", _BLANK, ".")
  candidates = (" terrible", " great") if pattern == 0 else (" bad", " good")
  return parts, (), candidates, _label_index(LABELS["sst2"], None if ex.label is None else str(ex.label))


_TASKS = {
  "boolq": (_boolq, range(6), False),
  "cb": (_cb, range(5), False),
  "copa": (_copa, range(2), True),
  "multirc": (_multirc, range(5), False),
  "record": (_record, range(1), True),
  "rte": (_rte, range(5), False),
  "wic": (_wic, range(3), False),
  "wsc": (_wsc, range(3), True),
  "sst2": (_sst2, range(2), False),
}
PATTERNS: dict[str, tuple[int, ...]] = {task: tuple(ids) for task, (_, ids, _) in _TASKS.items()}
ALWAYS_MULTI_TOKEN = frozenset(task for task, (_, _, multi) in _TASKS.items() if multi)
DEFAULT_PATTERNS = {"boolq": 4, "cb": 3, "copa": 0, "multirc": 0, "record": 0, "rte": 0, "wic": 1, "wsc": 2, "sst2": 0}


def cloze(task: str, example, pattern_id: int, multi_token: bool = False) -> Cloze:
  """The cloze question of `example` (a SuperGlueExample of `task`) under the reference's pattern `pattern_id`."""
  if task not in _TASKS:
    raise ValueError(f"unknown cloze task {task!r}; expected one of {sorted(_TASKS)}")
  fill, patterns, always_multi = _TASKS[task]
  if pattern_id not in patterns:
    raise ValueError(f"{task} has patterns {list(patterns)} (the reference's); got pattern_id={pattern_id}")
  parts_a, parts_b, candidates, label = fill(example, pattern_id)
  return Cloze(tuple(parts_a), tuple(parts_b), tuple(candidates), label, always_multi or multi_token)


# ---------------------------------------------------------------------------------------------------------
# Token ids.


def truncate(parts_a: list[list[int]], parts_b: list[list[int]], shortenable_a, shortenable_b, excess: int) -> bool:
  """Removes `excess` tokens in place, one at a time: from the end of the last non-empty shortenable part of the
  side with more shortenable tokens (parts B on a tie), as the reference's `PVP.truncate` does. Returns whether any
  token was removed. Raises ValueError when the shortenable parts run out."""
  if excess <= 0:
    return False
  sizes = {
    "a": sum(len(p) for p, s in zip(parts_a, shortenable_a) if s),
    "b": sum(len(p) for p, s in zip(parts_b, shortenable_b) if s),
  }
  if sizes["a"] + sizes["b"] < excess:
    raise ValueError(
      f"the pattern's fixed text and the fill need {excess - sizes['a'] - sizes['b']} tokens more than the row has; "
      "raise the sequence length"
    )
  for _ in range(excess):
    side, parts, flags = ("a", parts_a, shortenable_a) if sizes["a"] > sizes["b"] else ("b", parts_b, shortenable_b)
    last = max(i for i, (p, s) in enumerate(zip(parts, flags)) if s and p)
    parts[last] = parts[last][:-1]
    sizes[side] -= 1
  return True


def part_a_ids(
  question: Cloze, vocabulary, ids: SpecialIds, max_length: int, span_positions: int
) -> tuple[list[int], int, bool]:
  """(Part A ids, the blank's index in them, whether text was cut) of `question` in a row of `max_length` whose
  Part B takes `span_positions` positions ([sop] and the fill's tokens): [CLS], parts A, parts B, [eos]."""
  encoded = {}
  for side, parts in (("a", question.parts_a), ("b", question.parts_b)):
    encoded[side] = [[ids.mask] if part.text == BLANK else list(vocabulary.encode(part.text)) for part in parts]
  excess = 2 + sum(map(len, encoded["a"] + encoded["b"])) + span_positions - max_length  # [CLS] and [eos]
  cut = truncate(
    encoded["a"],
    encoded["b"],
    [p.shortenable for p in question.parts_a],
    [p.shortenable for p in question.parts_b],
    excess,
  )
  tokens = [ids.cls, *(t for part in encoded["a"] + encoded["b"] for t in part), ids.eos]
  return tokens, tokens.index(ids.mask), cut


def candidate_ids(question: Cloze, vocabulary) -> list[list[int]]:
  """Each candidate's token ids, tokenized alone with its leading space (the reference's get_verbalization_ids).
  Raises ValueError when a single-token question has a candidate of several tokens (or none)."""
  out = [list(vocabulary.encode(c)) for c in question.candidates]
  if not question.multi_token:
    bad = {c: t for c, t in zip(question.candidates, out) if len(t) != 1}
    if bad:
      raise ValueError(
        f"verbalizers {bad} are not single tokens in this vocabulary; use multi_token=True for this task"
      )
  return out


def render(question: Cloze, vocabulary, ids: SpecialIds, max_length: int) -> list[tuple[list[int], int, list[int]]]:
  """Per candidate, (Part A ids, blank index, the candidate's ids): multi-token questions fit Part A to each
  candidate's span ([sop] + tokens), single-token ones to the [sop] alone, as the reference does."""
  fills = candidate_ids(question, vocabulary)
  if not question.multi_token:
    part_a, blank, _ = part_a_ids(question, vocabulary, ids, max_length, 1)
    return [(part_a, blank, fill) for fill in fills]
  rows = []
  for fill in fills:
    part_a, blank, _ = part_a_ids(question, vocabulary, ids, max_length, 1 + len(fill))
    rows.append((part_a, blank, fill))
  return rows
