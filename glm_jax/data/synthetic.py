"""Learnable synthetic data for tests, demos and smoke runs without a corpus or a download.

A blank-infilling task in numpy: each document is an arithmetic run of token ids (start, start+1, ...) so a masked
span is predictable from its neighbours. Rows are glm_jax.data.example's model features (unpacked: one segment per
row) over a vocabulary whose special ids are `SYNTHETIC_IDS` and whose ordinary tokens are
`FIRST_TOKEN`..`vocab_size - 1`.

A toy RTE (`write_toy_rte`): files in the SuperGLUE distribution's format whose label follows a rule a tiny model
learns in a minute of fine-tuning, for the cloze notebook and the fine-tuning tests.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import numpy as np

from glm_jax.data import example as example_lib
from glm_jax.data.example import SpecialIds

SYNTHETIC_IDS = SpecialIds(pad=0, eos=1, cls=2, mask=3, smask=6, gmask=7, sop=4, eop=5)
FIRST_TOKEN = 8


def synthetic_example(
  rng: np.random.Generator,
  length: int,
  vocab_size: int,
  num_spans: int = 2,
  max_span: int = 4,
  ids: SpecialIds = SYNTHETIC_IDS,
  first_token: int = FIRST_TOKEN,
) -> dict[str, np.ndarray]:
  """One row of model features [length]: Part A = [CLS] + document with spans masked; Part B = the spans."""
  budget = length - 1 - num_spans  # [CLS] + one [sop] per span
  doc_len = max(num_spans * (max_span + 1), budget // 2)
  num_tokens = vocab_size - first_token
  doc = first_token + (rng.integers(num_tokens) + np.arange(doc_len)) % num_tokens
  region = doc_len // num_spans
  spans = []
  for s in range(num_spans):
    span_len = int(rng.integers(1, max_span + 1))
    begin = s * region + int(rng.integers(0, region - span_len + 1))
    spans.append((begin, span_len))
  part_a, b_spans, cursor = [ids.cls], [], 0
  for begin, span_len in spans:
    part_a.extend(doc[cursor:begin].tolist())
    b_spans.append((len(part_a), doc[begin : begin + span_len].tolist()))
    part_a.append(ids.mask)
    cursor = begin + span_len
  part_a.extend(doc[cursor:].tolist())
  example = example_lib.from_spans(part_a, b_spans, ids)
  size = example["input_ids"].size
  if size > length:
    raise ValueError(f"synthetic example of {size} tokens exceeds length={length} (raise length or lower max_span)")
  return example_lib.pad(example, length)


def synthetic_batches(
  batch_size: int, length: int, vocab_size: int, seed: int = 0, **example_kwargs
) -> Iterator[dict[str, np.ndarray]]:
  """Endless batches of [batch_size, length] synthetic model features."""
  rng = np.random.default_rng(seed)
  while True:
    yield example_lib.batch([synthetic_example(rng, length, vocab_size, **example_kwargs) for _ in range(batch_size)])


TOY_RTE_SUBJECTS = ("the module", "this function", "the parser", "that class", "the manual")
TOY_RTE_ADJECTIVES = ("fast", "slow", "clear", "broken", "useful", "wrong")


def write_toy_rte(directory: str, train: int = 400, validation: int = 40, seed: int = 0) -> str:
  """Writes `directory`/RTE/{train,val}.jsonl as the SuperGLUE distribution lays RTE out (premise, hypothesis,
  label, idx) and returns `directory` (a superglue_config.data_dir). The rule: the premise "S is X." entails the
  hypothesis "it is Y." exactly when X is Y; labels are drawn evenly, so chance is 50%."""
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.join(directory, "RTE"), exist_ok=True)
  for split, n in (("train", train), ("val", validation)):
    lines = []
    for i in range(n):
      adjective, other = rng.choice(TOY_RTE_ADJECTIVES, 2, replace=False)
      entailed = bool(rng.integers(0, 2))
      record = {
        "premise": f"{rng.choice(TOY_RTE_SUBJECTS)} is {adjective}.",
        "hypothesis": f"it is {adjective if entailed else other}.",
        "label": "entailment" if entailed else "not_entailment",
        "idx": i,
      }
      lines.append(json.dumps(record) + "\n")
    with open(os.path.join(directory, "RTE", f"{split}.jsonl"), "w") as f:
      f.writelines(lines)
  return directory
