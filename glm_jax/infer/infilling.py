"""Greedy blank infilling, left to right as GLM generates.

Part A = [CLS] + the text's tokens (masks included). For each mask in order of position: append [sop] at the
mask's position with block position 1, then decode greedily (each new token keeps the mask's position, block
positions 2, 3, ...) until [eop] or `max_span_length` tokens. Later spans see the earlier spans in Part B,
as in training. Every decoding step re-runs the full forward at one fixed padded length (one compilation);
Part B is causal, so the padding after the current token does not change its logits.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from glm_jax.model import GLM
from glm_jax.train import step as step_lib


@dataclasses.dataclass(frozen=True)
class InfillIds:
  """The special ids decoding needs."""

  pad: int
  cls: int
  sop: int
  eop: int
  masks: tuple[int, ...]  # [MASK], [sMASK], [gMASK]

  @classmethod
  def from_vocabulary(cls, vocabulary) -> "InfillIds":
    from glm_jax.data import vocab

    sid = lambda name: int(vocab.special_id(vocabulary, name))  # noqa: E731
    return cls(
      pad=sid("[pad]"),
      cls=sid("[CLS]"),
      sop=sid("[sop]"),
      eop=sid("[eop]"),
      masks=(sid("[MASK]"), sid("[sMASK]"), sid("[gMASK]")),
    )


@dataclasses.dataclass
class DecodeInputs:
  """One row of decoder inputs [L] and the index of the last real token (whose logits are read)."""

  input_ids: np.ndarray
  position_ids: np.ndarray
  block_position_ids: np.ndarray
  sep: int
  last: int


def decode_inputs(
  part_a: Sequence[int], spans: Sequence[tuple[int, Sequence[int]]], sop: int, pad: int, length: int
) -> DecodeInputs:
  """Model inputs for Part A followed by [sop] + tokens for each (mask position, generated tokens) span.

  The last span is the one being decoded; its next token is predicted from the row's last real position.
  """
  ids, pos, blk = list(part_a), list(range(len(part_a))), [0] * len(part_a)
  for mask_position, tokens in spans:
    ids += [sop, *tokens]
    pos += [mask_position] * (len(tokens) + 1)
    blk += list(range(1, len(tokens) + 2))
  if len(ids) > length:
    raise ValueError(
      f"infilling needs {len(ids)} tokens but the decode length is {length} "
      f"(shorten the text, lower max_span_length, or raise the model's max_length)"
    )
  pad_n = length - len(ids)
  as_row = lambda xs, fill: np.asarray(list(xs) + [fill] * pad_n, np.int32)  # noqa: E731
  return DecodeInputs(as_row(ids, pad), as_row(pos, 0), as_row(blk, 0), len(part_a), len(ids) - 1)


def make_next_token_fn(model: GLM, params) -> Callable[[DecodeInputs], int]:
  """A greedy next-token function: argmax over the real vocabulary at the row's last real position."""
  vocab_size = model.config.vocab_size

  @jax.jit
  def logits_at(params, input_ids, position_ids, block_position_ids, sep, last):  # params: an argument, not constants
    logits = model.apply(
      {"params": params},
      input_ids[None],
      position_ids[None],
      block_position_ids[None],
      sep=sep[None],
      deterministic=True,
    )
    return step_lib.mask_padded_vocab(logits[0, last], vocab_size)

  def next_token(inputs: DecodeInputs) -> int:
    logits = logits_at(
      params,
      inputs.input_ids,
      inputs.position_ids,
      inputs.block_position_ids,
      jnp.int32(inputs.sep),
      jnp.int32(inputs.last),
    )
    return int(jnp.argmax(logits))

  return next_token


def fill_blanks(
  next_token: Callable[[DecodeInputs], int],
  token_ids: Sequence[int],
  ids: InfillIds,
  length: int,
  max_span_length: int = 32,
) -> tuple[list[int], list[list[int]]]:
  """Fills every mask in `token_ids` (the text's tokens, no [CLS]).

  Returns (the tokens with each mask replaced by its span, the list of generated spans in mask order).
  """
  part_a = [ids.cls, *token_ids]
  mask_positions = [i for i, t in enumerate(part_a) if t in ids.masks]
  spans: list[tuple[int, list[int]]] = []
  for mask_position in mask_positions:
    span: list[int] = []
    spans.append((mask_position, span))
    while len(span) < max_span_length:
      token = next_token(decode_inputs(part_a, spans, ids.sop, ids.pad, length))
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
  ids = InfillIds.from_vocabulary(vocabulary)
  token_ids = list(vocabulary.encode(text))
  num_masks = sum(t in ids.masks for t in token_ids)
  length = length or min(model.config.max_length, 1 + len(token_ids) + num_masks * (max_span_length + 1))
  filled, spans = fill_blanks(make_next_token_fn(model, params), token_ids, ids, length, max_span_length)
  return splice_spans(text, vocabulary, ids, [vocabulary.decode(span).strip() for span in spans]) or vocabulary.decode(
    filled
  )


def splice_spans(text: str, vocabulary, ids: InfillIds, spans: Sequence[str]) -> str | None:
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
