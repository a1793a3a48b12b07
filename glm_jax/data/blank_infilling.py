"""GLM blank-infilling corruption in numpy: one document in, fixed-budget examples out.

An example (one piece of a document) has two parts, laid out by glm_jax.data.example:
  Part A: `[CLS]`, then the piece with each masked span replaced by one mask token
          (`[MASK]` token level, `[sMASK]` sentence level, `[gMASK]` document level).
  Part B: for each span, in shuffled order, `[sop]` + the span's tokens.
Every example's features are those of glm_jax.data.example.FEATURES, of one length T <= max_length.

Length budget: a piece of n tokens with k spans costs n + 1 + 2k tokens (`[CLS]`, one mask and one `[sop]`
per span). Long documents are cut into consecutive pieces whose size is computed from the spans actually
drawn for them, so every piece fills the budget and every token of the document lands in exactly one piece.
An empty document yields no example (counted in `CorruptionStats.empty_documents`). A piece too short for the
drawn spans (fewer tokens than a span, e.g. a 1-token document) gets its spans clipped to fit: a 1-token
document becomes `[CLS] [MASK] [sop] t` with targets `[CLS] [MASK] t [eop]`.

All randomness comes from the `np.random.Generator` passed in: same generator state, same examples.
The work is vectorized per piece (index arithmetic with repeat / cumsum); Python loops run per piece,
never per token.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from glm_jax.data import example as example_lib
from glm_jax.data.example import SpecialIds

# Overhead of a piece beyond its own tokens: [CLS] plus (mask token, [sop]) per span.
_CLS_COST = 1
_SPAN_COST = 2
_MIN_MAX_LENGTH = _CLS_COST + _SPAN_COST + 1  # one token, one span
_SENTENCE_BLOCK = 32  # candidate pieces evaluated together by _sentence_piece


@dataclasses.dataclass
class CorruptionStats:
  """Counters a caller may pass in to see what happened to its documents (nothing is dropped silently)."""

  documents: int = 0
  empty_documents: int = 0
  pieces: int = 0
  tokens: int = 0
  masked_tokens: int = 0

  def add(self, num_tokens: int, examples: list[dict[str, np.ndarray]]) -> None:
    """Counts one document of `num_tokens` tokens and the examples made from it."""
    self.documents += 1
    self.empty_documents += num_tokens == 0
    self.pieces += len(examples)
    self.tokens += num_tokens
    self.masked_tokens += sum(int(ex["loss_mask"].sum()) - _num_spans(ex) for ex in examples)


def _num_spans(example: dict[str, np.ndarray]) -> int:
  return int(np.count_nonzero(example["block_position_ids"] == 1))


def _check_args(tokens: np.ndarray, max_length: int) -> np.ndarray:
  tokens = np.asarray(tokens)
  if tokens.ndim != 1 or not (tokens.size == 0 or np.issubdtype(tokens.dtype, np.integer)):
    raise ValueError(f"tokens must be a 1-D integer array, got shape {tokens.shape} dtype {tokens.dtype}")
  if max_length < _MIN_MAX_LENGTH:
    raise ValueError(
      f"max_length={max_length} is too small: a corrupted example needs at least "
      f"{_MIN_MAX_LENGTH} tokens ([CLS], a mask, [sop], one token); raise max_length"
    )
  return tokens.astype(np.int32, copy=False)


def _check_ratio(name: str, value: float) -> None:
  if not 0.0 < value < 1.0:
    raise ValueError(f"{name}={value} must be in (0, 1)")


# The epsilon keeps float error (0.55 * 100 == 55.00000000000001) from asking for one token more.
_EPS = 1e-9


def _need(mask_ratio: float, num_tokens: int) -> int:
  """Tokens to cover so that at least `mask_ratio` of `num_tokens` are masked (at least one)."""
  return max(1, math.ceil(mask_ratio * num_tokens - _EPS))


def _needs(mask_ratio: float, num_tokens: np.ndarray) -> np.ndarray:
  """`_need` for an array of token counts."""
  return np.maximum(1, np.ceil(mask_ratio * num_tokens - _EPS)).astype(np.int64)


def assemble(
  piece: np.ndarray,
  starts: np.ndarray,
  lengths: np.ndarray,
  mask_id: int,
  special: SpecialIds,
  rng: np.random.Generator,
) -> dict[str, np.ndarray]:
  """The example of a piece [n] whose spans (sorted, non-overlapping `starts`/`lengths` [k], k >= 1) are blanked
  with `mask_id`, Part B in a random order drawn from `rng` (glm_jax.data.example.from_piece)."""
  return example_lib.from_piece(piece, starts, lengths, mask_id, special, rng.permutation(starts.size))


def mask_part_b_inputs(
  example: dict[str, np.ndarray], prob: float, dblock: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
  """The example with each Part B input after a span's `[sop]` replaced by `[dBLOCK]` with probability `prob`
  (the reference's --block-mask-prob, blocklm_utils.py:195-198): the model then predicts some span tokens without
  seeing the one before. Targets, positions and `[sop]` are unchanged."""
  candidates = np.flatnonzero(example["block_position_ids"] >= 2)
  chosen = candidates[rng.random(candidates.size) < prob]
  if not chosen.size:
    return example
  input_ids = example["input_ids"].copy()
  input_ids[chosen] = dblock
  return {**example, "input_ids": input_ids}


# ---------------------------------------------------------------------------------------------------------
# Token level: Poisson spans, [MASK].


@functools.lru_cache(maxsize=16)
def _truncated_poisson_cdf(poisson_lambda: float, max_span_length: int) -> np.ndarray:
  """CDF of Poisson(λ) conditioned on 1..max_span_length, over those values; float64 [max_span_length]."""
  k = np.arange(1, max_span_length + 1)
  log_pmf = k * math.log(poisson_lambda) - poisson_lambda - np.array([math.lgamma(x + 1) for x in k])
  pmf = np.exp(log_pmf - log_pmf.max())
  cdf = np.cumsum(pmf)
  return cdf / cdf[-1]


def sample_span_lengths(
  rng: np.random.Generator, count: int, poisson_lambda: float = 3.0, max_span_length: int = 39
) -> np.ndarray:
  """`count` span lengths from Poisson(λ) truncated to 1..max_span_length (inverse CDF); int64 [count]."""
  cdf = _truncated_poisson_cdf(float(poisson_lambda), int(max_span_length))
  return np.minimum(np.searchsorted(cdf, rng.random(count), side="right"), max_span_length - 1) + 1


def _token_piece(span_lengths: np.ndarray, remaining: int, max_length: int, mask_ratio: float) -> tuple[int, int]:
  """Largest piece size n <= remaining (and the span count k it needs) with n + 1 + 2k <= max_length.

  k(n) is the number of leading spans whose lengths first reach the coverage for n tokens. The first j spans
  cover any size up to (covered_j + eps) / mask_ratio, and j spans leave max_length - 1 - 2j tokens for the
  text; the best size is the largest of these bounds over j.
  """
  covered = span_lengths.cumsum()
  spans = example_lib.indices(covered.size) + 1
  bounds = np.minimum((covered + _EPS) / mask_ratio, max_length - _CLS_COST - _SPAN_COST * spans)
  n = min(int(bounds.max()), remaining)
  k = int(covered.searchsorted(_need(mask_ratio, n))) + 1
  return n, k


def _fit_spans(lengths: np.ndarray, n: int) -> np.ndarray:
  """Clips spans that do not fit in n tokens with one unmasked token between neighbours (short pieces only)."""
  if lengths.sum() + lengths.size - 1 <= n:
    return lengths
  fitted, room = [], n
  for length in lengths.tolist():
    if room <= 0:
      break
    fitted.append(min(length, room))
    room -= fitted[-1] + 1
  return np.array(fitted, np.int64)


def place_spans(rng: np.random.Generator, lengths: np.ndarray, n: int) -> np.ndarray:
  """Uniformly random starts [k] for spans of `lengths` (in this order) in n tokens, >= 1 token apart.

  Every arrangement is equally likely: the n - sum(lengths) - (k - 1) free tokens are spread over the k + 1
  gaps by choosing k of free + k slots (stars and bars).
  """
  k = lengths.size
  free = n - int(lengths.sum()) - (k - 1)
  slots = rng.choice(free + k, size=k, replace=False, shuffle=False)
  slots.sort()
  return slots + lengths.cumsum() - lengths


def corrupt_tokens(
  tokens: np.ndarray,
  rng: np.random.Generator,
  *,
  max_length: int,
  special: SpecialIds,
  mask_ratio: float = 0.15,
  poisson_lambda: float = 3.0,
  max_span_length: int = 39,
  single_span_prob: float = 0.0,
  stats: CorruptionStats | None = None,
) -> list[dict[str, np.ndarray]]:
  """Token-level blank infilling: Poisson(λ) spans (truncated to 1..max_span_length) until >= mask_ratio of
  each piece is covered, placed uniformly with >= 1 unmasked token between them, each replaced by `[MASK]`.
  The coverage is guaranteed for mask_ratio <= 0.5; above that the gaps can make it unreachable in a piece
  (spans are then clipped to what fits). With probability single_span_prob a piece (of max_length - 3 tokens)
  gets exactly one Poisson span instead (the reference's --single-span-prob, drawn there per micro-batch).

  Args:
    tokens: int [N] document token ids.
    rng: the only source of randomness.
    max_length: budget T of every example (len(A) + len(B) <= T).
    special: special token ids.
    stats: optional counters, updated in place.
  Returns:
    One example per piece (see the module docstring), covering all N tokens in order; [] for N == 0.
  """
  tokens = _check_args(tokens, max_length)
  _check_ratio("mask_ratio", mask_ratio)
  if max_span_length < 1 or not poisson_lambda > 0:
    raise ValueError(
      f"need max_span_length >= 1 and poisson_lambda > 0; got max_span_length={max_span_length} "
      f"poisson_lambda={poisson_lambda}"
    )
  if not 0.0 <= single_span_prob <= 1.0:
    raise ValueError(f"single_span_prob={single_span_prob} must be in [0, 1]")
  examples = []
  cursor = 0
  while cursor < tokens.size:
    remaining = tokens.size - cursor
    # Each span covers >= 1 token, so a piece of at most max_length - 3 tokens never needs more spans.
    budget_tokens = min(remaining, max_length - _CLS_COST - _SPAN_COST)
    if single_span_prob > 0.0 and rng.random() < single_span_prob:
      n, span_lengths = budget_tokens, sample_span_lengths(rng, 1, poisson_lambda, max_span_length)
      k = 1
    else:
      span_lengths = sample_span_lengths(rng, _need(mask_ratio, budget_tokens), poisson_lambda, max_span_length)
      n, k = _token_piece(span_lengths, remaining, max_length, mask_ratio)
    lengths = _fit_spans(span_lengths[:k], n)
    starts = place_spans(rng, lengths, n)
    examples.append(assemble(tokens[cursor : cursor + n], starts, lengths, special.mask, special, rng))
    cursor += n
  if stats is not None:
    stats.add(tokens.size, examples)
  return examples


# ---------------------------------------------------------------------------------------------------------
# Sentence level: whole sentences, [sMASK].


def _split_long_sentences(sentence_lengths: np.ndarray, cap: int) -> np.ndarray:
  """Drops empty sentences and cuts sentences longer than `cap` into cap-sized chunks (the last shorter)."""
  lengths = sentence_lengths[sentence_lengths > 0]
  if not np.any(lengths > cap):
    return lengths
  chunks = -(-lengths // cap)
  out = np.full(int(chunks.sum()), cap, np.int64)
  out[np.cumsum(chunks) - 1] = lengths - (chunks - 1) * cap
  return out


def _sentence_piece(
  lengths: np.ndarray, priority: np.ndarray, max_length: int, mask_ratio: float
) -> tuple[int, np.ndarray]:
  """Largest number j of leading sentences that fit once masked, and which of them are masked (bool [j]).

  For a candidate piece of the first j sentences, sentences are masked in increasing `priority` (a random
  order) until the coverage is reached. The cost of a candidate is not monotone in j (a long sentence added
  early in the order can replace several short ones), so candidates are evaluated as [candidate, rank] tables,
  from the longest down in blocks of _SENTENCE_BLOCK, until one fits.
  """
  text_budget = max_length - _CLS_COST - _SPAN_COST
  sizes = lengths[:text_budget].cumsum()  # sentences are non-empty, so no piece holds more of them
  m = int(np.count_nonzero(sizes <= text_budget))
  sizes = sizes[:m]
  order = np.argsort(priority[:m], kind="stable")
  ranked_lengths = lengths[order]
  needs = _needs(mask_ratio, sizes)
  for high in range(m, 0, -_SENTENCE_BLOCK):
    candidates = example_lib.indices(high)[max(0, high - _SENTENCE_BLOCK) :] + 1
    included = order[None, :] < candidates[:, None]  # [candidate j, rank]
    coverage = np.where(included, ranked_lengths, 0).cumsum(axis=1)
    last_rank = np.argmax(coverage >= needs[candidates - 1, None], axis=1)
    spans = included.cumsum(axis=1)[example_lib.indices(candidates.size), last_rank]
    fits = np.flatnonzero(sizes[candidates - 1] + _CLS_COST + _SPAN_COST * spans <= max_length)
    if fits.size:  # always by the last block: one sentence alone fits
      best = fits[-1]
      break
  j = int(candidates[best])
  chosen = order[: last_rank[best] + 1]
  masked = np.zeros(j, bool)
  masked[chosen[chosen < j]] = True
  return j, masked


def corrupt_sentences(
  tokens: np.ndarray,
  sentence_lengths: np.ndarray,
  rng: np.random.Generator,
  *,
  max_length: int,
  special: SpecialIds,
  mask_ratio: float = 0.15,
  stats: CorruptionStats | None = None,
) -> list[dict[str, np.ndarray]]:
  """Sentence-level blank infilling: whole sentences, in random order, until >= mask_ratio of each piece is
  covered, each replaced by `[sMASK]`.

  Pieces end at sentence boundaries; a sentence longer than max_length - 3 is first cut into chunks of that
  size, which then count as sentences. Empty sentences are ignored.

  Args:
    tokens: int [N] document token ids.
    sentence_lengths: int [S] lengths of the consecutive sentences; sums to N.
  Returns:
    One example per piece, covering all N tokens in order; [] for N == 0.
  """
  tokens = _check_args(tokens, max_length)
  _check_ratio("mask_ratio", mask_ratio)
  sentence_lengths = np.asarray(sentence_lengths, np.int64).reshape(-1)
  if np.any(sentence_lengths < 0) or int(sentence_lengths.sum()) != tokens.size:
    raise ValueError(
      f"sentence_lengths must be non-negative and sum to len(tokens)={tokens.size}; got sum "
      f"{int(sentence_lengths.sum())} (min {sentence_lengths.min(initial=0)})"
    )
  lengths = _split_long_sentences(sentence_lengths, max_length - _CLS_COST - _SPAN_COST)
  priority = rng.random(lengths.size)
  offsets = np.cumsum(lengths) - lengths
  examples = []
  first = 0
  while first < lengths.size:
    j, masked = _sentence_piece(lengths[first:], priority[first:], max_length, mask_ratio)
    piece_lengths = lengths[first : first + j]
    start = int(offsets[first])
    piece = tokens[start : start + int(piece_lengths.sum())]
    starts = (offsets[first : first + j] - start)[masked]
    examples.append(assemble(piece, starts, piece_lengths[masked], special.smask, special, rng))
    first += j
  if stats is not None:
    stats.add(tokens.size, examples)
  return examples


# ---------------------------------------------------------------------------------------------------------
# Document level: one long span, [gMASK].


def corrupt_document(
  tokens: np.ndarray,
  rng: np.random.Generator,
  *,
  max_length: int,
  special: SpecialIds,
  min_ratio: float = 0.5,
  max_ratio: float = 1.0,
  suffix_prob: float = 1.0,
  stats: CorruptionStats | None = None,
) -> list[dict[str, np.ndarray]]:
  """Document-level blank infilling: per piece, one span of a uniform length in [min_ratio, max_ratio] of the
  piece, replaced by `[gMASK]`.

  With probability `suffix_prob` the span runs to the end of the piece (language modelling of a suffix given
  a prefix); otherwise it starts uniformly at random. The default 1.0 is GLM's own choice (its generation
  objective always masks a suffix). Pieces are max_length - 3 tokens (the last one shorter).

  Args:
    tokens: int [N] document token ids.
  Returns:
    One example per piece, covering all N tokens in order; [] for N == 0.
  """
  tokens = _check_args(tokens, max_length)
  if not 0.0 < min_ratio <= max_ratio <= 1.0:
    raise ValueError(f"need 0 < min_ratio <= max_ratio <= 1; got min_ratio={min_ratio} max_ratio={max_ratio}")
  if not 0.0 <= suffix_prob <= 1.0:
    raise ValueError(f"suffix_prob={suffix_prob} must be in [0, 1]")
  piece_size = max_length - _CLS_COST - _SPAN_COST
  examples = []
  for cursor in range(0, tokens.size, piece_size):
    piece = tokens[cursor : cursor + piece_size]
    n = piece.size
    low = max(1, math.ceil(min_ratio * n - _EPS))
    high = max(low, math.floor(max_ratio * n + _EPS))
    length = int(rng.integers(low, high + 1))
    start = n - length if rng.random() < suffix_prob else int(rng.integers(0, n - length + 1))
    examples.append(assemble(piece, np.array([start]), np.array([length]), special.gmask, special, rng))
  if stats is not None:
    stats.add(tokens.size, examples)
  return examples
