"""Scoring candidate fills of a blank: GLM's cloze classification (verbalizers) and multiple choice.

For a Part A with a blank and candidates c_1..c_n (e.g. the verbalizers "great" / "terrible" of
"It was really [MASK]."), candidate c is scored by the log-likelihood GLM gives it as the blank's Part B:

    log p(c | A) = sum_t log p(c_t | A, [sop], c_1..c_{t-1})     (+ log p([eop] | A, [sop], c) with eop=True)

divided by (the number of scored tokens) ** length_penalty (0: the plain sum; 1: per token), as the reference's
multi-token cloze does (THUDM model/downstream.py, GLMForMultiTokenClozeFast). `score_spans` encodes each Part A once
into a key/value cache (glm_jax.model.cache, the prefill of glm_jax.infer.decode), repeats it per candidate and
scores every candidate of every prompt in one batched pass over the cache. `candidate_rows` + `make_score_fn`, one
full forward per candidate row, are its slow oracle. glm_jax.eval.cloze scores whole cloze Tasks with it.
With params laid out on a mesh (their NamedShardings: a sharded GLM-10B, or a training run's state), the prompts'
rows are split over its data x fsdp devices and the model runs sharded as in training, on one process or many (each
passes the same prompts and reads the same scores).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from glm_jax.data import example as example_lib
from glm_jax.data.example import SpecialIds
from glm_jax.infer import decode
from glm_jax.model import GLM, forward, mask_padded_vocab
from glm_jax.model.sharding import with_mesh_rules


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


def candidate_tokens(vocabulary, candidates: Sequence[str]) -> list[list[int]]:
  """The candidates' token ids; raises ValueError naming the candidates that encode to nothing."""
  tokens = [list(vocabulary.encode(c)) for c in candidates]
  empty = [c for c, t in zip(candidates, tokens) if not t]
  if empty:
    raise ValueError(f"candidates {empty} encode to no tokens")
  return tokens


def score_spans(
  model: GLM,
  params,
  prompts: Sequence[Sequence[int]],
  blanks: Sequence[int],
  candidates: Sequence[Sequence[Sequence[int]]],
  *,
  ids: SpecialIds,
  eop: bool = False,
  length_penalty: float = 0.0,
  greedy: bool = False,
) -> list[np.ndarray]:
  """Scores of candidates[i] (token lists) as the fill of the blank at index blanks[i] of prompts[i] (a Part A, its
  [CLS] included): per prompt a float array with one score per candidate (see the module docstring). With `greedy`,
  instead 1.0 where every scored token is the model's most likely one after the tokens before it (greedy decoding
  would write the candidate; the reference's eval_metric='classify' of tasks/language_model/finetune.py), else 0."""
  if not prompts:
    return []
  if any(not c or any(len(t) == 0 for t in c) for c in candidates):
    raise ValueError("every prompt needs candidates, and every candidate at least one token")
  cfg = model.config
  mesh = decode.mesh_of(params)  # params laid out on a mesh: the rows are split over its data x fsdp devices
  rows = decode.bucket(len(prompts), 1, decode.batch_devices(mesh))
  length = min(decode.bucket(max(map(len, prompts)), 16), cfg.max_length)
  choices = max(map(len, candidates))
  chunk = decode.bucket(max(len(t) for c in candidates for t in c) + int(eop), 1)
  if max(map(len, prompts)) > cfg.max_length or chunk > cfg.max_length:
    raise ValueError(
      f"a prompt or a candidate is longer than the model's max_length={cfg.max_length} (shorten the text or the "
      f"candidates)"
    )
  part_a = np.zeros((rows, length), np.int32)
  part_a_len = np.ones((rows,), np.int32)
  positions = np.zeros((rows,), np.int32)
  inputs, targets = np.zeros((2, rows, choices, chunk), np.int32)
  weights = np.zeros((rows, choices, chunk), np.float32)
  for r, (p, blank, cands) in enumerate(zip(prompts, blanks, candidates)):
    part_a[r, : len(p)], part_a_len[r], positions[r] = p, len(p), blank
    for c, tokens in enumerate(cands):
      scored = [*tokens, ids.eop] if eop else list(tokens)
      inputs[r, c, : len(scored)] = [ids.sop, *scored[:-1]]
      targets[r, c, : len(scored)] = scored
      weights[r, c, : len(scored)] = 1.0
  place = decode.rows_placer(mesh)
  arrays = [place(x) for x in (part_a, part_a_len, positions, inputs, targets, weights)]
  scores, matched = _score_program(model, mesh)(params, *arrays, length_penalty, capacity=length + chunk)
  scores = np.asarray(matched, np.float32) if greedy else np.asarray(scores)
  return [scores[r, : len(c)] for r, c in enumerate(candidates)]


@functools.lru_cache(maxsize=16)
def _score_program(model: GLM, mesh: Mesh | None):
  """The jitted `_score` of a model (jax.jit keeps one program per bucket shape); on a mesh traced with the logical
  rules, its results replicated so that every process reads them."""
  if mesh is None:
    return jax.jit(functools.partial(_score, model), static_argnames="capacity")
  everywhere = NamedSharding(mesh, P())
  fn = with_mesh_rules(functools.partial(_score, model), mesh)
  return jax.jit(fn, static_argnames="capacity", out_shardings=(everywhere, everywhere))


def _score(model, params, part_a, part_a_len, positions, inputs, targets, weights, length_penalty, *, capacity):
  """Scores [B, C] of candidate chunks (inputs, targets, weights [B, C, T]) after each row's Part A [B, A], and
  whether each is the greedy continuation, bool [B, C]."""
  batch, choices, chunk = inputs.shape
  cache = decode.prefill(model, 1, params, part_a, part_a_len, capacity=capacity)
  cache = cache.take(jnp.repeat(jnp.arange(batch), choices))
  flat = lambda x: x.reshape(batch * choices, chunk)  # noqa: E731
  block = jnp.broadcast_to(jnp.arange(1, chunk + 1, dtype=jnp.int32), inputs.shape)
  logits, _ = model.apply(
    {"params": params},
    flat(inputs),
    flat(jnp.broadcast_to(positions[:, None, None], inputs.shape)),
    flat(block),
    sep=jnp.zeros((batch * choices,), jnp.int32),
    segment_ids=flat((weights > 0).astype(jnp.int32)),
    cache=cache,
  )
  log_probs = jax.nn.log_softmax(mask_padded_vocab(logits, model.config.vocab_size), axis=-1)
  picked = jnp.take_along_axis(log_probs, flat(targets)[..., None], axis=-1)[..., 0]
  total = jnp.sum(picked * flat(weights), axis=-1)
  scored = jnp.maximum(jnp.sum(flat(weights), axis=-1), 1.0)
  hit = jnp.all((jnp.max(log_probs, axis=-1) <= picked) | (flat(weights) == 0), axis=-1)  # ties count as a hit
  return (total / scored**length_penalty).reshape(batch, choices), hit.reshape(batch, choices)


def score_candidates(
  model: GLM,
  params,
  vocabulary,
  text: str,
  candidates: Sequence[str],
  eop: bool = False,
  length_penalty: float = 0.0,
) -> list[float]:
  """Log-likelihood of each candidate string as the fill of the one mask token ([MASK], [sMASK] or [gMASK])
  in `text` (Part A = [CLS] + its tokens), divided by its scored tokens ** length_penalty (1: per token). Raises
  ValueError unless `text` has exactly one mask."""
  ids = SpecialIds.from_vocabulary(vocabulary)
  part_a = [ids.cls, *example_lib.encode_text(vocabulary, text, ids)]
  masks = example_lib.blank_positions(part_a, ids)
  if len(masks) != 1:
    raise ValueError(f"scoring needs exactly one [MASK], [sMASK] or [gMASK] in the text; found {len(masks)}")
  tokens = candidate_tokens(vocabulary, candidates)
  (scores,) = score_spans(model, params, [part_a], masks, [tokens], ids=ids, eop=eop, length_penalty=length_penalty)
  return [float(s) for s in scores]


def format_scores(candidates: Sequence[str], scores: Sequence[float]) -> str:
  """One line per candidate, its score first, the best one marked (the `score` command's output)."""
  best = max(range(len(scores)), key=scores.__getitem__)
  return "\n".join(
    f"{s:10.4f}  {c}{'  <- best' if i == best else ''}" for i, (c, s) in enumerate(zip(candidates, scores))
  )
