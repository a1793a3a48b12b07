"""Inputs and checks for GLM attention backends: random packed rows, and a backend against `reference`.

Used by the tests of every backend (tests/ops), and meant for anyone adding one: a new kernel is correct when
`assert_matches_reference` holds for it on `packed_batch` rows, forward and all three gradients.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from glm_jax import ops
from glm_jax.ops import mask as mask_lib


def packed_batch(rng: np.random.Generator, batch: int, length: int, max_segments: int, pad_max: int = 0,
                 segments: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Random packed rows: (sep, segment_ids), int32 [batch, length] each.

  Row b holds `segments[b]` contiguous segments (default: 1..max_segments at random) numbered 1..n, then
  0..pad_max tokens of padding (segment 0, sep 0). Each segment's Part A length (its tokens' sep) is 0, the
  whole segment or anything between: row 0 cycles through the three, the other rows draw one at random.
  """
  segment_ids = np.zeros((batch, length), np.int32)
  sep = np.zeros((batch, length), np.int32)
  for b in range(batch):
    used = length - int(rng.integers(0, pad_max + 1))
    n = segments[b] if segments is not None else int(rng.integers(1, max_segments + 1))
    cuts = np.sort(rng.choice(np.arange(1, used), size=min(n - 1, used - 1), replace=False))
    bounds = [0, *cuts.tolist(), used]
    for s, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
      seg_len = stop - start
      part_a = [0, seg_len, int(rng.integers(0, seg_len + 1))][s % 3 if b == 0 else int(rng.integers(0, 3))]
      segment_ids[b, start:stop] = s + 1
      sep[b, start:stop] = part_a
  return sep, segment_ids


def random_qkv(rng: np.random.Generator, batch: int, length: int, heads: int, head_dim: int,
               dtype=jnp.float32) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Standard-normal q, k, v [batch, length, heads, head_dim]."""
  return tuple(jnp.asarray(rng.normal(size=(batch, length, heads, head_dim)), dtype) for _ in range(3))


@functools.partial(jax.jit, static_argnames=("implementation", "options"))
def value_and_grads(q, k, v, cotangent, sep, segment_ids, implementation: str, options: tuple = ()):
  """(out, dq, dk, dv) of `implementation` for the loss sum(out * cotangent); `options` as (name, value) pairs."""
  def loss(q, k, v):
    out = ops.attention(q, k, v, sep=sep, segment_ids=segment_ids, implementation=implementation, **dict(options))
    return jnp.sum(out.astype(jnp.float32) * cotangent), out

  (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
  return (out, *grads)


def against_reference(q, k, v, sep, segment_ids, implementation: str, seed: int = 0, **options):
  """((out, dq, dk, dv) of `implementation` on q, k, v, the same of `reference` on their float32 values),
  under one random cotangent."""
  cotangent = jnp.asarray(np.random.default_rng(seed).normal(size=q.shape), jnp.float32)
  got = value_and_grads(q, k, v, cotangent, sep, segment_ids, implementation, tuple(sorted(options.items())))
  want = value_and_grads(*(x.astype(jnp.float32) for x in (q, k, v)), cotangent, sep, segment_ids, "reference")
  return got, want


def assert_matches_reference(q, k, v, sep, segment_ids, implementation: str, *, f32_tol: float = 2e-5,
                             bf16_tol: float = 2e-2, **options) -> None:
  """`implementation`'s output and three gradients equal the float32 reference's, each in q.dtype.

  Tolerance: `f32_tol` or `bf16_tol` (rounded probabilities and results), relative and absolute, the absolute
  one scaled by the largest reference value."""
  got, want = against_reference(q, k, v, sep, segment_ids, implementation, **options)
  tol = f32_tol if q.dtype == jnp.float32 else bf16_tol
  for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
    assert g.dtype == q.dtype, name
    g, w = np.asarray(g, np.float32), np.asarray(w)
    np.testing.assert_allclose(g, w, rtol=tol, atol=tol * max(1.0, np.abs(w).max()), err_msg=name)


def block_visibility(sep, segment_ids, length: int, block_q: int, block_k: int) -> np.ndarray:
  """bool [B, nq, nk] from the rule itself (mask.dense_mask): does any row of query block i attend any key of
  key block j. What a block-skipping kernel must visit, and all it may read."""
  dense = np.asarray(mask_lib.dense_mask(*mask_lib.canonicalize(sep, segment_ids, length)))
  num_q, num_k = -(-length // block_q), -(-length // block_k)
  padded = np.zeros((dense.shape[0], num_q * block_q, num_k * block_k), bool)
  padded[:, :length, :length] = dense
  return padded.reshape(-1, num_q, block_q, num_k, block_k).any(axis=(2, 4))
