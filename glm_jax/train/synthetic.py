"""A learnable synthetic blank-infilling task in numpy, for tests and smoke runs without the corpus.

Each document is an arithmetic run of token ids (start, start+1, ...) so a masked span is predictable from
its neighbours. Rows follow the model features of docs/design.md (unpacked: one segment per row).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np


@dataclasses.dataclass(frozen=True)
class SyntheticIds:
  """Special ids of the synthetic vocabulary; ordinary tokens are `first_token`..`vocab_size - 1`."""

  pad: int = 0
  eos: int = 1
  cls: int = 2
  mask: int = 3
  sop: int = 4
  eop: int = 5
  first_token: int = 8


def synthetic_example(
  rng: np.random.Generator,
  length: int,
  vocab_size: int,
  num_spans: int = 2,
  max_span: int = 4,
  ids: SyntheticIds = SyntheticIds(),
) -> dict[str, np.ndarray]:
  """One row of model features [length]: Part A = [CLS] + document with spans masked; Part B = spans."""
  budget = length - 1 - num_spans  # [CLS] + one [sop] per span
  doc_len = max(num_spans * (max_span + 1), budget // 2)
  num_tokens = vocab_size - ids.first_token
  doc = ids.first_token + (rng.integers(num_tokens) + np.arange(doc_len)) % num_tokens
  region = doc_len // num_spans
  spans = []
  for s in range(num_spans):
    span_len = int(rng.integers(1, max_span + 1))
    begin = s * region + int(rng.integers(0, region - span_len + 1))
    spans.append((begin, span_len))
  part_a, mask_positions, cursor = [ids.cls], [], 0
  for begin, span_len in spans:
    part_a.extend(doc[cursor:begin])
    mask_positions.append(len(part_a))
    part_a.append(ids.mask)
    cursor = begin + span_len
  part_a.extend(doc[cursor:])
  inputs, targets, positions, blocks = list(part_a), list(part_a), list(range(len(part_a))), [0] * len(part_a)
  for (begin, span_len), mask_pos in zip(spans, mask_positions):
    span = list(doc[begin : begin + span_len])
    inputs += [ids.sop] + span
    targets += span + [ids.eop]
    positions += [mask_pos] * (span_len + 1)
    blocks += list(range(1, span_len + 2))
  n = len(inputs)
  if n > length:
    raise ValueError(f"synthetic example of {n} tokens exceeds length={length} (raise length or lower max_span)")
  pad = length - n
  row = {
    "input_ids": inputs + [ids.pad] * pad,
    "target_ids": targets + [ids.pad] * pad,
    "loss_mask": [0.0] * len(part_a) + [1.0] * (n - len(part_a)) + [0.0] * pad,
    "position_ids": positions + [0] * pad,
    "block_position_ids": blocks + [0] * pad,
    "segment_ids": [1] * n + [0] * pad,
    "sep": [len(part_a)] * n + [0] * pad,
  }
  return {k: np.asarray(v, np.float32 if k == "loss_mask" else np.int32) for k, v in row.items()}


def synthetic_batches(
  batch_size: int, length: int, vocab_size: int, seed: int = 0, **example_kwargs
) -> Iterator[dict[str, np.ndarray]]:
  """Endless batches of [batch_size, length] synthetic model features."""
  rng = np.random.default_rng(seed)
  while True:
    rows = [synthetic_example(rng, length, vocab_size, **example_kwargs) for _ in range(batch_size)]
    yield {k: np.stack([r[k] for r in rows]) for k in rows[0]}
