"""Scoring candidate fills of a blank: GLM's cloze classification (verbalizers) and multiple choice.

For a text with one mask token and candidates c_1..c_n (e.g. the verbalizers "great" / "terrible" of
"It was really [MASK]."), candidate c is scored by the log-likelihood GLM gives it as the blank's Part B:

    log p(c | text) = sum_t log p(c_t | Part A, [sop], c_1..c_{t-1})     (+ log p([eop] | ..., c) with eop=True)

the objective the model was pretrained on, read in one forward pass per candidate: the row is Part A =
[CLS] + the text's tokens, then [sop] + c at the mask's position (block positions 1..len(c)+1), and the
targets are c (then [eop]). All candidates run as one batch at one padded length. The THUDM GLM code scores
cloze candidates the same way (finetune_glm.py, its `cloze_eval` mode); `length_normalized` divides by the
number of scored tokens, for candidates of different lengths.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from glm_jax.data import blank_infilling, cloze
from glm_jax.infer.infilling import InfillIds
from glm_jax.model import GLM
from glm_jax.train import step as step_lib


@dataclasses.dataclass
class CandidateRows:
  """One row per candidate, int32 [n, L] each (float32 for loss_mask); `sep` [n] is the Part A length."""

  input_ids: np.ndarray
  position_ids: np.ndarray
  block_position_ids: np.ndarray
  target_ids: np.ndarray
  loss_mask: np.ndarray
  sep: np.ndarray


def candidate_rows(
  part_a: Sequence[int],
  mask_position: int,
  candidates: Sequence[Sequence[int]],
  ids: InfillIds,
  length: int,
  eop: bool = False,
) -> CandidateRows:
  """The rows scoring each candidate (token ids) as the fill of the mask at `mask_position` of `part_a`."""
  if not candidates or any(len(c) == 0 for c in candidates):
    raise ValueError("every candidate needs at least one token")
  rows = []
  for candidate in candidates:
    fill = [*candidate, ids.eop] if eop else list(candidate)  # Part B's targets
    if len(part_a) + len(fill) > length:
      raise ValueError(
        f"scoring needs {len(part_a) + len(fill)} positions but the length is {length} (shorten "
        f"the text or the candidates, or raise the model's max_length)"
      )
    row = dict(
      input_ids=[*part_a, ids.sop, *candidate][: len(part_a) + len(fill)],  # Part B's inputs: [sop] + candidate
      position_ids=list(range(len(part_a))) + [mask_position] * len(fill),
      block_position_ids=[0] * len(part_a) + list(range(1, len(fill) + 1)),
      target_ids=[*part_a, *fill],  # Part A copies its input (not scored)
      loss_mask=[0.0] * len(part_a) + [1.0] * len(fill),
    )
    rows.append({k: v + [ids.pad if k == "input_ids" else 0] * (length - len(v)) for k, v in row.items()})
  stack = lambda key, dtype: np.asarray([r[key] for r in rows], dtype)  # noqa: E731
  return CandidateRows(
    stack("input_ids", np.int32),
    stack("position_ids", np.int32),
    stack("block_position_ids", np.int32),
    stack("target_ids", np.int32),
    stack("loss_mask", np.float32),
    np.full(len(rows), len(part_a), np.int32),
  )


def make_score_fn(model: GLM, params):
  """A function CandidateRows -> the summed log-probability of each row's scored targets, float32 [n] (jitted
  once per row length; the params are an argument of the compiled program, not constants baked into it)."""
  vocab_size = model.config.vocab_size

  @jax.jit
  def scores(params, input_ids, position_ids, block_position_ids, target_ids, loss_mask, sep):
    logits = model.apply({"params": params}, input_ids, position_ids, block_position_ids, sep=sep, deterministic=True)
    log_probs = jax.nn.log_softmax(step_lib.mask_padded_vocab(logits, vocab_size), axis=-1)
    picked = jnp.take_along_axis(log_probs, target_ids[..., None], axis=-1)[..., 0]
    return jnp.sum(picked * loss_mask, axis=-1)

  def score(rows: CandidateRows) -> np.ndarray:
    return np.asarray(
      scores(
        params, rows.input_ids, rows.position_ids, rows.block_position_ids, rows.target_ids, rows.loss_mask, rows.sep
      )
    )

  return score


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
  ids = InfillIds.from_vocabulary(vocabulary)
  part_a = [ids.cls, *vocabulary.encode(text)]
  masks = [i for i, t in enumerate(part_a) if t in ids.masks]
  if len(masks) != 1:
    raise ValueError(f"scoring needs exactly one [MASK], [sMASK] or [gMASK] in the text; found {len(masks)}")
  tokens = _candidate_tokens(vocabulary, candidates)
  length = min(model.config.max_length, len(part_a) + max(map(len, tokens)) + int(eop))
  rows = candidate_rows(part_a, masks[0], tokens, ids, length, eop=eop)
  return [float(s) for s in _normalized(make_score_fn(model, params)(rows), rows, length_normalized)]


def _candidate_tokens(vocabulary, candidates: Sequence[str]) -> list[list[int]]:
  tokens = [list(vocabulary.encode(c)) for c in candidates]
  empty = [c for c, t in zip(candidates, tokens) if not t]
  if empty:
    raise ValueError(f"candidates {empty} encode to no tokens")
  return tokens


def _normalized(scores: np.ndarray, rows: CandidateRows, length_normalized: bool) -> np.ndarray:
  return scores / rows.loss_mask.sum(axis=-1) if length_normalized else scores


def cloze_accuracy(
  model: GLM,
  params,
  vocabulary,
  template: cloze.ClozeTemplate,
  examples: Iterable[Mapping[str, Any]],
  eop: bool = False,
  length_normalized: bool = False,
  examples_per_call: int = 16,
) -> dict[str, float]:
  """Accuracy of predicting each example's label as the verbalizer that fills the template's blank most likely.

  `examples`: dicts with the template's fields (str) and its label_key (int). Part A is tokenized and truncated
  as glm_jax.data.cloze's training pipeline does. The candidate rows of `examples_per_call` examples run as one
  batch at the model's max_length (one compilation; the last batch is padded with copies of its last example).
  Returns {"accuracy", "num_examples"}."""
  ids = InfillIds.from_vocabulary(vocabulary)
  special = blank_infilling.SpecialIds.from_vocabulary(vocabulary)
  labels = template.labels()
  candidates = _candidate_tokens(vocabulary, [template.verbalizers[label] for label in labels])
  score = make_score_fn(model, params)
  correct = total = 0

  def flush(batch: list[CandidateRows], gold: list[int]) -> int:
    padded = batch + [batch[-1]] * (examples_per_call - len(batch))
    rows = CandidateRows(
      *(np.concatenate([getattr(r, f.name) for r in padded]) for f in dataclasses.fields(CandidateRows))
    )
    scores = _normalized(score(rows), rows, length_normalized).reshape(examples_per_call, len(labels))
    predicted = [labels[i] for i in np.argmax(scores[: len(batch)], axis=-1)]
    return sum(int(p == g) for p, g in zip(predicted, gold))

  batch, gold = [], []
  for example in examples:
    part_a, mask_position = cloze.part_a(
      template, example, vocabulary, special, model.config.max_length, max(map(len, candidates))
    )
    batch.append(candidate_rows(part_a, mask_position, candidates, ids, model.config.max_length, eop=eop))
    gold.append(int(example[template.label_key]))
    if len(batch) == examples_per_call:
      correct, total, batch, gold = correct + flush(batch, gold), total + len(batch), [], []
  if batch:
    correct, total = correct + flush(batch, gold), total + len(batch)
  if not total:
    raise ValueError("cloze_accuracy got no examples")
  return {"accuracy": correct / total, "num_examples": float(total)}
