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
from glm_jax.ops import attention_blocks, mask as mask_lib


def packed_batch(
  rng: np.random.Generator,
  batch: int,
  length: int,
  max_segments: int,
  pad_max: int = 0,
  segments: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
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


def random_qkv(
  rng: np.random.Generator, batch: int, length: int, heads: int, head_dim: int, dtype=jnp.float32
) -> tuple[jax.Array, jax.Array, jax.Array]:
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


def assert_matches_reference(
  q, k, v, sep, segment_ids, implementation: str, *, f32_tol: float = 2e-5, bf16_tol: float = 2e-2, **options
) -> None:
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


def assert_skipped_blocks_never_read(implementation: str, heads: int = 1, **options) -> None:
  """For a block-skipping kernel (blocks of 32 rows and keys): NaN keys and values in whole key blocks that chosen
  query blocks cannot see (another segment, the causal future of Part B, padding) leave those query blocks'
  outputs and dQ, and dK/dV of the key blocks only they see, equal to the reference's on clean inputs. A kernel
  that loaded a skipped block and masked it would spread NaN through p * v = 0 * NaN."""
  length, block = 128, 32
  # Row 0: segment 1 (tokens 0..63, Part A 8), segment 2 (64..95, Part A 0), padding 96..127.
  # Row 1: one segment, Part A 4: block 0 must not read the future blocks 1..3.
  segment_ids = np.array([[1] * 64 + [2] * 32 + [0] * 32, [1] * 128], np.int32)
  sep = np.array([[8] * 64 + [0] * 32 + [0] * 32, [4] * 128], np.int32)
  checked_query_blocks = [{0, 1}, {0}]
  visible = block_visibility(sep, segment_ids, length, block, block)
  q, k, v = random_qkv(np.random.default_rng(3), 2, length, heads, 64)
  poisoned_k, poisoned_v = np.array(k), np.array(v)
  checks = []
  for b, rows in enumerate(checked_query_blocks):
    seen = visible[b, sorted(rows)].any(axis=0)
    assert not seen.all(), "the check needs a poisoned block"
    for j in np.flatnonzero(~seen):
      poisoned_k[b, j * block : (j + 1) * block] = np.nan
      poisoned_v[b, j * block : (j + 1) * block] = np.nan
    only_seen_by_rows = [j for j in np.flatnonzero(seen) if set(np.flatnonzero(visible[b, :, j])) <= rows]
    checks.append((b, sorted(rows), only_seen_by_rows))
  options = dict(options, block_q=block, block_k=block)
  got, _ = against_reference(
    q, jnp.asarray(poisoned_k), jnp.asarray(poisoned_v), sep, segment_ids, implementation, **options
  )
  _, want = against_reference(q, k, v, sep, segment_ids, implementation, **options)
  out, dq, dk, dv = (np.asarray(x) for x in got)
  want = [np.asarray(x) for x in want]
  assert sum(len(c[2]) for c in checks) > 0
  for b, rows, key_blocks in checks:
    rows = np.concatenate([np.arange(i * block, (i + 1) * block) for i in rows])
    keys = np.concatenate([np.arange(j * block, (j + 1) * block) for j in key_blocks] or [np.zeros(0, int)])
    for name, g, w, index in (
      ("out", out, want[0], rows),
      ("dq", dq, want[1], rows),
      ("dk", dk, want[2], keys),
      ("dv", dv, want[3], keys),
    ):
      np.testing.assert_allclose(g[b, index], w[b, index], rtol=2e-5, atol=2e-5, err_msg=f"{name} row {b}")


def _shapes_outside_kernels(jaxpr):
  """Shapes of every value of a jaxpr and its sub-jaxprs, not descending into pallas_call bodies."""
  for eqn in jaxpr.eqns:
    yield from (var.aval.shape for var in eqn.outvars if hasattr(var.aval, "shape"))
    if eqn.primitive.name == "pallas_call":
      continue
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from _shapes_outside_kernels(inner)


def assert_no_length_by_length_array(implementation: str, length: int = 256, **options) -> None:
  """Outside its Pallas kernels, `implementation`'s forward and backward hold no array with two dimensions of
  at least `length` (no [L, L] mask, logits or probabilities)."""
  rng = np.random.default_rng(4)
  sep, segment_ids = packed_batch(rng, batch=1, length=length, max_segments=3)
  q, k, v = random_qkv(rng, 1, length, 1, 64)

  def loss(q, k, v):
    return ops.attention(q, k, v, sep=sep, segment_ids=segment_ids, implementation=implementation, **options).sum()

  jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v).jaxpr
  shapes = list(_shapes_outside_kernels(jaxpr))
  assert any(length in s for s in shapes)
  assert not [s for s in shapes if sum(d >= length for d in s) >= 2]


def reference_with_kernel_dropout(q, k, v, sep, segment_ids, dropout_rate: float, dropout_rng):
  """The materialized-mask attention with the Pallas kernels' dropout keep-mask (attention_blocks.dropout_keep)
  drawn densely: what a kernel with dropout must compute, forward and backward (it is plain differentiable XLA)."""
  batch, length, heads, _ = q.shape
  sep, segment_ids = mask_lib.canonicalize(sep, segment_ids, length)
  seed = attention_blocks.dropout_seed(dropout_rng)[0]
  rows, cols = jnp.arange(length, dtype=jnp.int32)[:, None], jnp.arange(length, dtype=jnp.int32)[None, :]
  keep = jnp.stack(
    [
      jnp.stack(
        [attention_blocks.dropout_keep(seed, b, h, rows, cols, heads, length, dropout_rate) for h in range(heads)]
      )
      for b in range(batch)
    ]
  )  # [B, H, L, L]
  mask = mask_lib.dense_mask(sep, segment_ids)[:, None]
  logits = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32)) / np.sqrt(q.shape[-1])
  probs = jnp.where(mask, jax.nn.softmax(jnp.where(mask, logits, -1e30), axis=-1), 0.0)
  probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
  return jnp.einsum("bhqk,bkhd->bqhd", probs, v.astype(jnp.float32))


def assert_dropout_matches_reference(implementation: str, dropout_rate: float = 0.3, **options) -> None:
  """`implementation`'s output and three gradients with dropout equal `reference_with_kernel_dropout`'s on
  packed rows, and another dropout_rng gives another output."""
  rng = np.random.default_rng(9)
  sep, segment_ids = packed_batch(rng, batch=2, length=80, max_segments=3, pad_max=10)
  q, k, v = random_qkv(rng, 2, 80, 2, 64)
  cotangent = jnp.asarray(rng.normal(size=q.shape), jnp.float32)
  key = jax.random.key(4)

  def loss(fn):  # the key is an argument: another key runs the same compiled program
    def f(q, k, v, key):
      out = fn(q, k, v, key)
      return jnp.sum(out.astype(jnp.float32) * cotangent), out

    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))

  kernel = loss(
    lambda q, k, v, key: ops.attention(
      q,
      k,
      v,
      sep=sep,
      segment_ids=segment_ids,
      implementation=implementation,
      dropout_rate=dropout_rate,
      dropout_rng=key,
      **options,
    )
  )
  (_, got), got_grads = kernel(q, k, v, key)
  (_, want), want_grads = loss(
    lambda q, k, v, key: reference_with_kernel_dropout(q, k, v, sep, segment_ids, dropout_rate, key)
  )(q, k, v, key)
  for name, g, w in zip(("out", "dq", "dk", "dv"), (got, *got_grads), (want, *want_grads)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-5, atol=2e-5, err_msg=name)
  (_, other), _ = kernel(q, k, v, jax.random.key(5))
  assert not np.allclose(np.asarray(other), np.asarray(got))
