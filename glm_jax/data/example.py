"""The GLM example layout, in one place: Part A / Part B, the 2D positions, `sep`, and the special ids.

An example (one row before padding or packing) is Part A followed by Part B:
  Part A   the tokens the model reads bidirectionally: `[CLS]`, then the text with each blank as one mask
           token (`[MASK]`, `[sMASK]` or `[gMASK]`), plus whatever else a caller puts there (e.g. `[eos]`).
  Part B   for each span, in the order given: `[sop]` + the span's tokens, at its blank's position.
Features (docs/design.md; all 1-D of one length T = len(A) + sum(len(span) + 1), int32 except `loss_mask`):
  input_ids           A, then B.
  target_ids          A copies input_ids; in B each position predicts the next span token and the last one of
                      a span predicts `[eop]`.
  loss_mask           1.0 exactly on Part B.
  position_ids        0..len(A)-1 in A; every token of a B span carries its blank's index in A.
  block_position_ids  0 in A; 1..len(span)+1 within each B span (`[sop]` gets 1).
  sep                 len(A) on every token.
  objective_ids       the example's objective on every token, an index into OBJECTIVES: 0 ("other": cloze,
                      synthetic and inference examples) unless the corruption sets it (token 1, sentence 2,
                      document 3); the loss can weight each objective (glm_jax.train.step.LossConfig).
A model row (`pad`) adds `segment_ids` (1 on the example's tokens) and zeros on padding, as the feature converter
writes unpacked rows.

Building:  `from_spans(part_a, spans, ids)`: the general builder (inference, scoring, cloze, synthetic data).
           `from_piece(piece, starts, lengths, mask_id, ids, order)`: the corruption's vectorized builder, from
           the original text and its spans; it equals `from_spans` of the same Part A and spans.
Reading:   `split(example)` -> (Part A, spans); `reconstruct(example, ids)` -> the original text.
Rows:      `pad(example, length)` -> model features of one unpacked row; `batch(rows)` stacks rows.
Ids:       `SpecialIds`, the one record of the special token ids, looked up by name in a vocabulary
           (`special_id`), never hard-coded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

FEATURES = ("input_ids", "target_ids", "loss_mask", "position_ids", "block_position_ids", "sep", "objective_ids")
# The values of `objective_ids`: the pretraining objectives (glm_jax.data.preprocessors' `name`s) after "other".
OBJECTIVES = ("other", "token", "sentence", "document")
MODEL_FEATURES = (*FEATURES, "segment_ids")
DTYPES = {name: np.float32 if name == "loss_mask" else np.int32 for name in MODEL_FEATURES}

# A span (blank index in Part A, its tokens), as in Part B.
Span = tuple[int, Sequence[int]]

_SPECIAL_NAMES = {
  "pad": "[pad]",
  "eos": "[eos]",
  "cls": "[CLS]",
  "mask": "[MASK]",
  "smask": "[sMASK]",
  "gmask": "[gMASK]",
  "sop": "[sop]",
  "eop": "[eop]",
}
_OPTIONAL_NAMES = {"dblock": "[dBLOCK]"}


def special_id(vocabulary, name: str) -> int:
  """The id of the GLM special token `name` (e.g. "[MASK]") in `vocabulary`, from its `special_ids` mapping."""
  ids = getattr(vocabulary, "special_ids", None)
  if ids is None:
    raise TypeError(
      f"{type(vocabulary).__name__} has no `special_ids`; GLM needs a vocabulary that names its special tokens "
      "(glm_jax.data.vocab.GLMSentencePieceVocabulary or glm_jax.data.tokenizers.GLMVocabulary)"
    )
  if name not in ids:
    raise KeyError(f"special token {name!r} is not in {type(vocabulary).__name__}; it has {sorted(ids)}")
  return int(ids[name])


@dataclasses.dataclass(frozen=True)
class SpecialIds:
  """The special token ids every part of glm-jax writes or reads (`[dBLOCK]` only where the vocabulary has it)."""

  pad: int
  eos: int
  cls: int
  mask: int
  smask: int
  gmask: int
  sop: int
  eop: int
  dblock: int | None = None

  @classmethod
  def from_vocabulary(cls, vocabulary) -> SpecialIds:
    ids = {field: special_id(vocabulary, name) for field, name in _SPECIAL_NAMES.items()}
    known = getattr(vocabulary, "special_ids", {})
    ids.update({field: int(known[name]) for field, name in _OPTIONAL_NAMES.items() if name in known})
    return cls(**ids)

  @property
  def masks(self) -> tuple[int, int, int]:
    """The blank tokens: [MASK], [sMASK], [gMASK]."""
    return (self.mask, self.smask, self.gmask)


def blank_positions(part_a: Sequence[int], ids: SpecialIds) -> list[int]:
  """Indices of the blanks (mask tokens) in Part A, in position order."""
  return [i for i, token in enumerate(part_a) if token in ids.masks]


def encode_text(vocabulary, text: str, ids: SpecialIds) -> list[int]:
  """The tokens of a user's text with blanks (Part A of `infer` and `score`), without a whitespace-only token just
  before a blank. SentencePiece spells the space of "is [MASK]" as a piece of its own, which a pretrained model never
  saw before a blank: in pretraining the masked span took its first word's leading space with it."""
  tokens = list(vocabulary.encode(text))
  return [
    t
    for t, following in zip(tokens, [*tokens[1:], None])
    if not (following in ids.masks and t not in ids.masks and not vocabulary.decode([t]).strip())
  ]


def from_spans(part_a: Sequence[int], spans: Sequence[Span], ids: SpecialIds) -> dict[str, np.ndarray]:
  """The example of Part A (token ids) and its spans in Part B order, each (its blank's index in Part A, tokens).

  A span of n tokens takes n + 1 positions: inputs `[sop]` + tokens, targets tokens + `[eop]`. A span being decoded
  is the same: its last position's target (`[eop]`) is then the token still to come. Returns FEATURES, each [T].
  """
  a_len = len(part_a)
  for position, _ in spans:
    if not 0 <= position < a_len:
      raise ValueError(f"span position {position} is outside Part A of {a_len} tokens")
  sizes = [len(tokens) + 1 for _, tokens in spans]
  inputs = [np.asarray(part_a, np.int32)]
  targets = [inputs[0]]
  for _, tokens in spans:
    inputs.append(np.asarray([ids.sop, *tokens], np.int32))
    targets.append(np.asarray([*tokens, ids.eop], np.int32))
  total = a_len + sum(sizes)
  block_positions = [np.zeros(a_len, np.int32)] + [np.arange(1, size + 1, dtype=np.int32) for size in sizes]
  b_positions = np.repeat(np.asarray([position for position, _ in spans], np.int32), sizes)
  loss_mask = np.zeros(total, np.float32)
  loss_mask[a_len:] = 1.0
  return {
    "input_ids": np.concatenate(inputs),
    "target_ids": np.concatenate(targets),
    "loss_mask": loss_mask,
    "position_ids": np.concatenate([np.arange(a_len, dtype=np.int32), b_positions]),
    "block_position_ids": np.concatenate(block_positions),
    "sep": np.full(total, a_len, np.int32),
    "objective_ids": np.zeros(total, np.int32),
  }


def indices(n: int) -> np.ndarray:
  """A read-only view of 0..n-1 (int64) from a shared buffer: the corruption needs several per piece."""
  global _INDICES
  if _INDICES.size < n:
    _INDICES = np.arange(max(n, 2 * _INDICES.size))
    _INDICES.flags.writeable = False
  return _INDICES[:n]


_INDICES = np.arange(0)


def from_piece(
  piece: np.ndarray, starts: np.ndarray, lengths: np.ndarray, mask_id: int, ids: SpecialIds, order: np.ndarray
) -> dict[str, np.ndarray]:
  """The example of a piece of text [n] whose spans (sorted, non-overlapping `starts`/`lengths` [k], k >= 1) are
  blanked with `mask_id`, Part A being `[CLS]` + the blanked piece and Part B the spans in `order` (a permutation
  of 0..k-1). The same features as `from_spans`, each of length n + 1 + 2k, by index arithmetic (no per-token
  Python): the corruption's hot path.
  """
  n, k = piece.size, starts.size
  cum_lengths = lengths.cumsum()
  a_len = 1 + n - int(cum_lengths[-1]) + k
  total = n + 1 + 2 * k
  b_len = total - a_len

  # Part A: each span's first token becomes the mask token, its other tokens are dropped.
  dropped = np.zeros(n + 1, np.int8)
  dropped[starts + 1] += 1
  dropped[starts + lengths] -= 1
  body = piece.copy()
  body[starts] = mask_id
  body = body[dropped.cumsum()[:n] == 0]
  blank_index = 1 + starts - (cum_lengths - lengths) + indices(k)

  # Part B: span `order[i]` occupies [seg_start[i], seg_start[i] + len + 1) of B, [sop] first.
  seg = lengths[order] + 1
  seg_start = seg.cumsum() - seg
  b_index = indices(b_len)
  text_index = b_index + np.repeat(starts[order] - seg_start, seg)  # the token each B position predicts
  target_b = piece[np.minimum(text_index, n - 1)]
  target_b[seg_start + seg - 1] = ids.eop

  features = np.empty((4, total), np.int32)
  input_ids, target_ids, position_ids, block_position_ids = features
  input_ids[0] = ids.cls
  input_ids[1:a_len] = body
  target_ids[:a_len] = input_ids[:a_len]
  target_ids[a_len:] = target_b
  input_ids[a_len + 1 :] = target_b[:-1]
  input_ids[a_len + seg_start] = ids.sop
  position_ids[:a_len] = indices(a_len)
  position_ids[a_len:] = np.repeat(blank_index[order], seg)
  block_position_ids[:a_len] = 0
  block_position_ids[a_len:] = b_index + 1 - np.repeat(seg_start, seg)
  loss_mask = np.zeros(total, np.float32)
  loss_mask[a_len:] = 1.0
  return {
    "input_ids": input_ids,
    "target_ids": target_ids,
    "loss_mask": loss_mask,
    "position_ids": position_ids,
    "block_position_ids": block_position_ids,
    "sep": np.full(total, a_len, np.int32),
    "objective_ids": np.zeros(total, np.int32),
  }


def split(example: Mapping[str, np.ndarray]) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
  """Part A input ids [sep] and the B spans as (index of the span's blank in A, span tokens) in B order.

  Takes one unpadded example (one segment of a packed row, without its padding). A span's tokens are read from its
  targets (all but the end token), so Part B inputs replaced by `[dBLOCK]` do not change them.
  """
  input_ids = np.asarray(example["input_ids"])
  target_ids = np.asarray(example["target_ids"])
  sep = int(np.asarray(example["sep"]).reshape(-1)[0])
  starts = sep + np.flatnonzero(np.asarray(example["block_position_ids"])[sep:] == 1)
  ends = np.append(starts[1:], input_ids.size)
  position_ids = np.asarray(example["position_ids"])
  spans = [(int(position_ids[s]), target_ids[s : e - 1]) for s, e in zip(starts, ends)]
  return input_ids[:sep], spans


def reconstruct(example: Mapping[str, np.ndarray], ids: SpecialIds) -> np.ndarray:
  """The original text: Part A with each blank replaced by its span, `[CLS]` stripped; int32 [n]."""
  part_a, spans = split(example)
  if part_a.size == 0 or part_a[0] != ids.cls:
    raise ValueError(f"Part A must start with [CLS]={ids.cls}; got {part_a[:1]}")
  by_position = dict(spans)
  pieces, last = [], 1
  for position in sorted(by_position):
    pieces += [part_a[last:position], by_position[position]]
    last = position + 1
  pieces.append(part_a[last:])
  return np.concatenate(pieces).astype(np.int32)


def pad(example: Mapping[str, np.ndarray], length: int) -> dict[str, np.ndarray]:
  """The model features of one unpacked row [length]: the example, then zeros; segment_ids 1 on its tokens.

  Raises ValueError when the example is longer than `length`."""
  size = np.asarray(example["input_ids"]).size
  if size > length:
    raise ValueError(f"a GLM example of {size} tokens does not fit a row of {length}")
  row = {name: np.zeros(length, DTYPES[name]) for name in MODEL_FEATURES}
  for name in FEATURES:
    row[name][:size] = example[name]
  row["segment_ids"][:size] = 1
  return row


def batch(rows: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """Rows of equal length -> one array [len(rows), L] per feature."""
  return {name: np.stack([row[name] for row in rows]) for name in rows[0]}
