"""Zero-shot language-modelling metrics over the rows of glm_jax.data.language_model: LAMBADA accuracy and
perplexity (the reference's tasks/language_model/finetune.py: its 'accuracy' and 'loss' metrics).

`row_stats` runs the model once over each row (teacher forcing, the GLM mask) and returns per row the summed cross
entropy of its scored positions, whether every scored position's argmax is its target, and how many it has. With
params laid out on a mesh the rows are split over its data x fsdp devices and the results replicated, on one
process or many (each passes the same rows). `lambada_metrics` and `perplexity_metrics` turn the stats into the
reference's numbers (glm_jax.data.language_model's docstring defines them).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from glm_jax.data.example import MODEL_FEATURES
from glm_jax.infer import decode
from glm_jax.model import GLM, forward, mask_padded_vocab
from glm_jax.model.sharding import with_mesh_rules

STATS = ("nll", "correct", "scored")


def _stats(model: GLM, params, rows: dict) -> dict[str, jax.Array]:
  logits = mask_padded_vocab(forward(model, params, rows, deterministic=True).astype(jnp.float32),
                             model.config.vocab_size)  # fmt: skip
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  targets = rows["target_ids"]
  picked = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  scored = rows["loss_mask"] > 0
  right = jnp.argmax(logits, axis=-1) == targets
  return {
    "nll": jnp.sum(jnp.where(scored, -picked, 0.0), axis=-1),  # where, not *: a padding row may hold NaN
    "correct": jnp.all(right | ~scored, axis=-1) & jnp.any(scored, axis=-1),
    "scored": jnp.sum(scored, axis=-1).astype(jnp.int32),
  }


@functools.lru_cache(maxsize=8)
def _program(model: GLM, mesh: Mesh | None):
  if mesh is None:
    return jax.jit(functools.partial(_stats, model))
  everywhere = NamedSharding(mesh, P())
  return jax.jit(with_mesh_rules(functools.partial(_stats, model), mesh), out_shardings=everywhere)


def batches(rows: Iterable[dict[str, np.ndarray]], batch_size: int, devices: int = 1) -> Iterator[dict]:
  """Model rows (each feature [L]) stacked `batch_size` at a time (rounded up to a multiple of `devices`), the last
  batch filled with empty rows (no scored position)."""
  size = -(-batch_size // devices) * devices
  chunk: list[dict[str, np.ndarray]] = []
  for row in rows:
    chunk.append(row)
    if len(chunk) == size:
      yield _stack(chunk, size)
      chunk = []
  if chunk:
    yield _stack(chunk, size)


def _stack(chunk, size: int) -> dict[str, np.ndarray]:
  out = {}
  for name in MODEL_FEATURES:
    values = np.stack([r[name] for r in chunk])
    out[name] = np.concatenate([values, np.zeros((size - len(chunk), *values.shape[1:]), values.dtype)])
  return out


def row_stats(
  model: GLM, params, row_batches: Iterable[dict[str, np.ndarray]], progress: bool = False
) -> dict[str, np.ndarray]:
  """Per row of every batch (batches of `batches`, their rows a multiple of the params' mesh's data x fsdp):
  nll float64, correct bool, scored int64 (STATS); the empty rows that fill a last batch are dropped."""
  mesh = decode.mesh_of(params)
  program, place = _program(model, mesh), decode.rows_placer(mesh)
  if progress:
    from tqdm import tqdm

    row_batches = tqdm(row_batches, desc="scoring", unit="batch")
  out = {k: [] for k in STATS}
  for batch in row_batches:
    stats = jax.device_get(program(params, {k: place(v) for k, v in batch.items()}))
    real = np.asarray(batch["segment_ids"]).any(axis=-1)
    for k in STATS:
      out[k].append(np.asarray(stats[k])[real])
  dtypes = {"nll": np.float64, "correct": bool, "scored": np.int64}
  return {k: np.concatenate(v).astype(dtypes[k]) if v else np.zeros([0], dtypes[k]) for k, v in out.items()}


def lambada_metrics(stats: dict[str, np.ndarray]) -> dict[str, float]:
  """lambada_accuracy (a fraction: the reference prints it x 100) over the examples, lambada_examples."""
  n = stats["correct"].size
  if not n:
    raise ValueError("no LAMBADA example to score")
  return {"lambada_accuracy": float(stats["correct"].sum()) / n, "lambada_examples": float(n)}


def _exp(x: float) -> float:
  return math.exp(x) if x < 700 else math.inf


def perplexity_metrics(stats: dict[str, np.ndarray], original: tuple[int, int] | None) -> dict[str, float]:
  """lm_loss (per scored token), lm_ppl, lm_scored_tokens; with `original` = (original words, documents) of the
  whole text also lm_token_ratio and lm_adjusted_ppl (glm_jax.data.language_model's docstring)."""
  tokens = int(stats["scored"].sum())
  if not tokens:
    raise ValueError("no token to score: the text is empty or every document has one token")
  loss = float(stats["nll"].sum()) / tokens
  out = {"lm_loss": loss, "lm_ppl": _exp(loss), "lm_scored_tokens": float(tokens)}
  if original is not None:
    words, documents = original
    ratio = tokens / max(words - documents, 1)
    out.update(lm_token_ratio=ratio, lm_adjusted_ppl=_exp(loss * ratio))
  return out
