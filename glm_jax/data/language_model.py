"""Zero-shot language-modelling rows as the THUDM reference's tasks/language_model/dataset.py builds them for a GLM
(block LM) model: LAMBADA's last word and perplexity over overlapping windows (WikiText-103).

The blank is the model's generation mask, as the reference picks it: `[gMASK]` for a model trained with the task
mask (GLMConfig.task_mask: GLM-2B/10B, the Chinese models, glm-jax's own), `[MASK]` otherwise (`mask_token`).

LAMBADA (one row a passage; `lambada_tokens` splits it the reference's strict way: the context is the text before
its last whitespace-separated word, tokenized stripped; the answer is that word tokenized with a leading space):
  bidirectional   Part A = [CLS] context [blank] [eos]; Part B = [sop] answer[:-1], its targets the answer (no
                  [eop]); every answer token is scored.
  unidirectional  Part A = [CLS] context[0] [blank] [eos]; Part B = [sop] (context[1:] + answer)[:-1], its targets
                  context[1:] + answer; only the answer's tokens are scored.
  A row longer than `max_length` loses the context's oldest tokens (the reference cuts the unidirectional context's
  Part A instead, which does not shorten the row; not copied).
  An example is right when the argmax of every scored position is its target (the reference's 'accuracy').

Perplexity (`windows`: the reference's LMDataset with --overlapping-eval; max_seq_len = seq_length - 1):
  a document of N tokens is read in windows of max_seq_len tokens starting every `overlap` tokens; window 0 scores
  its tokens 1.., window i > 0 the tokens after window i - 1's end, so every token but the document's first is
  scored exactly once.
  bidirectional   Part A = [CLS] (the window's tokens before the scored ones) [blank]; Part B = [sop] + the scored
                  tokens[:-1], their targets the scored tokens (window 0: Part A holds its first token only).
  unidirectional  Part A = [CLS] window[0] [blank]; Part B predicts window[1:]; only the new tokens are scored.
  No [eos]. A row has at most seq_length + 1 tokens.
  Perplexity = exp(summed cross entropy / scored tokens); the adjusted perplexity exp(the same x token ratio), with
  token ratio = (scored tokens) / (original words - documents), the original words of the text before
  detokenization split on single spaces. On one document (WikiText-103) that is the reference's (N - 1) / (W - 1);
  on several, each document's unscored first token is left out of both counts (the reference divides by N - 1).

Tasks (tasks/language_model.py) register here (`REGISTERED`) what `eval --lm` reads besides the rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
from collections.abc import Callable, Sequence

import numpy as np

from glm_jax.data import example as example_lib
from glm_jax.data.example import SpecialIds

KINDS = ("lambada", "perplexity")


def mask_token(task_mask: bool) -> str:
  """The reference's blank for zero-shot LM: [gMASK] for a task-mask model, else [MASK]."""
  return "[gMASK]" if task_mask else "[MASK]"


_MODEL_MASK: list[str] = []


@contextlib.contextmanager
def model_mask(task_mask: bool):
  """Within it, the LM Tasks blank with the mask of a model with(out) the task mask (`mask_token`) unless
  language_model_config.mask names one: `eval --lm` builds its rows in it from the model's GLMConfig."""
  _MODEL_MASK.append(mask_token(task_mask))
  try:
    yield
  finally:
    _MODEL_MASK.pop()


def current_model_mask() -> str | None:
  return _MODEL_MASK[-1] if _MODEL_MASK else None


def mask_id(ids: SpecialIds, mask: str) -> int:
  if mask not in ("[MASK]", "[gMASK]", "[sMASK]"):
    raise ValueError(f"the LM blank is [MASK], [sMASK] or [gMASK]; got {mask!r}")
  return {"[MASK]": ids.mask, "[gMASK]": ids.gmask, "[sMASK]": ids.smask}[mask]


def _row(part_a: Sequence[int], blank: int, span: Sequence[int], scored: int, ids: SpecialIds) -> dict[str, np.ndarray]:
  """Part A and one span at `blank` whose last `scored` targets are scored; the [eop] position is dropped."""
  row = example_lib.from_spans(part_a, [(blank, span)], ids)
  row = {name: values[:-1] for name, values in row.items()}
  row["loss_mask"][: row["loss_mask"].size - scored] = 0.0
  return row


def lambada_tokens(text: str, encode: Callable[[str], Sequence[int]]) -> tuple[list[int], list[int]]:
  """(context, answer) token ids of a LAMBADA passage, split as the reference's strict LambadaDataset does."""
  last = text.split()[-1]
  start = text.rfind(last)
  return list(encode(text[:start].strip())), list(encode(" " + last))


def lambada_row(
  context: Sequence[int], answer: Sequence[int], ids: SpecialIds, *, mask: str, max_length: int, unidirectional: bool
) -> tuple[dict[str, np.ndarray], int]:
  """The row of one LAMBADA example (module docstring) and how many context tokens were cut to fit `max_length`.
  Raises ValueError when the context is empty or the answer alone does not fit."""
  if not context or not answer:
    raise ValueError("a LAMBADA example needs a context and a last word")
  blank = mask_id(ids, mask)
  # bidirectional: 3 + len(context) + len(answer) tokens ([CLS], [blank], [eos] + [sop] + answer[:-1]); the same
  # count unidirectionally (the context moves into Part B).
  cut = max(0, 3 + len(context) + len(answer) - max_length)
  if cut >= len(context):
    raise ValueError(f"a LAMBADA answer of {len(answer)} tokens leaves no room for context in {max_length} tokens")
  context = list(context[cut:])
  if unidirectional:
    part_a, span = [ids.cls, context[0], blank, ids.eos], [*context[1:], *answer]
    return _row(part_a, 2, span, len(answer), ids), cut
  part_a = [ids.cls, *context, blank, ids.eos]
  return _row(part_a, len(context) + 1, answer, len(answer), ids), cut


@dataclasses.dataclass(frozen=True)
class Window:
  """Tokens [start, end) of a document; the tokens from `first_scored` on are scored."""

  start: int
  end: int
  first_scored: int


def windows(num_tokens: int, seq_length: int, overlap: int, unidirectional: bool = False) -> list[Window]:
  """The reference's windows over a document of `num_tokens` tokens (module docstring), for --seq-length
  `seq_length` and --overlapping-eval `overlap` (clamped to 1..seq_length - 1 as the reference's to >= 1 and its
  default, max_seq_len). A document of one token gives no window (it has nothing to predict)."""
  span = seq_length - 1  # the reference's max_seq_len
  if span < 2:
    raise ValueError(f"seq_length={seq_length}: a window needs at least 2 tokens")
  overlap = min(max(1, overlap), span)
  if unidirectional and overlap == span:  # each window's first token would be read but never scored
    raise ValueError(f"unidirectional windows need overlap < seq_length - 1 = {span}; got {overlap}")
  if num_tokens < 2:
    return []
  count = max(math.ceil(max(num_tokens - span, 0) / overlap) + 1, 1)
  out = []
  for i in range(count):
    start = i * overlap
    first = 1 if i == 0 else start - overlap + span  # after window i - 1's end
    out.append(Window(start, min(start + span, num_tokens), first))
  return out


def window_row(
  tokens: Sequence[int], window: Window, ids: SpecialIds, *, mask: str, unidirectional: bool
) -> dict[str, np.ndarray]:
  """The row of one window of a document's tokens (module docstring)."""
  blank = mask_id(ids, mask)
  scored = window.end - window.first_scored
  read = window.start + 1 if unidirectional else window.first_scored  # Part A holds tokens [start, read)
  part_a = [ids.cls, *tokens[window.start : read], blank]
  return _row(part_a, len(part_a) - 1, list(tokens[read : window.end]), scored, ids)


def original_words(text: str) -> int:
  """The reference's count of a text's original tokens: split on single spaces, stripped."""
  return len(text.strip().split(" "))


# The reference's wikitext_detokenizer (tasks/language_model/detokenizer.py), in order: plain replacements, then
# bracket and quote spacing, then more replacements. (Its `/' [0-9]/` pattern, a regex with literal slashes that
# WikiText never contains, is left out.)
_WIKITEXT_FIRST = [("s '", "s'"), (" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" : ", ": "), (" ; ", "; "),
                   (" . ", ". "), (" ! ", "! "), (" ? ", "? "), (" , ", ", ")]  # fmt: skip
_WIKITEXT_PAIRS = ["()", "[]", "{}", '""', "''"]  # "( a b )" -> "(a b)", the same for each pair
_WIKITEXT_LAST = [("= = = =", "===="), ("= = =", "==="), ("= =", "=="), (" \N{DEGREE SIGN} ", "\N{DEGREE SIGN}"),
                  (" \n", "\n"), ("\n ", "\n"), (" N ", " 1 "), (" 's", "'s")]  # fmt: skip


def wikitext_detokenize(text: str) -> str:
  """WikiText's tokenized text as the reference detokenizes it before tokenizing (module comment above)."""
  for old, new in _WIKITEXT_FIRST:
    text = text.replace(old, new)
  for open_, close in _WIKITEXT_PAIRS:
    o, c = re.escape(open_), re.escape(close)
    text = re.sub(rf"{o}\s*([^{c}]*?)\s*{c}", lambda m, o=open_, c=close: f"{o}{m.group(1)}{c}", text)
  for old, new in _WIKITEXT_LAST:
    text = text.replace(old, new)
  return text


@dataclasses.dataclass(frozen=True)
class RegisteredTask:
  """A zero-shot LM Task (tasks/language_model.py registers them): its kind ('lambada': accuracy; 'perplexity')
  and, for perplexity, (original words, documents) of a split's text."""

  kind: str
  original_words: Callable[[str], tuple[int, int]] | None = None


REGISTERED: dict[str, RegisteredTask] = {}  # seqio Task name -> what eval --lm reads
