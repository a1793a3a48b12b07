"""Greedy blank infilling, left to right as GLM generates.

Part A = [CLS] + the text's tokens (masks included). For each mask in order of position: append [sop] at the
mask's position with block position 1, then decode greedily (each new token keeps the mask's position, block
positions 2, 3, ...) until [eop] or `max_span_length` tokens. Later spans see the earlier spans in Part B,
as in training (the rows are glm_jax.data.example's). Every decoding step re-runs the full forward at one fixed
padded length (one compilation, no cache); Part B is causal, so the padding after the current token does not
change its logits.
"""

from __future__ import annotations

import re
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
  """The row of Part A followed by [sop] + tokens for each (mask position, generated tokens) span.

  The last span is the one being decoded; its next token is predicted from the row's last real position.
  """
  example = example_lib.from_spans(part_a, spans, ids)
  size = example["input_ids"].size
  if size > length:
    raise ValueError(
      f"infilling needs {size} tokens but the decode length is {length} "
      f"(shorten the text, lower max_span_length, or raise the model's max_length)"
    )
  return DecodeInputs(example_lib.pad(example, length), size - 1)


def make_next_token_fn(model: GLM, params) -> Callable[[DecodeInputs], int]:
  """A greedy next-token function: argmax over the real vocabulary at the row's last real position."""
  vocab_size = model.config.vocab_size

  @jax.jit
  def logits_at(params, features, last):  # params: an argument, not constants baked into the program
    logits = forward(model, params, {name: value[None] for name, value in features.items()}, deterministic=True)
    return mask_padded_vocab(logits[0, last], vocab_size)

  def next_token(inputs: DecodeInputs) -> int:
    return int(jnp.argmax(logits_at(params, inputs.features, jnp.int32(inputs.last))))

  return next_token


def fill_blanks(
  next_token: Callable[[DecodeInputs], int],
  token_ids: Sequence[int],
  ids: SpecialIds,
  length: int,
  max_span_length: int = 32,
) -> tuple[list[int], list[list[int]]]:
  """Fills every mask in `token_ids` (the text's tokens, no [CLS]).

  Returns (the tokens with each mask replaced by its span, the list of generated spans in mask order).
  """
  part_a = [ids.cls, *token_ids]
  spans: list[tuple[int, list[int]]] = []
  for mask_position in example_lib.blank_positions(part_a, ids):
    span: list[int] = []
    spans.append((mask_position, span))
    while len(span) < max_span_length:
      token = next_token(decode_inputs(part_a, spans, ids, length))
      if token == ids.eop:
        break
      span.append(token)
  filled: list[int] = []
  generated = dict(spans)
  for i, token in enumerate(part_a[1:], start=1):
    filled.extend(generated[i] if i in generated else [token])
  return filled, [span for _, span in spans]


def infill_text(model: GLM, params, vocabulary, text: str, max_span_length: int = 32, length: int | None = None) -> str:
  """The text with every [MASK] / [sMASK] / [gMASK] filled greedily (see the module docstring)."""
  ids = SpecialIds.from_vocabulary(vocabulary)
  token_ids = list(vocabulary.encode(text))
  num_masks = sum(t in ids.masks for t in token_ids)
  length = length or min(model.config.max_length, 1 + len(token_ids) + num_masks * (max_span_length + 1))
  filled, spans = fill_blanks(make_next_token_fn(model, params), token_ids, ids, length, max_span_length)
  return splice_spans(text, vocabulary, ids, [vocabulary.decode(span).strip() for span in spans]) or vocabulary.decode(
    filled
  )


def splice_spans(text: str, vocabulary, ids: SpecialIds, spans: Sequence[str]) -> str | None:
  """`text` with its k-th mask token replaced by spans[k], the rest of the text kept character for character
  (decoding the whole filled sequence would re-normalize its whitespace). None when the mask tokens cannot be
  found in the text one for one."""
  names = [vocabulary.decode([mask]) for mask in ids.masks]
  if not all(names):
    return None
  pattern = re.compile("|".join(re.escape(n) for n in sorted(set(names), key=len, reverse=True)))
  pieces = pattern.split(text)
  if len(pieces) != len(spans) + 1:
    return None
  out = [pieces[0]]
  for span, piece in zip(spans, pieces[1:]):
    out += [span, piece]
  return "".join(out)
