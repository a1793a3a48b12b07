"""Greedy blank infilling by full recomputation: the slow oracle of glm_jax.infer.generate and the baseline of
benchmarks/decode.py.

For each blank in position order: append [sop] at the blank's position with block position 1, then decode greedily
(each new token at the same position, block positions 2, 3, ...) until a stop token or `max_span_length` tokens;
later spans see the earlier ones in Part B, as in training (the rows are glm_jax.data.example's). Every step re-runs
the full forward over the whole row at one fixed padded length (one compilation, no cache); Part B is causal, so
the padding after the current token does not change its logits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from glm_jax.data import example as example_lib
from glm_jax.data.example import Span, SpecialIds
from glm_jax.model import GLM, forward, mask_padded_vocab


class DecodeInputs(NamedTuple):
  """One row of model features [L] and the index of its last real token (whose logits are read)."""

  features: dict[str, np.ndarray]
  last: int


def decode_inputs(part_a: Sequence[int], spans: Sequence[Span], ids: SpecialIds, length: int) -> DecodeInputs:
  """The row of Part A followed by [sop] + tokens for each (blank position, generated tokens) span; the last span
  is the one being decoded, its next token predicted from the row's last real position."""
  example = example_lib.from_spans(part_a, spans, ids)
  size = example["input_ids"].size
  if size > length:
    raise ValueError(f"infilling needs {size} tokens but the decode length is {length} (raise the length)")
  return DecodeInputs(example_lib.pad(example, length), size - 1)


def make_next_token_fn(model: GLM, params) -> Callable[[DecodeInputs], np.ndarray]:
  """A function (row) -> the log-probabilities [V] of the next token over the real vocabulary."""
  vocab_size = model.config.vocab_size

  @jax.jit
  def log_probs_at(params, features, last):  # params: an argument, not constants baked into the program
    logits = forward(model, params, {name: value[None] for name, value in features.items()}, deterministic=True)
    return jax.nn.log_softmax(mask_padded_vocab(logits[0, last], vocab_size))

  return lambda inputs: np.asarray(log_probs_at(params, inputs.features, jnp.int32(inputs.last)))


def fill_blanks(
  next_log_probs: Callable[[DecodeInputs], np.ndarray],
  part_a: Sequence[int],
  ids: SpecialIds,
  length: int,
  max_span_length: int = 32,
  stop_ids: Sequence[int] | None = None,
) -> tuple[list[list[int]], list[float]]:
  """Greedily fills every blank of `part_a` (a prompt as glm_jax.infer.generate takes it). Returns (the spans in
  blank order, each span's summed log-probability, its end token's included). `stop_ids`: None for [eop], [eos]."""
  stops = (ids.eop, ids.eos) if stop_ids is None else tuple(stop_ids)
  spans: list[tuple[int, list[int]]] = []
  scores = []
  for blank in example_lib.blank_positions(part_a, ids):
    span: list[int] = []
    spans.append((blank, span))
    score = 0.0
    while len(span) < max_span_length:
      log_probs = next_log_probs(decode_inputs(part_a, spans, ids, length))
      token = int(np.argmax(log_probs))
      score += float(log_probs[token])
      if token in stops:
        break
      span.append(token)
    scores.append(score)
  return [span for _, span in spans], scores
