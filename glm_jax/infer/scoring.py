"""Scoring candidate fills of a blank: GLM's cloze classification (verbalizers) and multiple choice.

For a text with one mask token and candidates c_1..c_n (e.g. the verbalizers "great" / "terrible" of
"It was really [MASK]."), candidate c is scored by the log-likelihood GLM gives it as the blank's Part B:

    log p(c | text) = sum_t log p(c_t | Part A, [sop], c_1..c_{t-1})     (+ log p([eop] | ..., c) with eop=True)

the objective the model was pretrained on, read in one forward pass per candidate: the row is the GLM example
(glm_jax.data.example) of Part A = [CLS] + the text's tokens and the one span c at the mask's position, its
targets c (then [eop]). All candidates run as one batch at one padded length. The THUDM GLM code scores cloze
candidates the same way (finetune_glm.py, its `cloze_eval` mode); `length_normalized` divides by the number of
scored tokens, for candidates of different lengths. glm_jax.eval.cloze scores whole cloze Tasks with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from glm_jax.data import example as example_lib
from glm_jax.data.example import SpecialIds
from glm_jax.model import GLM, forward, mask_padded_vocab


def candidate_rows(
  part_a: Sequence[int],
  mask_position: int,
  candidates: Sequence[Sequence[int]],
  ids: SpecialIds,
  length: int,
  eop: bool = False,
) -> dict[str, np.ndarray]:
  """The model features [n, length] scoring each candidate (token ids) as the fill of the mask at `mask_position`
  of `part_a`: the span's targets are scored (loss_mask), [eop] only with `eop`."""
  if not candidates or any(len(c) == 0 for c in candidates):
    raise ValueError("every candidate needs at least one token")
  rows = []
  for candidate in candidates:
    example = example_lib.from_spans(part_a, [(mask_position, candidate)], ids)
    if not eop:  # the span's last position predicts [eop]: not scored, so not in the row
      example = {name: values[:-1] for name, values in example.items()}
    size = example["input_ids"].size
    if size > length:
      raise ValueError(
        f"scoring needs {size} positions but the length is {length} (shorten the text or the candidates, or raise "
        f"the model's max_length)"
      )
    rows.append(example_lib.pad(example, length))
  return example_lib.batch(rows)


def make_score_fn(model: GLM, params):
  """A function (candidate rows) -> the summed log-probability of each row's scored targets, float32 [n] (jitted
  once per row shape; the params are an argument of the compiled program, not constants baked into it)."""
  vocab_size = model.config.vocab_size

  @jax.jit
  def scores(params, rows):
    logits = forward(model, params, rows, deterministic=True)
    log_probs = jax.nn.log_softmax(mask_padded_vocab(logits, vocab_size), axis=-1)
    picked = jnp.take_along_axis(log_probs, rows["target_ids"][..., None], axis=-1)[..., 0]
    return jnp.sum(picked * rows["loss_mask"], axis=-1)

  def score(rows: dict[str, np.ndarray]) -> np.ndarray:
    return np.asarray(scores(params, rows))

  return score


def normalized(scores: np.ndarray, rows: dict[str, np.ndarray], length_normalized: bool) -> np.ndarray:
  """The scores, divided by each row's number of scored tokens when `length_normalized`."""
  return scores / rows["loss_mask"].sum(axis=-1) if length_normalized else scores


def candidate_tokens(vocabulary, candidates: Sequence[str]) -> list[list[int]]:
  """The candidates' token ids; raises ValueError naming the candidates that encode to nothing."""
  tokens = [list(vocabulary.encode(c)) for c in candidates]
  empty = [c for c, t in zip(candidates, tokens) if not t]
  if empty:
    raise ValueError(f"candidates {empty} encode to no tokens")
  return tokens


def score_candidates(
  model: GLM,
  params,
  vocabulary,
  text: str,
  candidates: Sequence[str],
  eop: bool = False,
  length_normalized: bool = False,
) -> list[float]:
  """Log-likelihood of each candidate string as the fill of the one mask token ([MASK], [sMASK] or [gMASK])
  in `text`, per token when `length_normalized`. Raises ValueError unless `text` has exactly one mask."""
  ids = SpecialIds.from_vocabulary(vocabulary)
  part_a = [ids.cls, *vocabulary.encode(text)]
  masks = example_lib.blank_positions(part_a, ids)
  if len(masks) != 1:
    raise ValueError(f"scoring needs exactly one [MASK], [sMASK] or [gMASK] in the text; found {len(masks)}")
  tokens = candidate_tokens(vocabulary, candidates)
  length = min(model.config.max_length, len(part_a) + max(map(len, tokens)) + int(eop))
  rows = candidate_rows(part_a, masks[0], tokens, ids, length, eop=eop)
  return [float(s) for s in normalized(make_score_fn(model, params)(rows), rows, length_normalized)]


def format_scores(candidates: Sequence[str], scores: Sequence[float]) -> str:
  """One line per candidate, its score first, the best one marked (the `score` command's output)."""
  best = max(range(len(scores)), key=scores.__getitem__)
  return "\n".join(
    f"{s:10.4f}  {c}{'  <- best' if i == best else ''}" for i, (c, s) in enumerate(zip(candidates, scores))
  )
